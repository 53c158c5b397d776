//! Real netlink, in a network namespace each test makes for itself (see
//! `common::netns`): bridges, VLAN links (where the kernel has 802.1Q), taps
//! that follow a VM's life and hot-plug, bad inputs that change nothing. The
//! VMs here run no guest OS (fast); `tests/network_guests.rs` boots real ones.

mod common;

use common::{
    TestServer, VmanProcess, accel, free_port,
    netns::{self, ip, link_names, sys_link},
};
use serde_json::{Value, json};

async fn real_server() -> TestServer {
    TestServer::start_with(|c| {
        c.dry_run = false;
        c.qemu.accel = accel();
    })
    .await
}

const CREATE: &str = "mutation($n: String!, $v: Int!, $u: String, $d: Boolean! = false) { createNetwork(input: {name: $n, vlanId: $v, uplink: $u}, dryRun: $d) { network { id bridge uplink vlanLink status { bridgeExists bridgeUp vlanLinkReady problems } } plan { action summary } operation { status } } }";

async fn create_network(server: &TestServer, name: &str, vlan: i32) -> Value {
    server.ok(CREATE, json!({"n": name, "v": vlan})).await["createNetwork"]["network"].clone()
}

/// A bad request: its code, and proof that neither the database nor the
/// namespace's links changed. (A request the host refused, HOST_ERROR, may
/// leave a FAILED operation saying so: operations are the record of tries.)
async fn refused(server: &TestServer, query: &str, vars: Value) -> (String, String) {
    let before = (server.snapshot().await, link_names());
    let response = server.post(query, vars).await;
    let error = &response["errors"][0];
    assert!(!error.is_null(), "expected an error, got {response:#}");
    let (mut expected, mut now) = (before.0.clone(), server.snapshot().await);
    if error["extensions"]["code"] == "HOST_ERROR" {
        let all = server
            .ok(
                "{ operations(first: 500) { edges { node { status } } } }",
                json!({}),
            )
            .await;
        let last = all["operations"]["edges"]
            .as_array()
            .unwrap()
            .last()
            .cloned();
        let ops = |v: &Value| v["operations"]["totalCount"].as_i64().unwrap();
        if ops(&now) != ops(&expected) {
            assert_eq!(ops(&now), ops(&expected) + 1);
            let last = last.unwrap();
            assert_eq!(last["node"]["status"], "FAILED", "{last}");
        }
        expected["operations"] = Value::Null;
        now["operations"] = Value::Null;
    }
    assert_eq!(expected, now, "the database changed");
    assert_eq!(before.1, link_names(), "the host's links changed");
    (
        error["extensions"]["code"].as_str().unwrap().to_string(),
        error["message"].as_str().unwrap().to_string(),
    )
}

