//! Console latency: how long a byte the guest writes to its serial port takes
//! from QEMU to a `vmConsole` subscriber, against a client reading QEMU's
//! console socket itself.
//!
//! Two guests (the test guest of `tests/guest/`, TCG, each with a shell on
//! its ttyS0) run side by side: one started by vman (`vman serve` as it
//! ships, its own process), one started here with the same command line and
//! read through its `tty.sock` directly. Each round sends each an Enter; its
//! shell answers with a new prompt (about a dozen bytes). QEMU writes each
//! byte to the socket and then to `serial.log`, so a thread of this process
//! blocked on inotify for `serial.log` sees when QEMU wrote the answer's
//! first byte. Per round and side:
//!
//! - **QEMU → reader**: from that inotify wake-up to the first chunk at the
//!   reader (vman: the websocket subscriber; raw: the socket read). It
//!   includes the inotify wake-up's own latency against it, so it is what a
//!   reader adds beyond a wake-up; the raw side is the floor (near zero, or
//!   below: QEMU writes the socket first).
//! - **Enter → answer**: from sending the Enter (vman: `sendConsoleInput`
//!   over HTTP; raw: a socket write) to the first chunk of the answer.
//!
//! `cargo bench --bench console` (add `-- --rounds N`, default 200). Prints
//! p50 and p99 of each.

#[path = "../tests/common/mod.rs"]
mod common;

use std::{
    io::Read,
    path::Path,
    sync::mpsc,
    time::{Duration, Instant},
};

use base64::{Engine, engine::general_purpose::STANDARD};
use common::{VmanProcess, WsClient};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use vman::{
    config::{Accel, Config},
    host::{
        DirectBoot, HostStep, VmAction, VmSpec,
        qemu::{self, argv::QemuOptions, process, qmp::QmpClient},
    },
};

const CMDLINE: &str = "console=ttyS0 quiet panic=-1";
/// How long the guest may take to boot, or to answer.
const WAIT: Duration = Duration::from_secs(120);

/// Times of inotify `IN_MODIFY` events on one file, from a thread of its own.
fn watch_modifications(path: &Path) -> mpsc::Receiver<Instant> {
    use rustix::fs::inotify;
    let fd = inotify::init(inotify::CreateFlags::CLOEXEC).expect("inotify");
    inotify::add_watch(&fd, path, inotify::WatchFlags::MODIFY).expect("inotify watch");
    let (sender, times) = mpsc::channel();
    std::thread::spawn(move || {
        let mut file = std::fs::File::from(fd);
        let mut buffer = [0u8; 4096];
        while file.read(&mut buffer).is_ok_and(|n| n > 0) {
            if sender.send(Instant::now()).is_err() {
                return;
            }
        }
    });
    times
}

/// The first modification at or after `since`.
fn first_write_after(times: &mpsc::Receiver<Instant>, since: Instant) -> Instant {
    loop {
        let at = times
            .recv_timeout(WAIT)
            .expect("serial.log is written within the wait");
        if at >= since {
            return at;
        }
    }
}

/// Microseconds from `from` to `to`, negative when `to` came first.
fn micros(from: Instant, to: Instant) -> f64 {
    if to >= from {
        (to - from).as_secs_f64() * 1e6
    } else {
        -((from - to).as_secs_f64() * 1e6)
    }
}

