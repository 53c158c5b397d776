//! Issue 3's figures, measured in one run on the same QEMU:
//! - raw `spawn → QMP running` against `startVm → RUNNING event at a websocket subscriber`;
//! - 20 raw spawns at once against 20 `startVm` at once, until all run (a
//!   guard: vman's rate at least 0.8 × raw's);
//! - raw `blockdev-add + device_add` against `attachDisk`: the raw commands
//!   one after the other, each waiting for its reply (as a hand-written
//!   client sends them, and as qapi sends vman's: see `host::qemu::qmp`).
//!
//! vman is the real `vman serve` process, as shipped, on its own runtime;
//! the raw side runs in this process. For each hot-plug it also prints what
//! does not depend on how busy the host is: how often each side's threads
//! slept, their time on a CPU (the scheduler's count) and vman's page faults.
//!
//! `cargo bench --bench qemu` (add `-- --rounds N`; `--by-thread` prints
//! where vman's threads slept and spent CPU time during each `attachDisk`;
//! `--warm` sends each side a no-op just before the clock; `--vman PATH` runs
//! another build of vman; `--against PATH`, once or more, measures other
//! builds (or scripts that run one with other settings) in the same rounds,
//! alternating which goes first, so that a before and after share the host's
//! moods; `--no-settle`, below). Uses KVM when usable, else TCG; VMs have no
//! guest OS. The clients of both sides share one thread, so neither pays for
//! hand-offs between client threads. Then it prints what idleness costs the
//! next request, and last what this host charges for a wake-up (a byte
//! between two threads and back, on one CPU and on two).

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

/// A figure summed over the threads of a process, by thread name: `read`
/// takes it from the named file of one thread's `/proc` directory.
fn by_thread(pid: &str, file: &str, read: fn(&str) -> Option<u64>) -> BTreeMap<String, u64> {
    let mut threads = BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return threads;
    };
    for task in tasks.flatten() {
        let (Ok(name), Ok(text)) = (
            std::fs::read_to_string(task.path().join("comm")),
            std::fs::read_to_string(task.path().join(file)),
        ) else {
            continue;
        };
        *threads.entry(name.trim().to_string()).or_default() += read(&text).unwrap_or(0);
    }
    threads
}

/// How many times each thread of a process has gone to sleep so far (its
/// voluntary context switches), by thread name: each wait for another
/// thread, a socket or QEMU is one, and each costs a wake-up later. A figure
/// that does not depend on how busy the host is; docs/BENCHMARKS.md (issue
/// 3, fourth to sixth rounds) says how much of vman's time it explains.
fn sleeps_by_thread(pid: &str) -> BTreeMap<String, u64> {
    by_thread(pid, "status", |status| {
        status
            .lines()
            .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))?
            .trim()
            .parse()
            .ok()
    })
}

/// The time each thread of a process has spent on a CPU so far, in
/// microseconds, by thread name: the scheduler's own count, what a step
/// cost in work as against the time it spent waiting.
fn cpu_by_thread(pid: &str) -> BTreeMap<String, u64> {
    by_thread(pid, "schedstat", |stat| {
        Some(stat.split_whitespace().next()?.parse::<u64>().ok()? / 1000)
    })
}

fn sleeps(pid: &str) -> u64 {
    sleeps_by_thread(pid).values().sum()
}

/// The time the threads of a process have spent on a CPU so far.
fn on_cpu(pid: &str) -> Duration {
    Duration::from_micros(cpu_by_thread(pid).values().sum())
}

/// The page faults a process has taken so far (minor ones: no disk read).
fn faults(pid: i32) -> u64 {
    // minflt is field 10 of proc(5), the 8th after the command name.
    process::stat_field(pid, 7)
        .and_then(|minflt| minflt.parse().ok())
        .unwrap_or(0)
}

