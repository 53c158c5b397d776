//! Issue 3's figures, measured in one run on the same QEMU:
//! - raw `spawn → QMP running` against `startVm → RUNNING event at a websocket subscriber`;
//! - raw `blockdev-add + device_add` against `attachDisk`: the raw commands
//!   one after the other (each waiting for its reply, as a hand-written client
//!   sends them), and pipelined (all sent, then the replies read, as vman
//!   sends them).
//!
//! `cargo bench --bench qemu` (add `-- --rounds N`). Uses KVM when usable, else TCG; VMs have no guest OS.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::{TestServer, WsClient};
use serde_json::json;
use vman::{
    config::Accel,
    host::{
        DiskSpec, HostStep, VmAction, VmSpec,
        qemu::{self, argv::QemuOptions, hotplug, process, qmp::QmpClient},
    },
};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// CPU time (user + system) a process has used so far.
fn cpu_time(pid: i32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the `(comm)`: state is the 1st, utime the 12th, stime the 13th.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Some(Duration::from_millis(ticks * 1000 / per_second))
}

/// How many times this process's threads have gone to sleep so far (their
/// voluntary context switches): each wait for another thread, a socket or
/// QEMU is one, and each costs a wake-up later. On a guest with idle virtual
/// CPUs a wake-up costs 0.1 ms or more, which is where most of vman's time goes.
fn sleeps() -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("status")).ok())
        .filter_map(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
                .and_then(|n| n.trim().parse::<u64>().ok())
        })
        .sum()
}

/// Waits (at most 5 s) until a QEMU uses less than a tenth of a core: with no
/// guest OS, SeaBIOS keeps the vCPU busy for about a second after `cont`
/// looking for something to boot. On two cores that spinning vCPU slows the
/// QMP commands by an amount that depends on where the firmware is, so both
/// sides hot-plug into an idle guest, as a booted OS would mostly be.
async fn settled(pid: i32) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut last = cpu_time(pid);
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = cpu_time(pid);
        if let (Some(before), Some(after)) = (last, now)
            && after.saturating_sub(before) < Duration::from_millis(10)
        {
            return true;
        }
        last = now;
    }
    false
}

