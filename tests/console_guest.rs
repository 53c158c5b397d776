//! The serial console with the real test guest (TCG): watching it boot,
//! typing into its shell, several viewers, and a vman killed and restarted
//! while the guest prints. Slow (a guest boots in each test): run alone with
//! `cargo test --test console_guest`.

mod common;

use std::time::Duration;

use base64::{Engine, engine::general_purpose::STANDARD};
use common::{TestServer, VmanProcess, WsClient, free_port, guest_dir, wait_for_line};
use serde_json::{Value, json};
use vman::config::Accel;

/// How long the guest may take to boot (TCG, on a busy host).
const BOOT: Duration = Duration::from_secs(90);
/// How long the guest's shell may take to answer.
const ANSWER: Duration = Duration::from_secs(30);

const WATCH: &str = "subscription($vm: ID!, $replay: Int!, $after: Bytes) { vmConsole(vmId: $vm, replayBytes: $replay, after: $after) { kind offset length nextOffset data text reason } }";
const SEND: &str = "mutation($vm: ID!, $data: String!, $b64: Boolean!) { sendConsoleInput(vmId: $vm, data: $data, base64: $b64) { bytes outputOffset vm { state } } }";

/// One `vmConsole` subscription, and the output it got so far.
struct Viewer {
    ws: WsClient,
    /// The offset of its first byte.
    first: Option<u64>,
    /// The offset its next chunk must start at.
    next: Option<u64>,
    output: Vec<u8>,
    completed: bool,
}

impl Viewer {
    async fn open(ws_url: &str, vm: &str, replay: u64, after: Option<u64>) -> Viewer {
        let mut ws = WsClient::connect(ws_url).await;
        ws.subscribe(
            "console",
            WATCH,
            json!({"vm": vm, "replay": replay, "after": after}),
        )
        .await;
        Viewer {
            ws,
            first: None,
            next: None,
            output: Vec::new(),
            completed: false,
        }
    }

    /// Takes the next message: one chunk, or the end of the subscription.
    async fn take(&mut self, within: Duration) {
        assert!(!self.completed, "the subscription is over");
        let message = self.ws.next_message_within(within).await;
        if message["type"] == "complete" {
            self.completed = true;
            return;
        }
        assert_eq!(message["type"], "next", "{message}");
        assert!(message["payload"].get("errors").is_none(), "{message}");
        let chunk = &message["payload"]["data"]["vmConsole"];
        assert_eq!(chunk["kind"], "OUTPUT", "nothing is dropped here: {chunk}");
        let offset = chunk["offset"].as_u64().unwrap();
        assert_eq!(
            self.next.unwrap_or(offset),
            offset,
            "chunks follow each other"
        );
        let data = STANDARD.decode(chunk["data"].as_str().unwrap()).unwrap();
        assert_eq!(chunk["length"].as_u64().unwrap(), data.len() as u64);
        assert_eq!(
            chunk["nextOffset"].as_u64().unwrap(),
            offset + data.len() as u64
        );
        assert_eq!(chunk["text"], String::from_utf8_lossy(&data).as_ref());
        assert!(chunk["reason"].is_null());
        self.first.get_or_insert(offset);
        self.next = Some(offset + data.len() as u64);
        self.output.extend_from_slice(&data);
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.output).into_owned()
    }

    /// Reads until `needle` shows after byte `from` of its output; where it ends.
    async fn until(&mut self, from: usize, needle: &str, within: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(at) = find(&self.output[from.min(self.output.len())..], needle) {
                return from + at + needle.len();
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            assert!(
                !left.is_zero() && !self.completed,
                "{needle:?} did not come within {within:?}; the console showed:\n{}",
                self.text()
            );
            self.take(left).await;
        }
    }

    /// Reads until it has the output up to `offset`.
    async fn until_offset(&mut self, offset: u64, within: Duration) {
        while self.next.is_none_or(|next| next < offset) {
            self.take(within).await;
        }
    }

    /// Reads to the end of the subscription.
    async fn completes(&mut self, within: Duration) {
        while !self.completed {
            self.take(within).await;
        }
    }
}

fn find(haystack: &[u8], needle: &str) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle.as_bytes())
}

/// Whether every byte of `part` is in `whole`, in order (QEMU's log may
/// hold a byte twice where its socket write was retried).
fn is_subsequence(part: &[u8], whole: &[u8]) -> bool {
    let mut whole = whole.iter();
    part.iter().all(|byte| whole.any(|b| b == byte))
}

