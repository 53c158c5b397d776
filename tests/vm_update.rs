//! Changing VMs and templates after they are made: `updateVm` with pending
//! changes, tags and `vms(tag:, orderBy:)`, `updateTemplate`, over the real
//! router (dry-run host).

mod common;

use common::TestServer;
use serde_json::{Value, json};

const UPDATE: &str = "mutation($id: ID!, $input: UpdateVmInput!) { updateVm(id: $id, input: $input) { vm { name description vcpus memoryMib tags pendingChanges { vcpus memoryMib } } operation { kind status } } }";

async fn update(server: &TestServer, id: &str, input: Value) -> Value {
    server.ok(UPDATE, json!({"id": id, "input": input})).await["updateVm"].clone()
}

/// The argv of the last `spawnQemu` step of `steps`.
fn spawned_argv(steps: &Value) -> Vec<String> {
    let spawn = steps
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .find(|s| s["action"] == "spawnQemu")
        .unwrap_or_else(|| panic!("no spawnQemu step in {steps:#}"));
    spawn["detail"]["argv"]
        .as_array()
        .unwrap_or_else(|| panic!("no argv in {spawn:#}"))
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect()
}

fn smp(argv: &[String]) -> &str {
    let at = argv.iter().position(|a| a == "-smp").expect("-smp");
    &argv[at + 1]
}

#[tokio::test]
async fn a_stopped_vm_changes_at_once_and_a_running_one_waits_for_its_next_start() {
    let server = TestServer::start_with(|config| config.limits.max_vcpus = 4).await;
    server.create_template("t").await;
    let vm = server.create_vm("web", "t").await;

    let done = update(
        &server,
        &vm,
        json!({"name": "web-1", "description": "front", "vcpus": 2, "memoryMib": 256, "tags": ["prod", "eu", "prod"]}),
    )
    .await;
    assert_eq!(
        done["vm"],
        json!({"name": "web-1", "description": "front", "vcpus": 2, "memoryMib": 256, "tags": ["eu", "prod"], "pendingChanges": null})
    );
    assert_eq!(
        done["operation"],
        json!({"kind": "UPDATE_VM", "status": "SUCCEEDED"})
    );

    // Running: the CPU count and memory wait; the name changes at once.
    server.start_vm(&vm).await;
    let done = update(
        &server,
        &vm,
        json!({"vcpus": 1, "memoryMib": 512, "name": "web-2"}),
    )
    .await;
    assert_eq!(done["vm"]["vcpus"], 2);
    assert_eq!(done["vm"]["name"], "web-2");
    assert_eq!(
        done["vm"]["pendingChanges"],
        json!({"vcpus": 1, "memoryMib": 512})
    );
    // Cleared, then asked again.
    let cleared = server
        .ok(
            "mutation($id: ID!) { clearPendingChanges(id: $id) { vm { pendingChanges { vcpus } } } }",
            json!({"id": vm}),
        )
        .await;
    assert_eq!(
        cleared["clearPendingChanges"]["vm"]["pendingChanges"],
        Value::Null
    );
    update(&server, &vm, json!({"vcpus": 1})).await;

    // A restart is a new QEMU: it gets the new count, and the VM keeps it.
    let restarted = server
        .ok(
            "mutation($id: ID!) { restartVm(id: $id) { vm { vcpus pendingChanges { vcpus } } operation { steps { action detail } } } }",
            json!({"id": vm}),
        )
        .await;
    let restarted = &restarted["restartVm"];
    assert_eq!(restarted["vm"]["vcpus"], 1, "{restarted:#}");
    assert_eq!(restarted["vm"]["pendingChanges"], Value::Null);
    assert_eq!(smp(&spawned_argv(&restarted["operation"]["steps"])), "1");

    let kinds: Vec<Value> = server
        .journal()
        .await
        .into_iter()
        .filter(|e| e["kind"] == "VM_UPDATED")
        .map(|e| json!([e["payload"]["changed"], e["payload"]["pending"]]))
        .collect();
    assert_eq!(
        kinds,
        vec![
            json!([["name", "description", "tags", "vcpus", "memoryMib"], []]),
            json!([["name"], ["vcpus", "memoryMib"]]),
            json!([["pendingChanges"], []]),
            json!([[], ["vcpus"]]),
            json!([["vcpus"], []]),
        ]
    );
}