#[tokio::test]
async fn bridges_vlan_links_and_bad_inputs_on_real_netlink() {
    if !netns::enter("bridges_vlan_links_and_bad_inputs_on_real_netlink") {
        return;
    }
    let before = link_names();
    let server = real_server().await;
    let health = server
        .ok(
            "{ health { ready network { vlanLinks { supported detail } taps { supported detail } } checks { name ok detail } } }",
            json!({}),
        )
        .await["health"]
        .clone();
    assert_eq!(health["ready"], true, "{health:#}");
    assert_eq!(health["network"]["taps"]["supported"], true, "{health:#}");
    let vlan_supported = health["network"]["vlanLinks"]["supported"]
        .as_bool()
        .unwrap();
    let vlan_detail = health["network"]["vlanLinks"]["detail"]
        .as_str()
        .unwrap()
        .to_string();
    // The probe ran in a throwaway namespace: nothing of it is left here.
    assert_eq!(link_names(), before);

    // An isolated bridge per VLAN: made, up, marked as vman's.
    let ten = create_network(&server, "ten", 10).await;
    assert_eq!(ten["bridge"], "vmbr10");
    assert_eq!(
        ten["status"],
        json!({"bridgeExists": true, "bridgeUp": true, "vlanLinkReady": null, "problems": []})
    );
    let bridge = sys_link("vmbr10").expect("vmbr10 exists");
    assert!(bridge.is_bridge() && bridge.up, "{bridge:?}");
    assert_eq!(bridge.alias, "vman");

    // dryRun plans and makes nothing.
    let planned = server
        .ok(CREATE, json!({"n": "thirty", "v": 30, "d": true}))
        .await["createNetwork"]
        .clone();
    let actions: Vec<&str> = planned["plan"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["addBridge", "setUp"]);
    assert!(sys_link("vmbr30").is_none());

    // Bad inputs: the right code, nothing changed.
    for (vars, code) in [
        (json!({"n": "zero", "v": 0}), "BAD_USER_INPUT"),
        (json!({"n": "big", "v": 4095}), "BAD_USER_INPUT"),
        (json!({"n": "again", "v": 10}), "CONFLICT"),
        (
            json!({"n": "nowhere", "v": 11, "u": "nope0"}),
            "BAD_USER_INPUT",
        ),
        (
            json!({"n": "comma", "v": 11, "u": "eth0,x"}),
            "BAD_USER_INPUT",
        ),
        (
            json!({"n": "ownbridge", "v": 11, "u": "vmbr10"}),
            "BAD_USER_INPUT",
        ),
    ] {
        let (got, message) = refused(&server, CREATE, vars.clone()).await;
        assert_eq!(got, code, "{vars}: {message}");
    }

    // A link vman did not make is never taken over, changed or deleted.
    ip(&["link", "add", "vmbr30", "type", "bridge"]);
    let (code, message) = refused(&server, CREATE, json!({"n": "thirty", "v": 30})).await;
    assert_eq!(code, "HOST_ERROR", "{message}");
    assert!(message.contains("not made by vman"), "{message}");
    let theirs = sys_link("vmbr30").unwrap();
    assert!(!theirs.up && theirs.alias.is_empty(), "{theirs:?}");

    // An uplink: a veth of the test's own, standing in for a host NIC.
    ip(&[
        "link", "add", "up0", "type", "veth", "peer", "name", "up0peer",
    ]);
    if vlan_supported {
        let twenty = server
            .ok(CREATE, json!({"n": "twenty", "v": 20, "u": "up0"}))
            .await["createNetwork"]["network"]
            .clone();
        assert_eq!(twenty["vlanLink"], "up0.20");
        assert_eq!(twenty["status"]["vlanLinkReady"], true, "{twenty:#}");
        let link = sys_link("up0.20").unwrap();
        assert_eq!(link.master.as_deref(), Some("vmbr20"));
        assert!(link.up && link.alias == "vman");
        assert!(
            sys_link("up0").unwrap().alias.is_empty(),
            "the uplink is only read"
        );
        server
            .ok(
                "mutation($id: ID!) { deleteNetwork(id: $id) { network { id } } }",
                json!({"id": twenty["id"]}),
            )
            .await;
        assert!(sys_link("up0.20").is_none() && sys_link("vmbr20").is_none());
        assert!(sys_link("up0").is_some());
    } else {
        let (code, message) =
            refused(&server, CREATE, json!({"n": "twenty", "v": 20, "u": "up0"})).await;
        assert_eq!(code, "HOST_ERROR", "{message}");
        assert!(
            message.contains("vlanLinks") && message.contains("802.1Q"),
            "{message}"
        );
        println!(
            "SKIPPED VLAN-link creation: this kernel cannot make 802.1Q links ({vlan_detail}); \
             checked instead that an uplinked network fails with HOST_ERROR naming the capability \
             and changes nothing (the golden plan in tests/network_plan.rs covers the VLAN link)"
        );
        // Without an uplink the same VLAN still works.
        create_network(&server, "twenty", 20).await;
        assert!(sys_link("vmbr20").unwrap().up);
    }

    // A network in use cannot go.
    server.create_template("bare").await;
    let vm = server.create_vm("vm-a", "bare").await;
    let nic = server
        .ok(
            "mutation($v: ID!, $n: ID!) { attachNic(vmId: $v, networkId: $n) { nic { id mac model tap attachment position } plan { action } } }",
            json!({"v": vm, "n": ten["id"]}),
        )
        .await["attachNic"]
        .clone();
    assert_eq!(
        nic["plan"],
        json!([]),
        "a stopped VM's NIC is for its next start"
    );
    let mac = nic["nic"]["mac"].as_str().unwrap().to_string();
    assert!(mac.starts_with("02:"), "locally administered: {mac}");
    assert_eq!(nic["nic"]["model"], "virtio-net-pci");
    assert_eq!(
        nic["nic"]["tap"].as_str().unwrap(),
        vman::network::tap_name(&vm, 0)
    );
    assert!(
        sys_link(nic["nic"]["tap"].as_str().unwrap()).is_none(),
        "no tap while stopped"
    );
    let (code, _) = refused(
        &server,
        "mutation($id: ID!) { deleteNetwork(id: $id) { network { id } } }",
        json!({"id": ten["id"]}),
    )
    .await;
    assert_eq!(code, "CONFLICT");

    // Bad NICs.
    const ATTACH: &str = "mutation($v: ID!, $n: ID!, $m: String, $model: String) { attachNic(vmId: $v, networkId: $n, mac: $m, model: $model) { nic { id } } }";
    for (mac_in, model, code) in [
        (json!("zz:00:00:00:00:01"), json!(null), "BAD_USER_INPUT"),
        (json!("01:00:5e:00:00:01"), json!(null), "BAD_USER_INPUT"),
        (json!(mac), json!(null), "CONFLICT"),
        (json!(null), json!("rtl8139,x=y"), "BAD_USER_INPUT"),
    ] {
        let (got, message) = refused(
            &server,
            ATTACH,
            json!({"v": vm, "n": ten["id"], "m": mac_in, "model": model}),
        )
        .await;
        assert_eq!(got, code, "{mac_in} {model}: {message}");
    }
    let (code, _) = refused(
        &server,
        ATTACH,
        json!({"v": vm, "n": "01940000-0000-7000-8000-0000000000ff"}),
    )
    .await;
    assert_eq!(code, "NOT_FOUND");

    // Repair: the actions the coherence sweep repeats put back what went.
    use vman::host::NetworkAction;
    ip(&["link", "del", "vmbr10"]);
    let links = server.app.ctx.network.links().await.unwrap();
    assert!(!links.contains_key("vmbr10"));
    let row = {
        use sea_orm::EntityTrait;
        vman::network::model::Entity::find_by_id(ten["id"].as_str().unwrap().to_string())
            .one(&server.app.ctx.db)
            .await
            .unwrap()
            .unwrap()
    };
    for _ in 0..2 {
        server
            .app
            .ctx
            .network
            .execute(&vman::network::ensure_action(&row))
            .await
            .unwrap();
    }
    let tap = nic["nic"]["tap"].as_str().unwrap().to_string();
    for _ in 0..2 {
        server
            .app
            .ctx
            .network
            .execute(&NetworkAction::EnsureTap {
                tap: tap.clone(),
                bridge: "vmbr10".into(),
            })
            .await
            .unwrap();
    }
    let links = server.app.ctx.network.links().await.unwrap();
    let bridge = &links["vmbr10"];
    assert!(
        bridge.up && bridge.owned && bridge.kind.as_deref() == Some("bridge"),
        "{bridge:?}"
    );
    let seen = &links[&tap];
    assert!(seen.up && seen.owned, "{seen:?}");
    assert_eq!(seen.master.as_deref(), Some("vmbr10"));
    assert_eq!(seen.kind.as_deref(), Some("tun"));
    server
        .app
        .ctx
        .network
        .execute(&NetworkAction::DeleteTap { tap: tap.clone() })
        .await
        .unwrap();
    assert!(sys_link(&tap).is_none());
}