async fn send(server: &TestServer, vm: &str, data: &str, base64: bool) -> Value {
    server
        .ok(SEND, json!({"vm": vm, "data": data, "b64": base64}))
        .await["sendConsoleInput"]
        .clone()
}

#[tokio::test]
async fn the_console_shows_the_boot_takes_input_and_serves_several_viewers() {
    let server = TestServer::real(Accel::Tcg).await;
    server
        .guest_template("tiny", "console=ttyS0 panic=-1")
        .await;
    let vm = server.create_vm("console-1", "tiny").await;
    server.start_vm(&vm).await;

    // The whole boot, from the first byte: the kernel's lines, the guest's
    // ready marker, then its shell's prompt.
    let mut first = Viewer::open(&server.ws_url, &vm, 1 << 20, None).await;
    let ready = first.until(0, "VMAN-GUEST-READY", BOOT).await;
    assert_eq!(first.first, Some(0));
    let boot = first.text();
    assert!(boot.contains("Linux version"), "{boot}");
    assert!(boot.contains("Command line: console=ttyS0"), "{boot}");
    let prompt = first.until(ready, "/ # ", ANSWER).await;

    // A second viewer, later: the replay, then the same bytes.
    let mut second = Viewer::open(&server.ws_url, &vm, 1 << 20, None).await;
    second.until_offset(prompt as u64, ANSWER).await;
    assert_eq!(second.first, Some(0));

    let command = "echo hello-$((6*7))-console\r";
    let sent = send(&server, &vm, command, false).await;
    assert_eq!(sent["bytes"], command.len());
    assert_eq!(sent["vm"]["state"], "RUNNING");
    let output_offset = sent["outputOffset"].as_u64().unwrap();
    assert!(output_offset >= prompt as u64, "{sent}");
    // The guest's answer (not the echo of the command line, which has `$((6*7))`).
    let answered = first.until(prompt, "hello-42-console", ANSWER).await;
    second.until(prompt, "hello-42-console", ANSWER).await;
    let end = first.next.unwrap().max(second.next.unwrap());
    first.until_offset(end, ANSWER).await;
    second.until_offset(end, ANSWER).await;
    assert_eq!(first.output[..end as usize], second.output[..end as usize]);

    // A viewer that resumes at an offset gets exactly what follows it.
    let mut resumed = Viewer::open(&server.ws_url, &vm, 0, Some(output_offset)).await;
    resumed.until_offset(end, ANSWER).await;
    assert_eq!(resumed.first, Some(output_offset));
    assert_eq!(
        resumed.output[..(end - output_offset) as usize],
        first.output[output_offset as usize..end as usize]
    );

    // Bytes that are not text go as base64.
    let command = "echo b64-$((1+2))\r";
    let sent = send(&server, &vm, &STANDARD.encode(command), true).await;
    assert_eq!(sent["bytes"], command.len());
    first.until(answered, "b64-3", ANSWER).await;

    // A stop ends every subscription after the guest's last words.
    let stopped = server
        .ok(
            "mutation($id: ID!) { stopVm(id: $id, timeoutSeconds: 60) { vm { state } } }",
            json!({"id": vm}),
        )
        .await;
    assert_eq!(stopped["stopVm"]["vm"]["state"], "STOPPED");
    for viewer in [&mut first, &mut second, &mut resumed] {
        viewer.completes(ANSWER).await;
    }
    assert!(first.text().contains("VMAN-GUEST-POWEROFF"));
    // Everything the viewers got is in serial.log, in order.
    let log = std::fs::read(server.run_dir(&vm).join("serial.log")).unwrap();
    assert!(is_subsequence(&first.output, &log));

    // The console of a stopped VM: the replay of its last run, from its log, then the end.
    let mut after_stop = Viewer::open(&server.ws_url, &vm, 1 << 20, None).await;
    after_stop.completes(ANSWER).await;
    assert_eq!(after_stop.first, Some(0));
    assert_eq!(after_stop.output, log);
    let refused = server
        .error_code(SEND, json!({"vm": vm, "data": "ls\r", "b64": false}))
        .await;
    assert_eq!(refused, "INVALID_STATE");
}

