//! cloud-init NoCloud seeds: the real test guest (TCG) finds the `cidata`
//! volume vman attaches, mounts it and prints its meta-data; after an
//! `updateVm` of the data the next boot has a new instance-id. Bad input is
//! refused with its code and changes nothing, and user data is never shown.

mod common;

use std::time::Duration;

use common::{TestServer, wait_for_line};
use serde_json::{Value, json};
use vman::config::Accel;

const BOOT: Duration = Duration::from_secs(60);
const CLOUD_INIT: &str =
    "cloudInit { instanceId hostname sshAuthorizedKeys userDataBytes networkConfig }";
const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKb2lZ3QdKwz3Bq7 ops@example";

/// The serial log's value of `VMAN-GUEST-CIDATA <key>: <value>` lines.
fn meta(serial: &str, key: &str) -> Vec<String> {
    let prefix = format!("VMAN-GUEST-CIDATA {key}: ");
    serial
        .lines()
        .filter_map(|l| l.trim_end().strip_prefix(&prefix))
        .map(str::to_string)
        .collect()
}

async fn boot(server: &TestServer, vm: &str) -> String {
    server.start_vm(vm).await;
    let serial = server.run_dir(vm).join("serial.log");
    wait_for_line(&serial, "VMAN-GUEST-READY", BOOT).await
}

