//! cloneVm, and the long-operation machinery it runs on: linked clones on
//! frozen bases, full copies with progress pushed over `operationProgress`,
//! `cancelOperation` leaving nothing behind, and bad input refused with its
//! code and nothing changed. The full clones run real qemu-img; the linked
//! clone that boots runs the test guest under real QEMU (TCG).

mod common;

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use common::{ProgressWatch, TestServer, WAIT};
use serde_json::{Value, json};
use vman::config::Accel;

const CLONE: &str = "mutation($id: ID!, $name: String!, $linked: Boolean!) { cloneVm(id: $id, name: $name, linked: $linked) { vm { id name state vcpus memoryMib tags template { id } disks { id name format sizeBytes } nics { mac network { id } } } operation { id status kind targetId progress { fraction bytesDone bytesTotal } } plan { action } } }";
const CANCEL: &str = "mutation($id: ID!) { cancelOperation(id: $id) { id status errorCode progress { fraction bytesDone bytesTotal } } }";
const DELETE_VM: &str = "mutation($id: ID!) { deleteVm(id: $id) { vm { id } } }";

/// How long a 1 GiB copy may take (rate-limited to 256 MiB/s, on a busy host).
const COPY: Duration = Duration::from_secs(120);

async fn clone(server: &TestServer, id: &str, name: &str, linked: bool) -> Value {
    server
        .ok(CLONE, json!({"id": id, "name": name, "linked": linked}))
        .await["cloneVm"]
        .clone()
}

async fn clone_error(server: &TestServer, id: &str, name: &str, linked: bool) -> (String, String) {
    let response = server
        .post(CLONE, json!({"id": id, "name": name, "linked": linked}))
        .await;
    let error = &response["errors"][0];
    assert!(!error.is_null(), "expected an error: {response:#}");
    (
        error["extensions"]["code"].as_str().unwrap().to_string(),
        error["message"].as_str().unwrap().to_string(),
    )
}

/// A VM with no template and no disk.
async fn bare_vm(server: &TestServer, name: &str) -> String {
    server
        .ok(
            "mutation($n: String!) { createVm(input: {name: $n, vcpus: 1, memoryMib: 128, tags: [\"web\", \"prod\"]}) { vm { id } } }",
            json!({"n": name}),
        )
        .await["createVm"]["vm"]["id"]
        .as_str()
        .unwrap()
        .to_string()
}

async fn attach(server: &TestServer, disk: &str, vm: &str) {
    server
        .ok(
            "mutation($d: ID!, $v: ID!) { attachDisk(diskId: $d, vmId: $v) { disk { id } } }",
            json!({"d": disk, "v": vm}),
        )
        .await;
}

fn storage(server: &TestServer) -> PathBuf {
    server.app.ctx.config.storage_dir()
}

fn files(dir: &Path) -> Vec<String> {
    common::file_names(dir)
}

fn sha256(path: &Path) -> String {
    common::sha256_hex(&std::fs::read(path).unwrap())
}

/// The process whose command line names `path` (its argument, exactly).
fn process_naming(path: &Path) -> Option<i32> {
    let wanted = path.as_os_str().as_encoded_bytes();
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid = entry.file_name().to_str()?.parse::<i32>().ok()?;
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            cmdline
                .split(|b| *b == 0)
                .any(|arg| arg == wanted)
                .then_some(pid)
        })
}

fn run(argv: &[&str]) {
    let status = std::process::Command::new(argv[0])
        .args(&argv[1..])
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "{argv:?}");
}

