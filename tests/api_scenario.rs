//! The foundation scenario over a real port: templates, VMs, state changes
//! pushed over a websocket, and a resumed subscription that receives exactly
//! what it missed.

mod common;

use common::{TestServer, WsClient};
use serde_json::json;

const VM_STATE_CHANGED: &str = "subscription($vm: ID, $after: String) { vmStateChanged(vmId: $vm, after: $after) { vmId vm { name } from to reason operationId sequence at } }";
const EVENTS_AFTER: &str =
    "subscription($after: String) { events(after: $after) { sequence kind subjectId } }";

#[tokio::test]
async fn start_is_pushed_in_order_and_a_resumed_subscription_gets_exactly_what_it_missed() {
    let server = TestServer::start().await;
    server.create_template("tiny").await;
    let vm = server.create_vm("web-1", "tiny").await;

    // Another VM's changes must not reach a subscriber of this one.
    let other = server.create_vm("other", "tiny").await;

    // Subscribing "after" the journal head a client has seen leaves no window
    // in which a change could slip between reading and subscribing.
    let head = server.journal().await.last().unwrap()["sequence"].clone();
    let mut ws = WsClient::connect(&server.ws_url).await;
    ws.subscribe("states", VM_STATE_CHANGED, json!({"vm": vm, "after": head}))
        .await;
    server.start_vm(&other).await;

    let started = server
        .ok(
            "mutation($id: ID!) { startVm(id: $id) { vm { state } operation { id status kind } } }",
            json!({"id": vm}),
        )
        .await;
    assert_eq!(started["startVm"]["vm"]["state"], "RUNNING");
    assert_eq!(started["startVm"]["operation"]["status"], "SUCCEEDED");
    let op_id = started["startVm"]["operation"]["id"].clone();

    let first = ws.next_data("states").await["vmStateChanged"].clone();
    let second = ws.next_data("states").await["vmStateChanged"].clone();
    assert_eq!(
        (first["from"].as_str(), first["to"].as_str()),
        (Some("STOPPED"), Some("STARTING"))
    );
    assert_eq!(
        (second["from"].as_str(), second["to"].as_str()),
        (Some("STARTING"), Some("RUNNING"))
    );
    for change in [&first, &second] {
        assert_eq!(change["vmId"], vm.as_str());
        assert_eq!(change["vm"]["name"], "web-1");
        assert_eq!(change["operationId"], op_id);
    }
    let seq = |v: &serde_json::Value| v["sequence"].as_str().unwrap().parse::<i64>().unwrap();
    assert_eq!(
        seq(&second),
        seq(&first) + 1,
        "the two changes are consecutive journal entries"
    );

    // Disconnect, then change more while nobody listens.
    ws.close().await;
    let last_seen = second["sequence"].as_str().unwrap().to_string();
    server
        .ok(
            "mutation($id: ID!) { pauseVm(id: $id) { vm { state } } }",
            json!({"id": vm}),
        )
        .await;
    server
        .ok(
            "mutation($id: ID!) { resumeVm(id: $id) { vm { state } } }",
            json!({"id": vm}),
        )
        .await;
    server
        .ok(
            "mutation($id: ID!) { stopVm(id: $id) { vm { state stateReason } } }",
            json!({"id": vm}),
        )
        .await;
    server.create_template("second").await;

    let journal = server.journal().await;
    let missed: Vec<_> = journal
        .iter()
        .filter(|e| e["sequence"].as_str().unwrap().parse::<i64>().unwrap() > seq(&second))
        .collect();
    let kinds: Vec<_> = missed.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "VM_STATE_CHANGED",
            "VM_STATE_CHANGED",
            "VM_STATE_CHANGED",
            "VM_STATE_CHANGED",
            "TEMPLATE_CREATED"
        ],
        "pause, resume, stopping, stopped, a template"
    );

    let mut ws = WsClient::connect(&server.ws_url).await;
    ws.subscribe("resume", EVENTS_AFTER, json!({"after": last_seen}))
        .await;
    for expected in &missed {
        let got = ws.next_data("resume").await["events"].clone();
        assert_eq!(got["sequence"], expected["sequence"]);
        assert_eq!(got["kind"], expected["kind"]);
        assert_eq!(got["subjectId"], expected["subjectId"]);
    }
    // Then live events continue the same sequence with nothing repeated.
    server.create_template("third").await;
    let live = ws.next_data("resume").await["events"].clone();
    assert_eq!(live["kind"], "TEMPLATE_CREATED");
    assert_eq!(
        live["sequence"].as_str().unwrap().parse::<i64>().unwrap(),
        journal.last().unwrap()["sequence"]
            .as_str()
            .unwrap()
            .parse::<i64>()
            .unwrap()
            + 1
    );
    ws.close().await;
}
