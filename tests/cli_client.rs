//! The client commands (`vman vm|disk|net|events|ops|console`) as a script
//! or a person runs them: the real binary against a real server over
//! loopback, its tables, its JSON and its exit codes.

mod common;

use std::{
    io::{BufRead, BufReader, Read, Write},
    process::{Child, Stdio},
    sync::mpsc,
    time::Duration,
};

use common::{TestServer, VmanProcess, WAIT, free_port, read_journal};
use serde_json::{Value, json};

/// What one `vman …` run printed and how it ended.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}\nstderr: {}", self.stdout, self.stderr))
    }

    /// Succeeded; its stdout.
    fn ok(&self) -> &str {
        assert_eq!(
            self.code, 0,
            "stdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        &self.stdout
    }

    /// Failed with `code`, the server's `extensions.code` on stderr.
    fn failed(&self, code: i32, server_code: &str) {
        assert_eq!(
            self.code, code,
            "stdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        assert!(self.stderr.contains(server_code), "{}", self.stderr);
        assert!(self.stdout.is_empty(), "{}", self.stdout);
    }
}

/// A `vman` command talking to `url` with `token`, and no client config file.
fn std_command(url: &str, token: Option<&str>) -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_vman"));
    command
        .env("VMAN_SERVER", url)
        .env("VMAN_CLIENT_CONFIG", "/nonexistent/client.toml")
        .env_remove("VMAN_TOKEN");
    if let Some(token) = token {
        command.env("VMAN_TOKEN", token);
    }
    command
}

fn command(url: &str, token: Option<&str>) -> tokio::process::Command {
    let mut command = tokio::process::Command::from(std_command(url, token));
    command.kill_on_drop(true);
    command
}

/// Runs `vman <args>` against `url`; fails the test after [`WAIT`].
async fn vman_at(url: &str, token: Option<&str>, args: &[&str]) -> Run {
    let out = tokio::time::timeout(WAIT, command(url, token).args(args).output())
        .await
        .unwrap_or_else(|_| panic!("vman {args:?} did not end within {WAIT:?}"))
        .expect("vman runs");
    Run {
        code: out.status.code().expect("an exit code"),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

async fn vman(server: &TestServer, args: &[&str]) -> Run {
    vman_at(&server.url, server.token.as_deref(), args).await
}

/// The table's rows (after the header) whose first column is `name`.
fn row<'a>(table: &'a str, name: &str) -> Vec<&'a str> {
    table
        .lines()
        .skip(1)
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        .find(|cells| cells.first() == Some(&name))
        .unwrap_or_else(|| panic!("no row {name:?} in\n{table}"))
}

