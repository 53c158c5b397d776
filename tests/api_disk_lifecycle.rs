//! A disk's life after `createDisk` through the public API on a dry-run
//! server: it grows (offline with qemu-img, live with `block_resize`),
//! never shrinks, is deleted only when detached, and every change is an
//! operation and an event. `dryRun: true` plans without changing anything.

mod common;

use common::TestServer;
use serde_json::{Value, json};

const MIB: u64 = 1 << 20;

const RESIZE: &str = "mutation($d: ID!, $s: Bytes!, $dry: Boolean!) { resizeDisk(diskId: $d, sizeBytes: $s, dryRun: $dry) { disk { sizeBytes } operation { kind status } plan { action summary detail } } }";
const DELETE: &str = "mutation($d: ID!, $dry: Boolean!) { deleteDisk(id: $d, dryRun: $dry) { disk { name } operation { kind status } plan { action summary } } }";
const ATTACH: &str =
    "mutation($d: ID!, $v: ID!) { attachDisk(diskId: $d, vmId: $v) { disk { attachment } } }";

async fn size_of(server: &TestServer, disk: &str) -> Value {
    server
        .ok(
            "query($d: ID!) { disk(id: $d) { sizeBytes } }",
            json!({"d": disk}),
        )
        .await["disk"]["sizeBytes"]
        .clone()
}

async fn event_kinds(server: &TestServer, disk: &str) -> Vec<String> {
    let data = server
        .ok(
            "{ events(first: 500) { nodes { kind subjectId } } }",
            json!({}),
        )
        .await;
    data["events"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["subjectId"] == disk)
        .map(|e| e["kind"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn a_detached_disk_grows_with_qemu_img_never_shrinks_and_is_deleted() {
    let server = TestServer::start().await;
    let disk = server.create_disk("data", MIB, "QCOW2").await;

    // A dry run plans the qemu-img call and changes nothing.
    let planned = server
        .ok(RESIZE, json!({"d": disk, "s": 2 * MIB, "dry": true}))
        .await["resizeDisk"]
        .clone();
    assert_eq!(planned["operation"], Value::Null, "{planned:#}");
    let plan = planned["plan"].as_array().unwrap();
    assert_eq!(plan.len(), 1, "{planned:#}");
    assert_eq!(plan[0]["action"], "exec");
    let argv = plan[0]["detail"]["argv"].as_array().unwrap();
    assert_eq!(
        argv[1..5],
        [json!("resize"), json!("-q"), json!("-f"), json!("qcow2")]
    );
    assert_eq!(argv[6], json!((2 * MIB).to_string()));
    assert_eq!(size_of(&server, &disk).await, MIB);

    let grown = server
        .ok(RESIZE, json!({"d": disk, "s": 2 * MIB, "dry": false}))
        .await["resizeDisk"]
        .clone();
    assert_eq!(
        grown["operation"],
        json!({"kind": "RESIZE_DISK", "status": "SUCCEEDED"})
    );
    assert_eq!(grown["disk"]["sizeBytes"], 2 * MIB);
    assert_eq!(size_of(&server, &disk).await, 2 * MIB);

    // The same size or less would cut a guest's filesystem.
    for size in [2 * MIB, MIB] {
        let response = server
            .post(RESIZE, json!({"d": disk, "s": size, "dry": false}))
            .await;
        assert_eq!(
            response["errors"][0]["extensions"]["code"], "BAD_USER_INPUT",
            "{response:#}"
        );
        assert!(
            response["errors"][0]["message"]
                .as_str()
                .unwrap()
                .contains("disks only grow"),
            "{response:#}"
        );
    }
    assert_eq!(size_of(&server, &disk).await, 2 * MIB);

    // Deleting: planned first (the disk stays), then done.
    let planned = server.ok(DELETE, json!({"d": disk, "dry": true})).await["deleteDisk"].clone();
    assert_eq!(planned["operation"], Value::Null);
    assert_eq!(planned["plan"][0]["action"], "removeFile", "{planned:#}");
    assert_eq!(size_of(&server, &disk).await, 2 * MIB);

    let deleted = server.ok(DELETE, json!({"d": disk, "dry": false})).await["deleteDisk"].clone();
    assert_eq!(deleted["disk"]["name"], "data");
    assert_eq!(
        deleted["operation"],
        json!({"kind": "DELETE_DISK", "status": "SUCCEEDED"})
    );
    let gone = server
        .post("query($d: ID!) { disk(id: $d) { id } }", json!({"d": disk}))
        .await;
    assert_eq!(gone["data"]["disk"], Value::Null, "{gone:#}");
    assert_eq!(
        event_kinds(&server, &disk).await,
        ["DISK_CREATED", "DISK_RESIZED", "DISK_DELETED"]
    );
}

#[tokio::test]
async fn a_disk_of_a_running_vm_grows_live_and_an_attached_disk_is_not_deleted() {
    let server = TestServer::start().await;
    server.create_template("small").await;
    let vm = server.create_vm("vm1", "small").await;
    let disk = server.create_disk("data", MIB, "RAW").await;
    server.ok(ATTACH, json!({"d": disk, "v": vm})).await;

    // Stopped: offline, with qemu-img.
    let planned = server
        .ok(RESIZE, json!({"d": disk, "s": 2 * MIB, "dry": true}))
        .await;
    assert_eq!(planned["resizeDisk"]["plan"][0]["action"], "exec");

    assert_eq!(
        server.start_vm(&vm).await["startVm"]["vm"]["state"],
        "RUNNING"
    );
    let grown = server
        .ok(RESIZE, json!({"d": disk, "s": 3 * MIB, "dry": false}))
        .await["resizeDisk"]
        .clone();
    let step = &grown["plan"][0];
    assert_eq!(step["action"], "qmp", "{grown:#}");
    assert_eq!(step["detail"]["command"], "block_resize");
    assert_eq!(step["detail"]["arguments"]["size"], 3 * MIB);
    assert_eq!(size_of(&server, &disk).await, 3 * MIB);

    let response = server.post(DELETE, json!({"d": disk, "dry": false})).await;
    assert_eq!(
        response["errors"][0]["extensions"]["code"], "CONFLICT",
        "{response:#}"
    );
    assert_eq!(size_of(&server, &disk).await, 3 * MIB);
}