async fn raw_start(
    options: &QemuOptions,
    spec: &VmSpec,
) -> (Duration, process::QemuProcess, QmpClient) {
    let steps = qemu::plan(options, &VmAction::Start(spec.clone()));
    let HostStep::SpawnQemu { argv, .. } = &steps[1] else {
        unreachable!()
    };
    std::fs::create_dir_all(&spec.run_dir).unwrap();
    let started = Instant::now();
    let process = process::spawn(argv, &spec.run_dir.join("qemu.log")).unwrap();
    let socket = qemu::argv::qmp_socket(&spec.run_dir);
    let qmp = loop {
        if socket.exists()
            && let Ok(qmp) = QmpClient::connect(&socket).await
        {
            break qmp;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    qmp.execute_json("cont", &serde_json::Value::Null)
        .await
        .unwrap();
    assert!(qmp.status().await.unwrap().running);
    (started.elapsed(), process, qmp)
}

#[tokio::main]
async fn main() {
    let rounds: usize = std::env::args()
        .skip_while(|a| a != "--rounds")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(10);
    // `--no-settle` hot-plugs as soon as each VM runs, while its firmware still spins.
    let settle = !std::env::args().any(|a| a == "--no-settle");
    let mut unsettled = 0;
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
    let options = QemuOptions::from_config(&server.app.config);
    server
        .ok("mutation { createTemplate(input: {name: \"bench\", vcpus: 1, memoryMib: 64}) { template { id } } }", json!({}))
        .await;

    let (mut raw_start_t, mut vman_start_t, mut raw_plug_t, mut vman_plug_t) =
        (vec![], vec![], vec![], vec![]);
    let mut raw_pipelined_t = vec![];
    let (mut raw_sleeps, mut raw_pipelined_sleeps, mut vman_sleeps) = (vec![], vec![], vec![]);
    let mut floor_t = vec![];
    for round in 0..rounds {
        // Raw: the same argv vman would use, driven directly. Two VMs, each
        // getting its first hot-plug (as vman's VM does): one command by
        // command, the other pipelined.
        for pipelined in [false, true] {
            let spec = VmSpec {
                id: uuid::Uuid::now_v7().to_string(),
                name: format!("raw-{round}-{pipelined}"),
                vcpus: 1,
                memory_mib: 64,
                disks: vec![],
                nics: vec![],
                boot: None,
                run_dir: server
                    .app
                    .config
                    .run_dir()
                    .join(format!("raw-{round}-{pipelined}")),
            };
            let (took, process, qmp) = raw_start(&options, &spec).await;
            if !pipelined {
                raw_start_t.push(took);
            }
            let disk = DiskSpec {
                id: uuid::Uuid::now_v7().to_string(),
                path: server
                    .app
                    .config
                    .storage_dir()
                    .join(format!("raw-{round}-{pipelined}.raw")),
                format: vman::disk::DiskFormat::Raw,
                size_bytes: 1 << 20,
                backing: None,
            };
            std::fs::write(&disk.path, vec![0u8; 1 << 20]).unwrap();
            let steps = hotplug::attach_disk(&spec.id, &disk, &qemu::argv::root_port_id(1));
            let commands = HostStep::qmp_commands(&steps);
            if settle {
                unsettled += !settled(process.pid).await as usize;
            }
            let (started, slept) = (Instant::now(), sleeps());
            if pipelined {
                for reply in qmp.execute_pipelined(&commands).await.unwrap() {
                    reply.unwrap();
                }
                raw_pipelined_t.push(started.elapsed());
                raw_pipelined_sleeps.push(sleeps() - slept);
            } else {
                for (command, arguments) in commands {
                    qmp.execute_json(command, arguments).await.unwrap();
                }
                raw_plug_t.push(started.elapsed());
                raw_sleeps.push(sleeps() - slept);
            }
            let _ = qmp.execute_json("quit", &serde_json::Value::Null).await;
            let _ = tokio::time::timeout(Duration::from_secs(5), process.exited()).await;
        }

        // vman: the mutation, until the RUNNING event reaches a websocket subscriber.
        let vm = server.create_vm(&format!("vm-{round}"), "bench").await;
        let head = server.journal().await.last().unwrap()["sequence"].clone();
        let mut ws = WsClient::connect(&server.ws_url).await;
        ws.subscribe("s", "subscription($vm: ID, $after: String) { vmStateChanged(vmId: $vm, after: $after) { to } }", json!({"vm": vm, "after": head}))
            .await;
        let started = Instant::now();
        let http = server.http.clone();
        let url = server.url.clone();
        let vm_id = vm.clone();
        let request = tokio::spawn(async move {
            http.post(url)
                .json(&json!({"query": "mutation($id: ID!) { startVm(id: $id) { vm { state } } }", "variables": {"id": vm_id}}))
                .send()
                .await
                .unwrap()
        });
        loop {
            if ws.next_data("s").await["vmStateChanged"]["to"] == "RUNNING" {
                break;
            }
        }
        vman_start_t.push(started.elapsed());
        request.await.unwrap();
        ws.close().await;
        let disk_id = server
            .ok("mutation($n: String!) { createDisk(input: {name: $n, sizeBytes: 1048576, format: RAW}) { disk { id } } }", json!({"n": format!("d-{round}")}))
            .await["createDisk"]["disk"]["id"]
            .as_str()
            .unwrap()
            .to_string();
        if settle {
            let pid = process::read_pidfile(&qemu::argv::pid_file(&server.run_dir(&vm)))
                .expect("the VM's QEMU pid");
            unsettled += !settled(pid).await as usize;
        }
        let (started, slept) = (Instant::now(), sleeps());
        server
            .ok("mutation($d: ID!, $v: ID!) { attachDisk(diskId: $d, vmId: $v) { disk { attachment } } }", json!({"d": disk_id, "v": vm}))
            .await;
        vman_plug_t.push(started.elapsed());
        vman_sleeps.push(sleeps() - slept);
        // The floor: the same request path with no host step and no write.
        let started = Instant::now();
        server
            .ok("mutation($d: ID!) { resizeDisk(diskId: $d, sizeBytes: 2097152, dryRun: true) { plan { action } } }", json!({"d": disk_id}))
            .await;
        floor_t.push(started.elapsed());
        server
            .ok(
                "mutation($id: ID!) { deleteVm(id: $id) { vm { id } } }",
                json!({"id": vm}),
            )
            .await;
    }
    let report = |what: &str, raw: Duration, vman: Duration| {
        println!(
            "{what:<44} raw {:>8.1} ms   vman {:>8.1} ms   ratio {:.2}x",
            ms(raw),
            ms(vman),
            vman.as_secs_f64() / raw.as_secs_f64()
        );
    };
    println!(
        "accel {accel:?}, {rounds} rounds, hot-plug into {}, medians:",
        match settle {
            true => "an idle guest",
            false => "a guest still in its firmware",
        }
    );
    if unsettled > 0 {
        println!("({unsettled} hot-plugs went ahead after 5 s with the guest still busy)");
    }
    report(
        "spawn -> QMP running / startVm -> RUNNING event",
        median(raw_start_t),
        median(vman_start_t),
    );
    let vman_plug = median(vman_plug_t);
    report(
        "blockdev-add + device_add / attachDisk",
        median(raw_plug_t),
        vman_plug,
    );
    report(
        "  the same, raw pipelined as vman sends it",
        median(raw_pipelined_t),
        vman_plug,
    );
    let count = |mut v: Vec<u64>| {
        v.sort();
        v[v.len() / 2]
    };
    println!(
        "thread sleeps in this process per hot-plug (median): raw {}, raw pipelined {}, attachDisk {}",
        count(raw_sleeps),
        count(raw_pipelined_sleeps),
        count(vman_sleeps)
    );
    println!(
        "{:<44} {:>8.1} ms (HTTP + GraphQL + locks + reads; no host step, no write)",
        "API floor: resizeDisk(dryRun) round trip",
        ms(median(floor_t))
    );
}
