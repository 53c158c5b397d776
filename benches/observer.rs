//! Issue 4's figures, in one run:
//! - the push path: SIGKILL of a VM's QEMU → `CRASHED` at a websocket
//!   subscriber, p50 and p99 over N kills (default 30), beside the floor:
//!   the process flagged as exiting in /proc (QEMU's QMP socket closes
//!   then), and the exit seen on a pidfd. Baselines: the seed's
//!   5 s polling (≈2.5 s on average), libvirt ≈216 ms.
//! - the coherence sweep: wall and CPU time of one sweep for 10 real QEMU
//!   VMs (each with a qcow2 disk), then 100 and 1,000 VMs on the dry-run host
//!   (synthetic processes; the database, the diff and the recording are
//!   real). Baseline: the seed polled every VM every 5 s.
//!
//! `cargo bench --bench observer` (add `-- --kills N`). VMs have no guest OS.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::{TestServer, WsClient};
use serde_json::json;
use vman::config::Accel;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::main]
async fn main() {
    let kills: usize = std::env::args()
        .skip_while(|a| a != "--kills")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(30);
    let accel = if common::kvm_usable() {
        Accel::Kvm
    } else {
        Accel::Tcg
    };
    let server = TestServer::start_with(|c| {
        c.dry_run = false;
        c.qemu.accel = accel;
    })
    .await;
    server
        .ok("mutation { createTemplate(input: {name: \"bench\", vcpus: 1, memoryMib: 64}) { template { id } } }", json!({}))
        .await;
    let vm = server.create_vm("victim", "bench").await;
    let mut ws = WsClient::connect(&server.ws_url).await;
    ws.subscribe(
        "s",
        "subscription($vm: ID) { vmStateChanged(vmId: $vm) { to } }",
        json!({"vm": vm}),
    )
    .await;
    let (mut latencies, mut floors, mut after_floor) = (Vec::new(), Vec::new(), Vec::new());
    let mut exits_begun = Vec::new();
    for _ in 0..kills {
        server
            .ok(
                "mutation($id: ID!) { startVm(id: $id) { vm { state } } }",
                json!({"id": vm}),
            )
            .await;
        while ws.next_data("s").await["vmStateChanged"]["to"] != "RUNNING" {}
        let pid: i32 = std::fs::read_to_string(server.run_dir(&vm).join("qemu.pid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // The floors: when the process has begun to exit (flagged in
        // /proc, read every 100 µs by a thread of the bench's own), which
        // vman learns from QMP's connection closing; and when the exit is
        // visible on a pidfd, which vman waited for until issue 22.
        let pidfd = rustix::process::pidfd_open(
            rustix::process::Pid::from_raw(pid).unwrap(),
            rustix::process::PidfdFlags::NONBLOCK,
        )
        .unwrap();
        // SAFETY: the AsyncFd owns the pidfd, so it stays open while registered.
        let pidfd = unsafe { tokio::io::unix::AsyncFd::register(pidfd) }.unwrap();
        let killed = Instant::now();
        let begun = std::thread::spawn(move || {
            while !exiting(pid) && killed.elapsed() < Duration::from_secs(10) {
                std::thread::sleep(Duration::from_micros(100));
            }
            killed.elapsed()
        });
        unsafe { libc::kill(pid, libc::SIGKILL) };
        let (exited, crashed) = tokio::join!(
            async {
                drop(pidfd.readable().await.unwrap());
                killed.elapsed()
            },
            async {
                while ws.next_data("s").await["vmStateChanged"]["to"] != "CRASHED" {}
                killed.elapsed()
            }
        );
        let begun = begun.join().unwrap();
        exits_begun.push(begun);
        floors.push(exited);
        latencies.push(crashed);
        after_floor.push(crashed.saturating_sub(begun));
    }
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    for (what, times) in [
        ("SIGKILL -> CRASHED at a websocket client", &mut latencies),
        ("SIGKILL -> the exit begun (the floor)", &mut exits_begun),
        ("the exit begun -> CRASHED (vman's part)", &mut after_floor),
        ("SIGKILL -> the exit on a pidfd", &mut floors),
    ] {
        times.sort();
        println!(
            "{what} ({kills} kills, accel {accel:?}): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            ms(percentile(times, 0.5)),
            ms(percentile(times, 0.99)),
            ms(*times.last().unwrap())
        );
    }
    println!(
        "baseline: the seed polled every 5 s (mean detection 2500 ms); libvirt ~216 ms (measured by the issue's author)"
    );
    drop(ws);

    // The sweep on real QEMU: 10 running VMs with a qcow2 disk each.
    let real = TestServer::start_with(|c| {
        c.dry_run = false;
        c.qemu.accel = accel;
        c.observer.interval = Duration::from_secs(3600);
    })
    .await;
    populate(&real, 10).await;
    measure_sweeps(&real, "real QEMU", 10).await;
    drop(real);
    for count in [100, 1000] {
        let dry = TestServer::start_with(|c| {
            c.observer.interval = Duration::from_secs(3600);
        })
        .await;
        populate(&dry, count).await;
        measure_sweeps(&dry, "dry-run host", count).await;
    }
    println!(
        "baseline: the seed polled every VM every 5 s; the sweep's target is < 20 ms CPU for 1,000 VMs, linear"
    );
}

/// Whether `pid` has begun to exit: flagged `PF_EXITING`, or a zombie.
fn exiting(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return true;
    };
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let flags: u64 = fields.get(6).and_then(|f| f.parse().ok()).unwrap_or(0);
    matches!(fields.first(), Some(&"Z") | Some(&"X")) || flags & 0x4 != 0
}

/// `count` running VMs, each with a 1 MiB disk.
async fn populate(server: &TestServer, count: usize) {
    server.create_template("swept").await;
    for i in 0..count {
        let vm = server.create_vm(&format!("swept-{i}"), "swept").await;
        server
            .ok(
                "mutation($id: ID!) { startVm(id: $id) { vm { state } } }",
                json!({"id": vm}),
            )
            .await;
    }
}

/// The CPU time this process has used (all threads), user + system, plus
/// its finished children's (the `qemu-img info` runs of a sweep).
fn cpu_time() -> Duration {
    let used = |who| {
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        unsafe { libc::getrusage(who, &mut usage) };
        let micros = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
        Duration::from_micros(micros(usage.ru_utime) + micros(usage.ru_stime))
    };
    used(libc::RUSAGE_SELF) + used(libc::RUSAGE_CHILDREN)
}

async fn measure_sweeps(server: &TestServer, host: &str, vms: usize) {
    const ROUNDS: usize = 20;
    // The first sweep reads every qcow2 with qemu-img (then only changed files).
    let first = server.app.observer.sweep().await.expect("sweep");
    assert!(
        first.findings.is_empty(),
        "a coherent host has no findings: {:?}",
        first.findings
    );
    assert_eq!(first.vms_checked, vms);
    let (mut walls, mut cpus) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let (started, cpu) = (Instant::now(), cpu_time());
        let report = server.app.observer.sweep().await.expect("sweep");
        cpus.push(cpu_time() - cpu);
        walls.push(started.elapsed());
        assert_eq!(report.vms_checked, vms);
    }
    walls.sort();
    cpus.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "coherence sweep, {vms} VMs ({host}, {ROUNDS} sweeps): wall p50 {:.2} ms, CPU p50 {:.2} ms (max {:.2} ms), CPU per VM {:.1} µs; first sweep {:.2} ms wall",
        ms(percentile(&walls, 0.5)),
        ms(percentile(&cpus, 0.5)),
        ms(*cpus.last().unwrap()),
        percentile(&cpus, 0.5).as_secs_f64() * 1e6 / vms as f64,
        ms(first.took),
    );
}