fn actions(steps: &Value) -> Vec<String> {
    steps
        .as_array()
        .unwrap()
        .iter()
        .map(|s| match s["action"].as_str().unwrap() {
            "qmp" => format!("qmp {}", s["detail"]["command"].as_str().unwrap()),
            other => other.to_string(),
        })
        .collect()
}

/// A VM's taps exist exactly while it runs: made before QEMU starts, hot-plugged
/// NICs get theirs, a stop removes them, a detach the guest does not acknowledge
/// (no guest OS here) leaves the NIC DETACHING until the VM stops.
#[tokio::test]
async fn taps_follow_the_vm_through_start_hot_plug_and_stop() {
    if !netns::enter("taps_follow_the_vm_through_start_hot_plug_and_stop") {
        return;
    }
    let server = real_server().await;
    let net = create_network(&server, "ten", 10).await;
    server.create_template("bare").await;
    let vm = server.create_vm("vm-a", "bare").await;
    const ATTACH: &str = "mutation($v: ID!, $n: ID!, $m: String) { attachNic(vmId: $v, networkId: $n, mac: $m) { nic { id tap mac attachment } plan { action detail } operation { status } } }";
    let cold = server
        .ok(
            ATTACH,
            json!({"v": vm, "n": net["id"], "m": "02:AA:00:00:00:01"}),
        )
        .await["attachNic"]
        .clone();
    assert_eq!(cold["nic"]["mac"], "02:aa:00:00:00:01");
    let tap0 = cold["nic"]["tap"].as_str().unwrap().to_string();

    // The start's plan makes the tap first; a dry run makes nothing.
    let planned = server
        .ok(
            "mutation($id: ID!) { startVm(id: $id, dryRun: true) { plan { action detail } } }",
            json!({"id": vm}),
        )
        .await;
    assert_eq!(
        actions(&planned["startVm"]["plan"])[..4],
        ["addTap", "setMaster", "setUp", "createDir"]
    );
    assert!(sys_link(&tap0).is_none());

    let started = server
        .ok(
            "mutation($id: ID!) { startVm(id: $id) { vm { state } operation { steps { action detail } } } }",
            json!({"id": vm}),
        )
        .await["startVm"]
        .clone();
    assert_eq!(started["vm"]["state"], "RUNNING");
    let steps = &started["operation"]["steps"];
    assert_eq!(
        actions(steps)[..5],
        ["addTap", "setMaster", "setUp", "createDir", "spawnQemu"]
    );
    let argv: Vec<String> = serde_json::from_value(steps[4]["detail"]["argv"].clone()).unwrap();
    let netdev = argv.iter().position(|a| a == "-netdev").expect("-netdev");
    assert!(argv[netdev + 1].contains(&format!("ifname={tap0},script=no,downscript=no")));
    assert!(
        argv.iter()
            .any(|a| a.starts_with("virtio-net-pci,") && a.contains("mac=02:aa:00:00:00:01"))
    );
    let link = sys_link(&tap0).expect("the tap exists while the VM runs");
    assert!(link.is_tap() && link.up && link.alias == "vman", "{link:?}");
    assert_eq!(link.master.as_deref(), Some("vmbr10"));

    // Hot-plug: a tap, then netdev_add + device_add on a free root port.
    let hot = server.ok(ATTACH, json!({"v": vm, "n": net["id"]})).await["attachNic"].clone();
    assert_eq!(hot["operation"]["status"], "SUCCEEDED", "{hot:#}");
    assert_eq!(
        actions(&hot["plan"]),
        [
            "addTap",
            "setMaster",
            "setUp",
            "qmp netdev_add",
            "qmp device_add"
        ]
    );
    let tap1 = hot["nic"]["tap"].as_str().unwrap().to_string();
    assert_ne!(tap0, tap1);
    assert_eq!(sys_link(&tap1).unwrap().master.as_deref(), Some("vmbr10"));

    // No guest OS: device_del is never acknowledged, the NIC waits as DETACHING.
    let detached = server
        .ok(
            "mutation($id: ID!) { detachNic(nicId: $id) { nic { attachment } plan { action } } }",
            json!({"id": hot["nic"]["id"]}),
        )
        .await["detachNic"]
        .clone();
    assert_eq!(detached["nic"]["attachment"], "DETACHING", "{detached:#}");
    assert!(sys_link(&tap1).is_some(), "QEMU may still use it");

    let stopped = server
        .ok(
            "mutation($id: ID!) { stopVm(id: $id, force: true) { vm { state nics { id } } operation { steps { action } } } }",
            json!({"id": vm}),
        )
        .await["stopVm"]
        .clone();
    assert_eq!(stopped["vm"]["state"], "STOPPED");
    assert!(sys_link(&tap0).is_none() && sys_link(&tap1).is_none());
    assert_eq!(stopped["vm"]["nics"], json!([{"id": cold["nic"]["id"]}]));
    let kinds: Vec<String> = server
        .journal()
        .await
        .iter()
        .map(|e| e["kind"].as_str().unwrap().to_string())
        .filter(|k| k.starts_with("NIC_"))
        .collect();
    assert_eq!(kinds, ["NIC_ATTACHED", "NIC_ATTACHED", "NIC_DETACHED"]);

    // The next start makes the tap again; deleting the VM removes it and its NICs.
    server.start_vm(&vm).await;
    assert!(sys_link(&tap0).unwrap().up);
    server
        .ok(
            "mutation($id: ID!) { deleteVm(id: $id) { vm { id } } }",
            json!({"id": vm}),
        )
        .await;
    assert!(sys_link(&tap0).is_none());
    server
        .ok(
            "mutation($id: ID!) { deleteNetwork(id: $id) { network { id } } }",
            json!({"id": net["id"]}),
        )
        .await;
    assert!(sys_link("vmbr10").is_none());
}