/// `after - before` per thread name, for the names whose count moved.
fn moved_by_thread(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>) -> String {
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
    let pid_text = pid.to_string();
    let mut last = on_cpu(&pid_text);
    while Instant::now() < deadline && process::is_alive(pid) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = on_cpu(&pid_text);
        if process::is_alive(pid) && now.saturating_sub(last) < Duration::from_millis(10) {
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

/// A raw VM as vman would start one from the bench template (1 vCPU,
/// 64 MiB, no disk).
fn raw_spec(config: &Config, name: &str) -> VmSpec {
    VmSpec {
        id: uuid::Uuid::now_v7().to_string(),
        name: name.to_string(),
        vcpus: 1,
        memory_mib: 64,
        disks: vec![],
        nics: vec![],
        boot: None,
        run_dir: config.run_dir().join(name),
        loadvm: None,
        seed: None,
        cdrom: None,
        boot_order: vec![],
    }
}

/// How many starts the burst sends at once.
const AT_ONCE: usize = 20;

/// [`AT_ONCE`] raw QEMUs spawned at once until all run, then the same number
/// of `startVm` sent at once to each build until all answered RUNNING: the
/// wall time of each burst (issue 22's guard: vman's rate at least 0.8 x
/// raw's). Everything started is stopped again.
async fn starts_at_once(
    options: &QemuOptions,
    config: &Config,
    vmans: &[(String, Vman)],
) -> (Duration, Vec<Duration>) {
    let specs: Vec<VmSpec> = (0..AT_ONCE)
        .map(|i| raw_spec(config, &format!("burst-{i}")))
        .collect();
    let started = Instant::now();
    let raws =
        futures_util::future::join_all(specs.iter().map(|spec| raw_start(options, spec))).await;
    let raw = started.elapsed();
    for (_, process, qmp) in raws {
        let _ = qmp.execute_json("quit", &serde_json::Value::Null).await;
        let _ = tokio::time::timeout(Duration::from_secs(5), process.exited()).await;
    }
    let mut bursts = Vec::new();
    for (_, vman) in vmans {
        let mut ids = Vec::new();
        for i in 0..AT_ONCE {
            let name = format!("burst-{i}");
            ids.push(
                vman.create("createVm", "vm", &name, "templateName: \"bench\"")
                    .await,
            );
        }
        let started = Instant::now();
        let answers = futures_util::future::join_all(ids.iter().map(|id| {
            vman.gql(
                "mutation($id: ID!) { startVm(id: $id) { vm { state } } }",
                json!({"id": id}),
            )
        }))
        .await;
        bursts.push(started.elapsed());
        for answer in answers {
            assert_eq!(answer["startVm"]["vm"]["state"], "RUNNING", "{answer}");
        }
        for id in &ids {
            vman.gql(
                "mutation($id: ID!) { deleteVm(id: $id) { operation { id } } }",
                json!({"id": id}),
            )
            .await;
        }
    }
    (raw, bursts)
}

/// The `vman serve` under test and a client for it.
struct Vman {
    process: VmanProcess,
    http: reqwest::Client,
    data_dir: std::path::PathBuf,
    /// What the rounds measured.
    start_t: Vec<Duration>,
    plug_t: Vec<Duration>,
    floor_t: Vec<Duration>,
    client_sleeps: Vec<u64>,
    sleeps: Vec<u64>,
    /// Time on a CPU per `attachDisk`: the client, vman, QEMU.
    cpu: Vec<[Duration; 3]>,
    /// vman's page faults per `attachDisk`.
    faults: Vec<u64>,
    unsettled: usize,
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

    /// One round on this vman: `startVm` of a new VM until the RUNNING event
    /// reaches a websocket subscriber, `attachDisk` of a new disk, the floor
    /// request, then the VM deleted.
    async fn round(&mut self, round: usize, settle: bool, warm: bool, by_thread: bool) {
        // vman: the mutation, until the RUNNING event reaches a websocket subscriber.
        let vm = self
            .create(
                "createVm",
                "vm",
                &format!("vm-{round}"),
                "templateName: \"bench\"",
            )
            .await;
        let head = self.journal_head().await;
        let mut ws = WsClient::connect(&self.ws_url()).await;
        ws.subscribe("s", "subscription($vm: ID, $after: String) { vmStateChanged(vmId: $vm, after: $after) { to } }", json!({"vm": vm, "after": head}))
            .await;
        let started = Instant::now();
        let (http, url, vm_id) = (self.http.clone(), self.process.url.clone(), vm.clone());
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
        self.start_t.push(started.elapsed());
        request.await.unwrap();
        ws.close().await;
        let disk_id = self
            .create("createDisk", "disk", &format!("d-{round}"), RAW_DISK)
            .await;
        let run_dir = self.data_dir.join("run").join(&vm);
        let qemu_pid =
            process::read_pidfile(&qemu::argv::pid_file(&run_dir)).expect("the VM's QEMU pid");
        if settle {
            self.unsettled += !settled(qemu_pid).await as usize;
        }
        if warm {
            self.gql("mutation($d: ID!, $v: ID!) { attachDisk(diskId: $d, vmId: $v, dryRun: true) { plan { action } } }", json!({"d": disk_id, "v": vm}))
                .await;
        }
        let (before, client_before) = (sleeps_by_thread(&self.pid()), sleeps("self"));
        let cpu_by_thread_before = cpu_by_thread(&self.pid());
        let qemu_pid = qemu_pid.to_string();
        let cpu_before = [on_cpu("self"), on_cpu(&self.pid()), on_cpu(&qemu_pid)];
        let faults_before = faults(self.process.child.id() as i32);
        let started = Instant::now();
        self.gql("mutation($d: ID!, $v: ID!) { attachDisk(diskId: $d, vmId: $v) { disk { attachment } } }", json!({"d": disk_id, "v": vm}))
            .await;
        self.plug_t.push(started.elapsed());
        let cpu_after = [on_cpu("self"), on_cpu(&self.pid()), on_cpu(&qemu_pid)];
        self.faults
            .push(faults(self.process.child.id() as i32) - faults_before);
        self.cpu
            .push([0, 1, 2].map(|i| cpu_after[i].saturating_sub(cpu_before[i])));
        let after = sleeps_by_thread(&self.pid());
        let cpu_by_thread_after = cpu_by_thread(&self.pid());
        self.client_sleeps.push(sleeps("self") - client_before);
        self.sleeps
            .push(after.values().sum::<u64>() - before.values().sum::<u64>());
        if by_thread {
            println!(
                "attachDisk {round}: vman threads slept: {}; on a CPU (µs): {}",
                moved_by_thread(&before, &after),
                moved_by_thread(&cpu_by_thread_before, &cpu_by_thread_after)
            );
        }
        // The floor: the same request path with no host step and no write.
        let started = Instant::now();
        self.gql("mutation($d: ID!) { resizeDisk(diskId: $d, sizeBytes: 2097152, dryRun: true) { plan { action } } }", json!({"d": disk_id}))
            .await;
        self.floor_t.push(started.elapsed());
        self.gql(
            "mutation($id: ID!) { deleteVm(id: $id) { vm { id } } }",
            json!({"id": vm}),
        )
        .await;
    }

    /// The ID of what `mutation(input: {name, fields})` created.
    async fn create(&self, mutation: &str, object: &str, name: &str, fields: &str) -> String {
        let query = format!(
            "mutation($n: String!) {{ {mutation}(input: {{name: $n, {fields}}}) {{ {object} {{ id }} }} }}"
        );
        self.gql(&query, json!({"n": name})).await[mutation][object]["id"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// The sequence of the newest event in the journal.
    async fn journal_head(&self) -> serde_json::Value {
        let journal =
            common::read_journal(|variables| self.gql(common::JOURNAL_PAGE, variables)).await;
        journal.last().expect("a journal with events")["sequence"].clone()
    }
}

/// The disks both sides hot-plug: 1 MiB, raw.
const RAW_DISK: &str = "sizeBytes: 1048576, format: RAW";

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
    // The builds of vman measured: this one (or `--vman PATH`), and with
    // each `--against PATH` another, in the same rounds, each its own process
    // with its own data directory.
    let mut builds = vec![flag("--vman").unwrap_or_else(|| "vman".into())];
    let args: Vec<String> = std::env::args().collect();
    builds.extend(
        args.windows(2)
            .filter(|pair| pair[0] == "--against")
            .map(|pair| pair[1].clone()),
    );
    let mut vmans = Vec::new();
    for (i, build) in builds.into_iter().enumerate() {
        let data_dir = dir.path().join(format!("data-{i}"));
        let port = common::free_port();
        let process = match i == 0 && flag("--vman").is_none() {
            true => VmanProcess::start(&data_dir, port),
            false => VmanProcess::start_program(build.as_ref(), &data_dir, port, &[]),
        };
        let vman = Vman {
            process,
            http: reqwest::Client::new(),
            data_dir,
            start_t: vec![],
            plug_t: vec![],
            floor_t: vec![],
            client_sleeps: vec![],
            sleeps: vec![],
            cpu: vec![],
            faults: vec![],
            unsettled: 0,
        };
        vman.process.ready(&vman.http).await;
        vman.gql("mutation { createTemplate(input: {name: \"bench\", vcpus: 1, memoryMib: 64}) { template { id } } }", json!({}))
            .await;
        vmans.push((build, vman));
    }
    // The raw side: the same QEMU options, its own run and storage directories.
    let mut config = Config {
        data_dir: dir.path().join("raw"),
        ..Config::default()
    };
    config.qemu.accel = accel;
    std::fs::create_dir_all(config.storage_dir()).unwrap();
    let options = QemuOptions::from_config(&config);

    let (mut raw_start_t, mut raw_plug_t, mut raw_sleeps) = (vec![], vec![], vec![]);
    let mut raw_cpu: Vec<[Duration; 2]> = vec![];
    for round in 0..rounds {
        // Raw: the same argv vman would use, driven directly, and the VM's
        // first hot-plug (as vman's is).
        let spec = raw_spec(&config, &format!("raw-{round}"));
        let (took, process, qmp) = raw_start(&options, &spec).await;
        raw_start_t.push(took);
        let disk = DiskSpec {
            id: uuid::Uuid::now_v7().to_string(),
            path: config.storage_dir().join(format!("raw-{round}.raw")),
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
        let qemu_pid = process.pid.to_string();
        let cpu_before = [on_cpu("self"), on_cpu(&qemu_pid)];
        let (started, slept) = (Instant::now(), sleeps("self"));
        for (command, arguments) in commands {
            qmp.execute_json(command, arguments).await.unwrap();
        }
        raw_plug_t.push(started.elapsed());
        raw_sleeps.push(sleeps("self") - slept);
        let cpu_after = [on_cpu("self"), on_cpu(&qemu_pid)];
        raw_cpu.push([0, 1].map(|i| cpu_after[i].saturating_sub(cpu_before[i])));
        let _ = qmp.execute_json("quit", &serde_json::Value::Null).await;
        let _ = tokio::time::timeout(Duration::from_secs(5), process.exited()).await;
        let _ = std::fs::remove_dir_all(&spec.run_dir);

        for i in 0..vmans.len() {
            // Alternate which build goes first, so neither always follows the raw side.
            let i = (i + round) % vmans.len();
            vmans[i].1.round(round, settle, warm, by_thread).await;
        }
    }
    let bursts = starts_at_once(&options, &config, &vmans).await;
    // What an idle pause costs the next request: the same requests back to
    // back, then each after the process has been idle for a while. HTTP
    // alone, then GraphQL with nothing to resolve, then the floor.
    let mut idle_by_build = Vec::new();
    for (_, vman) in &vmans {
        let disk_id = vman.create("createDisk", "disk", "idle", RAW_DISK).await;
        let healthz = vman.process.url.replace("/graphql", "/healthz");
        let mut idle = Vec::new();
        for gap in [
            Duration::ZERO,
            Duration::from_millis(10),
            Duration::from_millis(100),
            Duration::from_millis(300),
        ] {
            let (mut health_t, mut typename_t, mut floor_t) = (vec![], vec![], vec![]);
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
                vman.gql("{ __typename }", json!({})).await;
                typename_t.push(started.elapsed());
                tokio::time::sleep(gap).await;
                let started = Instant::now();
                vman.gql("mutation($d: ID!) { resizeDisk(diskId: $d, sizeBytes: 2097152, dryRun: true) { plan { action } } }", json!({"d": disk_id}))
                .await;
                floor_t.push(started.elapsed());
            }
            idle.push((gap, median(health_t), median(typename_t), median(floor_t)));
        }
        idle_by_build.push(idle);
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
    let count = |v: &[u64]| {
        let mut v = v.to_vec();
        v.sort();
        v[v.len() / 2]
    };
    for ((build, vman), idle) in vmans.iter().zip(idle_by_build) {
        if vmans.len() > 1 {
            println!("{build}:");
        }
        unsettled += vman.unsettled;
        report(
            "spawn -> QMP running / startVm -> RUNNING event",
            median(raw_start_t.clone()),
            median(vman.start_t.clone()),
        );
        let vman_plug = median(vman.plug_t.clone());
        report(
            "blockdev-add + device_add / attachDisk",
            median(raw_plug_t.clone()),
            vman_plug,
        );
        println!(
            "thread sleeps per hot-plug (median): raw {}, attachDisk: client {} + vman {}",
            count(&raw_sleeps),
            count(&vman.client_sleeps),
            count(&vman.sleeps)
        );
        let median_ms = |values: Vec<Duration>| ms(median(values));
        println!(
            "time on a CPU per hot-plug (medians, ms): raw: client {:.2} + QEMU {:.2}; attachDisk: client {:.2} + vman {:.2} + QEMU {:.2}; vman's page faults {}",
            median_ms(raw_cpu.iter().map(|c| c[0]).collect()),
            median_ms(raw_cpu.iter().map(|c| c[1]).collect()),
            median_ms(vman.cpu.iter().map(|c| c[0]).collect()),
            median_ms(vman.cpu.iter().map(|c| c[1]).collect()),
            median_ms(vman.cpu.iter().map(|c| c[2]).collect()),
            count(&vman.faults),
        );
        println!(
            "{:<44} {:>8.1} ms (HTTP + GraphQL + locks + reads; no host step, no write)",
            "API floor: resizeDisk(dryRun) round trip",
            ms(median(vman.floor_t.clone()))
        );
        println!(
            "after the process was idle for:  GET /healthz   {{ __typename }}   resizeDisk(dryRun)   (medians of 15)"
        );
        for (gap, health, typename, floor) in idle {
            println!(
                "  {:>5} ms {:>26.2} ms {:>13.2} ms {:>15.2} ms",
                gap.as_millis(),
                ms(health),
                ms(typename),
                ms(floor)
            );
        }
    }
    if unsettled > 0 {
        println!("({unsettled} hot-plugs went ahead after 5 s with the guest still busy)");
    }
    let (raw_burst, vman_bursts) = bursts;
    for ((build, _), vman_burst) in vmans.iter().zip(vman_bursts) {
        println!(
            "{AT_ONCE} at once: spawn -> all QMP running {:.0} ms; {AT_ONCE} startVm -> all RUNNING {:.0} ms ({build}): vman's rate {:.2}x raw's (guard: at least 0.8x)",
            ms(raw_burst),
            ms(vman_burst),
            raw_burst.as_secs_f64() / vman_burst.as_secs_f64()
        );
    }
    // What this host charges for a wake-up, whatever the program: the
    // baseline for the sleep counts above.
    println!(
        "a byte there and back between two threads (2 wake-ups; medians of 15):  back to back   after 100 ms idle"
    );
    let allowed = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0)).unwrap();
    let cpus: Vec<usize> = (0..nix::sched::CpuSet::count())
        .filter(|&cpu| allowed.is_set(cpu).unwrap_or(false))
        .take(2)
        .collect();
    let (first, last) = (cpus[0], cpus[cpus.len() - 1]);
    let mut pairs = vec![("on one CPU", (first, first))];
    if first != last {
        pairs.push(("on two CPUs", (first, last)));
    }
    for (what, pair) in pairs {
        let [back_to_back, after_idle] =
            [Duration::ZERO, Duration::from_millis(100)].map(|gap| ping_pong(pair, gap));
        println!(
            "  {what:<70} {:>8.3} ms {:>14.3} ms",
            ms(back_to_back),
            ms(after_idle)
        );
    }
    if first == last {
        println!("  on two CPUs: skipped, this process may use one CPU only");
    }
}

/// The median time for one byte to go from a thread pinned to `cpus.0` to
/// one pinned to `cpus.1` and back over a socket pair, each trip after `gap`
/// of idleness. On two CPUs, each wake-up may find the other CPU halted.
fn ping_pong(cpus: (usize, usize), gap: Duration) -> Duration {
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;
    fn pin(cpu: usize) {
        let mut set = nix::sched::CpuSet::new();
        set.set(cpu).unwrap();
        nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set).unwrap();
    }
    let (mut here, mut there) = UnixStream::pair().unwrap();
    let echo = std::thread::spawn(move || {
        pin(cpus.1);
        let mut byte = [0u8];
        while there.read_exact(&mut byte).is_ok() {
            there.write_all(&byte).unwrap();
        }
    });
    let times = std::thread::spawn(move || {
        pin(cpus.0);
        let mut byte = [0u8];
        let times: Vec<Duration> = (0..15)
            .map(|_| {
                std::thread::sleep(gap);
                let started = Instant::now();
                here.write_all(&byte).unwrap();
                here.read_exact(&mut byte).unwrap();
                started.elapsed()
            })
            .collect();
        times
    })
    .join()
    .unwrap();
    echo.join().unwrap();
    median(times)
}
