//! Real QEMU without a guest OS: lifecycle, process ownership, re-adoption
//! after vman is killed, and hostile inputs.

mod common;

use std::process::Command;

use common::{TestServer, VmanProcess, free_port, kvm_usable};
use serde_json::json;
use vman::config::Accel;

fn accel() -> Accel {
    if kvm_usable() {
        Accel::Kvm
    } else {
        println!("/dev/kvm is not usable here: running the bare VM under TCG");
        Accel::Tcg
    }
}

fn pid_of(server: &TestServer, vm: &str) -> i32 {
    std::fs::read_to_string(server.run_dir(vm).join("qemu.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// The size of a RAW disk's file in storage.
fn raw_disk_len(server: &TestServer, disk: &str) -> u64 {
    let path = server
        .app
        .ctx
        .config
        .storage_dir()
        .join(format!("{disk}.raw"));
    std::fs::metadata(path).unwrap().len()
}

fn alive(pid: i32) -> bool {
    vman::host::qemu::process::is_alive(pid)
}

#[tokio::test]
async fn a_bare_vm_starts_stops_by_force_and_leaves_nothing_behind() {
    let server = TestServer::real(accel()).await;
    server.create_template("bare").await;
    let vm = server.create_vm("bare-1", "bare").await;
    let started = server.start_vm(&vm).await;
    assert_eq!(started["startVm"]["vm"]["state"], "RUNNING");
    let pid = pid_of(&server, &vm);
    assert!(alive(pid));
    // QEMU runs in its own session, so a signal to vman's group never reaches it.
    assert_eq!(unsafe { libc::getsid(pid) }, pid);

    // Pause and resume go to QEMU.
    let paused = server
        .ok(
            "mutation($id: ID!) { pauseVm(id: $id) { vm { state } } }",
            json!({"id": vm}),
        )
        .await;
    assert_eq!(paused["pauseVm"]["vm"]["state"], "PAUSED");
    let resumed = server
        .ok(
            "mutation($id: ID!) { resumeVm(id: $id) { vm { state } } }",
            json!({"id": vm}),
        )
        .await;
    assert_eq!(resumed["resumeVm"]["vm"]["state"], "RUNNING");

    let stopped = server
        .ok(
            "mutation($id: ID!) { stopVm(id: $id, force: true) { vm { state stateReason } } }",
            json!({"id": vm}),
        )
        .await;
    assert_eq!(stopped["stopVm"]["vm"]["state"], "STOPPED");
    assert_eq!(
        stopped["stopVm"]["vm"]["stateReason"],
        "stopped by QEMU quit"
    );
    assert!(!alive(pid));

    let root_disk = server
        .ok(
            "query($id: ID) { vm(id: $id) { disks { id } } }",
            json!({"id": vm}),
        )
        .await["vm"]["disks"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let disk_file = server
        .app
        .ctx
        .config
        .storage_dir()
        .join(format!("{root_disk}.qcow2"));
    assert!(disk_file.is_file(), "the root disk was made with qemu-img");
    server
        .ok(
            "mutation($id: ID!) { deleteVm(id: $id) { vm { id } } }",
            json!({"id": vm}),
        )
        .await;
    assert!(!server.run_dir(&vm).exists(), "the run dir is gone");
    assert!(!disk_file.exists(), "owned disks are deleted with the VM");
}

#[tokio::test]
async fn a_graceful_stop_of_a_vm_without_an_os_escalates_to_quit() {
    let server = TestServer::real(accel()).await;
    server.create_template("bare").await;
    let vm = server.create_vm("bare-2", "bare").await;
    server.start_vm(&vm).await;
    let stopped = server
        .ok("mutation($id: ID!) { stopVm(id: $id, timeoutSeconds: 1) { vm { state stateReason } operation { steps { action } } } }", json!({"id": vm}))
        .await;
    assert_eq!(stopped["stopVm"]["vm"]["state"], "STOPPED");
    // No OS answers the ACPI button, so the ladder went on to `quit`.
    assert_eq!(
        stopped["stopVm"]["vm"]["stateReason"],
        "stopped by QEMU quit"
    );
}

#[tokio::test]
async fn hot_plug_into_a_vm_without_an_os_leaves_the_detach_visible_and_nothing_blocked() {
    let server = TestServer::real(accel()).await;
    server.create_template("bare").await;
    let vm = server.create_vm("bare-3", "bare").await;
    server.start_vm(&vm).await;
    let disk = server.create_disk("extra", 1 << 20, "RAW").await;
    let attach =
        "mutation($d: ID!, $v: ID!) { attachDisk(diskId: $d, vmId: $v) { disk { attachment } } }";
    let attached = server.ok(attach, json!({"d": disk, "v": vm})).await;
    assert_eq!(attached["attachDisk"]["disk"]["attachment"], "ATTACHED");
    // A hot-plug that fails half-way takes back what it added. This qcow2
    // disk's file is overwritten with zeros: QEMU opens the file node, then
    // refuses the qcow2 node (and so the device). Were the file node left
    // behind, the next attach of the same disk would fail on its node name.
    let broken = server.create_disk("broken", 1 << 20, "QCOW2").await;
    let broken_file = server
        .app
        .ctx
        .config
        .storage_dir()
        .join(format!("{broken}.qcow2"));
    std::fs::write(&broken_file, vec![0u8; 1 << 20]).unwrap();
    let attach_broken = json!({"d": broken, "v": vm});
    assert_eq!(
        server.error_code(attach, attach_broken.clone()).await,
        "HOST_ERROR"
    );
    let broken_now = server
        .ok(
            "query($id: ID) { disk(id: $id) { attachment } }",
            json!({"id": broken}),
        )
        .await;
    assert_eq!(broken_now["disk"]["attachment"], "DETACHED");
    let remade = std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&broken_file)
        .arg("1M")
        .status()
        .unwrap();
    assert!(remade.success());
    let retried = server.ok(attach, attach_broken).await;
    assert_eq!(retried["attachDisk"]["disk"]["attachment"], "ATTACHED");
    // A disk of a running VM grows live (block_resize); it never shrinks.
    let grown = server
        .ok("mutation($d: ID!) { resizeDisk(diskId: $d, sizeBytes: 2097152) { disk { sizeBytes } plan { summary } } }", json!({"d": disk}))
        .await;
    assert_eq!(grown["resizeDisk"]["disk"]["sizeBytes"], 2097152);
    assert!(
        grown["resizeDisk"]["plan"][0]["summary"]
            .as_str()
            .unwrap()
            .contains("block_resize")
    );
    assert_eq!(raw_disk_len(&server, &disk), 2097152);
    assert_eq!(
        server
            .error_code(
                "mutation($d: ID!) { resizeDisk(diskId: $d, sizeBytes: 1048576) { disk { id } } }",
                json!({"d": disk})
            )
            .await,
        "BAD_USER_INPUT"
    );
    let detached = server
        .ok(
            "mutation($d: ID!) { detachDisk(diskId: $d) { disk { attachment } } }",
            json!({"d": disk}),
        )
        .await;
    assert_eq!(
        detached["detachDisk"]["disk"]["attachment"], "DETACHING",
        "no guest acknowledges device_del"
    );
    // The VM is not held: other operations go on.
    let paused = server
        .ok(
            "mutation($id: ID!) { pauseVm(id: $id) { vm { state } } }",
            json!({"id": vm}),
        )
        .await;
    assert_eq!(paused["pauseVm"]["vm"]["state"], "PAUSED");
    // Stopping the VM releases the disk.
    server.stop_vm(&vm).await;
    let disk_now = server
        .ok(
            "query($id: ID) { disk(id: $id) { attachment vm { id } } }",
            json!({"id": disk}),
        )
        .await;
    assert_eq!(disk_now["disk"]["attachment"], "DETACHED");
    assert!(disk_now["disk"]["vm"].is_null());
    // A detached disk grows with qemu-img.
    server
        .ok("mutation($d: ID!) { resizeDisk(diskId: $d, sizeBytes: 4194304) { disk { sizeBytes } } }", json!({"d": disk}))
        .await;
    assert_eq!(raw_disk_len(&server, &disk), 4194304);
}

#[tokio::test]
async fn killing_vman_stops_no_vm_and_a_restarted_vman_adopts_them() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let http = reqwest::Client::new();
    let mut vman = VmanProcess::start(&data, free_port());
    vman.ready(&http).await;
    vman.gql(&http, "mutation { createTemplate(input: {name: \"bare\", vcpus: 1, memoryMib: 64}) { template { id } } }", json!({}))
        .await;
    let mut vms = Vec::new();
    for name in ["keep-1", "keep-2"] {
        let data = vman
            .gql(&http, "mutation($n: String!) { createVm(input: {name: $n, templateName: \"bare\"}) { vm { id } } }", json!({"n": name}))
            .await;
        let id = data["createVm"]["vm"]["id"].as_str().unwrap().to_string();
        let started = vman
            .gql(
                &http,
                "mutation($id: ID!) { startVm(id: $id) { vm { state } } }",
                json!({"id": id}),
            )
            .await;
        assert_eq!(started["startVm"]["vm"]["state"], "RUNNING");
        vms.push(id);
    }
    let pid = |id: &str| -> i32 {
        std::fs::read_to_string(data.join("run").join(id).join("qemu.pid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    let pids: Vec<i32> = vms.iter().map(|id| pid(id)).collect();

    vman.child.kill().unwrap(); // SIGKILL
    vman.child.wait().unwrap();
    // Only vman died: keep the VMs this guard would otherwise end.
    let run_dir = std::mem::take(&mut vman.run_dir);
    drop(vman);
    for p in &pids {
        assert!(alive(*p), "QEMU {p} died with vman");
    }

    // A run directory no VM owns is reported after the restart, and left alone.
    let stray = run_dir.join("01940000-0000-7000-8000-0000000000aa");
    std::fs::create_dir_all(&stray).unwrap();
    let vman = VmanProcess::start(&data, free_port());
    assert_eq!(vman.run_dir, run_dir);
    vman.ready(&http).await;
    let health = vman
        .gql(&http, "{ health { adoptionProblems } }", json!({}))
        .await;
    let problems = health["health"]["adoptionProblems"].to_string();
    assert!(
        problems.contains("01940000-0000-7000-8000-0000000000aa"),
        "{problems}"
    );
    assert!(stray.is_dir());
    for (id, old_pid) in vms.iter().zip(&pids) {
        let data = vman
            .gql(
                &http,
                "query($id: ID) { vm(id: $id) { state stateReason } }",
                json!({"id": id}),
            )
            .await;
        assert_eq!(data["vm"]["state"], "RUNNING", "{data}");
        assert!(
            data["vm"]["stateReason"]
                .as_str()
                .unwrap()
                .contains("re-adopted"),
            "{data}"
        );
        assert_eq!(pid(id), *old_pid, "nothing was restarted");
        let stopped = vman
            .gql(
                &http,
                "mutation($id: ID!) { stopVm(id: $id, force: true) { vm { state } } }",
                json!({"id": id}),
            )
            .await;
        assert_eq!(stopped["stopVm"]["vm"]["state"], "STOPPED");
        assert!(!alive(*old_pid));
    }
}

#[tokio::test]
async fn hostile_inputs_are_rejected_and_change_nothing() {
    // Its own import directory (under the temp data dir), not the test guest's.
    let server = TestServer::start_with(|c| {
        c.dry_run = false;
        c.qemu.accel = accel();
    })
    .await;
    // An image whose qcow2 header names /etc/passwd as its backing file.
    let import = server.app.ctx.config.import_dir();
    let evil = tempfile::Builder::new()
        .suffix(".qcow2")
        .tempfile_in(&import)
        .unwrap();
    let status = Command::new("qemu-img")
        .args([
            "create",
            "-q",
            "-f",
            "qcow2",
            "-F",
            "raw",
            "-b",
            "/etc/passwd",
        ])
        .arg(evil.path())
        .arg("1M")
        .status()
        .unwrap();
    assert!(status.success());
    let evil_name = evil
        .path()
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    let before = server.snapshot().await;
    let long = "x".repeat(4096);
    let cases = [
        (
            "mutation($p: String!) { importImage(input: {name: \"evil\", kind: DISK, path: $p}) { image { id } } }",
            json!({"p": evil_name}),
        ),
        (
            "mutation($p: String!) { importImage(input: {name: \"evil\", kind: DISK, path: $p}) { image { id } } }",
            json!({"p": "../vman.db"}),
        ),
        (
            "mutation($p: String!) { importImage(input: {name: \"evil\", kind: KERNEL, path: $p}) { image { id } } }",
            json!({"p": "/etc/passwd"}),
        ),
        (
            "mutation($p: String!) { importImage(input: {name: \"evil\", kind: KERNEL, path: $p}) { image { id } } }",
            json!({"p": long}),
        ),
        (
            "mutation($n: String!) { createDisk(input: {name: $n, sizeBytes: 1048576}) { disk { id } } }",
            json!({"n": "a,file=/etc/passwd"}),
        ),
        (
            "mutation($n: String!) { createDisk(input: {name: $n, sizeBytes: 1048576}) { disk { id } } }",
            json!({"n": "..%2fetc"}),
        ),
        (
            "mutation($n: String!) { createDisk(input: {name: $n, sizeBytes: 1048576}) { disk { id } } }",
            json!({"n": long}),
        ),
        (
            "mutation { createDisk(input: {name: \"zero\", sizeBytes: 0}) { disk { id } } }",
            json!({}),
        ),
        (
            "mutation { createDisk(input: {name: \"huge\", sizeBytes: 11258999068426240}) { disk { id } } }",
            json!({}),
        ),
        (
            "mutation($c: String!) { createTemplate(input: {name: \"t\", vcpus: 1, memoryMib: 64, cmdline: $c}) { template { id } } }",
            json!({"c": "console=ttyS0"}),
        ),
    ];
    for (query, vars) in &cases {
        assert_eq!(
            server.error_code(query, vars.clone()).await,
            "BAD_USER_INPUT",
            "{query} {vars}"
        );
    }
    assert_eq!(server.snapshot().await, before);
    let images: Vec<_> = std::fs::read_dir(server.app.ctx.config.storage_dir().join("images"))
        .unwrap()
        .collect();
    assert!(images.is_empty(), "nothing was copied into storage");
}

#[tokio::test]
async fn a_qemu_killed_behind_vmans_back_is_a_crash_pushed_to_subscribers() {
    let server = TestServer::real(accel()).await;
    server.create_template("bare").await;
    let vm = server.create_vm("victim", "bare").await;
    server.start_vm(&vm).await;
    let head = server.journal().await.last().unwrap()["sequence"].clone();
    let mut ws = common::WsClient::connect(&server.ws_url).await;
    ws.subscribe(
        "s",
        "subscription($vm: ID, $after: String) { vmStateChanged(vmId: $vm, after: $after) { from to reason sequence } }",
        json!({"vm": vm, "after": head}),
    )
    .await;
    let pid = pid_of(&server, &vm);
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let change = ws.next_data("s").await["vmStateChanged"].clone();
    assert_eq!(
        (change["from"].as_str(), change["to"].as_str()),
        (Some("RUNNING"), Some("CRASHED")),
        "{change}"
    );
    assert!(
        change["reason"].as_str().unwrap().contains("SIGKILL"),
        "{change}"
    );
    // The journal keeps the forensics.
    let crash = server
        .journal()
        .await
        .into_iter()
        .find(|e| e["sequence"] == change["sequence"])
        .unwrap();
    assert_eq!(crash["payload"]["detail"]["exit"], "signal 9 (SIGKILL)");
    assert!(crash["payload"]["detail"].get("qemuLog").is_some());
    // A crashed VM starts again.
    let started = server.start_vm(&vm).await;
    assert_eq!(started["startVm"]["vm"]["state"], "RUNNING");
    ws.close().await;
}

#[tokio::test]
async fn a_vm_from_a_base_image_gets_a_qcow2_overlay_of_it() {
    let server = TestServer::start_with(|c| {
        c.dry_run = false;
        c.qemu.accel = accel();
    })
    .await;
    std::fs::write(
        server.app.ctx.config.import_dir().join("base.raw"),
        vec![0u8; 2 << 20],
    )
    .unwrap();
    let image = server
        .ok("mutation { importImage(input: {name: \"base\", kind: DISK, path: \"base.raw\"}) { image { id format sizeBytes } } }", json!({}))
        .await["importImage"]["image"]
        .clone();
    assert_eq!(image["format"], "RAW");
    assert_eq!(image["sizeBytes"], 2 << 20);
    server
        .ok(
            "mutation($b: ID!) { createTemplate(input: {name: \"based\", vcpus: 1, memoryMib: 64, baseImageId: $b}) { template { id } } }",
            json!({"b": image["id"]}),
        )
        .await;
    let vm = server.create_vm("overlaid", "based").await;
    let disk = server
        .ok(
            "query($id: ID) { vm(id: $id) { disks { id sizeBytes backingTemplate { name } } } }",
            json!({"id": vm}),
        )
        .await["vm"]["disks"][0]
        .clone();
    assert_eq!(disk["backingTemplate"]["name"], "based");
    assert_eq!(
        disk["sizeBytes"],
        2 << 20,
        "the overlay is as large as its base"
    );
    let overlay = server
        .app
        .ctx
        .config
        .storage_dir()
        .join(format!("{}.qcow2", disk["id"].as_str().unwrap()));
    let info = Command::new("qemu-img")
        .args(["info", "--output=json", "-U"])
        .arg(&overlay)
        .output()
        .unwrap();
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(info["format"], "qcow2");
    assert_eq!(info["backing-filename-format"], "raw");
    assert!(
        info["backing-filename"]
            .as_str()
            .unwrap()
            .ends_with(image["id"].as_str().unwrap())
    );
    let started = server.start_vm(&vm).await;
    assert_eq!(started["startVm"]["vm"]["state"], "RUNNING");
    server.stop_vm(&vm).await;
}