/// A vman restart re-adopts a running VM and leaves its tap exactly as it
/// was (same link, still on the bridge); the stop after it removes the tap.
#[tokio::test]
async fn a_vman_restart_leaves_running_vms_taps_alone() {
    if !netns::enter("a_vman_restart_leaves_running_vms_taps_alone") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let http = reqwest::Client::new();
    let vman = VmanProcess::start(&data, free_port());
    vman.ready(&http).await;
    let net = vman
        .gql(
            &http,
            "mutation { createNetwork(input: {name: \"ten\", vlanId: 10}) { network { id } } }",
            json!({}),
        )
        .await["createNetwork"]["network"]["id"]
        .clone();
    vman.gql(&http, "mutation { createTemplate(input: {name: \"bare\", vcpus: 1, memoryMib: 64}) { template { id } } }", json!({}))
        .await;
    let vm = vman
        .gql(
            &http,
            "mutation { createVm(input: {name: \"keep\", templateName: \"bare\"}) { vm { id } } }",
            json!({}),
        )
        .await["createVm"]["vm"]["id"]
        .clone();
    let tap = vman
        .gql(
            &http,
            "mutation($v: ID!, $n: ID!) { attachNic(vmId: $v, networkId: $n) { nic { tap } } }",
            json!({"v": vm, "n": net}),
        )
        .await["attachNic"]["nic"]["tap"]
        .as_str()
        .unwrap()
        .to_string();
    vman.gql(
        &http,
        "mutation($id: ID!) { startVm(id: $id) { vm { state } } }",
        json!({"id": vm}),
    )
    .await;
    let before = sys_link(&tap).expect("the tap exists");

    let mut vman = vman;
    vman.child.kill().unwrap(); // SIGKILL: vman only, not its VMs
    vman.child.wait().unwrap();
    // Only vman died: keep the VM its guard would otherwise end.
    vman.run_dir = std::path::PathBuf::new();
    drop(vman);
    assert_eq!(
        sys_link(&tap),
        Some(before.clone()),
        "the tap outlives vman"
    );

    let vman = VmanProcess::start(&data, free_port());
    vman.ready(&http).await;
    let state = vman
        .gql(
            &http,
            "query($id: ID) { vm(id: $id) { state stateReason } }",
            json!({"id": vm}),
        )
        .await;
    assert_eq!(state["vm"]["state"], "RUNNING", "{state}");
    assert_eq!(
        sys_link(&tap),
        Some(before),
        "re-adoption left the tap alone"
    );
    vman.gql(
        &http,
        "mutation($id: ID!) { stopVm(id: $id, force: true) { vm { state } } }",
        json!({"id": vm}),
    )
    .await;
    assert!(sys_link(&tap).is_none(), "the stop removed the tap");
}

