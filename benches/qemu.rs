//! Issue 3's figures, measured in one run on the same QEMU:
//! - raw `spawn → QMP running` against `startVm → RUNNING event at a websocket subscriber`;
//! - raw `blockdev-add + device_add` against `attachDisk`: the raw commands
//!   one after the other (each waiting for its reply, as a hand-written client
//!   sends them), and pipelined (all sent, then the replies read, as vman
//!   sends them).
//!
//! vman is the real `vman serve` process, as shipped, on its own runtime;
//! the raw side runs in this process.
//!
//! `cargo bench --bench qemu` (add `-- --rounds N`; `--by-thread` prints
//! where vman's threads slept during each `attachDisk`; `--warm` sends each
//! side a no-op just before the clock; `--vman PATH` runs another build of
//! vman, for a before and after; `--no-settle`, below). Uses KVM when usable,
//! else TCG; VMs have no guest OS. The clients of both sides share one
//! thread, so neither pays for hand-offs between client threads. Last, it
//! prints what idleness costs the next request.

#[path = "../tests/common/mod.rs"]
mod common;

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use common::{VmanProcess, WsClient};
use serde_json::json;
use vman::{
    config::{Accel, Config},
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

/// How many times each thread of a process has gone to sleep so far (its
/// voluntary context switches), by thread name: each wait for another
/// thread, a socket or QEMU is one, and each costs a wake-up later (0.1 ms
/// or more on a guest whose virtual CPUs went idle). A figure that does not
/// depend on how busy the host is; docs/BENCHMARKS.md says how much of
/// vman's time it explains.
fn sleeps_by_thread(pid: &str) -> BTreeMap<String, u64> {
    let mut threads = BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return threads;
    };
    for task in tasks.flatten() {
        let (Ok(name), Ok(status)) = (
            std::fs::read_to_string(task.path().join("comm")),
            std::fs::read_to_string(task.path().join("status")),
        ) else {
            continue;
        };
        let count = status
            .lines()
            .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
            .and_then(|n| n.trim().parse::<u64>().ok())
            .unwrap_or(0);
        *threads.entry(name.trim().to_string()).or_default() += count;
    }
    threads
}

fn sleeps(pid: &str) -> u64 {
    sleeps_by_thread(pid).values().sum()
}

