//! SLOW (three TCG guests boot; about a minute on 2 busy cores): real test
//! guests on VLAN networks, in a network namespace the test makes, so the
//! host's interfaces are never touched. Run alone with
//! `cargo test --test network_guests`.
//!
//! Guests A (192.0.2.1) and B (192.0.2.2) are on VLAN 10, C (192.0.2.3) on
//! VLAN 20. Each pings one peer about once a second and says so on its serial
//! line (`VMAN-PING-OK|FAIL <ip>`): A pings B (must succeed, so B answers A
//! too), B pings C and C pings A (both must keep failing). Then B's NIC is
//! detached live: B sees its interface go, and A's pings start failing.

mod common;

use std::{path::Path, time::Duration};

use common::{
    TestServer,
    netns::{self, sys_link},
};
use serde_json::json;
use vman::config::Accel;

/// Three guests booting at once under TCG on two shared cores.
const BOOT: Duration = Duration::from_secs(90);

fn count(path: &Path, needle: &str) -> usize {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .matches(needle)
        .count()
}

/// Waits until `path` holds `n` more lines with `needle` than `before`.
async fn wait_for_more(path: &Path, needle: &str, before: usize, n: usize, within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let now = count(path, needle);
        if now >= before + n {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{needle:?} appeared {} more times in {} within {within:?} (wanted {n}):\n{}",
            now - before,
            path.display(),
            std::fs::read_to_string(path).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn guests_on_one_vlan_ping_each_other_and_no_one_else() {
    if !netns::enter("guests_on_one_vlan_ping_each_other_and_no_one_else") {
        return;
    }
    let server = TestServer::real(Accel::Tcg).await;
    let import = |name: &str, kind: &str, path: &str| {
        let vars = json!({"n": name, "k": kind, "p": path});
        let server = &server;
        async move {
            server
                .ok("mutation($n: String!, $k: ImageKind!, $p: String!) { importImage(input: {name: $n, kind: $k, path: $p}) { image { id } } }", vars)
                .await["importImage"]["image"]["id"]
                .as_str()
                .unwrap()
                .to_string()
        }
    };
    let kernel = import("guest-kernel", "KERNEL", "vmlinuz").await;
    let initrd = import("guest-initrd", "INITRD", "initrd.img").await;
    let mut networks = std::collections::HashMap::new();
    for (name, vlan) in [("ten", 10), ("twenty", 20)] {
        let data = server
            .ok(
                "mutation($n: String!, $v: Int!) { createNetwork(input: {name: $n, vlanId: $v}) { network { id bridge } } }",
                json!({"n": name, "v": vlan}),
            )
            .await;
        networks.insert(vlan, data["createNetwork"]["network"]["id"].clone());
    }

    // (name, VLAN, own address, the peer it pings)
    let guests = [
        ("guest-a", 10, "192.0.2.1", "192.0.2.2"),
        ("guest-b", 10, "192.0.2.2", "192.0.2.3"),
        ("guest-c", 20, "192.0.2.3", "192.0.2.1"),
    ];
    let mut vms = Vec::new();
    for (name, vlan, ip, peer) in guests {
        let cmdline = format!("console=ttyS0 quiet panic=-1 vman.ip={ip}/24 vman.peer={peer}");
        server
            .ok(
                "mutation($n: String!, $k: ID!, $i: ID!, $c: String!) { createTemplate(input: {name: $n, vcpus: 1, memoryMib: 256, kernelImageId: $k, initrdImageId: $i, cmdline: $c}) { template { id } } }",
                json!({"n": name, "k": kernel, "i": initrd, "c": cmdline}),
            )
            .await;
        let vm = server.create_vm(name, name).await;
        let nic = server
            .ok(
                "mutation($v: ID!, $n: ID!) { attachNic(vmId: $v, networkId: $n) { nic { id tap } } }",
                json!({"v": vm, "n": networks[&vlan]}),
            )
            .await["attachNic"]["nic"]
            .clone();
        vms.push((vm, nic));
    }
    for (vm, _) in &vms {
        let started = server
            .ok(
                "mutation($id: ID!) { startVm(id: $id) { vm { state } } }",
                json!({"id": vm}),
            )
            .await;
        assert_eq!(started["startVm"]["vm"]["state"], "RUNNING");
    }
    let serial: Vec<_> = vms
        .iter()
        .map(|(vm, _)| server.run_dir(vm).join("serial.log"))
        .collect();
    for log in &serial {
        common::wait_for_line(log, "VMAN-GUEST-READY", BOOT).await;
    }
    for (_, nic) in &vms {
        let tap = sys_link(nic["tap"].as_str().unwrap()).unwrap();
        assert!(tap.up, "{tap:?}");
    }

    // A reaches B (and B answers): the two on VLAN 10 talk.
    common::wait_for_line(&serial[0], "VMAN-PING-OK 192.0.2.2", BOOT).await;
    // A's NIC counts that traffic (its tap's counters, in this namespace),
    // and counts more after more pings.
    let nic_figures = || async {
        let data = server
            .ok(
                "query($id: ID) { vm(id: $id) { stats { nics { tap rxBytes txBytes rxPackets txPackets } } } }",
                json!({"id": vms[0].0}),
            )
            .await;
        data["vm"]["stats"]["nics"][0].clone()
    };
    let before = nic_figures().await;
    assert_eq!(before["tap"], vms[0].1["tap"], "{before}");
    let oks = count(&serial[0], "VMAN-PING-OK 192.0.2.2");
    wait_for_more(&serial[0], "VMAN-PING-OK 192.0.2.2", oks, 2, BOOT).await;
    let after = nic_figures().await;
    for counter in ["rxBytes", "txBytes", "rxPackets", "txPackets"] {
        assert!(
            after[counter].as_i64().unwrap() > before[counter].as_i64().unwrap(),
            "{counter}: before {before}, after {after}"
        );
    }
    // Everyone is up and the network works; B -> C and C -> A keep failing.
    let (b_fail, c_fail) = (
        count(&serial[1], "VMAN-PING-FAIL 192.0.2.3"),
        count(&serial[2], "VMAN-PING-FAIL 192.0.2.1"),
    );
    wait_for_more(&serial[1], "VMAN-PING-FAIL 192.0.2.3", b_fail, 3, BOOT).await;
    wait_for_more(&serial[2], "VMAN-PING-FAIL 192.0.2.1", c_fail, 3, BOOT).await;
    assert_eq!(
        count(&serial[1], "VMAN-PING-OK"),
        0,
        "B reached C across VLANs"
    );
    assert_eq!(
        count(&serial[2], "VMAN-PING-OK"),
        0,
        "C reached A across VLANs"
    );

    // Detach B's NIC live: B loses its interface, A loses B.
    let b_tap = vms[1].1["tap"].as_str().unwrap().to_string();
    let head = server.journal().await.last().unwrap()["sequence"].clone();
    let mut ws = common::WsClient::connect(&server.ws_url).await;
    ws.subscribe(
        "e",
        "subscription($after: String) { events(after: $after) { kind subjectId } }",
        json!({"after": head}),
    )
    .await;
    let detached = server
        .ok(
            "mutation($id: ID!) { detachNic(nicId: $id) { nic { id attachment } plan { action } } }",
            json!({"id": vms[1].1["id"]}),
        )
        .await;
    // A guest slowed down by TCG on busy cores may take longer than the
    // detach waits: the NIC is then DETACHING until the guest lets go.
    let attachment = detached["detachNic"]["nic"]["attachment"].clone();
    assert!(
        attachment == "DETACHED" || attachment == "DETACHING",
        "{detached}"
    );
    loop {
        let event = ws.next_data("e").await["events"].clone();
        if event["kind"] == "NIC_DETACHED" {
            assert_eq!(event["subjectId"], vms[1].1["id"]);
            break;
        }
    }
    ws.close().await;
    common::wait_for_line(
        &serial[1],
        "VMAN-GUEST-NET-REMOVED eth0",
        Duration::from_secs(30),
    )
    .await;
    assert!(sys_link(&b_tap).is_none(), "the detached NIC's tap is gone");
    let a_fail = count(&serial[0], "VMAN-PING-FAIL 192.0.2.2");
    wait_for_more(
        &serial[0],
        "VMAN-PING-FAIL 192.0.2.2",
        a_fail,
        2,
        Duration::from_secs(30),
    )
    .await;
    let vm_b = server
        .ok(
            "query($id: ID) { vm(id: $id) { nics { id } } }",
            json!({"id": vms[1].0}),
        )
        .await;
    assert_eq!(vm_b["vm"]["nics"], json!([]));
}
