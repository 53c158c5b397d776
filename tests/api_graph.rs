//! Every kind of object is reachable by `node(id)` and by its own query,
//! and the relations between them resolve both ways (dry-run server).

mod common;

use common::TestServer;
use serde_json::{Value, json};

const NODE: &str = "query($id: ID!) { node(id: $id) { __typename id } }";

#[tokio::test]
async fn node_finds_every_kind_of_object_and_relations_resolve() {
    let server = TestServer::start().await;
    let template = server.create_template("small").await;
    let vm = server.create_vm("vm1", "small").await;
    let disk = server.create_disk("data", 1 << 20, "RAW").await;
    let created = server
        .ok(
            "mutation { createNetwork(input: {name: \"lan\", vlanId: 10, uplink: \"\"}) { network { id bridge } operation { id } } }",
            json!({}),
        )
        .await;
    let network = created["createNetwork"]["network"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let operation = created["createNetwork"]["operation"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let nic = server
        .ok(
            "mutation($v: ID!, $n: ID!) { attachNic(vmId: $v, networkId: $n, mac: \"02:00:00:00:00:0a\") { nic { id mac vm { name } network { name } } } }",
            json!({"v": vm, "n": network}),
        )
        .await["attachNic"]["nic"]
        .clone();
    assert_eq!(nic["vm"]["name"], "vm1", "{nic:#}");
    assert_eq!(nic["network"]["name"], "lan");
    let nic = nic["id"].as_str().unwrap().to_string();

    for (id, kind) in [
        (&template, "Template"),
        (&vm, "Vm"),
        (&disk, "Disk"),
        (&network, "Network"),
        (&nic, "Nic"),
        (&operation, "Operation"),
    ] {
        let found = server.ok(NODE, json!({"id": id})).await;
        assert_eq!(found["node"], json!({"__typename": kind, "id": id}));
    }
    // A well-formed ID that names nothing is null, not an error.
    let nothing = server
        .ok(NODE, json!({"id": "0194f0a0-0000-7000-8000-000000000000"}))
        .await;
    assert_eq!(nothing["node"], Value::Null);

    let data = server
        .ok(
            "query($t: ID!) { template(id: $t) { vms { name } baseImage { id } kernel { id } initrd { id } } network(name: \"lan\") { name status { bridgeExists bridgeUp problems } nics { mac vm { name } network { name } } } images { totalCount } }",
            json!({"t": template}),
        )
        .await;
    assert_eq!(
        data["template"],
        json!({"vms": [{"name": "vm1"}], "baseImage": null, "kernel": null, "initrd": null})
    );
    let lan = &data["network"];
    assert_eq!(lan["name"], "lan");
    assert_eq!(lan["status"]["bridgeExists"], true, "{lan:#}");
    assert_eq!(lan["status"]["problems"], json!([]), "{lan:#}");
    assert_eq!(
        lan["nics"],
        json!([{"mac": "02:00:00:00:00:0a", "vm": {"name": "vm1"}, "network": {"name": "lan"}}])
    );
    assert_eq!(data["images"]["totalCount"], 0);
}

#[tokio::test]
async fn mutations_name_their_object_by_id_or_by_name() {
    let server = TestServer::start().await;
    server.create_template("tiny").await;
    server.create_vm("vm1", "tiny").await;
    server.create_disk("data", 1 << 20, "QCOW2").await;
    server
        .ok(
            "mutation { createNetwork(input: {name: \"lan\", vlanId: 10}) { network { id } } }",
            json!({}),
        )
        .await;

    // Each step names its objects by name only; the answer says what it did.
    let steps: Vec<(&str, Value)> = vec![
        (
            "mutation { startVm(name: \"vm1\") { vm { name state } } }",
            json!({"startVm": {"vm": {"name": "vm1", "state": "RUNNING"}}}),
        ),
        (
            "mutation { pauseVm(name: \"vm1\") { vm { state } } }",
            json!({"pauseVm": {"vm": {"state": "PAUSED"}}}),
        ),
        (
            "mutation { resumeVm(name: \"vm1\") { vm { state } } }",
            json!({"resumeVm": {"vm": {"state": "RUNNING"}}}),
        ),
        (
            "mutation { restartVm(name: \"vm1\", hard: true) { vm { state } } }",
            json!({"restartVm": {"vm": {"state": "RUNNING"}}}),
        ),
        (
            "mutation { attachDisk(diskName: \"data\", vmName: \"vm1\") { disk { name attachment vm { name } } } }",
            json!({"attachDisk": {"disk": {"name": "data", "attachment": "ATTACHED", "vm": {"name": "vm1"}}}}),
        ),
        (
            "mutation { resizeDisk(diskName: \"data\", sizeBytes: 2097152) { disk { sizeBytes } } }",
            json!({"resizeDisk": {"disk": {"sizeBytes": 2097152}}}),
        ),
        (
            "mutation { attachNic(vmName: \"vm1\", networkName: \"lan\") { nic { vm { name } network { name } } } }",
            json!({"attachNic": {"nic": {"vm": {"name": "vm1"}, "network": {"name": "lan"}}}}),
        ),
        (
            "mutation { stopVm(name: \"vm1\", force: true) { vm { state } } }",
            json!({"stopVm": {"vm": {"state": "STOPPED"}}}),
        ),
        (
            "mutation { detachDisk(diskName: \"data\") { disk { attachment } } }",
            json!({"detachDisk": {"disk": {"attachment": "DETACHED"}}}),
        ),
        (
            "mutation { deleteVm(name: \"vm1\") { vm { name } } }",
            json!({"deleteVm": {"vm": {"name": "vm1"}}}),
        ),
        (
            "mutation { deleteDisk(name: \"data\") { disk { name } } }",
            json!({"deleteDisk": {"disk": {"name": "data"}}}),
        ),
        (
            "mutation { deleteNetwork(name: \"lan\") { network { name } } }",
            json!({"deleteNetwork": {"network": {"name": "lan"}}}),
        ),
        (
            "mutation { deleteTemplate(name: \"tiny\") { template { name } } }",
            json!({"deleteTemplate": {"template": {"name": "tiny"}}}),
        ),
    ];
    for (query, expected) in steps {
        assert_eq!(server.ok(query, json!({})).await, expected, "{query}");
    }
    assert_eq!(
        server
            .ok(
                "{ templates { totalCount } vms { totalCount } disks { totalCount } networks { totalCount } }",
                json!({}),
            )
            .await,
        json!({"templates": {"totalCount": 0}, "vms": {"totalCount": 0}, "disks": {"totalCount": 0}, "networks": {"totalCount": 0}})
    );

    // A name that names nothing is NOT_FOUND, and says which name.
    let response = server
        .post(
            "mutation { startVm(name: \"nope\") { vm { id } } }",
            json!({}),
        )
        .await;
    assert_eq!(response["errors"][0]["extensions"]["code"], "NOT_FOUND");
    assert_eq!(
        response["errors"][0]["message"],
        "VM named \"nope\" not found"
    );
}

/// Fields that read the database (a VM's template, its disks) answer after
/// those that do not, yet the response keeps the order the query asked for
/// (`api::order`), on the HTTP path that runs queries without the schema's
/// extensions (`api::executor`) as on the one that has them (a mutation).
#[tokio::test]
async fn a_response_keeps_the_order_of_its_selection() {
    let server = TestServer::start().await;
    server.create_template("small").await;
    server.create_vm("vm1", "small").await;
    let selection = "template { name } disks { name } name state";
    let query = format!("{{ vms {{ nodes {{ {selection} }} }} }}");
    let mutation = format!(
        "mutation {{ updateVm(name: \"vm1\", input: {{ tags: [\"a\"] }}) {{ vm {{ {selection} }} }} }}"
    );
    for document in [query, mutation] {
        let text = server
            .http
            .post(&server.url)
            .json(&json!({ "query": document }))
            .send()
            .await
            .expect("request")
            .text()
            .await
            .expect("body");
        let mut from = 0;
        for key in [
            "\"template\":{\"name\":\"small\"}",
            "\"disks\":",
            "\"name\":\"vm1\"",
            "\"state\":",
        ] {
            let at = text[from..]
                .find(key)
                .unwrap_or_else(|| panic!("{key} after byte {from} of {text}"));
            from += at + key.len();
        }
    }
}
