//! Snapshots of whole VMs, on real QEMU and real qemu-img: what a guest
//! wrote goes back with a restore (memory included on a running VM, disks
//! only on a stopped one); bad input changes nothing; snapshots outlive a
//! vman restart; the sweep sees an internal snapshot deleted behind vman's
//! back. Slow (a guest boots under TCG): run alone with
//! `cargo test --test snapshots`.

mod common;

use std::{path::Path, time::Duration};

use common::{TestServer, VmanProcess, free_port, wait_for_line};
use serde_json::{Value, json};
use vman::config::Accel;

const BOOT: Duration = Duration::from_secs(90);
const ANSWER: Duration = Duration::from_secs(30);

const CREATE: &str = "mutation($vm: ID!, $n: String!, $m: Boolean!) { createSnapshot(vmId: $vm, name: $n, withMemory: $m) { snapshot { id name withMemory vmState diskIds vm { state } } operation { status kind } plan { action } } }";
const RESTORE: &str = "mutation($id: ID!) { restoreSnapshot(id: $id) { snapshot { vm { state } } operation { status kind } plan { action } } }";
const DELETE: &str =
    "mutation($id: ID!) { deleteSnapshot(id: $id) { snapshot { name } operation { status } } }";
const SEND: &str =
    "mutation($vm: ID!, $data: String!) { sendConsoleInput(vmId: $vm, data: $data) { bytes } }";
const LIST: &str = "query($id: ID) { vm(id: $id) { snapshots { id name withMemory vmState } } }";

async fn create_snapshot(server: &TestServer, vm: &str, name: &str, memory: bool) -> Value {
    server
        .ok(CREATE, json!({"vm": vm, "n": name, "m": memory}))
        .await["createSnapshot"]
        .clone()
}

async fn restore(server: &TestServer, id: &str) -> Value {
    server.ok(RESTORE, json!({"id": id})).await["restoreSnapshot"].clone()
}

/// Types a shell line into the guest's console.
async fn type_line(server: &TestServer, vm: &str, line: &str) {
    server
        .ok(SEND, json!({"vm": vm, "data": format!("{line}\n")}))
        .await;
}

/// Writes an 8-byte marker at the start of the guest's /dev/vda, past its page cache.
async fn write_marker(server: &TestServer, vm: &str, marker: &str) {
    assert_eq!(marker.len(), 8);
    type_line(
        server,
        vm,
        &format!("printf {marker} | dd of=/dev/vda bs=8 count=1 conv=fsync 2>/dev/null"),
    )
    .await;
}

