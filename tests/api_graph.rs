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