fn percentile(values: &[f64], p: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn report(what: &str, values: &[f64]) {
    println!(
        "{what:<34} p50 {:>9.1} µs   p99 {:>9.1} µs   ({} samples)",
        percentile(values, 0.5),
        percentile(values, 0.99),
        values.len()
    );
}

/// The vman side: a VM it runs, a subscriber of its console.
struct VmanSide {
    process: VmanProcess,
    http: reqwest::Client,
    vm: String,
    viewer: WsClient,
    log: mpsc::Receiver<Instant>,
}

impl VmanSide {
    async fn start(dir: &Path) -> VmanSide {
        let guest = common::guest_dir();
        let process = VmanProcess::start_with_env(
            &dir.join("vman"),
            common::free_port(),
            &[
                ("VMAN_QEMU_ACCEL", "tcg"),
                ("VMAN_IMPORT_DIR", guest.to_str().unwrap()),
            ],
        );
        let http = reqwest::Client::new();
        process.ready(&http).await;
        let gql = |query: &'static str, variables: serde_json::Value| {
            let (process, http) = (&process, &http);
            async move { process.gql(http, query, variables).await }
        };
        let import = "mutation($n: String!, $k: ImageKind!, $p: String!) { importImage(input: {name: $n, kind: $k, path: $p}) { image { id } } }";
        let kernel = gql(import, json!({"n": "k", "k": "KERNEL", "p": "vmlinuz"})).await;
        let initrd = gql(import, json!({"n": "i", "k": "INITRD", "p": "initrd.img"})).await;
        gql(
            "mutation($k: ID!, $i: ID!, $c: String!) { createTemplate(input: {name: \"tiny\", vcpus: 1, memoryMib: 256, kernelImageId: $k, initrdImageId: $i, cmdline: $c}) { template { id } } }",
            json!({"k": kernel["importImage"]["image"]["id"], "i": initrd["importImage"]["image"]["id"], "c": CMDLINE}),
        )
        .await;
        let created = gql(
            "mutation { createVm(input: {name: \"bench\", templateName: \"tiny\"}) { vm { id } } }",
            json!({}),
        )
        .await;
        let vm = created["createVm"]["vm"]["id"]
            .as_str()
            .unwrap()
            .to_string();
        gql(
            "mutation($id: ID!) { startVm(id: $id) { vm { state } } }",
            json!({"id": vm}),
        )
        .await;
        let log = watch_modifications(&dir.join("vman/run").join(&vm).join("serial.log"));
        let ws_url = format!("{}/ws", process.url.replacen("http", "ws", 1));
        let mut viewer = WsClient::connect(&ws_url).await;
        viewer
            .subscribe(
                "console",
                "subscription($vm: ID!) { vmConsole(vmId: $vm, replayBytes: 1048576) { data } }",
                json!({"vm": vm}),
            )
            .await;
        let mut side = VmanSide {
            process,
            http,
            vm,
            viewer,
            log,
        };
        side.read_until(b"/ # ").await;
        side
    }

    /// One chunk's bytes.
    async fn chunk(&mut self) -> Vec<u8> {
        let data = self.viewer.next_message_within(WAIT).await;
        assert_eq!(data["type"], "next", "{data}");
        let chunk = data["payload"]["data"]["vmConsole"]["data"]
            .as_str()
            .unwrap_or_else(|| panic!("{data}"));
        STANDARD.decode(chunk).unwrap()
    }

    async fn read_until(&mut self, end: &[u8]) {
        let mut seen = Vec::new();
        while !seen.windows(end.len()).any(|w| w == end) {
            seen.extend(self.chunk().await);
        }
    }

    /// One round: (QEMU → subscriber, Enter → answer), in µs.
    async fn round(&mut self) -> (f64, f64) {
        let sent = Instant::now();
        self.process
            .gql(
                &self.http,
                "mutation($vm: ID!) { sendConsoleInput(vmId: $vm, data: \"\\r\") { bytes } }",
                json!({"vm": self.vm}),
            )
            .await;
        let first = self.chunk().await;
        let arrived = Instant::now();
        let written = first_write_after(&self.log, sent);
        if !first.ends_with(b"[6n") {
            self.read_until(b"[6n").await;
        }
        (micros(written, arrived), micros(sent, arrived))
    }
}

/// The raw side: a QEMU started here with vman's command line, its console
/// socket read directly.
struct RawSide {
    process: process::QemuProcess,
    qmp: QmpClient,
    console: tokio::net::UnixStream,
    log: mpsc::Receiver<Instant>,
}

