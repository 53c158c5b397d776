//! A QMP connection lost while QEMU lives (issue 24): vman connects again
//! without a restart, asks QEMU its run state, and the VM leaves UNKNOWN.
//!
//! The test closes the connection from QEMU's side: it takes a duplicate of
//! QEMU's own end of the socket (`pidfd_getfd`) and shuts it down, so QEMU
//! sees its client gone and listens again, as it would after a reset.
//! Real QEMU, no guest OS.

mod common;

use std::{
    os::{fd::AsFd, unix::net::UnixStream},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use common::{TestServer, WAIT, WsClient, accel};
use serde_json::json;

/// QEMU's end of the QMP connection vman holds: the inode of the
/// connected socket bound to `socket`, as `/proc/net/unix` lists it.
fn qemu_side_inode(socket: &Path) -> u64 {
    let table = std::fs::read_to_string("/proc/net/unix").unwrap();
    let path = socket.to_str().unwrap();
    let connected: Vec<u64> = table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // Num RefCount Protocol Flags Type St Inode Path; St 03 = connected.
            (fields.len() == 8 && fields[7] == path && fields[5] == "03")
                .then(|| fields[6].parse().unwrap())
        })
        .collect();
    assert_eq!(connected.len(), 1, "one QMP client of {path}: {table}");
    connected[0]
}

/// Shuts down QEMU's end of its QMP connection (pid `pid`, socket inode `inode`).
fn close_from_qemu_side(pid: i32, inode: u64) {
    let wanted = format!("socket:[{inode}]");
    let fd = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(Result::ok)
        .find(|entry| {
            std::fs::read_link(entry.path())
                .is_ok_and(|target| target.to_str() == Some(wanted.as_str()))
        })
        .and_then(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .unwrap_or_else(|| panic!("QEMU pid {pid} holds no {wanted}"));
    let pidfd = rustix::process::pidfd_open(
        rustix::process::Pid::from_raw(pid).unwrap(),
        rustix::process::PidfdFlags::empty(),
    )
    .unwrap();
    let dup =
        rustix::process::pidfd_getfd(pidfd.as_fd(), fd, rustix::process::PidfdGetfdFlags::empty())
            .unwrap();
    // A shutdown acts on the socket, not on one descriptor: QEMU's end closes.
    UnixStream::from(dup)
        .shutdown(std::net::Shutdown::Both)
        .unwrap();
}

/// A QMP session of the test's own on `socket`: `command`, then gone.
fn qmp_session(socket: &Path, command: &str) {
    use std::io::{BufRead, BufReader, Write};
    let stream = UnixStream::connect(socket).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert!(line.contains("QMP"), "greeting: {line}");
    for execute in ["qmp_capabilities", command] {
        writeln!(writer, "{}", json!({"execute": execute})).unwrap();
        loop {
            line.clear();
            reader.read_line(&mut line).unwrap();
            if line.contains("\"return\"") {
                break;
            }
            assert!(!line.contains("\"error\""), "{execute}: {line}");
        }
    }
}

async fn next_change(ws: &mut WsClient) -> serde_json::Value {
    ws.next_data("s").await["vmStateChanged"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_qmp_connection_is_made_again_and_the_vm_leaves_unknown() {
    let server = TestServer::start_with(|c| {
        c.dry_run = false;
        c.qemu.accel = accel();
        // The sweep is what finds a silent QMP and says UNKNOWN; a quick one
        // keeps the test short.
        c.observer.interval = Duration::from_millis(200);
    })
    .await;
    server.create_template("t").await;
    let vm = server.create_vm("qmp-lost", "t").await;
    server.start_vm(&vm).await;
    let mut ws = WsClient::connect(&server.ws_url).await;
    ws.subscribe(
        "s",
        "subscription($vm: ID) { vmStateChanged(vmId: $vm) { from to reason } }",
        json!({"vm": vm}),
    )
    .await;

    let run_dir = server.run_dir(&vm);
    let socket = run_dir.join("qmp.sock");
    let pid: i32 = std::fs::read_to_string(run_dir.join("qemu.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let inode = qemu_side_inode(&socket);

    // 1. The socket is out of vman's reach, so it cannot connect again yet,
    //    and the connection closes from QEMU's side.
    let hidden: PathBuf = run_dir.join("qmp.hidden");
    std::fs::rename(&socket, &hidden).unwrap();
    close_from_qemu_side(pid, inode);
    let change = tokio::time::timeout(WAIT, next_change(&mut ws))
        .await
        .expect("UNKNOWN within the wait");
    assert_eq!(change["to"], "UNKNOWN", "{change}");

    // 2. Meanwhile QEMU is paused by someone else: vman misses the STOP event.
    qmp_session(&hidden, "stop");

    // 3. The socket is back: vman connects again, asks QEMU its run state
    //    and the VM is PAUSED, within a second, with no restart of vman.
    std::fs::rename(&hidden, &socket).unwrap();
    let back = Instant::now();
    let change = tokio::time::timeout(Duration::from_secs(1), next_change(&mut ws))
        .await
        .expect("the VM leaves UNKNOWN within a second of its socket's return");
    assert_eq!(change["from"], "UNKNOWN", "{change}");
    assert_eq!(change["to"], "PAUSED", "{change}");
    // Either the reconnect's own query-status or the next sweep, which asks
    // through the new connection, may be first to say so; both are QEMU's word.
    let reason = change["reason"].as_str().unwrap();
    assert!(
        reason.contains("QMP connected again (status paused)")
            || reason.contains("QMP answers again (status paused)"),
        "{change}"
    );
    eprintln!(
        "left UNKNOWN {:?} after the socket returned",
        back.elapsed()
    );

    // 4. The new connection carries commands: resume and stop through the API.
    let data = server
        .ok(
            "mutation($id: ID!) { resumeVm(id: $id) { vm { state } } }",
            json!({"id": vm}),
        )
        .await;
    assert_eq!(data["resumeVm"]["vm"]["state"], "RUNNING");

    // 5. Closed again with the socket in place: connected again at once, the
    //    same QEMU, and the VM stays RUNNING (no UNKNOWN in between: the
    //    sweep sees a QMP that answers).
    let inode = qemu_side_inode(&socket);
    close_from_qemu_side(pid, inode);
    let deadline = Instant::now() + Duration::from_secs(1);
    let reconnected = loop {
        let table = std::fs::read_to_string("/proc/net/unix").unwrap();
        let now_connected = table.lines().any(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            f.len() == 8
                && f[7] == socket.to_str().unwrap()
                && f[5] == "03"
                && f[6] != inode.to_string()
        });
        if now_connected || Instant::now() > deadline {
            break now_connected;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(reconnected, "vman connected again within a second");
    let data = server
        .ok(
            "mutation($id: ID!) { pauseVm(id: $id) { vm { state } } }",
            json!({"id": vm}),
        )
        .await;
    assert_eq!(data["pauseVm"]["vm"]["state"], "PAUSED");
    let pid_now: i32 = std::fs::read_to_string(run_dir.join("qemu.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(pid_now, pid, "the same QEMU");

    let changes: Vec<String> = {
        let mut seen = Vec::new();
        for _ in 0..2 {
            let change = tokio::time::timeout(WAIT, next_change(&mut ws))
                .await
                .unwrap();
            seen.push(format!("{}->{}", change["from"], change["to"]));
        }
        seen
    };
    assert_eq!(
        changes,
        ["\"PAUSED\"->\"RUNNING\"", "\"RUNNING\"->\"PAUSED\""],
        "resume and pause, nothing in between"
    );
    server.stop_vm(&vm).await;
}