#[tokio::test]
async fn the_guest_reads_its_seed_and_a_change_is_a_new_instance_at_the_next_boot() {
    let server = TestServer::real(Accel::Tcg).await;
    server
        .guest_template("tiny", "console=ttyS0 quiet panic=-1")
        .await;
    let created = server
        .ok(
            &format!("mutation($key: String!) {{ createVm(input: {{name: \"web\", templateName: \"tiny\", cloudInit: {{hostname: \"web-1\", sshAuthorizedKeys: [$key], userData: \"#cloud-config\\npassword: hunter2\\n\"}}}}) {{ vm {{ id {CLOUD_INIT} }} }} }}"),
            json!({"key": KEY}),
        )
        .await["createVm"]["vm"]
        .clone();
    let vm = created["id"].as_str().unwrap().to_string();
    let first = created["cloudInit"]["instanceId"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(first.starts_with("iid-"), "{created:#}");
    assert_eq!(created["cloudInit"]["hostname"], "web-1");
    assert_eq!(created["cloudInit"]["sshAuthorizedKeys"], json!([KEY]));
    assert_eq!(created["cloudInit"]["userDataBytes"], 32);

    let serial = boot(&server, &vm).await;
    assert_eq!(
        meta(&serial, "instance-id"),
        [format!("\"{first}\"")],
        "{serial}"
    );
    assert_eq!(meta(&serial, "local-hostname"), ["\"web-1\""]);
    assert!(serial.contains("VMAN-GUEST-HOSTNAME web-1"), "{serial}");
    assert!(
        serial.contains(&format!("VMAN-GUEST-CIDATA   - \"{KEY}\"")),
        "{serial}"
    );
    assert!(
        serial.contains("VMAN-GUEST-CIDATA-FILES meta-data user-data"),
        "{serial}"
    );

    // Changed while it runs: the guest sees it at its next boot.
    let updated = server
        .ok(
            &format!("mutation($id: ID!) {{ updateVm(id: $id, input: {{cloudInit: {{hostname: \"web-2\", networkConfig: \"version: 2\\n\"}}}}) {{ vm {{ {CLOUD_INIT} }} }} }}"),
            json!({"id": vm}),
        )
        .await["updateVm"]["vm"]["cloudInit"]
        .clone();
    let second = updated["instanceId"].as_str().unwrap().to_string();
    assert_ne!(second, first);
    assert_eq!(updated["userDataBytes"], 0);
    server.stop_vm(&vm).await;
    let serial = boot(&server, &vm).await;
    assert_eq!(meta(&serial, "instance-id"), [format!("\"{second}\"")]);
    assert!(serial.contains("VMAN-GUEST-HOSTNAME web-2"), "{serial}");
    assert!(
        serial.contains("VMAN-GUEST-CIDATA-FILES meta-data network-config user-data"),
        "{serial}"
    );

    // The same data again is no change: the instance stays.
    let same = server
        .ok(
            &format!("mutation($id: ID!) {{ updateVm(id: $id, input: {{cloudInit: {{hostname: \"web-2\", networkConfig: \"version: 2\\n\"}}}}) {{ vm {{ {CLOUD_INIT} }} }} }}"),
            json!({"id": vm}),
        )
        .await["updateVm"]["vm"]["cloudInit"]["instanceId"]
        .clone();
    assert_eq!(same, second.as_str());

    // Removed: the next boot has no seed.
    let removed = server
        .ok(
            &format!("mutation($id: ID!) {{ updateVm(id: $id, input: {{cloudInit: null}}) {{ vm {{ {CLOUD_INIT} }} }} }}"),
            json!({"id": vm}),
        )
        .await;
    assert!(
        removed["updateVm"]["vm"]["cloudInit"].is_null(),
        "{removed:#}"
    );
    server.stop_vm(&vm).await;
    let serial = boot(&server, &vm).await;
    assert!(!serial.contains("VMAN-GUEST-CIDATA"), "{serial}");
    server.stop_vm(&vm).await;

    // The user data went into the seed only: not into the journal, the
    // operations or vman's answers.
    let journal = serde_json::to_string(&server.journal().await).unwrap();
    assert!(!journal.contains("hunter2"));
    let operations = server
        .ok(
            "{ operations(first: 100) { nodes { steps { summary detail } } } }",
            json!({}),
        )
        .await;
    assert!(!operations.to_string().contains("hunter2"));
}

#[tokio::test]
async fn bad_cloud_init_data_is_refused_with_its_code_and_changes_nothing() {
    let server = TestServer::start().await;
    server.create_template("small").await;
    let web = server.create_vm("web", "small").await;
    let before = server.snapshot().await;
    let big = "x".repeat((64 << 10) + 1);
    let cases: [(&str, Value, &str); 5] = [
        (
            "user data over the limit",
            json!({"userData": big}),
            "cloudInit.userData",
        ),
        (
            "network config over the limit",
            json!({"networkConfig": big}),
            "cloudInit.networkConfig",
        ),
        (
            "a hostname with a space",
            json!({"hostname": "web 1"}),
            "cloudInit.hostname",
        ),
        (
            "a key that is not one",
            json!({"sshAuthorizedKeys": ["hunter2"]}),
            "cloudInit.sshAuthorizedKeys",
        ),
        (
            "two keys on one line",
            json!({"sshAuthorizedKeys": [format!("{KEY}\n{KEY}")]}),
            "cloudInit.sshAuthorizedKeys",
        ),
    ];
    for (what, data, says) in cases {
        for (mutation, variables) in [
            (
                "mutation($c: CloudInitInput!) { createVm(input: {name: \"v2\", templateName: \"small\", cloudInit: $c}) { vm { id } } }",
                json!({"c": data}),
            ),
            (
                "mutation($id: ID!, $c: CloudInitInput!) { updateVm(id: $id, input: {cloudInit: $c}) { vm { id } } }",
                json!({"id": web, "c": data}),
            ),
        ] {
            let response = server.post(mutation, variables).await;
            let error = &response["errors"][0];
            assert_eq!(
                error["extensions"]["code"], "BAD_USER_INPUT",
                "{what}: {response:#}"
            );
            let message = error["message"].as_str().unwrap();
            assert!(message.contains(says), "{what}: {message}");
            assert!(
                !message.contains(&big),
                "{what}: the message quotes no data"
            );
        }
    }
    assert_eq!(server.snapshot().await, before);
    let vm = server
        .ok(
            &format!("query($id: ID!) {{ vm(id: $id) {{ {CLOUD_INIT} }} }}"),
            json!({"id": web}),
        )
        .await;
    assert!(vm["vm"]["cloudInit"].is_null());

    // A dry-run start plans the seed before QEMU.
    server
        .ok(
            "mutation($id: ID!) { updateVm(id: $id, input: {cloudInit: {userData: \"#!/bin/sh\\necho hunter2\\n\"}}) { vm { id } } }",
            json!({"id": web}),
        )
        .await;
    let plan = server
        .ok(
            "mutation($id: ID!) { startVm(id: $id, dryRun: true) { plan { action summary detail } } }",
            json!({"id": web}),
        )
        .await["startVm"]["plan"]
        .clone();
    let actions: Vec<&str> = plan
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        ["createDir", "writeSeed", "spawnQemu", "qmp"],
        "{plan:#}"
    );
    let argv = plan[2]["detail"]["argv"].to_string();
    assert!(argv.contains("cidata.img"), "{argv}");
    assert!(argv.contains("id=seed0"), "{argv}");
    assert!(!plan.to_string().contains("hunter2"), "{plan:#}");
}
