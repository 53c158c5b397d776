//! Bad input gets a clear error with a code and changes nothing.

mod common;

use common::TestServer;
use serde_json::json;

#[tokio::test]
async fn each_bad_input_gets_its_code_and_changes_nothing() {
    let server = TestServer::start().await;
    server.create_template("tiny").await;
    let vm = server.create_vm("web-1", "tiny").await;
    let disk = server.create_disk("data", 1 << 20, "QCOW2").await;
    let network = server
        .ok(
            "mutation { createNetwork(input: {name: \"lan\", vlanId: 10}) { network { id } } }",
            json!({}),
        )
        .await["createNetwork"]["network"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let before = server.snapshot().await;

    let unknown = "01940000-0000-7000-8000-000000000000";
    let long = "a".repeat(4096);
    let cases: Vec<(&str, &str, serde_json::Value)> = vec![
        // names
        (
            "BAD_USER_INPUT",
            "mutation($n: String!) { createTemplate(input: {name: $n, vcpus: 1, memoryMib: 128}) { template { id } } }",
            json!({"n": "Bad Name"}),
        ),
        (
            "BAD_USER_INPUT",
            "mutation($n: String!) { createTemplate(input: {name: $n, vcpus: 1, memoryMib: 128}) { template { id } } }",
            json!({"n": "vm,if=none"}),
        ),
        (
            "BAD_USER_INPUT",
            "mutation($n: String!) { createTemplate(input: {name: $n, vcpus: 1, memoryMib: 128}) { template { id } } }",
            json!({"n": "../etc"}),
        ),
        (
            "BAD_USER_INPUT",
            "mutation($n: String!) { createTemplate(input: {name: $n, vcpus: 1, memoryMib: 128}) { template { id } } }",
            json!({"n": long}),
        ),
        (
            "BAD_USER_INPUT",
            "mutation($n: String!) { createVm(input: {name: $n, templateName: \"tiny\"}) { vm { id } } }",
            json!({"n": ""}),
        ),
        // out-of-range numbers
        (
            "BAD_USER_INPUT",
            "mutation { createTemplate(input: {name: \"t2\", vcpus: 0, memoryMib: 128}) { template { id } } }",
            json!({}),
        ),
        (
            "BAD_USER_INPUT",
            "mutation { createTemplate(input: {name: \"t2\", vcpus: 100000, memoryMib: 128}) { template { id } } }",
            json!({}),
        ),
        (
            "BAD_USER_INPUT",
            "mutation { createTemplate(input: {name: \"t2\", vcpus: 1, memoryMib: 99999999999}) { template { id } } }",
            json!({}),
        ),
        (
            "BAD_USER_INPUT",
            "mutation { createDisk(input: {name: \"d2\", sizeBytes: 0}) { disk { id } } }",
            json!({}),
        ),
        (
            "BAD_USER_INPUT",
            "mutation { createDisk(input: {name: \"d2\", sizeBytes: -1048576}) { disk { id } } }",
            json!({}),
        ),
        (
            "BAD_USER_INPUT",
            "mutation { createDisk(input: {name: \"d2\", sizeBytes: 11258999068426240}) { disk { id } } }",
            json!({}),
        ),
        (
            "BAD_USER_INPUT",
            "mutation { createNetwork(input: {name: \"n2\", vlanId: 0}) { network { id } } }",
            json!({}),
        ),
        (
            "BAD_USER_INPUT",
            "mutation { createNetwork(input: {name: \"n2\", vlanId: 4095}) { network { id } } }",
            json!({}),
        ),
        (
            "BAD_USER_INPUT",
            "mutation($id: ID!) { stopVm(id: $id, timeoutSeconds: 0) { vm { id } } }",
            json!({"id": vm}),
        ),
        (
            "BAD_USER_INPUT",
            "mutation { createVm(input: {name: \"bare\"}) { vm { id } } }",
            json!({}),
        ),
        (
            "BAD_USER_INPUT",
            "{ vms(first: 100000) { totalCount } }",
            json!({}),
        ),
        // malformed and unknown IDs
        (
            "BAD_USER_INPUT",
            "mutation { startVm(id: \"not-a-uuid\") { vm { id } } }",
            json!({}),
        ),
        (
            "NOT_FOUND",
            "mutation($id: ID!) { startVm(id: $id) { vm { id } } }",
            json!({"id": unknown}),
        ),
        (
            "NOT_FOUND",
            "mutation($id: ID!) { deleteTemplate(id: $id) { template { id } } }",
            json!({"id": unknown}),
        ),
        (
            "NOT_FOUND",
            "mutation($d: ID!, $v: ID!) { attachDisk(diskId: $d, vmId: $v) { disk { id } } }",
            json!({"d": disk, "v": unknown}),
        ),
        (
            "NOT_FOUND",
            "mutation($id: ID!) { deleteNetwork(id: $id) { network { id } } }",
            json!({"id": unknown}),
        ),
        (
            "NOT_FOUND",
            "mutation { createVm(input: {name: \"x1\", templateName: \"missing\"}) { vm { id } } }",
            json!({}),
        ),
        // duplicates
        (
            "CONFLICT",
            "mutation { createTemplate(input: {name: \"tiny\", vcpus: 1, memoryMib: 128}) { template { id } } }",
            json!({}),
        ),
        (
            "CONFLICT",
            "mutation { createVm(input: {name: \"web-1\", templateName: \"tiny\"}) { vm { id } } }",
            json!({}),
        ),
        (
            "CONFLICT",
            "mutation { createDisk(input: {name: \"data\", sizeBytes: 1048576}) { disk { id } } }",
            json!({}),
        ),
        (
            "CONFLICT",
            "mutation { createNetwork(input: {name: \"other\", vlanId: 10}) { network { id } } }",
            json!({}),
        ),
        (
            "CONFLICT",
            "mutation { createNetwork(input: {name: \"lan\", vlanId: 11}) { network { id } } }",
            json!({}),
        ),
        // in use
        (
            "CONFLICT",
            "mutation($id: ID!) { deleteTemplate(id: $id) { template { id } } }",
            json!({"id": server.ok("{ template(name: \"tiny\") { id } }", json!({})).await["template"]["id"]}),
        ),
        (
            "CONFLICT",
            "mutation($id: ID!) { detachDisk(diskId: $id) { disk { id } } }",
            json!({"id": disk}),
        ),
        // wrong states
        (
            "INVALID_STATE",
            "mutation($id: ID!) { stopVm(id: $id) { vm { id } } }",
            json!({"id": vm}),
        ),
        (
            "INVALID_STATE",
            "mutation($id: ID!) { pauseVm(id: $id) { vm { id } } }",
            json!({"id": vm}),
        ),
        (
            "INVALID_STATE",
            "mutation($id: ID!) { resumeVm(id: $id) { vm { id } } }",
            json!({"id": vm}),
        ),
        (
            "INVALID_STATE",
            "mutation($id: ID!) { restartVm(id: $id) { vm { id } } }",
            json!({"id": vm}),
        ),
    ];
    for (code, query, variables) in &cases {
        assert_eq!(
            &server.error_code(query, variables.clone()).await,
            code,
            "{query} with {variables}"
        );
    }
    assert_eq!(
        server.snapshot().await,
        before,
        "a rejected request changed something"
    );

    // Starting a running VM is INVALID_STATE, and leaves it running.
    server.start_vm(&vm).await;
    let running = server.snapshot().await;
    assert_eq!(
        server
            .error_code(
                "mutation($id: ID!) { startVm(id: $id) { vm { id } } }",
                json!({"id": vm})
            )
            .await,
        "INVALID_STATE"
    );
    // A disk attached to a running VM cannot be deleted.
    server
        .ok("mutation($d: ID!, $v: ID!) { attachDisk(diskId: $d, vmId: $v) { disk { attachment } } }", json!({"d": disk, "v": vm}))
        .await;
    let attached = server.snapshot().await;
    assert_ne!(attached, running);
    assert_eq!(
        server
            .error_code(
                "mutation($id: ID!) { deleteDisk(id: $id) { disk { id } } }",
                json!({"id": disk})
            )
            .await,
        "CONFLICT"
    );
    assert_eq!(server.snapshot().await, attached);
    let _ = network;
}

#[tokio::test]
async fn a_network_with_nics_cannot_be_deleted() {
    let server = TestServer::start().await;
    server.create_template("tiny").await;
    let vm = server.create_vm("web-1", "tiny").await;
    let network = server
        .ok("mutation { createNetwork(input: {name: \"lan\", vlanId: 10}) { network { id bridge } } }", json!({}))
        .await["createNetwork"]["network"]
        .clone();
    assert_eq!(network["bridge"], "vmbr10");
    server
        .ok(
            "mutation($v: ID!, $n: ID!) { attachNic(vmId: $v, networkId: $n) { nic { id } } }",
            json!({"v": vm, "n": network["id"]}),
        )
        .await;
    let before = server.snapshot().await;
    assert_eq!(
        server
            .error_code(
                "mutation($id: ID!) { deleteNetwork(id: $id) { network { id } } }",
                json!({"id": network["id"]})
            )
            .await,
        "CONFLICT"
    );
    assert_eq!(server.snapshot().await, before);
}

#[tokio::test]
async fn http_level_misuse_is_refused() {
    let server = TestServer::start().await;
    let get_mutation = server
        .http
        .get(&server.url)
        .query(&[(
            "query",
            "mutation { createNetwork(input: {name: \"lan\", vlanId: 10}) { network { id } } }",
        )])
        .send()
        .await
        .unwrap();
    assert_eq!(get_mutation.status(), 405);
    assert_eq!(get_mutation.headers()["allow"], "POST");

    let text_plain = server
        .http
        .post(&server.url)
        .header("content-type", "text/plain")
        .body("{ health { ready } }")
        .send()
        .await
        .unwrap();
    assert_eq!(text_plain.status(), 415);

    let parse_error = server
        .http
        .post(&server.url)
        .header("content-type", "application/json")
        .header("accept", "application/graphql-response+json")
        .body(r#"{"query": "{ vms { "}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(parse_error.status(), 400);
    let body: serde_json::Value = parse_error.json().await.unwrap();
    assert!(body.get("data").is_none(), "{body}");

    assert_eq!(server.snapshot().await["networks"]["totalCount"], 0);
}

#[tokio::test]
async fn sizes_beyond_32_bits_pass_as_variables() {
    let server = TestServer::start().await;
    let ten_gib: i64 = 10 << 30;
    let data = server
        .ok(
            "mutation($s: Bytes!) { createDisk(input: {name: \"big\", sizeBytes: $s}) { disk { sizeBytes } } }",
            json!({"s": ten_gib}),
        )
        .await;
    assert_eq!(data["createDisk"]["disk"]["sizeBytes"], ten_gib);
    // As a string too, for clients whose numbers are 32-bit.
    let data = server
        .ok(
            "mutation($s: Bytes!) { createDisk(input: {name: \"big2\", sizeBytes: $s}) { disk { sizeBytes } } }",
            json!({"s": ten_gib.to_string()}),
        )
        .await;
    assert_eq!(data["createDisk"]["disk"]["sizeBytes"], ten_gib);
    assert_eq!(
        server
            .error_code("mutation($s: Bytes!) { createDisk(input: {name: \"neg\", sizeBytes: $s}) { disk { id } } }", json!({"s": -1}))
            .await,
        "BAD_USER_INPUT"
    );
}

/// attachDisk reads and checks its rows inside the write that would record
/// its operation: a refusal rolls that write back, leaves no operation behind
/// and holds up no later write.
#[tokio::test]
async fn a_refused_attach_writes_nothing() {
    let server = TestServer::start().await;
    server.create_template("tiny").await;
    let vm = server.create_vm("web-1", "tiny").await;
    let create_disk = |name: &'static str| {
        let server = &server;
        async move {
            server
                .ok(
                    "mutation($n: String!) { createDisk(input: {name: $n, sizeBytes: 1048576}) { disk { id } } }",
                    json!({"n": name}),
                )
                .await["createDisk"]["disk"]["id"]
                .as_str()
                .unwrap()
                .to_string()
        }
    };
    let attach = "mutation($d: ID!, $v: ID!) { attachDisk(diskId: $d, vmId: $v) { disk { attachment } operation { status } } }";
    let disk = create_disk("data").await;
    let attached = server.ok(attach, json!({"d": disk, "v": vm})).await;
    assert_eq!(attached["attachDisk"]["disk"]["attachment"], "ATTACHED");
    assert_eq!(attached["attachDisk"]["operation"]["status"], "SUCCEEDED");
    let before = server.snapshot().await;

    let unknown = "01940000-0000-7000-8000-000000000000";
    for (code, d, v) in [
        ("CONFLICT", disk.as_str(), vm.as_str()),
        ("NOT_FOUND", unknown, vm.as_str()),
        ("NOT_FOUND", disk.as_str(), unknown),
        ("NOT_FOUND", unknown, unknown),
        ("NOT_FOUND", disk.as_str(), disk.as_str()),
        // An unknown disk is named first, as when it was read before anything else.
        ("NOT_FOUND", unknown, "not-a-uuid"),
        ("BAD_USER_INPUT", disk.as_str(), "not-a-uuid"),
        ("BAD_USER_INPUT", "not-a-uuid", vm.as_str()),
    ] {
        assert_eq!(
            server.error_code(attach, json!({"d": d, "v": v})).await,
            code,
            "attachDisk(diskId: {d}, vmId: {v})"
        );
        assert_eq!(server.snapshot().await, before);
    }

    // The rolled-back writes hold up nothing: the next attach goes through at once.
    let other = create_disk("more").await;
    let attached = tokio::time::timeout(
        std::time::Duration::from_secs(1),
        server.ok(attach, json!({"d": other, "v": vm})),
    )
    .await
    .expect("an attach after refused ones is not held up");
    assert_eq!(attached["attachDisk"]["operation"]["status"], "SUCCEEDED");
}

/// Every mutation that names a template, VM, disk or network takes exactly
/// one of its ID argument and its name argument, as the queries do: both or
/// neither is BAD_USER_INPUT with the queries' message, and changes nothing.
#[tokio::test]
async fn both_or_neither_of_an_id_and_its_name_is_bad_input() {
    let server = TestServer::start().await;
    let template = server.create_template("tiny").await;
    let vm = server.create_vm("vm1", "tiny").await;
    let disk = server.create_disk("data", 1 << 20, "QCOW2").await;
    let network = server
        .ok(
            "mutation { createNetwork(input: {name: \"lan\", vlanId: 10}) { network { id } } }",
            json!({}),
        )
        .await["createNetwork"]["network"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let before = server.snapshot().await;

    let vm_pair = ("id", vm.as_str(), "name", "vm1");
    // (mutation, (ID argument, ID, name argument, name), other arguments)
    let cases = [
        (
            "deleteTemplate",
            ("id", template.as_str(), "name", "tiny"),
            String::new(),
        ),
        ("startVm", vm_pair, String::new()),
        ("stopVm", vm_pair, "force: true".into()),
        ("restartVm", vm_pair, String::new()),
        ("pauseVm", vm_pair, String::new()),
        ("resumeVm", vm_pair, String::new()),
        ("deleteVm", vm_pair, String::new()),
        (
            "attachDisk",
            ("diskId", disk.as_str(), "diskName", "data"),
            format!("vmId: \"{vm}\""),
        ),
        (
            "attachDisk",
            ("vmId", vm.as_str(), "vmName", "vm1"),
            format!("diskId: \"{disk}\""),
        ),
        (
            "detachDisk",
            ("diskId", disk.as_str(), "diskName", "data"),
            String::new(),
        ),
        (
            "resizeDisk",
            ("diskId", disk.as_str(), "diskName", "data"),
            "sizeBytes: 2097152".into(),
        ),
        (
            "deleteDisk",
            ("id", disk.as_str(), "name", "data"),
            String::new(),
        ),
        (
            "deleteNetwork",
            ("id", network.as_str(), "name", "lan"),
            String::new(),
        ),
        (
            "attachNic",
            ("vmId", vm.as_str(), "vmName", "vm1"),
            format!("networkId: \"{network}\""),
        ),
        (
            "attachNic",
            ("networkId", network.as_str(), "networkName", "lan"),
            format!("vmId: \"{vm}\""),
        ),
    ];
    for (mutation, (id_arg, id, name_arg, name), others) in &cases {
        let both = format!("{id_arg}: \"{id}\", {name_arg}: \"{name}\" {others}");
        for args in [both.as_str(), others.as_str()] {
            let args = if args.trim().is_empty() {
                String::new()
            } else {
                format!("({args})")
            };
            let query = format!("mutation {{ {mutation}{args} {{ __typename }} }}");
            let response = server.post(&query, json!({})).await;
            let error = &response["errors"][0];
            assert_eq!(
                error["extensions"]["code"], "BAD_USER_INPUT",
                "{query}: {response}"
            );
            assert_eq!(
                error["message"],
                format!("give exactly one of {id_arg} or {name_arg}"),
                "{query}"
            );
        }
    }
    // The queries' rule, word for word.
    let response = server
        .post(
            "{ vm(id: \"01940000-0000-7000-8000-000000000000\", name: \"vm1\") { id } }",
            json!({}),
        )
        .await;
    assert_eq!(
        response["errors"][0]["message"],
        "give exactly one of id or name"
    );
    assert_eq!(
        server.snapshot().await,
        before,
        "a refused request changed something"
    );
}