#[tokio::test]
async fn bad_clones_are_refused_with_their_code_and_change_nothing() {
    let server = TestServer::start().await;
    server.create_template("tiny").await;
    let web = server.create_vm("web", "tiny").await;
    server.create_vm("taken", "tiny").await;
    let raw_vm = bare_vm(&server, "rawvm").await;
    let raw = server.create_disk("rawvm-data", 1 << 20, "RAW").await;
    attach(&server, &raw, &raw_vm).await;
    let before = server.snapshot().await;

    let refused = [
        (
            "name taken",
            web.as_str(),
            "taken",
            false,
            "CONFLICT",
            "taken",
        ),
        (
            "bad name",
            &web,
            "Bad Name",
            false,
            "BAD_USER_INPUT",
            "Bad Name",
        ),
        (
            "unknown VM",
            "01940000-0000-7000-8000-000000000000",
            "c1",
            false,
            "NOT_FOUND",
            "01940000-0000-7000-8000-000000000000",
        ),
        (
            "a linked clone of a raw disk",
            &raw_vm,
            "c2",
            true,
            "BAD_USER_INPUT",
            "rawvm-data",
        ),
    ];
    for (what, id, name, linked, code, named) in refused {
        let (got, message) = clone_error(&server, id, name, linked).await;
        assert_eq!(got, code, "{what}: {message}");
        assert!(message.contains(named), "{what}: {message}");
    }
    // A disk the clone's would be named like.
    server.create_disk("web2-root", 1 << 20, "QCOW2").await;
    let (code, message) = clone_error(&server, &web, "web2", false).await;
    assert_eq!(code, "CONFLICT", "{message}");
    assert!(message.contains("web2-root"), "{message}");
    server
        .ok(
            "mutation { deleteDisk(name: \"web2-root\") { disk { id } } }",
            json!({}),
        )
        .await;
    // A running source.
    server.start_vm(&web).await;
    let (code, message) = clone_error(&server, &web, "c3", true).await;
    assert_eq!(code, "INVALID_STATE", "{message}");
    assert!(message.contains("RUNNING"), "{message}");
    server.stop_vm(&web).await;

    // A source with snapshots: freezing would move them under the base.
    let snapshot = server
        .ok(
            "mutation($vm: ID!) { createSnapshot(vmId: $vm, name: \"before-upgrade\", withMemory: false) { snapshot { id } } }",
            json!({"vm": web}),
        )
        .await["createSnapshot"]["snapshot"]["id"]
        .clone();
    let (code, message) = clone_error(&server, &web, "c4", true).await;
    assert_eq!(code, "CONFLICT", "{message}");
    assert!(message.contains("before-upgrade"), "{message}");
    server
        .ok(
            "mutation($id: ID!) { deleteSnapshot(id: $id) { snapshot { id } } }",
            json!({"id": snapshot}),
        )
        .await;

    let after = server.snapshot().await;
    for part in ["templates", "vms", "disks", "networks"] {
        assert_eq!(before[part], after[part], "{part}");
    }
    assert_eq!(
        files(&storage(&server)).len(),
        0,
        "a dry run writes no file"
    );

    // cancelOperation: an unknown operation, and one that has ended.
    let code = server
        .error_code(
            CANCEL,
            json!({"id": "01940000-0000-7000-8000-000000000000"}),
        )
        .await;
    assert_eq!(code, "NOT_FOUND");
    let ended = server
        .ok(
            "{ operations(first: 1) { edges { node { id } } } }",
            json!({}),
        )
        .await["operations"]["edges"][0]["node"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let response = server.post(CANCEL, json!({"id": ended})).await;
    assert_eq!(
        response["errors"][0]["extensions"]["code"], "INVALID_STATE",
        "{response:#}"
    );
    assert!(
        response["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("SUCCEEDED"),
        "{response:#}"
    );
}

#[tokio::test]
async fn a_linked_clone_is_a_new_vm_on_the_same_networks_and_its_source_cannot_go_while_it_lives() {
    let server = TestServer::start().await;
    let template = server.create_template("tiny").await;
    let web = server.create_vm("web", "tiny").await;
    let lan = server
        .ok(
            "mutation { createNetwork(input: {name: \"lan\", vlanId: 10}) { network { id } } }",
            json!({}),
        )
        .await["createNetwork"]["network"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let source_mac = server
        .ok(
            "mutation($v: ID!, $n: ID!) { attachNic(vmId: $v, networkId: $n) { nic { mac } } }",
            json!({"v": web, "n": lan}),
        )
        .await["attachNic"]["nic"]["mac"]
        .as_str()
        .unwrap()
        .to_string();
    server
        .ok(
            "mutation($id: ID!) { updateVm(id: $id, input: {tags: [\"blue\"]}) { vm { id } } }",
            json!({"id": web}),
        )
        .await;

    let cloned = clone(&server, &web, "web2", true).await;
    let vm = &cloned["vm"];
    assert_eq!(cloned["operation"]["status"], "SUCCEEDED", "{cloned:#}");
    assert_eq!(cloned["operation"]["kind"], "CLONE_VM");
    assert_eq!(cloned["operation"]["targetId"], vm["id"]);
    assert_ne!(vm["id"], web.as_str());
    assert_eq!(vm["state"], "STOPPED");
    assert_eq!(vm["tags"], json!(["blue"]));
    assert_eq!(vm["template"]["id"], template.as_str());
    assert_eq!(vm["disks"][0]["name"], "web2-root");
    assert_eq!(vm["disks"][0]["format"], "QCOW2");
    assert_eq!(vm["nics"][0]["network"]["id"], lan.as_str());
    assert_ne!(vm["nics"][0]["mac"], source_mac.as_str(), "a new MAC");
    let actions: Vec<&str> = cloned["plan"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["moveFile", "exec", "exec"], "{cloned:#}");

    // The source is what its clone stands on.
    let response = server.post(DELETE_VM, json!({"id": web})).await;
    assert_eq!(response["errors"][0]["extensions"]["code"], "CONFLICT");
    let message = response["errors"][0]["message"].as_str().unwrap();
    assert!(message.contains("\"web2\""), "{message}");
    // A second clone freezes the source's overlay on top of the first base.
    let third = clone(&server, &web, "web3", true).await;
    assert_eq!(third["operation"]["status"], "SUCCEEDED", "{third:#}");
    assert_eq!(bases(&server).await, 2);
    let message = server.post(DELETE_VM, json!({"id": web})).await["errors"][0]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        message.contains("\"web2\"") && message.contains("\"web3\""),
        "{message}"
    );
    // Clones go freely; the source only once none is left, and the bases
    // with the last disk on them.
    let clone_id = vm["id"].as_str().unwrap();
    server.ok(DELETE_VM, json!({"id": clone_id})).await;
    assert_eq!(
        bases(&server).await,
        2,
        "the first base is under the second"
    );
    let message = server.post(DELETE_VM, json!({"id": web})).await["errors"][0]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        message.contains("\"web3\"") && !message.contains("\"web2\""),
        "{message}"
    );
    server
        .ok(
            DELETE_VM,
            json!({"id": third["vm"]["id"].as_str().unwrap()}),
        )
        .await;
    assert_eq!(bases(&server).await, 2, "the source still stands on them");
    server.ok(DELETE_VM, json!({"id": web})).await;
    assert_eq!(bases(&server).await, 0);
    let left = server.snapshot().await;
    assert_eq!(left["vms"]["totalCount"], 0);
    assert_eq!(left["disks"]["totalCount"], 0);
}

/// How many frozen bases the database holds.
async fn bases(server: &TestServer) -> u64 {
    use sea_orm::{EntityTrait, PaginatorTrait};
    vman::disk::base::model::Entity::find()
        .count(&server.app.ctx.db)
        .await
        .unwrap()
}

/// A VM with one 1 GiB qcow2 disk full of non-zero data (real qemu-img).
async fn vm_with_a_full_disk(server: &TestServer) -> (String, PathBuf) {
    let vm = bare_vm(server, "big").await;
    let disk = server.create_disk("big-data", 1 << 30, "QCOW2").await;
    attach(server, &disk, &vm).await;
    let path = storage(server).join(format!("{disk}.qcow2"));
    run(&[
        "qemu-io",
        "-f",
        "qcow2",
        "-c",
        "write -P 0x5a 0 1G",
        path.to_str().unwrap(),
    ]);
    (vm, path)
}

#[tokio::test]
async fn a_full_clone_copies_every_byte_and_pushes_its_progress() {
    let server = TestServer::start_with(|c| {
        c.dry_run = false;
        c.storage.copy_bytes_per_second = 256 << 20;
    })
    .await;
    let (vm, source) = vm_with_a_full_disk(&server).await;
    let accepted = clone(&server, &vm, "big2", false).await;
    assert!(accepted["vm"].is_null(), "{accepted:#}");
    let operation = &accepted["operation"];
    assert_eq!(operation["status"], "RUNNING", "{accepted:#}");
    let id = operation["id"].as_str().unwrap();
    let clone_id = operation["targetId"].as_str().unwrap();

    let mut watch = ProgressWatch::open(&server, id, COPY).await;
    let mut items = Vec::new();
    while let Some(item) = watch.next().await {
        items.push(item);
    }
    let last = items.last().unwrap();
    assert_eq!(last["status"], "SUCCEEDED", "{items:#?}");
    assert_eq!(last["progress"]["fraction"], 1.0, "{items:#?}");
    let running: Vec<f64> = items
        .iter()
        .filter(|i| i["status"] == "RUNNING")
        .filter_map(|i| i["progress"]["fraction"].as_f64())
        .collect();
    assert!(running.len() >= 3, "pushed at least 3 times: {items:#?}");
    assert!(
        running.windows(2).all(|w| w[0] <= w[1]),
        "progress only grows: {running:?}"
    );
    assert_eq!(items[0]["progress"]["bytesTotal"], 1u64 << 30);

    let copied = server
        .ok(
            "query($id: ID) { vm(id: $id) { state disks { id } } }",
            json!({"id": clone_id}),
        )
        .await;
    assert_eq!(copied["vm"]["state"], "STOPPED");
    let disk = copied["vm"]["disks"][0]["id"].as_str().unwrap();
    let copy = storage(&server).join(format!("{disk}.qcow2"));
    run(&[
        "qemu-img",
        "compare",
        "-f",
        "qcow2",
        "-F",
        "qcow2",
        source.to_str().unwrap(),
        copy.to_str().unwrap(),
    ]);
    // A finished operation is not cancellable.
    let code = server.error_code(CANCEL, json!({"id": id})).await;
    assert_eq!(code, "INVALID_STATE");
}

#[tokio::test]
async fn a_full_clone_copies_a_raw_disk_as_raw_where_a_linked_one_is_refused() {
    let server = TestServer::start_with(|c| c.dry_run = false).await;
    let vm = bare_vm(&server, "raw").await;
    let disk = server.create_disk("raw-data", 4 << 20, "RAW").await;
    attach(&server, &disk, &vm).await;
    let source = storage(&server).join(format!("{disk}.raw"));
    std::fs::write(&source, vec![0x5au8; 4 << 20]).unwrap();
    let before = files(&storage(&server));

    let (code, message) = clone_error(&server, &vm, "raw2", true).await;
    assert_eq!(code, "BAD_USER_INPUT", "{message}");
    assert!(message.contains("\"raw-data\""), "{message}");
    assert_eq!(files(&storage(&server)), before, "nothing changed");

    let accepted = clone(&server, &vm, "raw2", false).await;
    let id = accepted["operation"]["id"].as_str().unwrap();
    let mut watch = ProgressWatch::open(&server, id, COPY).await;
    let mut last = None;
    while let Some(item) = watch.next().await {
        last = Some(item);
    }
    assert_eq!(last.unwrap()["status"], "SUCCEEDED");
    let copied = server
        .ok(
            "query($n: String) { vm(name: $n) { disks { id name format } } }",
            json!({"n": "raw2"}),
        )
        .await;
    let copy = &copied["vm"]["disks"][0];
    assert_eq!(copy["name"], "raw2-data");
    assert_eq!(copy["format"], "RAW");
    let path = storage(&server).join(format!("{}.raw", copy["id"].as_str().unwrap()));
    assert_eq!(
        std::fs::read(&path).unwrap(),
        std::fs::read(&source).unwrap()
    );
}

#[tokio::test]
async fn a_full_clone_cancelled_half_way_leaves_no_file_and_no_row() {
    let server = TestServer::start_with(|c| {
        c.dry_run = false;
        c.storage.copy_bytes_per_second = 256 << 20;
    })
    .await;
    let (vm, _) = vm_with_a_full_disk(&server).await;
    let before = server.snapshot().await;
    let files_before = files(&storage(&server));

    let accepted = clone(&server, &vm, "big2", false).await;
    let id = accepted["operation"]["id"].as_str().unwrap().to_string();
    let mut watch = ProgressWatch::open(&server, &id, COPY).await;
    let mut pushes = 0;
    while pushes < 3 {
        let item = watch.next().await.expect("still running");
        assert_eq!(item["status"], "RUNNING", "{item}");
        if item["progress"]["fraction"].as_f64().unwrap() > 0.0 {
            pushes += 1;
        }
    }
    // The copy is under way: its partial file is there.
    assert!(
        files(&storage(&server))
            .iter()
            .any(|f| f.ends_with(".partial")),
        "{:?}",
        files(&storage(&server))
    );
    let cancelled = server.ok(CANCEL, json!({"id": id})).await["cancelOperation"].clone();
    assert_eq!(cancelled["status"], "CANCELLED", "{cancelled:#}");
    assert_eq!(cancelled["errorCode"], "CANCELLED");
    let fraction = cancelled["progress"]["fraction"].as_f64().unwrap();
    assert!(fraction > 0.0 && fraction < 1.0, "half way: {cancelled:#}");
    // The subscription ends with the final status.
    let mut last = None;
    while let Some(item) = tokio::time::timeout(WAIT, watch.next()).await.unwrap() {
        last = Some(item);
    }
    assert_eq!(last.unwrap()["status"], "CANCELLED");

    assert_eq!(files(&storage(&server)), files_before, "no file left");
    let after = server.snapshot().await;
    for part in ["vms", "disks"] {
        assert_eq!(before[part], after[part], "{part}");
    }
    // The source is free again.
    let again = clone(&server, &vm, "big3", true).await;
    assert_eq!(again["operation"]["status"], "SUCCEEDED", "{again:#}");
}

/// How long the guest may take to boot (TCG, on a busy host).
const BOOT: Duration = Duration::from_secs(90);

#[tokio::test]
async fn a_linked_clone_boots_and_writes_without_changing_its_source() {
    let server = TestServer::real(Accel::Tcg).await;
    server
        .guest_template("tiny", "console=ttyS0 panic=-1")
        .await;
    let source = server.create_vm("src", "tiny").await;
    let disk = server.create_disk("src-data", 16 << 20, "QCOW2").await;
    attach(&server, &disk, &source).await;
    let source_file = storage(&server).join(format!("{disk}.qcow2"));
    run(&[
        "qemu-io",
        "-f",
        "qcow2",
        "-c",
        "write -P 0x61 0 4k",
        source_file.to_str().unwrap(),
    ]);
    let original = sha256(&source_file);

    let cloned = clone(&server, &source, "copy", true).await;
    assert_eq!(cloned["operation"]["status"], "SUCCEEDED", "{cloned:#}");
    let clone_id = cloned["vm"]["id"].as_str().unwrap().to_string();
    // The source's file is now a read-only base; the source has an overlay.
    let base = files(&storage(&server))
        .into_iter()
        .find(|f| f.contains(".base-"))
        .map(|f| storage(&server).join(f))
        .expect("a base");
    assert_eq!(sha256(&base), original);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&base).unwrap().permissions().mode() & 0o777,
        0o444
    );
    let overlay = sha256(&source_file);

    server.start_vm(&clone_id).await;
    let log = server.run_dir(&clone_id).join("serial.log");
    common::wait_for_line(&log, "VMAN-GUEST-READY", BOOT).await;
    let send = |command: &'static str| {
        let server = &server;
        let vm = clone_id.clone();
        async move {
            server
                .ok(
                    "mutation($vm: ID!, $data: String!) { sendConsoleInput(vmId: $vm, data: $data) { bytes } }",
                    json!({"vm": vm, "data": command}),
                )
                .await;
        }
    };
    // The clone sees its source's data, then writes over it.
    send("echo X$(dd if=/dev/vda bs=4 count=1 2>/dev/null)X\r").await;
    common::wait_for_line(&log, "XaaaaX", BOOT).await;
    send("dd if=/dev/zero of=/dev/vda bs=64k count=4 conv=fsync 2>/dev/null && echo W$((1+1))W\r")
        .await;
    common::wait_for_line(&log, "W2W", BOOT).await;
    send("echo Y$(dd if=/dev/vda bs=4 count=1 2>/dev/null | od -An -tx1 | tr -d ' ')Y\r").await;
    common::wait_for_line(&log, "Y00000000Y", BOOT).await;
    server.stop_vm(&clone_id).await;

    assert_eq!(sha256(&base), original, "the base never changes");
    assert_eq!(
        sha256(&source_file),
        overlay,
        "the source's overlay is untouched"
    );

    // The source cannot go while its clone lives; the clone can.
    let response = server.post(DELETE_VM, json!({"id": source})).await;
    assert_eq!(response["errors"][0]["extensions"]["code"], "CONFLICT");
    assert!(
        response["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("\"copy\""),
        "{response:#}"
    );
    server.ok(DELETE_VM, json!({"id": clone_id})).await;
    server.ok(DELETE_VM, json!({"id": source})).await;
    assert_eq!(
        files(&storage(&server)),
        Vec::<String>::new(),
        "the base went with its last user"
    );
}