/// Reads the marker back as the guest sees it; `probe` tells the answer
/// apart from the echo of the command (and from earlier answers).
async fn read_marker(server: &TestServer, vm: &str, probe: &str, serial: &Path) -> String {
    type_line(
        server,
        vm,
        &format!("echo 3 >/proc/sys/vm/drop_caches; echo {probe}=$(head -c 8 /dev/vda)."),
    )
    .await;
    let needle = format!("{probe}=");
    let deadline = tokio::time::Instant::now() + ANSWER;
    loop {
        let text = std::fs::read_to_string(serial).unwrap_or_default();
        // The echo of the command holds `{probe}=$(`; the answer, the marker.
        if let Some(answer) = text
            .match_indices(&needle)
            .map(|(at, _)| &text[at + needle.len()..])
            .find(|rest| !rest.starts_with("$("))
            && let Some(end) = answer.find('.')
        {
            return answer[..end].to_string();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no answer to {probe} within {ANSWER:?}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn stop_query() -> &'static str {
    "mutation($id: ID!) { stopVm(id: $id, timeoutSeconds: 60) { vm { state } } }"
}

#[tokio::test]
async fn a_guest_gets_its_marker_back_from_a_snapshot_with_memory_and_from_one_of_its_stopped_disks()
 {
    let server = TestServer::real(Accel::Tcg).await;
    server
        .guest_template("tiny", "console=ttyS0 panic=-1")
        .await;
    let vm = server.create_vm("snap-guest", "tiny").await;
    server.start_vm(&vm).await;
    let serial = server.run_dir(&vm).join("serial.log");
    wait_for_line(&serial, "VMAN-GUEST-READY", BOOT).await;

    // A hot-plugged qcow2 disk, and a marker on it.
    let disk = server.create_disk("snap-data", 16 << 20, "QCOW2").await;
    server
        .ok(
            "mutation($d: ID!, $v: ID!) { attachDisk(diskId: $d, vmId: $v) { disk { attachment } } }",
            json!({"d": disk, "v": vm}),
        )
        .await;
    wait_for_line(&serial, "VMAN-GUEST-DISK-ADDED vda", ANSWER).await;
    write_marker(&server, &vm, "MARK-ONE").await;
    assert_eq!(read_marker(&server, &vm, "R1", &serial).await, "MARK-ONE");

    // With memory, live.
    let live = create_snapshot(&server, &vm, "live", true).await;
    assert_eq!(live["operation"]["status"], "SUCCEEDED", "{live:#}");
    assert_eq!(live["operation"]["kind"], "CREATE_SNAPSHOT");
    assert_eq!(live["snapshot"]["withMemory"], true);
    assert_eq!(live["snapshot"]["vmState"], "RUNNING");
    assert_eq!(live["snapshot"]["diskIds"], json!([disk]));
    assert_eq!(live["snapshot"]["vm"]["state"], "RUNNING");
    let plan: Vec<&str> = live["plan"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["action"].as_str().unwrap())
        .collect();
    assert_eq!(plan, ["qmp", "await", "qmp", "qmp"]);
    let live_id = live["snapshot"]["id"].as_str().unwrap().to_string();
    let disk_path = server
        .app
        .ctx
        .config
        .storage_dir()
        .join(format!("{disk}.qcow2"));
    let tags = image_snapshots(&disk_path);
    assert_eq!(tags, [(live_id.clone(), true)], "the tag, with memory");

    write_marker(&server, &vm, "MARK-TWO").await;
    assert_eq!(read_marker(&server, &vm, "R2", &serial).await, "MARK-TWO");
    let restored = restore(&server, &live_id).await;
    assert_eq!(restored["operation"]["status"], "SUCCEEDED", "{restored:#}");
    assert_eq!(restored["snapshot"]["vm"]["state"], "RUNNING");
    // The guest runs on from the snapshot's instant: its disk as it was then.
    assert_eq!(read_marker(&server, &vm, "R3", &serial).await, "MARK-ONE");

    // Stopped, without memory: its disks only.
    let stopped = server.ok(stop_query(), json!({"id": vm})).await;
    assert_eq!(stopped["stopVm"]["vm"]["state"], "STOPPED");
    let cold = create_snapshot(&server, &vm, "cold", false).await;
    assert_eq!(cold["snapshot"]["vmState"], "STOPPED");
    assert_eq!(cold["plan"][0]["action"], "exec");
    let cold_id = cold["snapshot"]["id"].as_str().unwrap().to_string();
    server.start_vm(&vm).await;
    wait_for_line(&serial, "VMAN-GUEST-READY", BOOT).await;
    assert_eq!(read_marker(&server, &vm, "R4", &serial).await, "MARK-ONE");
    write_marker(&server, &vm, "MARK-SIX").await;
    assert_eq!(read_marker(&server, &vm, "R5", &serial).await, "MARK-SIX");

    // Without memory, onto a running VM: refused, nothing changes.
    let before = server.snapshot().await;
    let code = server.error_code(RESTORE, json!({"id": cold_id})).await;
    assert_eq!(code, "INVALID_STATE");
    assert_eq!(server.vm_state(&vm).await, "RUNNING");
    assert_eq!(read_marker(&server, &vm, "R6", &serial).await, "MARK-SIX");
    let after = server.snapshot().await;
    assert_eq!(before["vms"], after["vms"]);
    assert_eq!(before["events"], after["events"]);

    server.ok(stop_query(), json!({"id": vm})).await;
    let restored = restore(&server, &cold_id).await;
    assert_eq!(restored["snapshot"]["vm"]["state"], "STOPPED");
    server.start_vm(&vm).await;
    wait_for_line(&serial, "VMAN-GUEST-READY", BOOT).await;
    assert_eq!(read_marker(&server, &vm, "R7", &serial).await, "MARK-ONE");

    // With memory, in a run whose QEMU was started with the disk.
    let warm = create_snapshot(&server, &vm, "warm", true).await;
    assert_eq!(warm["operation"]["status"], "SUCCEEDED", "{warm:#}");
    let warm_id = warm["snapshot"]["id"].as_str().unwrap().to_string();
    write_marker(&server, &vm, "MARK-TEN").await;
    assert_eq!(read_marker(&server, &vm, "R8", &serial).await, "MARK-TEN");
    server.ok(stop_query(), json!({"id": vm})).await;

    // The memory of a run whose disk was hot-plugged does not load into a
    // QEMU started with it: refused, and nothing changes.
    let before = (server.snapshot().await, image_snapshots(&disk_path));
    let response = server.post(RESTORE, json!({"id": live_id})).await;
    let error = &response["errors"][0];
    assert_eq!(error["extensions"]["code"], "INVALID_STATE", "{response:#}");
    assert!(
        error["message"].as_str().unwrap().contains("hot-plugged"),
        "{response:#}"
    );
    assert_eq!(
        before,
        (server.snapshot().await, image_snapshots(&disk_path))
    );
    assert_eq!(server.vm_state(&vm).await, "STOPPED");

    // With memory, onto a stopped VM: it starts from the snapshot (`-loadvm`).
    let restored = restore(&server, &warm_id).await;
    assert_eq!(restored["operation"]["status"], "SUCCEEDED", "{restored:#}");
    assert_eq!(restored["snapshot"]["vm"]["state"], "RUNNING");
    let spawn = restored["plan"]
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s["action"] == "spawnQemu");
    assert!(spawn, "{restored:#}");
    assert_eq!(read_marker(&server, &vm, "R9", &serial).await, "MARK-ONE");
    let serial_text = std::fs::read_to_string(&serial).unwrap();
    assert!(
        !serial_text.contains("VMAN-GUEST-READY"),
        "the guest did not boot again, it went on: {serial_text}"
    );

    // Deleting a snapshot of a running VM takes its tag out of the disk.
    let deleted = server.ok(DELETE, json!({"id": live_id})).await;
    assert_eq!(
        deleted["deleteSnapshot"]["operation"]["status"],
        "SUCCEEDED"
    );
    let tags: Vec<String> = image_snapshots(&disk_path)
        .into_iter()
        .map(|(tag, _)| tag)
        .collect();
    assert_eq!(tags, [cold_id.clone(), warm_id.clone()]);
    let kinds: Vec<String> = server
        .journal()
        .await
        .iter()
        .filter_map(|e| e["kind"].as_str().filter(|k| k.starts_with("SNAPSHOT_")))
        .map(str::to_string)
        .collect();
    assert_eq!(
        kinds,
        [
            "SNAPSHOT_CREATED",
            "SNAPSHOT_RESTORED",
            "SNAPSHOT_CREATED",
            "SNAPSHOT_RESTORED",
            "SNAPSHOT_CREATED",
            "SNAPSHOT_RESTORED",
            "SNAPSHOT_DELETED"
        ]
    );
}

/// The internal snapshots of a qcow2 file: tag, and whether it holds memory.
fn image_snapshots(path: &Path) -> Vec<(String, bool)> {
    let out = std::process::Command::new("qemu-img")
        .args(["info", "--output=json", "--force-share"])
        .arg(path)
        .output()
        .expect("qemu-img runs");
    assert!(out.status.success(), "{out:?}");
    let info: Value = serde_json::from_slice(&out.stdout).unwrap();
    info["snapshots"]
        .as_array()
        .map(|s| {
            s.iter()
                .map(|s| {
                    (
                        s["name"].as_str().unwrap().to_string(),
                        s["vm-state-size"].as_u64().unwrap_or(0) > 0,
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A VM without a guest (its firmware finds nothing to boot and waits):
/// enough for QEMU's side of snapshots.
async fn bare_vm(server: &TestServer, name: &str) -> String {
    let data = server
        .ok(
            "mutation($n: String!) { createVm(input: {name: $n, vcpus: 1, memoryMib: 64}) { vm { id } } }",
            json!({"n": name}),
        )
        .await;
    data["createVm"]["vm"]["id"].as_str().unwrap().to_string()
}

async fn attach(server: &TestServer, disk: &str, vm: &str) {
    server
        .ok(
            "mutation($d: ID!, $v: ID!) { attachDisk(diskId: $d, vmId: $v) { disk { attachment } } }",
            json!({"d": disk, "v": vm}),
        )
        .await;
}

fn storage_files(server: &TestServer) -> Vec<(String, Vec<(String, bool)>)> {
    let dir = server.app.ctx.config.storage_dir();
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "qcow2"))
        .map(|e| {
            let tags = image_snapshots(&e.path());
            (e.file_name().to_string_lossy().into_owned(), tags)
        })
        .collect();
    files.sort();
    files
}

#[tokio::test]
async fn bad_snapshot_requests_are_refused_with_their_code_and_change_nothing() {
    let server = TestServer::real(Accel::Tcg).await;
    let vm = bare_vm(&server, "bare").await;
    let disk = server.create_disk("bare-data", 8 << 20, "QCOW2").await;
    attach(&server, &disk, &vm).await;

    // No memory to save on a stopped VM.
    let nothing_yet = (server.snapshot().await, storage_files(&server));
    let code = server
        .error_code(CREATE, json!({"vm": vm, "n": "mem", "m": true}))
        .await;
    assert_eq!(code, "INVALID_STATE");
    // A bad name.
    let code = server
        .error_code(CREATE, json!({"vm": vm, "n": "Not A Name", "m": false}))
        .await;
    assert_eq!(code, "BAD_USER_INPUT");
    assert_eq!(
        nothing_yet,
        (server.snapshot().await, storage_files(&server))
    );

    // A raw disk: refused, naming it.
    let raw_vm = bare_vm(&server, "with-raw").await;
    let raw = server.create_disk("raw-one", 8 << 20, "RAW").await;
    attach(&server, &raw, &raw_vm).await;
    let before = (server.snapshot().await, storage_files(&server));
    let response = server
        .post(CREATE, json!({"vm": raw_vm, "n": "s", "m": false}))
        .await;
    let error = &response["errors"][0];
    assert_eq!(
        error["extensions"]["code"], "BAD_USER_INPUT",
        "{response:#}"
    );
    assert!(
        error["message"].as_str().unwrap().contains("raw-one"),
        "{response:#}"
    );
    assert_eq!(before, (server.snapshot().await, storage_files(&server)));

    server.start_vm(&vm).await;
    // A dry run plans the job and changes nothing.
    let before = (server.snapshot().await, storage_files(&server));
    let planned = server
        .ok(
            "mutation($vm: ID!) { createSnapshot(vmId: $vm, name: \"dry\", withMemory: true, dryRun: true) { operation { id } plan { action detail } } }",
            json!({"vm": vm}),
        )
        .await;
    let plan = &planned["createSnapshot"]["plan"];
    assert!(planned["createSnapshot"]["operation"].is_null());
    assert_eq!(plan[0]["detail"]["command"], "snapshot-save", "{plan:#}");
    assert_eq!(plan[1]["action"], "await", "{plan:#}");
    assert_eq!(plan[3]["detail"]["command"], "job-dismiss", "{plan:#}");
    assert_eq!(before, (server.snapshot().await, storage_files(&server)));

    // Running, without memory: one transaction over the disks.
    let taken = create_snapshot(&server, &vm, "first", false).await;
    assert_eq!(taken["plan"][0]["action"], "qmp");
    assert_eq!(taken["snapshot"]["vmState"], "RUNNING");
    let first = taken["snapshot"]["id"].as_str().unwrap().to_string();

    // The same name again on this VM.
    let before = (server.snapshot().await, storage_files(&server));
    let code = server
        .error_code(CREATE, json!({"vm": vm, "n": "first", "m": false}))
        .await;
    assert_eq!(code, "CONFLICT");
    // Without memory, onto the running VM.
    let code = server.error_code(RESTORE, json!({"id": first})).await;
    assert_eq!(code, "INVALID_STATE");
    // Unknown and malformed ids.
    let unknown = "0190c3f4-0000-7000-8000-000000000000";
    for query in [RESTORE, DELETE] {
        assert_eq!(
            server.error_code(query, json!({"id": unknown})).await,
            "NOT_FOUND"
        );
        assert_eq!(
            server.error_code(query, json!({"id": "nope"})).await,
            "BAD_USER_INPUT"
        );
    }
    assert_eq!(
        server
            .error_code(CREATE, json!({"vm": unknown, "n": "x", "m": false}))
            .await,
        "NOT_FOUND"
    );
    assert_eq!(before, (server.snapshot().await, storage_files(&server)));

    // A disk attached since the snapshot: its restore is refused, naming it.
    server.ok(stop_query(), json!({"id": vm})).await;
    let later = server.create_disk("later-data", 8 << 20, "QCOW2").await;
    attach(&server, &later, &vm).await;
    let before = (server.snapshot().await, storage_files(&server));
    let response = server.post(RESTORE, json!({"id": first})).await;
    let error = &response["errors"][0];
    assert_eq!(error["extensions"]["code"], "INVALID_STATE", "{response:#}");
    assert!(
        error["message"].as_str().unwrap().contains("later-data"),
        "{response:#}"
    );
    assert_eq!(before, (server.snapshot().await, storage_files(&server)));

    // deleteVm takes its snapshots along.
    server
        .ok(
            "mutation($id: ID!) { deleteVm(id: $id) { vm { name } } }",
            json!({"id": vm}),
        )
        .await;
    let deleted = server
        .journal()
        .await
        .into_iter()
        .filter(|e| e["kind"] == "SNAPSHOT_DELETED")
        .count();
    assert_eq!(deleted, 1);
}

#[tokio::test]
async fn snapshots_outlive_a_restart_and_the_sweep_sees_one_deleted_behind_vmans_back() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let env = [("VMAN_QEMU_ACCEL", "tcg")];
    let http = reqwest::Client::new();
    let vman = VmanProcess::start_with_env(&data, free_port(), &env);
    vman.ready(&http).await;
    let created = vman
        .gql(
            &http,
            "mutation { createVm(input: {name: \"kept\", vcpus: 1, memoryMib: 64}) { vm { id } } }",
            json!({}),
        )
        .await;
    let vm = created["createVm"]["vm"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let created = vman
        .gql(
            &http,
            "mutation { createDisk(input: {name: \"kept-data\", sizeBytes: 8388608}) { disk { id } } }",
            json!({}),
        )
        .await;
    let disk = created["createDisk"]["disk"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    vman.gql(
        &http,
        "mutation($d: ID!, $v: ID!) { attachDisk(diskId: $d, vmId: $v) { disk { attachment } } }",
        json!({"d": disk, "v": vm}),
    )
    .await;
    let taken = vman
        .gql(&http, CREATE, json!({"vm": vm, "n": "keep-me", "m": false}))
        .await;
    let id = taken["createSnapshot"]["snapshot"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let listed = vman.gql(&http, LIST, json!({"id": vm})).await;
    assert_eq!(listed["vm"]["snapshots"][0]["id"], id);
    drop(vman);

    let vman = VmanProcess::start_with_env(&data, free_port(), &env);
    vman.ready(&http).await;
    assert_eq!(vman.gql(&http, LIST, json!({"id": vm})).await, listed);

    let sweep = "mutation { runCoherenceSweep { findings { kind subjectId observed expected } } }";
    let findings = |sweep: &Value| -> Vec<(String, String)> {
        sweep["runCoherenceSweep"]["findings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| {
                (
                    f["kind"].as_str().unwrap().to_string(),
                    f["subjectId"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    let clean = vman.gql(&http, sweep, json!({})).await;
    assert!(findings(&clean).is_empty(), "{clean:#}");

    let path = data.join("storage").join(format!("{disk}.qcow2"));
    assert_eq!(image_snapshots(&path), [(id.clone(), false)]);
    let qemu_img = |args: &[&str]| {
        let status = std::process::Command::new("qemu-img")
            .args(args)
            .arg(&path)
            .status()
            .unwrap();
        assert!(status.success());
    };
    qemu_img(&["snapshot", "-d", &id]);
    qemu_img(&["snapshot", "-c", "made-by-hand"]);
    let swept = vman.gql(&http, sweep, json!({})).await;
    let found = findings(&swept);
    assert!(
        found.contains(&("SNAPSHOT_MISSING_IN_IMAGE".into(), disk.clone())),
        "{swept:#}"
    );
    assert!(
        found.contains(&("SNAPSHOT_UNKNOWN_IN_IMAGE".into(), disk.clone())),
        "{swept:#}"
    );
    let text = swept.to_string();
    assert!(
        text.contains(&id) && text.contains("made-by-hand"),
        "{text}"
    );
}