#[tokio::test]
async fn a_bridge_deleted_by_hand_is_an_issue_and_repair_makes_it_again() {
    if !netns::enter("a_bridge_deleted_by_hand_is_an_issue_and_repair_makes_it_again") {
        return;
    }
    // Only asked-for sweeps, under `repair`.
    let server = TestServer::start_with(|c| {
        c.dry_run = false;
        c.qemu.accel = accel();
        c.observer.interval = std::time::Duration::from_secs(3600);
        c.observer.policy = vman::config::DriftPolicy::Repair;
    })
    .await;
    let net = create_network(&server, "ten", 10).await;
    server.create_template("bare").await;
    let vm = server.create_vm("vm-a", "bare").await;
    let nic = server
        .ok(
            "mutation($v: ID!, $n: ID!) { attachNic(vmId: $v, networkId: $n) { nic { id tap } } }",
            json!({"v": vm, "n": net["id"]}),
        )
        .await["attachNic"]["nic"]
        .clone();
    let tap = nic["tap"].as_str().unwrap().to_string();
    server.start_vm(&vm).await;
    const SWEEP: &str =
        "mutation { runCoherenceSweep { findings { kind subjectId open action } } }";
    let clean = server.ok(SWEEP, json!({})).await;
    assert_eq!(clean["runCoherenceSweep"]["findings"], json!([]), "{clean}");

    // Deleting the bridge also takes the tap off it.
    ip(&["link", "del", "vmbr10"]);
    assert_eq!(sys_link(&tap).unwrap().master, None);
    let swept = server.ok(SWEEP, json!({})).await["runCoherenceSweep"]["findings"].clone();
    assert_eq!(
        swept,
        json!([
            {"kind": "BRIDGE_MISSING", "subjectId": net["id"], "open": false, "action": "made bridge vmbr10 again, up"},
            {"kind": "TAP_NOT_ON_BRIDGE", "subjectId": nic["id"], "open": false, "action": format!("put tap {tap} back on vmbr10")},
        ]),
        "{swept:#}"
    );
    let bridge = sys_link("vmbr10").expect("the bridge is back");
    assert!(
        bridge.is_bridge() && bridge.up && bridge.alias == "vman",
        "{bridge:?}"
    );
    assert_eq!(sys_link(&tap).unwrap().master.as_deref(), Some("vmbr10"));
    // Each repair was an event.
    let kinds: Vec<String> = server
        .journal()
        .await
        .iter()
        .map(|e| e["kind"].as_str().unwrap().to_string())
        .filter(|k| k.starts_with("COHERENCE"))
        .collect();
    assert_eq!(
        kinds,
        [
            "COHERENCE_ISSUE_OPENED",
            "COHERENCE_ISSUE_RESOLVED",
            "COHERENCE_ISSUE_OPENED",
            "COHERENCE_ISSUE_RESOLVED"
        ]
    );
    let after = server.ok(SWEEP, json!({})).await;
    assert_eq!(after["runCoherenceSweep"]["findings"], json!([]), "{after}");
    server.stop_vm(&vm).await;
}
