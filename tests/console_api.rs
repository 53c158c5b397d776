//! The console's API on the dry-run host (fast): what `vmConsole` and
//! `sendConsoleInput` refuse, each with its code. The console itself is
//! tested with the real guest in `console_guest.rs`.

mod common;

use common::{TestServer, WsClient};
use serde_json::json;

const MISSING: &str = "01940000-0000-7000-8000-000000000001";
const SEND: &str = "mutation($vm: ID!, $data: String!, $b64: Boolean!) { sendConsoleInput(vmId: $vm, data: $data, base64: $b64) { bytes outputOffset } }";

#[tokio::test]
async fn console_input_is_checked_before_it_goes_anywhere() {
    let server = TestServer::start().await;
    server.create_template("tiny").await;
    let vm = server.create_vm("vm1", "tiny").await;
    let code = |vm: &str, data: &str, b64: bool| {
        server.error_code(SEND, json!({"vm": vm, "data": data, "b64": b64}))
    };
    let too_long = "x".repeat(vman::console::MAX_INPUT_BYTES + 1);
    let before = server.snapshot().await;
    for (vm, data, b64, want) in [
        (vm.as_str(), "ls\r", true, "BAD_USER_INPUT"), // not base64
        (vm.as_str(), "", false, "BAD_USER_INPUT"),
        (vm.as_str(), too_long.as_str(), false, "BAD_USER_INPUT"),
        ("not-an-id", "ls\r", false, "BAD_USER_INPUT"),
        (MISSING, "ls\r", false, "NOT_FOUND"),
        (vm.as_str(), "ls\r", false, "INVALID_STATE"), // STOPPED
    ] {
        assert_eq!(code(vm, data, b64).await, want, "{vm} {data:.10} {b64}");
    }
    // A dry run pretends the VM runs, but it has no serial port to type into.
    server.start_vm(&vm).await;
    assert_eq!(code(&vm, "bHMN", true).await, "NOT_SUPPORTED");
    // Nothing is recorded for console input, refused or not.
    let after = server.snapshot().await;
    assert_eq!(
        before["operations"]["totalCount"].as_i64().unwrap() + 1,
        after["operations"]["totalCount"].as_i64().unwrap(),
        "only startVm's operation"
    );
}

#[tokio::test]
async fn a_dry_run_vm_has_no_console_and_says_so_at_once() {
    let server = TestServer::start().await;
    server.create_template("tiny").await;
    let vm = server.create_vm("vm1", "tiny").await;
    let mut ws = WsClient::connect(&server.ws_url).await;
    let watch = "subscription($vm: ID!, $replay: Int!, $after: Bytes) { vmConsole(vmId: $vm, replayBytes: $replay, after: $after) { offset text } }";
    for (id, (vm, replay, after, want)) in [
        (vm.as_str(), 65536, None, "NOT_SUPPORTED"),
        (vm.as_str(), -1, None, "BAD_USER_INPUT"),
        (vm.as_str(), 2 << 20, None, "BAD_USER_INPUT"),
        (vm.as_str(), 0, Some(-5), "BAD_USER_INPUT"),
        (MISSING, 0, None, "NOT_FOUND"),
    ]
    .into_iter()
    .enumerate()
    {
        let id = format!("c{id}");
        ws.subscribe(
            &id,
            watch,
            json!({"vm": vm, "replay": replay, "after": after}),
        )
        .await;
        // A subscription refused before its first item: an `error` for the
        // operation, and nothing after it.
        let message = ws.next_message().await;
        assert_eq!(message["id"], id.as_str(), "{message}");
        assert_eq!(message["type"], "error", "{message}");
        assert_eq!(
            message["payload"][0]["extensions"]["code"], want,
            "{message}"
        );
    }
    ws.close().await;
}