/// vman is SIGKILLed while the guest is about to print, and started again:
/// the guest runs on, its serial.log has what it printed meanwhile, the new
/// vman replays that too, and the console takes input again.
#[tokio::test]
async fn a_vman_killed_and_restarted_reconnects_the_console_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let guest = guest_dir();
    let env = [
        ("VMAN_QEMU_ACCEL", "tcg"),
        ("VMAN_IMPORT_DIR", guest.to_str().unwrap()),
    ];
    let http = reqwest::Client::new();
    let mut vman = VmanProcess::start_with_env(&data, free_port(), &env);
    vman.ready(&http).await;
    let gql = |vman: &VmanProcess, query: &'static str, variables: Value| {
        let (vman_url, http) = (vman.url.clone(), http.clone());
        async move {
            let r: Value = http
                .post(&vman_url)
                .json(&json!({"query": query, "variables": variables}))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            assert!(r.get("errors").is_none(), "{r}");
            r["data"].clone()
        }
    };
    let import = "mutation($n: String!, $k: ImageKind!, $p: String!) { importImage(input: {name: $n, kind: $k, path: $p}) { image { id } } }";
    let kernel = gql(
        &vman,
        import,
        json!({"n": "k", "k": "KERNEL", "p": "vmlinuz"}),
    )
    .await;
    let initrd = gql(
        &vman,
        import,
        json!({"n": "i", "k": "INITRD", "p": "initrd.img"}),
    )
    .await;
    gql(
        &vman,
        "mutation($k: ID!, $i: ID!) { createTemplate(input: {name: \"tiny\", vcpus: 1, memoryMib: 256, kernelImageId: $k, initrdImageId: $i, cmdline: \"console=ttyS0 quiet panic=-1\"}) { template { id } } }",
        json!({"k": kernel["importImage"]["image"]["id"], "i": initrd["importImage"]["image"]["id"]}),
    )
    .await;
    let created = gql(
        &vman,
        "mutation { createVm(input: {name: \"survivor\", templateName: \"tiny\"}) { vm { id } } }",
        json!({}),
    )
    .await;
    let vm = created["createVm"]["vm"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    gql(
        &vman,
        "mutation($id: ID!) { startVm(id: $id) { vm { state } } }",
        json!({"id": vm}),
    )
    .await;
    let ws_url = |vman: &VmanProcess| vman.url.replace("http://", "ws://") + "/ws";

    let mut before = Viewer::open(&ws_url(&vman), &vm, 1 << 20, None).await;
    let ready = before.until(0, "VMAN-GUEST-READY", BOOT).await;
    let prompt = before.until(ready, "/ # ", ANSWER).await;
    // The guest answers two seconds later: by then no vman runs.
    gql(
        &vman,
        SEND,
        json!({"vm": vm, "data": "sleep 2; echo while-down-$((40+2))\r", "b64": false}),
    )
    .await;
    // The shell has the whole line once the terminal echoed its end (QEMU
    // takes input as fast as the guest's serial port does, and drops what
    // it has not taken when vman goes).
    before.until(prompt, "$((40+2))\r\n", ANSWER).await;
    vman.child.kill().unwrap(); // SIGKILL
    vman.child.wait().unwrap();
    let serial = data.join("run").join(&vm).join("serial.log");
    wait_for_line(&serial, "while-down-42", ANSWER).await;
    assert!(
        find(&before.output, "while-down-42").is_none(),
        "printed after vman was gone"
    );

    let vman = VmanProcess::start_with_env(&data, free_port(), &env);
    vman.ready(&http).await;
    let health = gql(
        &vman,
        "query($id: ID) { vm(id: $id) { state } health { adoptionProblems } }",
        json!({"id": vm}),
    )
    .await;
    assert_eq!(health["vm"]["state"], "RUNNING", "{health}");
    assert_eq!(health["health"]["adoptionProblems"], json!([]), "{health}");

    // The replay has what the guest printed while vman was down: it is the
    // whole serial.log, and offsets go on where they were.
    let mut after = Viewer::open(&ws_url(&vman), &vm, 1 << 20, None).await;
    let answered = after.until(0, "while-down-42", ANSWER).await;
    let prompt = after.until(answered, "/ # ", ANSWER).await;
    assert_eq!(after.first, Some(0));
    let log = std::fs::read(&serial).unwrap();
    after.until_offset(log.len() as u64, ANSWER).await;
    assert_eq!(after.output, log, "the replay is serial.log, byte for byte");
    assert!(
        is_subsequence(&before.output, &log),
        "no byte lost from the log"
    );
    assert!(after.next.unwrap() >= before.next.unwrap());

    // And the console takes input again.
    gql(
        &vman,
        SEND,
        json!({"vm": vm, "data": "echo after-restart-$((2*3))\r", "b64": false}),
    )
    .await;
    after.until(prompt, "after-restart-6", ANSWER).await;
    wait_for_line(&serial, "after-restart-6", ANSWER).await;
}