/// `after - before` per thread name, for the names whose count moved.
fn slept_by_thread(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>) -> String {
    after
        .iter()
        .filter_map(|(name, n)| {
            let slept = n.saturating_sub(before.get(name).copied().unwrap_or(0));
            (slept > 0).then(|| format!("{name} {slept}"))
        })
        .collect::<Vec<_>>()
        .join(", ")
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

/// The `vman serve` under test and a client for it.
struct Vman {
    process: VmanProcess,
    http: reqwest::Client,
    data_dir: std::path::PathBuf,
}

impl Vman {
    async fn gql(&self, query: &str, variables: serde_json::Value) -> serde_json::Value {
        self.process.gql(&self.http, query, variables).await
    }

    fn pid(&self) -> String {
        self.process.child.id().to_string()
    }

    fn ws_url(&self) -> String {
        format!("{}/ws", self.process.url.replacen("http", "ws", 1))
    }

    /// The sequence of the newest event in the journal.
    async fn journal_head(&self) -> serde_json::Value {
        let journal =
            common::read_journal(|variables| self.gql(common::JOURNAL_PAGE, variables)).await;
        journal.last().expect("a journal with events")["sequence"].clone()
    }
}

fn flag(name: &str) -> Option<String> {
    std::env::args().skip_while(|a| a != name).nth(1)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let rounds: usize = flag("--rounds").and_then(|n| n.parse().ok()).unwrap_or(10);
    // `--no-settle` hot-plugs as soon as each VM runs, while its firmware still spins.
    let settle = !std::env::args().any(|a| a == "--no-settle");
    let by_thread = std::env::args().any(|a| a == "--by-thread");
    // `--warm` sends each side a no-op just before the clock: `query-status`
    // to the raw QEMU, `attachDisk(dryRun: true)` of the same disk to vman.
    let warm = std::env::args().any(|a| a == "--warm");
    let mut unsettled = 0;
    let accel = if common::kvm_usable() {
        Accel::Kvm
    } else {
        Accel::Tcg
    };
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let port = common::free_port();
    let process = match flag("--vman") {
        Some(program) => VmanProcess::start_program(program.as_ref(), &data_dir, port, &[]),
        None => VmanProcess::start(&data_dir, port),
    };
    let vman = Vman {
        process,
        http: reqwest::Client::new(),
        data_dir: data_dir.clone(),
    };
    vman.process.ready(&vman.http).await;
    // The raw side: the same QEMU options, its own run and storage directories.
    let mut config = Config {
        data_dir: dir.path().join("raw"),
        ..Config::default()
    };
    config.qemu.accel = accel;
    std::fs::create_dir_all(config.storage_dir()).unwrap();
    let options = QemuOptions::from_config(&config);
    vman.gql("mutation { createTemplate(input: {name: \"bench\", vcpus: 1, memoryMib: 64}) { template { id } } }", json!({}))
        .await;

    let (mut raw_start_t, mut vman_start_t, mut raw_plug_t, mut vman_plug_t) =
        (vec![], vec![], vec![], vec![]);
    let mut raw_pipelined_t = vec![];
    let (mut raw_sleeps, mut raw_pipelined_sleeps) = (vec![], vec![]);
    let (mut client_sleeps, mut vman_sleeps) = (vec![], vec![]);
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
                run_dir: config.run_dir().join(format!("raw-{round}-{pipelined}")),
            };
            let (took, process, qmp) = raw_start(&options, &spec).await;
            if !pipelined {
                raw_start_t.push(took);
            }
            let disk = DiskSpec {
                id: uuid::Uuid::now_v7().to_string(),
                path: config
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
            if warm {
                qmp.status().await.unwrap();
            }
            let (started, slept) = (Instant::now(), sleeps("self"));
            if pipelined {
                for reply in qmp.execute_pipelined(&commands).await.unwrap() {
                    reply.unwrap();
                }
                raw_pipelined_t.push(started.elapsed());
                raw_pipelined_sleeps.push(sleeps("self") - slept);
            } else {
                for (command, arguments) in commands {
                    qmp.execute_json(command, arguments).await.unwrap();
                }
                raw_plug_t.push(started.elapsed());
                raw_sleeps.push(sleeps("self") - slept);
            }
            let _ = qmp.execute_json("quit", &serde_json::Value::Null).await;
            let _ = tokio::time::timeout(Duration::from_secs(5), process.exited()).await;
            let _ = std::fs::remove_dir_all(&spec.run_dir);
        }

        // vman: the mutation, until the RUNNING event reaches a websocket subscriber.
        let vm = vman
            .gql("mutation($n: String!) { createVm(input: {name: $n, templateName: \"bench\"}) { vm { id } } }", json!({"n": format!("vm-{round}")}))
            .await["createVm"]["vm"]["id"]
            .as_str()
            .unwrap()
            .to_string();
        let head = vman.journal_head().await;
        let mut ws = WsClient::connect(&vman.ws_url()).await;
        ws.subscribe("s", "subscription($vm: ID, $after: String) { vmStateChanged(vmId: $vm, after: $after) { to } }", json!({"vm": vm, "after": head}))
            .await;
        let started = Instant::now();
        let (http, url, vm_id) = (vman.http.clone(), vman.process.url.clone(), vm.clone());
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
        let disk_id = vman
            .gql("mutation($n: String!) { createDisk(input: {name: $n, sizeBytes: 1048576, format: RAW}) { disk { id } } }", json!({"n": format!("d-{round}")}))
            .await["createDisk"]["disk"]["id"]
            .as_str()
            .unwrap()
            .to_string();
        if settle {
            let run_dir = vman.data_dir.join("run").join(&vm);
            let pid =
                process::read_pidfile(&qemu::argv::pid_file(&run_dir)).expect("the VM's QEMU pid");
            unsettled += !settled(pid).await as usize;
        }
        if warm {
            vman.gql("mutation($d: ID!, $v: ID!) { attachDisk(diskId: $d, vmId: $v, dryRun: true) { plan { action } } }", json!({"d": disk_id, "v": vm}))
                .await;
        }
        let (before, client_before) = (sleeps_by_thread(&vman.pid()), sleeps("self"));
        let started = Instant::now();
        vman.gql("mutation($d: ID!, $v: ID!) { attachDisk(diskId: $d, vmId: $v) { disk { attachment } } }", json!({"d": disk_id, "v": vm}))
            .await;
        vman_plug_t.push(started.elapsed());
        let after = sleeps_by_thread(&vman.pid());
        client_sleeps.push(sleeps("self") - client_before);
        vman_sleeps.push(after.values().sum::<u64>() - before.values().sum::<u64>());
        if by_thread {
            println!(
                "attachDisk {round}: vman threads slept: {}",
                slept_by_thread(&before, &after)
            );
        }
        // The floor: the same request path with no host step and no write.
        let started = Instant::now();
        vman.gql("mutation($d: ID!) { resizeDisk(diskId: $d, sizeBytes: 2097152, dryRun: true) { plan { action } } }", json!({"d": disk_id}))
            .await;
        floor_t.push(started.elapsed());
        vman.gql(
            "mutation($id: ID!) { deleteVm(id: $id) { vm { id } } }",
            json!({"id": vm}),
        )
        .await;
    }
    // What an idle pause costs the next request: the same two requests back
    // to back, then each after the process has been idle for a while.
    let disk_id = vman
        .gql("mutation { createDisk(input: {name: \"idle\", sizeBytes: 1048576, format: RAW}) { disk { id } } }", json!({}))
        .await["createDisk"]["disk"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let healthz = vman.process.url.replace("/graphql", "/healthz");
    let mut idle = Vec::new();
    for gap in [
        Duration::ZERO,
        Duration::from_millis(10),
        Duration::from_millis(100),
        Duration::from_millis(300),
    ] {
        let (mut health_t, mut floor_t) = (vec![], vec![]);
        for _ in 0..15 {
            tokio::time::sleep(gap).await;
            let started = Instant::now();
            vman.http
                .get(&healthz)
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            health_t.push(started.elapsed());
            tokio::time::sleep(gap).await;
            let started = Instant::now();
            vman.gql("mutation($d: ID!) { resizeDisk(diskId: $d, sizeBytes: 2097152, dryRun: true) { plan { action } } }", json!({"d": disk_id}))
                .await;
            floor_t.push(started.elapsed());
        }
        idle.push((gap, median(health_t), median(floor_t)));
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
        "thread sleeps per hot-plug (median): raw {}, raw pipelined {}, attachDisk: client {} + vman {}",
        count(raw_sleeps),
        count(raw_pipelined_sleeps),
        count(client_sleeps),
        count(vman_sleeps)
    );
    println!(
        "{:<44} {:>8.1} ms (HTTP + GraphQL + locks + reads; no host step, no write)",
        "API floor: resizeDisk(dryRun) round trip",
        ms(median(floor_t))
    );
    println!(
        "after the process was idle for:  GET /healthz   resizeDisk(dryRun)   (medians of 15)"
    );
    for (gap, health, floor) in idle {
        println!(
            "  {:>5} ms {:>26.2} ms {:>15.2} ms",
            gap.as_millis(),
            ms(health),
            ms(floor)
        );
    }
}
