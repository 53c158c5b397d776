//! The coherence sweep on real QEMU (no guest OS): a silent QMP, disk files
//! changed behind vman's back, orphans, and repairs after a vman restart.

mod common;

use std::time::{Duration, Instant};

use common::{TestServer, VmanProcess, WsClient, free_port, kvm_usable};
use serde_json::{Value, json};
use vman::config::{Accel, DriftPolicy};

const INTERVAL: Duration = Duration::from_millis(200);

fn accel() -> Accel {
    if kvm_usable() {
        Accel::Kvm
    } else {
        println!("/dev/kvm is not usable here: running the bare VMs under TCG");
        Accel::Tcg
    }
}

async fn sweeping_server(policy: DriftPolicy, interval: Duration) -> TestServer {
    TestServer::start_with(move |c| {
        c.dry_run = false;
        c.qemu.accel = accel();
        c.observer.interval = interval;
        c.observer.probe_timeout = Duration::from_secs(1);
        c.observer.policy = policy;
    })
    .await
}

fn pid_in(run_dir: &std::path::Path) -> i32 {
    std::fs::read_to_string(run_dir.join("qemu.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

fn alive(pid: i32) -> bool {
    vman::host::qemu::process::is_alive(pid)
}

async fn start_vm(server: &TestServer, vm: &str) {
    let data = server
        .ok(
            "mutation($id: ID!) { startVm(id: $id) { vm { state } } }",
            json!({"id": vm}),
        )
        .await;
    assert_eq!(data["startVm"]["vm"]["state"], "RUNNING");
}

async fn head(server: &TestServer) -> Value {
    server.journal().await.last().unwrap()["sequence"].clone()
}

/// Subscribes to the whole journal from its start.
async fn journal_subscriber(server: &TestServer) -> WsClient {
    let mut ws = WsClient::connect(&server.ws_url).await;
    ws.subscribe(
        "journal",
        "subscription { events(after: \"0\") { sequence kind } }",
        json!({}),
    )
    .await;
    ws
}

/// The subscriber saw every journal event, each once, in order: 1, 2, … head.
async fn assert_no_gap(server: &TestServer, mut ws: WsClient) {
    let journal = server.journal().await;
    let last: i64 = journal.last().unwrap()["sequence"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    for (i, event) in journal.iter().enumerate() {
        assert_eq!(event["sequence"], json!((i as i64 + 1).to_string()));
    }
    for expected in 1..=last {
        let seen = ws.next_data("journal").await;
        assert_eq!(
            seen["events"]["sequence"],
            json!(expected.to_string()),
            "{seen}"
        );
    }
    ws.close().await;
}

async fn open_issues(server: &TestServer) -> Vec<Value> {
    let data = server
        .ok(
            "{ coherenceIssues(open: true) { edges { node { id kind subjectId observed action vm { id } } } } }",
            json!({}),
        )
        .await;
    data["coherenceIssues"]["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["node"].clone())
        .collect()
}

#[tokio::test]
async fn a_stopped_qemu_makes_its_vm_unknown_until_qmp_answers_again() {
    let server = sweeping_server(DriftPolicy::Report, INTERVAL).await;
    let journal = journal_subscriber(&server).await;
    server.create_template("bare").await;
    let frozen = server.create_vm("frozen", "bare").await;
    let lively = server.create_vm("lively", "bare").await;
    start_vm(&server, &frozen).await;
    start_vm(&server, &lively).await;

    let mut ws = WsClient::connect(&server.ws_url).await;
    ws.subscribe(
        "s",
        "subscription($vm: ID, $after: String) { vmStateChanged(vmId: $vm, after: $after) { from to reason } }",
        json!({"vm": frozen, "after": head(&server).await}),
    )
    .await;
    let pid = pid_in(&server.run_dir(&frozen));
    unsafe { libc::kill(pid, libc::SIGSTOP) };

    let change = ws.next_data("s").await["vmStateChanged"].clone();
    assert_eq!(
        (change["from"].as_str(), change["to"].as_str()),
        (Some("RUNNING"), Some("UNKNOWN")),
        "{change}"
    );
    assert!(
        change["reason"].as_str().unwrap().contains("QMP silent"),
        "{change}"
    );
    // The other VM and the API keep answering while one QEMU is frozen.
    for (mutation, state) in [("pauseVm", "PAUSED"), ("resumeVm", "RUNNING")] {
        let data = server
            .ok(
                &format!("mutation($id: ID!) {{ {mutation}(id: $id) {{ vm {{ state }} }} }}"),
                json!({"id": lively}),
            )
            .await;
        assert_eq!(data[mutation]["vm"]["state"], state);
    }
    let issues = server
        .ok(
            "query($id: ID) { vm(id: $id) { coherenceIssues(open: true) { kind observed } } }",
            json!({"id": frozen}),
        )
        .await;
    let issues = issues["vm"]["coherenceIssues"].as_array().unwrap().clone();
    assert_eq!(issues.len(), 1, "{issues:?}");
    assert_eq!(issues[0]["kind"], "QMP_SILENT");

    unsafe { libc::kill(pid, libc::SIGCONT) };
    let change = ws.next_data("s").await["vmStateChanged"].clone();
    assert_eq!(
        (change["from"].as_str(), change["to"].as_str()),
        (Some("UNKNOWN"), Some("RUNNING")),
        "{change}"
    );
    // Not restarted: the same QEMU runs, and the issue is resolved with it.
    assert_eq!(pid_in(&server.run_dir(&frozen)), pid);
    assert!(alive(pid));
    assert!(open_issues(&server).await.is_empty());
    let all = server
        .ok(
            "query($id: ID) { vm(id: $id) { coherenceIssues { kind open action resolvedAt } } }",
            json!({"id": frozen}),
        )
        .await;
    let resolved = &all["vm"]["coherenceIssues"][0];
    assert_eq!(resolved["open"], false, "{all}");
    assert_eq!(resolved["action"], "no longer seen", "{all}");

    for vm in [&frozen, &lively] {
        server.stop_vm(vm).await;
    }
    ws.close().await;
    assert_no_gap(&server, journal).await;
}

fn disk_file(server: &TestServer, disk: &str) -> std::path::PathBuf {
    std::fs::read_dir(server.app.ctx.config.storage_dir())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_stem()
                .is_some_and(|stem| stem.to_string_lossy() == disk)
        })
        .unwrap_or_else(|| panic!("no file for disk {disk}"))
}

async fn next_issue_change(ws: &mut WsClient) -> Value {
    ws.next_data("c").await["coherenceIssues"].clone()
}

#[tokio::test]
async fn a_disk_file_changed_behind_vmans_back_is_an_issue_until_it_is_restored() {
    let server = sweeping_server(DriftPolicy::Repair, INTERVAL).await;
    let journal = journal_subscriber(&server).await;
    let disk = server.create_disk("data", 1 << 20, "QCOW2").await;
    let mut ws = WsClient::connect(&server.ws_url).await;
    ws.subscribe(
        "c",
        "subscription($after: String) { coherenceIssues(after: $after) { change sequence issue { id kind subjectId open action expected observed } } }",
        json!({"after": head(&server).await}),
    )
    .await;
    let path = disk_file(&server, &disk);
    let aside = path.with_extension("aside");

    std::fs::rename(&path, &aside).unwrap();
    let removed = Instant::now();
    let opened = next_issue_change(&mut ws).await;
    let noticed = removed.elapsed();
    assert_eq!(opened["change"], "OPENED", "{opened}");
    assert_eq!(opened["issue"]["kind"], "DISK_FILE_MISSING", "{opened}");
    assert_eq!(opened["issue"]["subjectId"], disk.as_str());
    println!("a missing disk file was an issue after {noticed:?} (interval {INTERVAL:?})");
    // Even under `repair`, a user's disk is never recreated or deleted.
    assert!(!path.exists() && aside.exists());

    std::fs::rename(&aside, &path).unwrap();
    let resolved = next_issue_change(&mut ws).await;
    assert_eq!(resolved["change"], "RESOLVED", "{resolved}");
    assert_eq!(resolved["issue"]["id"], opened["issue"]["id"]);
    assert_eq!(resolved["issue"]["open"], false);

    // A file grown behind vman's back: its virtual size is not the disk's.
    let status = std::process::Command::new("qemu-img")
        .args(["resize", "-q"])
        .arg(&path)
        .arg("2M")
        .status()
        .unwrap();
    assert!(status.success());
    let grown = next_issue_change(&mut ws).await;
    assert_eq!(grown["issue"]["kind"], "DISK_SIZE_MISMATCH", "{grown}");
    assert_eq!(grown["issue"]["expected"], "1048576 bytes");
    assert_eq!(grown["issue"]["observed"], "2097152 bytes");
    let status = std::process::Command::new("qemu-img")
        .args(["resize", "-q", "--shrink"])
        .arg(&path)
        .arg("1M")
        .status()
        .unwrap();
    assert!(status.success());
    let back = next_issue_change(&mut ws).await;
    assert_eq!(
        (back["change"].as_str(), back["issue"]["id"].clone()),
        (Some("RESOLVED"), grown["issue"]["id"].clone())
    );
    ws.close().await;
    assert_no_gap(&server, journal).await;
}

async fn sweep_now(server: &TestServer) -> Value {
    server
        .ok(
            "mutation { runCoherenceSweep { vmsChecked findings { id kind subjectId observed open } resolved { kind subjectId action } } }",
            json!({}),
        )
        .await["runCoherenceSweep"]
        .clone()
}

#[tokio::test]
async fn a_qemu_started_by_hand_in_a_run_dir_is_reported_as_an_orphan_and_left_alone() {
    // Only asked-for sweeps here, under `repair`: even then nothing is killed.
    let server = sweeping_server(DriftPolicy::Repair, Duration::from_secs(3600)).await;
    let stray = server
        .app
        .ctx
        .config
        .run_dir()
        .join("01940000-0000-7000-8000-00000000beef");
    std::fs::create_dir_all(&stray).unwrap();
    let mut qemu = std::process::Command::new("qemu-system-x86_64")
        .args([
            "-machine",
            "none",
            "-display",
            "none",
            "-nodefaults",
            "-S",
            "-uuid",
            "01940000-0000-7000-8000-00000000beef",
            "-pidfile",
        ])
        .arg(stray.join("qemu.pid"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // QEMU writes its pidfile once it runs.
    let deadline = Instant::now() + common::WAIT;
    while !stray.join("qemu.pid").exists() {
        assert!(Instant::now() < deadline, "QEMU wrote no pidfile");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let pid = qemu.id() as i32;
    let dir = stray.display().to_string();

    let report = sweep_now(&server).await;
    let findings = report["findings"].as_array().unwrap();
    let kinds: Vec<(&str, &str)> = findings
        .iter()
        .map(|f| {
            (
                f["kind"].as_str().unwrap(),
                f["subjectId"].as_str().unwrap(),
            )
        })
        .collect();
    assert!(
        kinds.contains(&("ORPHAN_RUN_DIR", dir.as_str())),
        "{report}"
    );
    assert!(
        kinds.contains(&("ORPHAN_PROCESS", dir.as_str())),
        "{report}"
    );
    let process = findings
        .iter()
        .find(|f| f["kind"] == "ORPHAN_PROCESS")
        .unwrap();
    assert!(
        process["observed"]
            .as_str()
            .unwrap()
            .contains(&format!("pid {pid}")),
        "{process}"
    );
    // Seen again, the same issues: not duplicated.
    let again = sweep_now(&server).await;
    assert_eq!(again["findings"], report["findings"]);
    assert_eq!(open_issues(&server).await.len(), 2);
    // Never killed, never removed.
    assert!(alive(pid) && stray.is_dir());

    qemu.kill().unwrap();
    qemu.wait().unwrap();
    let report = sweep_now(&server).await;
    assert_eq!(
        report["resolved"],
        json!([{"kind": "ORPHAN_PROCESS", "subjectId": dir, "action": "no longer seen"}]),
        "{report}"
    );
    std::fs::remove_dir_all(&stray).unwrap();
    let report = sweep_now(&server).await;
    assert_eq!(report["resolved"][0]["kind"], "ORPHAN_RUN_DIR", "{report}");
    assert!(open_issues(&server).await.is_empty());
}

#[tokio::test]
async fn files_in_storage_no_disk_or_image_owns_are_reported_and_never_removed() {
    // Under `repair`, and still nothing is removed.
    let server = sweeping_server(DriftPolicy::Repair, Duration::from_secs(3600)).await;
    let disk = server.create_disk("data", 1 << 20, "QCOW2").await;
    let storage = server.app.ctx.config.storage_dir();
    // What a vman killed in createDisk and in importImage leaves, and a file copied in by hand.
    let strays = [
        storage.join("01940000-0000-7000-8000-0000000000aa.qcow2.partial"),
        storage.join("images/01940000-0000-7000-8000-0000000000bb.partial"),
        storage.join("notes.txt"),
    ];
    for path in &strays {
        std::fs::write(path, b"not vman's").unwrap();
    }
    let shown: Vec<String> = strays.iter().map(|p| p.display().to_string()).collect();
    let stray_ids = |report: &Value, list: &str| {
        let mut ids: Vec<String> = report[list]
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| f["kind"] == "STRAY_STORAGE_FILE")
            .map(|f| f["subjectId"].as_str().unwrap().to_string())
            .collect();
        ids.sort();
        ids
    };
    let mut expected = shown.clone();
    expected.sort();

    let report = sweep_now(&server).await;
    assert_eq!(stray_ids(&report, "findings"), expected, "{report}");
    // The disk's own file is its: not stray.
    assert!(!report.to_string().contains(&disk), "{report}");
    let partial = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["subjectId"] == shown[0].as_str())
        .unwrap();
    assert!(
        partial["observed"]
            .as_str()
            .unwrap()
            .contains("left unfinished"),
        "{partial}"
    );
    assert!(strays.iter().all(|p| p.exists()));

    // Seen again, the same issues; removed by hand, they resolve.
    assert_eq!(sweep_now(&server).await["findings"], report["findings"]);
    for path in &strays {
        std::fs::remove_file(path).unwrap();
    }
    let report = sweep_now(&server).await;
    assert_eq!(stray_ids(&report, "resolved"), expected, "{report}");
    assert!(open_issues(&server).await.is_empty());
}

#[tokio::test]
async fn under_repair_a_known_qemu_is_readopted_and_a_vm_that_died_unseen_is_marked_crashed() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let http = reqwest::Client::new();
    let env = [
        ("VMAN_OBSERVER_POLICY", "repair"),
        ("VMAN_OBSERVER_INTERVAL", "200ms"),
        ("VMAN_OBSERVER_PROBE_TIMEOUT", "1s"),
    ];
    let mut first = VmanProcess::start_with_env(&data, free_port(), &env);
    first.ready(&http).await;
    first
        .gql(&http, "mutation { createTemplate(input: {name: \"bare\", vcpus: 1, memoryMib: 64}) { template { id } } }", json!({}))
        .await;
    let mut vms = Vec::new();
    for name in ["adoptee", "ghost"] {
        let data = first
            .gql(&http, "mutation($n: String!) { createVm(input: {name: $n, templateName: \"bare\"}) { vm { id } } }", json!({"n": name}))
            .await;
        let id = data["createVm"]["vm"]["id"].as_str().unwrap().to_string();
        first
            .gql(
                &http,
                "mutation($id: ID!) { startVm(id: $id) { vm { state } } }",
                json!({"id": id}),
            )
            .await;
        vms.push(id);
    }
    let (adoptee, ghost) = (vms[0].clone(), vms[1].clone());
    let run = data.join("run");
    let pids: Vec<i32> = vms.iter().map(|id| pid_in(&run.join(id))).collect();

    // vman dies; while it is down, nobody can reach the VMs' QMP sockets.
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    first.run_dir = std::path::PathBuf::new();
    drop(first);
    for id in &vms {
        let socket = run.join(id).join("qmp.sock");
        std::fs::rename(&socket, socket.with_extension("away")).unwrap();
    }
    let vman = VmanProcess::start_with_env(&data, free_port(), &env);
    vman.ready(&http).await;
    let state = |id: &str| {
        let (http, vman) = (&http, &vman);
        let id = id.to_string();
        async move {
            vman.gql(
                http,
                "query($id: ID) { vm(id: $id) { state stateReason coherenceIssues { kind open action } } }",
                json!({"id": id}),
            )
            .await["vm"]
                .clone()
        }
    };
    for id in &vms {
        let vm = state(id).await;
        assert_eq!(vm["state"], "UNKNOWN", "{vm}");
    }
    let ws_url = vman.url.replace("http://", "ws://") + "/ws";
    let mut ws = WsClient::connect(&ws_url).await;
    // The journal's sequences run 1, 2, … so its length is its head.
    let head = vman
        .gql(&http, "{ events(first: 0) { totalCount } }", json!({}))
        .await["events"]["totalCount"]
        .to_string();
    ws.subscribe(
        "s",
        "subscription($after: String) { vmStateChanged(after: $after) { vmId from to reason } }",
        json!({"after": head}),
    )
    .await;

    // The sweep finds both QEMUs running untracked, and cannot re-adopt them yet.
    let mut issues = WsClient::connect(&ws_url).await;
    issues
        .subscribe(
            "c",
            "subscription { coherenceIssues(after: \"0\") { change issue { kind subjectId } } }",
            json!({}),
        )
        .await;
    let mut untracked = std::collections::HashSet::new();
    while untracked.len() < 2 {
        let change = issues.next_data("c").await["coherenceIssues"].clone();
        if change["change"] == "OPENED" && change["issue"]["kind"] == "UNTRACKED_PROCESS" {
            untracked.insert(change["issue"]["subjectId"].as_str().unwrap().to_string());
        }
    }
    issues.close().await;

    // Its socket back, the adoptee's QEMU is re-adopted by the next sweep.
    let socket = run.join(&adoptee).join("qmp.sock");
    std::fs::rename(socket.with_extension("away"), &socket).unwrap();
    let change = ws.next_data("s").await["vmStateChanged"].clone();
    assert_eq!(change["vmId"], adoptee.as_str(), "{change}");
    assert_eq!(change["to"], "RUNNING", "{change}");
    assert!(
        change["reason"].as_str().unwrap().contains("re-adopted"),
        "{change}"
    );
    let vm = state(&adoptee).await;
    assert_eq!(
        vm["coherenceIssues"],
        json!([{"kind": "UNTRACKED_PROCESS", "open": false, "action": format!("re-adopted QEMU pid {}; the VM is RUNNING", pids[0])}]),
        "{vm}"
    );

    // The ghost's QEMU dies where no pidfd watches it: the sweep finds it gone.
    unsafe { libc::kill(pids[1], libc::SIGKILL) };
    let change = ws.next_data("s").await["vmStateChanged"].clone();
    assert_eq!(change["vmId"], ghost.as_str(), "{change}");
    assert_eq!(
        (change["from"].as_str(), change["to"].as_str()),
        (Some("UNKNOWN"), Some("CRASHED")),
        "{change}"
    );
    assert!(
        change["reason"]
            .as_str()
            .unwrap()
            .contains("coherence sweep"),
        "{change}"
    );
    let vm = state(&ghost).await;
    let issues = vm["coherenceIssues"].as_array().unwrap();
    assert!(
        issues.contains(
            &json!({"kind": "PROCESS_MISSING", "open": false, "action": "marked the VM CRASHED"})
        ),
        "{vm}"
    );
    assert!(
        issues.iter().all(|i| i["open"] == false),
        "every issue of the ghost is resolved: {vm}"
    );

    // The re-adopted VM is vman's again: it stops.
    let stopped = vman
        .gql(
            &http,
            "mutation($id: ID!) { stopVm(id: $id, force: true) { vm { state } } }",
            json!({"id": adoptee}),
        )
        .await;
    assert_eq!(stopped["stopVm"]["vm"]["state"], "STOPPED");
    assert!(!alive(pids[0]));
    ws.close().await;
}

#[tokio::test]
async fn operations_a_killed_vman_left_running_end_as_failed_at_the_next_start() {
    use sea_orm::{ActiveModelTrait, ActiveValue::Set};
    use vman::operation::{OperationKind, OperationStatus, SubjectType, model};
    let server = TestServer::start().await;
    // What a vman killed mid-operation leaves behind, and one another node
    // (another host on the same database) is carrying out.
    let running = |id: &str, host: &str| model::ActiveModel {
        id: Set(id.into()),
        kind: Set(OperationKind::StopVm),
        target_id: Set("01940000-0000-7000-8000-0000000000fe".into()),
        target_type: Set(SubjectType::Vm),
        status: Set(OperationStatus::Running),
        error: Set(None),
        error_code: Set(None),
        failed_step: Set(None),
        steps: Set(json!([])),
        started_at: Set(chrono::Utc::now()),
        actor: Set("local".into()),
        finished_at: Set(None),
        progress: Set(None),
        host_id: Set(Some(host.into())),
    };
    running(
        "01940000-0000-7000-8000-0000000000ff",
        &server.app.ctx.host_id,
    )
    .insert(&server.app.ctx.db)
    .await
    .unwrap();
    running(
        "01940000-0000-7000-8000-0000000000fd",
        "01940000-0000-7000-8000-0000000000fc",
    )
    .insert(&server.app.ctx.db)
    .await
    .unwrap();
    assert_eq!(
        vman::operation::fail_interrupted(&server.app.ctx)
            .await
            .unwrap(),
        1
    );
    let op = server
        .ok(
            "{ operation(id: \"01940000-0000-7000-8000-0000000000ff\") { status errorCode error finishedAt } }",
            json!({}),
        )
        .await["operation"]
        .clone();
    assert_eq!(op["status"], "FAILED", "{op}");
    assert_eq!(op["errorCode"], "INTERRUPTED", "{op}");
    assert!(op["finishedAt"].is_string(), "{op}");
    let other = server
        .ok(
            "{ operation(id: \"01940000-0000-7000-8000-0000000000fd\") { status } }",
            json!({}),
        )
        .await;
    assert_eq!(other["operation"]["status"], "RUNNING", "{other}");
    // Nothing else of this host's was running.
    assert_eq!(
        vman::operation::fail_interrupted(&server.app.ctx)
            .await
            .unwrap(),
        0
    );
}
