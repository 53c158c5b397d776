//! The successful path of mutations no other test carries through:
//! restartVm (hard and graceful), deleteDisk, deleteTemplate and deleteImage,
//! each on the real host, each leaving its operation SUCCEEDED.

mod common;

use common::TestServer;
use serde_json::{Value, json};

/// QEMU with KVM when it can be used here (a VM with no guest OS runs fine
/// under KVM), else TCG.
fn accel() -> vman::config::Accel {
    if common::kvm_usable() {
        vman::config::Accel::Kvm
    } else {
        vman::config::Accel::Tcg
    }
}

async fn real_server() -> TestServer {
    TestServer::start_with(|c| {
        c.dry_run = false;
        c.qemu.accel = accel();
        // A VM with no guest OS never answers ACPI: the graceful stop of a
        // restart then ends QEMU with `quit` after this long.
        c.qemu.stop_timeout = std::time::Duration::from_secs(1);
    })
    .await
}

fn succeeded(payload: &Value, kind: &str) {
    assert_eq!(payload["operation"]["kind"], kind, "{payload}");
    assert_eq!(payload["operation"]["status"], "SUCCEEDED", "{payload}");
}

fn qemu_pid(server: &TestServer, vm: &str) -> i32 {
    std::fs::read_to_string(server.run_dir(vm).join("qemu.pid"))
        .expect("qemu.pid")
        .trim()
        .parse()
        .expect("a pid")
}

#[tokio::test]
async fn a_running_vm_restarts_by_reset_in_the_same_qemu_and_gracefully_in_a_new_one() {
    let server = real_server().await;
    server.create_template("bare").await;
    let vm = server.create_vm("restart-1", "bare").await;
    server.start_vm(&vm).await;
    let first = qemu_pid(&server, &vm);

    let hard = server
        .ok(
            "mutation($id: ID!) { restartVm(id: $id, hard: true) { vm { state } operation { kind status steps { action detail } } } }",
            json!({"id": vm}),
        )
        .await;
    let hard = &hard["restartVm"];
    succeeded(hard, "RESTART_VM");
    assert_eq!(hard["vm"]["state"], "RUNNING");
    assert!(
        hard["operation"]["steps"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["detail"]["command"] == "system_reset"),
        "a hard restart resets the machine: {hard}"
    );
    assert_eq!(qemu_pid(&server, &vm), first, "a reset keeps its QEMU");

    let graceful = server
        .ok(
            "mutation($id: ID!) { restartVm(id: $id) { vm { state stateReason } operation { kind status } } }",
            json!({"id": vm}),
        )
        .await;
    let graceful = &graceful["restartVm"];
    succeeded(graceful, "RESTART_VM");
    assert_eq!(graceful["vm"]["state"], "RUNNING");
    let second = qemu_pid(&server, &vm);
    assert_ne!(second, first, "a graceful restart starts a new QEMU");
    assert!(!vman::host::qemu::process::is_alive(first));

    // The journal shows the way through: STOPPING, STOPPED, STARTING, RUNNING.
    let states: Vec<String> = server
        .journal()
        .await
        .iter()
        .filter(|e| e["kind"] == "VM_STATE_CHANGED")
        .map(|e| e["payload"]["to"].as_str().unwrap().to_string())
        .collect();
    assert!(
        states.ends_with(&["STOPPING", "STOPPED", "STARTING", "RUNNING"].map(String::from)),
        "{states:?}"
    );
    server.stop_vm(&vm).await;
}

#[tokio::test]
async fn a_detached_disk_is_deleted_with_its_file() {
    let server = real_server().await;
    let disk = server.create_disk("scratch", 1 << 20, "QCOW2").await;
    let file = server
        .app
        .ctx
        .config
        .storage_dir()
        .join(format!("{disk}.qcow2"));
    assert!(file.exists());
    let deleted = server
        .ok(
            "mutation($id: ID!) { deleteDisk(id: $id) { disk { name } operation { kind status } } }",
            json!({"id": disk}),
        )
        .await;
    succeeded(&deleted["deleteDisk"], "DELETE_DISK");
    assert!(!file.exists(), "the disk's file is gone");
    let left = server
        .ok("{ disks(first: 10) { totalCount } }", json!({}))
        .await;
    assert_eq!(left["disks"]["totalCount"], 0);
}

#[tokio::test]
async fn an_unused_template_and_image_are_deleted_each_with_its_operation() {
    let server = real_server().await;
    let import = server.app.ctx.config.import_dir();
    std::fs::write(import.join("base.raw"), vec![0u8; 1 << 16]).unwrap();
    let image = server
        .ok(
            "mutation { importImage(input: {name: \"base\", kind: DISK, path: \"base.raw\"}) { image { id } operation { kind status } } }",
            json!({}),
        )
        .await;
    succeeded(&image["importImage"], "IMPORT_IMAGE");
    let image = image["importImage"]["image"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let template = server
        .ok(
            "mutation($i: ID!) { createTemplate(input: {name: \"web\", vcpus: 1, memoryMib: 64, baseImageId: $i}) { template { id } operation { kind status } } }",
            json!({"i": image}),
        )
        .await;
    succeeded(&template["createTemplate"], "CREATE_TEMPLATE");
    let template = template["createTemplate"]["template"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let file = server
        .app
        .ctx
        .config
        .storage_dir()
        .join("images")
        .join(&image);
    assert!(file.exists());

    let deleted = server
        .ok(
            "mutation($id: ID!) { deleteTemplate(id: $id) { template { name } operation { kind status } plan { action } } }",
            json!({"id": template}),
        )
        .await;
    succeeded(&deleted["deleteTemplate"], "DELETE_TEMPLATE");
    assert_eq!(deleted["deleteTemplate"]["plan"], json!([]));
    let deleted = server
        .ok(
            "mutation($id: ID!) { deleteImage(id: $id) { image { name } operation { kind status } } }",
            json!({"id": image}),
        )
        .await;
    succeeded(&deleted["deleteImage"], "DELETE_IMAGE");
    assert!(!file.exists(), "the image's file is gone");
    let left = server
        .ok(
            "{ templates(first: 5) { totalCount } images(first: 5) { totalCount } }",
            json!({}),
        )
        .await;
    assert_eq!(left["templates"]["totalCount"], 0);
    assert_eq!(left["images"]["totalCount"], 0);
}
