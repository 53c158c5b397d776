//! Real QEMU with the real test guest (TCG): the whole life of a VM, as a user
//! sees it. Slow (a guest boots): run alone with `cargo test --test qemu_guest`.

mod common;

use std::time::Duration;

use common::{TestServer, WsClient, wait_for_line};
use serde_json::json;
use vman::config::Accel;

const BOOT: Duration = Duration::from_secs(60);

#[tokio::test]
async fn real_guest_boots_takes_a_hot_plugged_disk_lets_it_go_and_powers_off_on_request() {
    let server = TestServer::real(Accel::Tcg).await;
    server
        .guest_template("tiny", "console=ttyS0 quiet panic=-1")
        .await;
    let vm = server.create_vm("guest-1", "tiny").await;
    let head = server.journal().await.last().unwrap()["sequence"].clone();
    let mut ws = WsClient::connect(&server.ws_url).await;
    ws.subscribe(
        "s",
        "subscription($vm: ID, $after: String) { vmStateChanged(vmId: $vm, after: $after) { from to reason } }",
        json!({"vm": vm, "after": head}),
    )
    .await;

    let started = server
        .ok("mutation($id: ID!) { startVm(id: $id) { vm { state } operation { steps { action detail } } } }", json!({"id": vm}))
        .await;
    assert_eq!(started["startVm"]["vm"]["state"], "RUNNING");
    let spawn = &started["startVm"]["operation"]["steps"][1];
    assert_eq!(spawn["action"], "spawnQemu");
    assert!(
        spawn["detail"]["argv"]
            .as_array()
            .unwrap()
            .contains(&json!("-kernel"))
    );
    for (from, to) in [("STOPPED", "STARTING"), ("STARTING", "RUNNING")] {
        let change = ws.next_data("s").await["vmStateChanged"].clone();
        assert_eq!(
            (
                change["from"].as_str().unwrap(),
                change["to"].as_str().unwrap()
            ),
            (from, to)
        );
    }
    let run = server.run_dir(&vm);
    let serial = run.join("serial.log");
    wait_for_line(&serial, "VMAN-GUEST-READY", BOOT).await;
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&run).unwrap().permissions().mode() & 0o777,
            0o700
        );
        assert_eq!(
            std::fs::metadata(run.join("qmp.sock"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o600
        );
    }

    let disk = server.create_disk("scratch", 16 << 20, "QCOW2").await;
    let attached = server
        .ok(
            "mutation($d: ID!, $v: ID!) { attachDisk(diskId: $d, vmId: $v) { disk { attachment } plan { action } } }",
            json!({"d": disk, "v": vm}),
        )
        .await;
    assert_eq!(attached["attachDisk"]["disk"]["attachment"], "ATTACHED");
    wait_for_line(
        &serial,
        "VMAN-GUEST-DISK-ADDED vda",
        Duration::from_secs(30),
    )
    .await;

    let detached = server
        .ok(
            "mutation($d: ID!) { detachDisk(diskId: $d) { disk { attachment } } }",
            json!({"d": disk}),
        )
        .await;
    // A live guest acknowledges within the wait: DEVICE_DELETED completes the detach.
    assert_eq!(detached["detachDisk"]["disk"]["attachment"], "DETACHED");
    wait_for_line(
        &serial,
        "VMAN-GUEST-DISK-REMOVED vda",
        Duration::from_secs(30),
    )
    .await;

    let stopped = server
        .ok("mutation($id: ID!) { stopVm(id: $id, timeoutSeconds: 60) { vm { state stateReason } } }", json!({"id": vm}))
        .await;
    assert_eq!(stopped["stopVm"]["vm"]["state"], "STOPPED");
    assert_eq!(stopped["stopVm"]["vm"]["stateReason"], "guest shutdown");
    wait_for_line(&serial, "VMAN-GUEST-POWEROFF", Duration::from_secs(5)).await;
    for (from, to) in [("RUNNING", "STOPPING"), ("STOPPING", "STOPPED")] {
        let change = ws.next_data("s").await["vmStateChanged"].clone();
        assert_eq!(
            (
                change["from"].as_str().unwrap(),
                change["to"].as_str().unwrap()
            ),
            (from, to)
        );
    }
    assert!(!run.join("qmp.sock").exists());
    ws.close().await;
}