/// The `vman` binary is SIGKILLed while a full clone copies: its qemu-img
/// dies with it (no copy writes on), and the restarted vman marks the
/// operation INTERRUPTED, removes the partial file and has no clone row.
#[tokio::test]
async fn a_vman_killed_in_the_middle_of_a_full_clone_leaves_nothing_after_its_restart() {
    use common::{VmanProcess, free_port};
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let http = reqwest::Client::new();
    // 64 MiB at 4 MiB/s: 16 s of copying, killed within the first seconds.
    let mut vman = VmanProcess::start_with_env(
        &data,
        free_port(),
        &[("VMAN_STORAGE_COPY_BYTES_PER_SECOND", "4194304")],
    );
    vman.ready(&http).await;
    let vm = vman
        .gql(
            &http,
            "mutation { createVm(input: {name: \"src\", vcpus: 1, memoryMib: 128}) { vm { id } } }",
            json!({}),
        )
        .await["createVm"]["vm"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let disk = vman
        .gql(
            &http,
            "mutation { createDisk(input: {name: \"src-data\", sizeBytes: 67108864, format: QCOW2}) { disk { id } } }",
            json!({}),
        )
        .await["createDisk"]["disk"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let storage = data.join("storage");
    let source = storage.join(format!("{disk}.qcow2"));
    run(&[
        "qemu-io",
        "-f",
        "qcow2",
        "-c",
        "write -P 0x5a 0 64M",
        source.to_str().unwrap(),
    ]);
    vman.gql(
        &http,
        "mutation($d: ID!, $v: ID!) { attachDisk(diskId: $d, vmId: $v) { disk { id } } }",
        json!({"d": disk, "v": vm}),
    )
    .await;
    let accepted = vman
        .gql(
            &http,
            "mutation($id: ID!) { cloneVm(id: $id, name: \"copy\") { operation { status } } }",
            json!({"id": vm}),
        )
        .await;
    assert_eq!(accepted["cloneVm"]["operation"]["status"], "RUNNING");
    let partial = || {
        files(&storage)
            .into_iter()
            .find(|f| f.ends_with(".partial"))
    };
    let deadline = tokio::time::Instant::now() + WAIT;
    while partial().is_none() {
        assert!(tokio::time::Instant::now() < deadline, "the copy began");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let copying = storage.join(partial().unwrap());
    // The qemu-img writing it, watched by a pidfd: readable once it exits
    // (zombie or reaped).
    let qemu_img = process_naming(&copying).expect("a qemu-img writes the partial file");
    let pidfd = rustix::process::pidfd_open(
        rustix::process::Pid::from_raw(qemu_img).unwrap(),
        rustix::process::PidfdFlags::empty(),
    )
    .unwrap();
    // SAFETY: the AsyncFd owns the pidfd, so it stays open while registered.
    let exited = unsafe { tokio::io::unix::AsyncFd::register(pidfd) }.unwrap();
    vman.child.kill().unwrap(); // SIGKILL
    vman.child.wait().unwrap();
    // Its qemu-img dies with it: no copy writes on.
    let _ = tokio::time::timeout(WAIT, exited.readable())
        .await
        .expect("qemu-img exits when vman is killed")
        .unwrap();

    let restarted = VmanProcess::start(&data, free_port());
    restarted.ready(&http).await;
    assert_eq!(partial(), None, "{:?}", files(&storage));
    assert_eq!(files(&storage), [format!("{disk}.qcow2")]);
    let seen = restarted
        .gql(
            &http,
            "{ vms { totalCount } disks { totalCount } operations { edges { node { kind status errorCode } } } }",
            json!({}),
        )
        .await;
    assert_eq!(seen["vms"]["totalCount"], 1);
    assert_eq!(seen["disks"]["totalCount"], 1);
    let last = seen["operations"]["edges"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()["node"]
        .clone();
    assert_eq!(
        last,
        json!({"kind": "CLONE_VM", "status": "FAILED", "errorCode": "INTERRUPTED"})
    );
}