fn header(table: &str) -> Vec<&str> {
    table.lines().next().unwrap().split_whitespace().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_commands_print_tables_and_json_and_exit_with_codes_scripts_rely_on() {
    let (server, tokens) = TestServer::with_tokens(|_| {}).await;
    server.create_template("small").await;

    let created = vman(&server, &["vm", "create", "web", "--template", "small"]).await;
    let table = created.ok();
    assert_eq!(header(table), ["NAME", "STATE", "OPERATION", "ID"]);
    assert_eq!(row(table, "web")[1], "STOPPED");
    let created = vman(
        &server,
        &["vm", "create", "db", "--template", "small", "-o", "json"],
    )
    .await;
    let data = created.json();
    assert_eq!(data["createVm"]["vm"]["name"], "db");
    assert_eq!(data["createVm"]["vm"]["state"], "STOPPED");
    assert_eq!(data["createVm"]["operation"]["status"], "SUCCEEDED");
    let db_id = data["createVm"]["vm"]["id"].as_str().unwrap().to_string();

    let list = vman(&server, &["vm", "list"]).await;
    let table = list.ok();
    assert_eq!(
        header(table),
        ["NAME", "STATE", "VCPUS", "MEMORY_MIB", "TEMPLATE", "ID"]
    );
    assert_eq!(row(table, "web")[1..5], ["STOPPED", "1", "128", "small"]);
    assert_eq!(row(table, "db")[5], db_id);
    let data = vman(&server, &["vm", "list", "-o", "json"]).await.json();
    assert_eq!(data["vms"]["totalCount"], 2);
    let names: Vec<&str> = data["vms"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|vm| vm["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["web", "db"]);

    // By name or by ID.
    let shown = vman(&server, &["vm", "show", "web"]).await;
    let table = shown.ok();
    assert!(
        table
            .lines()
            .any(|l| l.split_whitespace().eq(["NAME", "web"])),
        "{table}"
    );
    assert!(
        table
            .lines()
            .any(|l| l.split_whitespace().eq(["STATE", "STOPPED"])),
        "{table}"
    );
    let data = vman(&server, &["vm", "show", &db_id, "-o", "json"])
        .await
        .json();
    assert_eq!(data["vm"]["name"], "db");
    assert_eq!(data["vm"]["template"]["name"], "small");

    // The life of a VM (dry run: the state changes at once).
    let started = vman(&server, &["vm", "start", "web"]).await;
    assert_eq!(row(started.ok(), "web")[1..3], ["RUNNING", "SUCCEEDED"]);
    let paused = vman(&server, &["vm", "pause", "web", "-o", "json"])
        .await
        .json();
    assert_eq!(paused["pauseVm"]["vm"]["state"], "PAUSED");
    let resumed = vman(&server, &["vm", "resume", "web", "-o", "json"])
        .await
        .json();
    assert_eq!(resumed["resumeVm"]["vm"]["state"], "RUNNING");
    let data = vman(&server, &["vm", "list", "--state", "running", "-o", "json"])
        .await
        .json();
    assert_eq!(data["vms"]["nodes"][0]["name"], "web");
    assert_eq!(data["vms"]["totalCount"], 1);

    // Exit codes: NOT_FOUND 3, FORBIDDEN/UNAUTHENTICATED 4, INVALID_STATE 5,
    // CONFLICT 6, BAD_USER_INPUT 7, unreachable 8, usage 2.
    vman(&server, &["vm", "show", "nope"])
        .await
        .failed(3, "NOT_FOUND");
    vman(&server, &["vm", "start", "nope"])
        .await
        .failed(3, "NOT_FOUND");
    vman_at(&server.url, Some(&tokens.viewer), &["vm", "stop", "web"])
        .await
        .failed(4, "FORBIDDEN");
    vman_at(&server.url, None, &["vm", "list"])
        .await
        .failed(4, "UNAUTHENTICATED");
    vman(&server, &["vm", "resume", "web"])
        .await
        .failed(5, "INVALID_STATE");
    vman(&server, &["vm", "pause", "db"])
        .await
        .failed(5, "INVALID_STATE");
    vman(&server, &["vm", "create", "db", "--template", "small"])
        .await
        .failed(6, "CONFLICT");
    vman(
        &server,
        &["vm", "create", "Bad Name", "--template", "small"],
    )
    .await
    .failed(7, "BAD_USER_INPUT");
    let nowhere = format!("http://127.0.0.1:{}", free_port());
    let unreachable = vman_at(&nowhere, None, &["vm", "list"]).await;
    assert_eq!(unreachable.code, 8, "{}", unreachable.stderr);
    assert_eq!(vman(&server, &["vm", "frobnicate"]).await.code, 2);
    // A viewer may look.
    let viewed = vman_at(&server.url, Some(&tokens.viewer), &["vm", "list"]).await;
    row(viewed.ok(), "web");

    // A full clone answers RUNNING: the client follows it to its end (a
    // progress bar on stderr when that is a terminal) and shows the clone.
    let cloned = vman(&server, &["vm", "clone", "db", "db-copy", "-o", "json"])
        .await
        .json();
    assert_eq!(
        cloned["cloneVm"]["operation"]["status"], "SUCCEEDED",
        "{cloned}"
    );
    assert_eq!(cloned["cloneVm"]["vm"]["name"], "db-copy", "{cloned}");
    let data = vman(&server, &["vm", "show", "db-copy", "-o", "json"])
        .await
        .json();
    assert_eq!(data["vm"]["state"], "STOPPED");
    vman(&server, &["vm", "delete", "db-copy"]).await.ok();

    let stopped = vman(&server, &["vm", "stop", "web", "--force", "-o", "json"])
        .await
        .json();
    assert_eq!(stopped["stopVm"]["vm"]["state"], "STOPPED");
    let deleted = vman(&server, &["vm", "delete", "web"]).await;
    row(deleted.ok(), "web");
    let data = vman(&server, &["vm", "list", "-o", "json"]).await.json();
    assert_eq!(data["vms"]["totalCount"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_net_ops_and_events_print_tables_and_json() {
    let server = TestServer::start().await;

    let made = vman(&server, &["disk", "create", "scratch", "--size", "2M"]).await;
    let table = made.ok();
    assert_eq!(
        header(table),
        ["NAME", "FORMAT", "SIZE_BYTES", "ATTACHMENT", "VM", "ID"]
    );
    assert_eq!(
        row(table, "scratch")[1..5],
        ["QCOW2", "2097152", "DETACHED", "-"]
    );
    let made = vman(
        &server,
        &[
            "disk", "create", "raw1", "--size", "1048576", "--format", "raw", "-o", "json",
        ],
    )
    .await;
    assert_eq!(made.json()["createDisk"]["disk"]["format"], "RAW");
    let listed = vman(&server, &["disk", "list"]).await;
    row(listed.ok(), "raw1");
    let data = vman(&server, &["disk", "list", "-o", "json"]).await.json();
    assert_eq!(data["disks"]["totalCount"], 2);
    assert_eq!(data["disks"]["nodes"][0]["sizeBytes"], 2097152);
    vman(&server, &["disk", "delete", "raw1"]).await.ok();
    vman(&server, &["disk", "delete", "raw1"])
        .await
        .failed(3, "NOT_FOUND");

    let made = vman(&server, &["net", "create", "lab", "--vlan", "42"]).await;
    assert_eq!(row(made.ok(), "lab")[1..3], ["42", "vmbr42"]);
    let data = vman(&server, &["net", "list", "-o", "json"]).await.json();
    assert_eq!(data["networks"]["nodes"][0]["vlanId"], 42);
    let listed = vman(&server, &["net", "list"]).await;
    assert_eq!(
        header(listed.ok()),
        ["NAME", "VLAN", "BRIDGE", "BRIDGE_UP", "ID"]
    );
    vman(&server, &["net", "create", "lab2", "--vlan", "5000"])
        .await
        .failed(7, "BAD_USER_INPUT");
    vman(&server, &["net", "delete", "lab", "-o", "json"])
        .await
        .ok();

    let ops = vman(&server, &["ops"]).await;
    let table = ops.ok();
    assert_eq!(header(table)[..3], ["ID", "KIND", "STATUS"]);
    assert!(table.contains("SUCCEEDED"), "{table}");
    let data = vman(&server, &["ops", "-o", "json"]).await.json();
    assert!(
        data["operations"]["nodes"].as_array().unwrap().len() >= 4,
        "{data}"
    );

    // The journal: one JSON object a line; a table with a header.
    let journal = server.journal().await;
    let events = vman(&server, &["events", "-o", "json"]).await;
    let lines: Vec<Value> = events
        .ok()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), journal.len());
    assert_eq!(lines[0]["kind"], "DISK_CREATED");
    assert_eq!(lines[0]["sequence"], journal[0]["sequence"]);
    let after = vman(&server, &["events", "--after", "2"]).await;
    let table = after.ok();
    assert_eq!(header(table)[..3], ["SEQ", "AT", "KIND"]);
    assert_eq!(table.lines().count(), journal.len() - 2 + 1, "{table}");
    assert!(table.lines().nth(1).unwrap().starts_with("3 "), "{table}");
}

/// Lines a child prints, as they come, on a thread of their own.
fn lines_of(child: &mut Child) -> mpsc::Receiver<String> {
    let stdout = child.stdout.take().unwrap();
    let (lines, received) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    received
}

/// Reads events (JSON lines) until one has `sequence`; the sequences read.
fn sequences_until(lines: &mpsc::Receiver<String>, sequence: u64, seen: &mut Vec<u64>) {
    while seen.last() != Some(&sequence) {
        let line = lines.recv_timeout(WAIT).unwrap_or_else(|_| {
            panic!("event {sequence} did not come within {WAIT:?}; saw {seen:?}")
        });
        let event: Value = serde_json::from_str(&line).unwrap();
        seen.push(event["sequence"].as_str().unwrap().parse().unwrap());
    }
}

const TEMPLATE: &str = "mutation($n: String!) { createTemplate(input: {name: $n, vcpus: 1, memoryMib: 64}) { template { id } } }";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_follow_resumes_after_the_server_restarts_missing_nothing_and_printing_nothing_twice()
 {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let port = free_port();
    let http = reqwest::Client::new();
    // A shell set up for the client (VMAN_SERVER, VMAN_TOKEN) can still serve.
    let env = [
        ("VMAN_DRY_RUN", "true"),
        ("VMAN_SERVER", "http://127.0.0.1:1"),
        ("VMAN_TOKEN", "not-a-server-setting"),
    ];
    let server = VmanProcess::start_with_env(&data, port, &env);
    server.ready(&http).await;
    let url = format!("http://127.0.0.1:{port}");
    for name in ["t1", "t2"] {
        server.gql(&http, TEMPLATE, json!({"n": name})).await;
    }

    let mut follower = std_command(&url, None)
        .args(["events", "--follow", "--after", "0", "-o", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lines = lines_of(&mut follower);
    let head = |journal: &[Value]| {
        journal.last().unwrap()["sequence"]
            .as_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
    };
    let journal = read_journal(|v| server.gql(&http, common::JOURNAL_PAGE, v)).await;
    let mut seen = Vec::new();
    sequences_until(&lines, head(&journal), &mut seen);

    // The server goes away (SIGKILL) and comes back on the same data.
    drop(server);
    let server = VmanProcess::start_with_env(&data, port, &env);
    server.ready(&http).await;
    for name in ["t3", "t4"] {
        server.gql(&http, TEMPLATE, json!({"n": name})).await;
    }
    let journal = read_journal(|v| server.gql(&http, common::JOURNAL_PAGE, v)).await;
    sequences_until(&lines, head(&journal), &mut seen);
    let expected: Vec<u64> = journal
        .iter()
        .map(|e| e["sequence"].as_str().unwrap().parse().unwrap())
        .collect();
    assert_eq!(seen, expected, "every event once, in order");
    assert!(expected.len() >= 4);
    follower.kill().unwrap();
    follower.wait().unwrap();
}

/// Console under a pseudo-terminal, with the real test guest (TCG): slow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_round_trips_a_command_through_the_guest_under_a_pseudo_terminal() {
    use nix::sys::termios::{LocalFlags, tcgetattr};
    let server = TestServer::real(vman::config::Accel::Tcg).await;
    server
        .guest_template("tiny", "console=ttyS0 panic=-1")
        .await;
    let vm = server.create_vm("console-cli", "tiny").await;
    server.start_vm(&vm).await;

    let pty = nix::pty::openpty(None, None).unwrap();
    let terminal = std::fs::File::from(pty.slave);
    let mut console = command(&server.url, None)
        .args(["console", "console-cli", "--replay", "1048576"])
        .stdin(Stdio::from(terminal.try_clone().unwrap()))
        .stdout(Stdio::from(terminal.try_clone().unwrap()))
        .stderr(Stdio::from(terminal.try_clone().unwrap()))
        .spawn()
        .unwrap();
    let mut keyboard = std::fs::File::from(pty.master);
    let (screen_tx, screen) = mpsc::channel::<Vec<u8>>();
    let mut reader = keyboard.try_clone().unwrap();
    std::thread::spawn(move || {
        let mut buffer = [0u8; 4096];
        while let Ok(n @ 1..) = reader.read(&mut buffer) {
            if screen_tx.send(buffer[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut shown = Vec::new();
    let mut until = |needle: &str, within: Duration| {
        let deadline = std::time::Instant::now() + within;
        while !String::from_utf8_lossy(&shown).contains(needle) {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match screen.recv_timeout(left) {
                Ok(bytes) => shown.extend(bytes),
                Err(_) => panic!(
                    "{needle:?} did not show within {within:?}; the terminal shows:\n{}",
                    String::from_utf8_lossy(&shown)
                ),
            }
        }
    };
    until("Ctrl-] leaves", WAIT);
    // Raw while attached: no line discipline between the keys and the guest.
    assert!(
        !tcgetattr(&terminal)
            .unwrap()
            .local_flags
            .contains(LocalFlags::ICANON)
    );
    until("/ # ", Duration::from_secs(120));
    keyboard.write_all(b"echo hello-$((6*7))-cli\r").unwrap();
    until("hello-42-cli", Duration::from_secs(30));
    keyboard.write_all(&[0x1d]).unwrap();
    until("left console-cli's console", WAIT);
    let status = tokio::time::timeout(WAIT, console.wait())
        .await
        .expect("vman console ends after Ctrl-]")
        .unwrap();
    assert!(status.success(), "{status}");
    // The terminal is as it was.
    assert!(
        tcgetattr(&terminal)
            .unwrap()
            .local_flags
            .contains(LocalFlags::ICANON)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_and_token_come_from_the_flag_then_the_environment_then_the_client_config_file()
{
    let (server, tokens) = TestServer::with_tokens(|_| {}).await;
    server.create_template("small").await;
    server.create_vm("web", "small").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("client.toml");
    std::fs::write(
        &file,
        format!("server = {:?}\ntoken = {:?}\n", server.url, tokens.viewer),
    )
    .unwrap();
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_vman"));
        command
            .args(args)
            .env_remove("VMAN_SERVER")
            .env_remove("VMAN_TOKEN")
            .env("VMAN_CLIENT_CONFIG", &file)
            .envs(env.iter().copied())
            .kill_on_drop(true);
        async move {
            let out = tokio::time::timeout(WAIT, command.output())
                .await
                .expect("vman ends within the wait")
                .unwrap();
            (
                out.status.code().unwrap(),
                String::from_utf8(out.stderr).unwrap(),
            )
        }
    };
    // The file alone: its server, its (viewer) token.
    assert_eq!(run(&["vm", "list"], &[]).await.0, 0);
    assert_eq!(run(&["vm", "start", "web"], &[]).await.0, 4);
    // The environment beats the file; the flag beats the environment.
    assert_eq!(
        run(&["vm", "start", "web"], &[("VMAN_TOKEN", &tokens.operator)])
            .await
            .0,
        0
    );
    let (code, stderr) = run(
        &["vm", "stop", "web", "--token", "wrong"],
        &[("VMAN_TOKEN", &tokens.operator)],
    )
    .await;
    assert_eq!(code, 4, "{stderr}");
    let nowhere = format!("http://127.0.0.1:{}", free_port());
    assert_eq!(
        run(&["vm", "list"], &[("VMAN_SERVER", &nowhere)]).await.0,
        8
    );
    assert_eq!(
        run(
            &["vm", "list", "--server", &server.url],
            &[("VMAN_SERVER", &nowhere)]
        )
        .await
        .0,
        0
    );
}

/// `--server`, `--token`, `-o` and `--timeout` are options of `vman`
/// itself (clap `global`): before the command group, between it and the
/// command, or after the command, with the same effect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_options_go_before_or_after_the_command_group_and_the_command() {
    let (server, tokens) = TestServer::with_tokens(|_| {}).await;
    server.create_template("small").await;
    server.create_vm("web", "small").await;
    let nowhere = format!("http://127.0.0.1:{}", free_port());
    let url = server.url.as_str();
    let token = tokens.viewer.as_str();
    for args in [
        vec![
            "--server", url, "--token", token, "-o", "json", "vm", "list",
        ],
        vec![
            "vm", "--server", url, "--token", token, "-o", "json", "list",
        ],
        vec![
            "vm", "list", "--server", url, "--token", token, "-o", "json",
        ],
        vec![
            "--server", url, "vm", "--token", token, "list", "-o", "json",
        ],
        vec![
            "-o",
            "json",
            "--timeout",
            "5",
            "ops",
            "--server",
            url,
            "--token",
            token,
        ],
    ] {
        // VMAN_SERVER points nowhere and there is no VMAN_TOKEN: the flags
        // alone reach the server.
        let run = vman_at(&nowhere, None, &args).await;
        assert_eq!(run.code, 0, "vman {args:?}: {}", run.stderr);
        let data = run.json();
        assert!(data.is_object(), "vman {args:?} printed JSON: {data}");
    }
    let listed = vman_at(
        &nowhere,
        None,
        &[
            "--server", url, "--token", token, "vm", "list", "-o", "json",
        ],
    )
    .await
    .json();
    assert_eq!(listed["vms"]["nodes"][0]["name"], "web", "{listed:#}");
    // The last one given wins, as for any clap option.
    let run = vman_at(
        &nowhere,
        None,
        &["--server", url, "vm", "list", "--server", &nowhere],
    )
    .await;
    assert_eq!(run.code, 8, "{}", run.stderr);
    // `vman --help` lists them under their own heading.
    let help = vman_at(&nowhere, None, &["--help"]).await;
    assert!(help.stdout.contains("Client options"), "{}", help.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ops_follow_prints_the_events_of_operations_as_they_come() {
    let server = TestServer::start().await;
    server.create_template("small").await;
    server.create_disk("d1", 1 << 20, "QCOW2").await;
    let mut follower = std_command(&server.url, None)
        .args(["ops", "--follow", "--after", "0", "-o", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lines = lines_of(&mut follower);
    let next = || -> Value {
        let line = lines
            .recv_timeout(WAIT)
            .expect("an operation's event within the wait");
        serde_json::from_str(&line).unwrap()
    };
    assert_eq!(next()["kind"], "TEMPLATE_CREATED");
    let event = next();
    assert_eq!(event["kind"], "DISK_CREATED");
    assert!(event["operationId"].is_string(), "{event}");
    // Then live ones.
    server.create_disk("d2", 1 << 20, "QCOW2").await;
    assert_eq!(next()["payload"]["name"], "d2");
    follower.kill().unwrap();
    follower.wait().unwrap();
}