impl RawSide {
    async fn start(dir: &Path) -> RawSide {
        let guest = common::guest_dir();
        let mut config = Config {
            data_dir: dir.join("raw"),
            ..Config::default()
        };
        config.qemu.accel = Accel::Tcg;
        let spec = VmSpec {
            id: uuid::Uuid::now_v7().to_string(),
            name: "raw".into(),
            vcpus: 1,
            memory_mib: 256,
            disks: vec![],
            nics: vec![],
            boot: Some(DirectBoot {
                kernel: guest.join("vmlinuz"),
                initrd: Some(guest.join("initrd.img")),
                cmdline: Some(CMDLINE.into()),
            }),
            run_dir: config.run_dir().join("raw"),
            loadvm: None,
            seed: None,
            cdrom: None,
            boot_order: vec![],
        };
        let options = QemuOptions::from_config(&config);
        let steps = qemu::plan(&options, &VmAction::Start(spec.clone()));
        let HostStep::SpawnQemu { argv, .. } = &steps[1] else {
            unreachable!("plan(Start) spawns QEMU second")
        };
        std::fs::create_dir_all(&spec.run_dir).unwrap();
        let process = process::spawn(argv, &spec.run_dir.join("qemu.log")).unwrap();
        let socket = qemu::argv::qmp_socket(&spec.run_dir);
        let deadline = Instant::now() + WAIT;
        let qmp = loop {
            if socket.exists()
                && let Ok(qmp) = QmpClient::connect(&socket).await
            {
                break qmp;
            }
            assert!(Instant::now() < deadline, "QEMU opens its QMP socket");
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        let console = tokio::net::UnixStream::connect(qemu::argv::console_socket(&spec.run_dir))
            .await
            .unwrap();
        let log = watch_modifications(&qemu::argv::serial_log(&spec.run_dir));
        qmp.execute_json("cont", &serde_json::Value::Null)
            .await
            .unwrap();
        let mut side = RawSide {
            process,
            qmp,
            console,
            log,
        };
        side.read_until(b"/ # ").await;
        side
    }

    async fn chunk(&mut self) -> Vec<u8> {
        let mut buffer = vec![0; 64 * 1024];
        let n = tokio::time::timeout(WAIT, self.console.read(&mut buffer))
            .await
            .expect("console output within the wait")
            .unwrap();
        assert!(n > 0, "the console closed");
        buffer.truncate(n);
        buffer
    }

    async fn read_until(&mut self, end: &[u8]) {
        let mut seen = Vec::new();
        while !seen.windows(end.len()).any(|w| w == end) {
            seen.extend(self.chunk().await);
        }
    }

    async fn round(&mut self) -> (f64, f64) {
        let sent = Instant::now();
        self.console.write_all(b"\r").await.unwrap();
        let first = self.chunk().await;
        let arrived = Instant::now();
        let written = first_write_after(&self.log, sent);
        if !first.ends_with(b"[6n") {
            self.read_until(b"[6n").await;
        }
        (micros(written, arrived), micros(sent, arrived))
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let rounds: usize = std::env::args()
        .skip_while(|a| a != "--rounds")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(200);
    let dir = tempfile::tempdir().unwrap();
    let mut raw = RawSide::start(dir.path()).await;
    let mut vman = VmanSide::start(dir.path()).await;
    let (mut raw_one_way, mut raw_round_trip) = (vec![], vec![]);
    let (mut vman_one_way, mut vman_round_trip) = (vec![], vec![]);
    for round in 0..rounds {
        // Alternate which side goes first.
        if round % 2 == 0 {
            let (a, b) = raw.round().await;
            raw_one_way.push(a);
            raw_round_trip.push(b);
        }
        let (a, b) = vman.round().await;
        vman_one_way.push(a);
        vman_round_trip.push(b);
        if round % 2 == 1 {
            let (a, b) = raw.round().await;
            raw_one_way.push(a);
            raw_round_trip.push(b);
        }
    }
    println!("TCG, {rounds} rounds, the test guest's shell answering an Enter:");
    report("raw: QEMU → socket reader", &raw_one_way);
    report("vman: QEMU → vmConsole subscriber", &vman_one_way);
    report("raw: Enter → answer", &raw_round_trip);
    report("vman: sendConsoleInput → answer", &vman_round_trip);
    let _ = raw.qmp.execute_json("quit", &serde_json::Value::Null).await;
    let _ = tokio::time::timeout(Duration::from_secs(5), raw.process.exited()).await;
    // Dropping the vman side kills its process and its VM's QEMU.
}