#[tokio::test]
async fn bad_updates_have_their_code_and_change_nothing() {
    let server = TestServer::start().await;
    server.create_template("t").await;
    let vm = server.create_vm("a", "t").await;
    server.create_vm("b", "t").await;
    let long = "x".repeat(64);
    let many: Vec<String> = (0..33).map(|i| format!("t{i}")).collect();
    for (input, code) in [
        (json!({"tags": ["has space"]}), "BAD_USER_INPUT"),
        (json!({"tags": [long]}), "BAD_USER_INPUT"),
        (json!({"tags": ["Upper"]}), "BAD_USER_INPUT"),
        (json!({"tags": many}), "BAD_USER_INPUT"),
        (json!({"vcpus": 0}), "BAD_USER_INPUT"),
        (json!({"name": "b"}), "CONFLICT"),
        (json!({"name": "Not A Name"}), "BAD_USER_INPUT"),
    ] {
        let before = server.snapshot().await;
        let got = server
            .error_code(UPDATE, json!({"id": vm, "input": input}))
            .await;
        assert_eq!(got, code, "{input}");
        assert_eq!(server.snapshot().await, before, "{input} changed something");
    }
    // By name, as the query names it; both or neither is bad input.
    let renamed = server
        .ok(
            r#"mutation { updateVm(name: "a", input: {description: "by name"}) { vm { description } } }"#,
            json!({}),
        )
        .await;
    assert_eq!(renamed["updateVm"]["vm"]["description"], "by name");
    let both = server
        .error_code(
            r#"mutation($id: ID!) { updateVm(id: $id, name: "a", input: {vcpus: 1}) { vm { id } } }"#,
            json!({"id": vm}),
        )
        .await;
    assert_eq!(both, "BAD_USER_INPUT");
    let missing = server
        .error_code(
            UPDATE,
            json!({"id": "01940000-0000-7000-8000-000000000001", "input": {"vcpus": 1}}),
        )
        .await;
    assert_eq!(missing, "NOT_FOUND");
}

#[tokio::test]
async fn vms_are_found_by_tag_and_listed_in_each_order_page_by_page() {
    let server = TestServer::start().await;
    server.create_template("t").await;
    let mut ids = Vec::new();
    for (name, tags) in [
        ("delta", json!(["db"])),
        ("alpha", json!(["web", "prod"])),
        ("charlie", json!(["web"])),
        ("bravo", json!([])),
    ] {
        let id = server.create_vm(name, "t").await;
        update(&server, &id, json!({"tags": tags})).await;
        ids.push(id);
    }
    server.start_vm(&ids[2]).await; // charlie RUNNING
    server.start_vm(&ids[0]).await; // delta RUNNING

    let names = |data: &Value| -> Vec<String> {
        data["vms"]["edges"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["node"]["name"].as_str().unwrap().to_string())
            .collect()
    };
    let tagged = server
        .ok(
            r#"{ vms(tag: "web") { totalCount edges { node { name } } } }"#,
            json!({}),
        )
        .await;
    assert_eq!(names(&tagged), ["alpha", "charlie"]);
    assert_eq!(tagged["vms"]["totalCount"], 2);

    let query = "query($order: VmOrder!, $after: String) { vms(orderBy: $order, first: 3, after: $after) { edges { node { name } } pageInfo { hasNextPage endCursor } } }";
    for (order, expected) in [
        ("CREATED", ["delta", "alpha", "charlie", "bravo"]),
        ("NAME", ["alpha", "bravo", "charlie", "delta"]),
        // RUNNING < STOPPED as text; oldest first within a state.
        ("STATE", ["delta", "charlie", "alpha", "bravo"]),
    ] {
        let first = server.ok(query, json!({"order": order})).await;
        assert_eq!(first["vms"]["pageInfo"]["hasNextPage"], true, "{order}");
        let rest = server
            .ok(
                query,
                json!({"order": order, "after": first["vms"]["pageInfo"]["endCursor"]}),
            )
            .await;
        assert_eq!(rest["vms"]["pageInfo"]["hasNextPage"], false, "{order}");
        let mut all = names(&first);
        all.extend(names(&rest));
        assert_eq!(all, expected, "{order}");
    }
    let code = server
        .error_code(query, json!({"order": "STATE", "after": "not-a-cursor"}))
        .await;
    assert_eq!(code, "BAD_USER_INPUT");
}

#[tokio::test]
async fn a_template_change_reaches_vms_made_after_it_only() {
    let server = TestServer::start().await;
    let template = server.create_template("t").await;
    let old = server.create_vm("old", "t").await;
    let changed = server
        .ok(
            "mutation($id: ID!) { updateTemplate(id: $id, input: {vcpus: 2, name: \"t2\", description: \"bigger\"}) { template { name vcpus description } operation { kind } } }",
            json!({"id": template}),
        )
        .await;
    assert_eq!(
        changed["updateTemplate"],
        json!({"template": {"name": "t2", "vcpus": 2, "description": "bigger"}, "operation": {"kind": "UPDATE_TEMPLATE"}})
    );
    let new = server.create_vm("new", "t2").await;
    let vcpus = |id: String| {
        let server = &server;
        async move {
            server
                .ok(
                    "query($id: ID) { vm(id: $id) { vcpus } }",
                    json!({"id": id}),
                )
                .await["vm"]["vcpus"]
                .clone()
        }
    };
    assert_eq!(vcpus(old).await, 1);
    assert_eq!(vcpus(new).await, 2);
    let event = server
        .journal()
        .await
        .into_iter()
        .find(|e| e["kind"] == "TEMPLATE_UPDATED")
        .expect("a TEMPLATE_UPDATED event");
    assert_eq!(
        event["payload"]["changed"],
        json!(["name", "description", "vcpus"])
    );
}
