//! Many mutations racing on one VM: one runs at a time, the rest are told why.

mod common;

use std::time::Duration;

use common::TestServer;
use serde_json::{Value, json};

async fn race(server: &TestServer, vm: &str, calls: usize) -> Vec<Result<(), String>> {
    let mut tasks = Vec::new();
    for i in 0..calls {
        let http = server.http.clone();
        let url = server.url.clone();
        let vm = vm.to_string();
        tasks.push(tokio::spawn(async move {
            let query = if i % 2 == 0 {
                "mutation($id: ID!) { startVm(id: $id) { vm { state } } }"
            } else {
                "mutation($id: ID!) { stopVm(id: $id, force: true) { vm { state } } }"
            };
            let response: Value = http
                .post(&url)
                .json(&json!({"query": query, "variables": {"id": vm}}))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            match response["errors"][0]["extensions"]["code"].as_str() {
                None => Ok(()),
                Some(code) => Err(code.to_string()),
            }
        }));
    }
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await.unwrap());
    }
    results
}

/// The VM's state events chain up (each `from` is the previous `to`) and end in its current state.
async fn assert_consistent(server: &TestServer, vm: &str) {
    let journal = server.journal().await;
    let sequences: Vec<i64> = journal
        .iter()
        .map(|e| e["sequence"].as_str().unwrap().parse().unwrap())
        .collect();
    let expected: Vec<i64> = (1..=sequences.len() as i64).collect();
    assert_eq!(sequences, expected, "the journal has gaps or repeats");

    let mut state = "STOPPED".to_string();
    for event in journal
        .iter()
        .filter(|e| e["kind"] == "VM_STATE_CHANGED" && e["subjectId"] == vm)
    {
        assert_eq!(
            event["payload"]["from"],
            state.as_str(),
            "broken chain at {event}"
        );
        state = event["payload"]["to"].as_str().unwrap().to_string();
    }
    assert_eq!(server.vm_state(vm).await, state);
    assert!(state == "RUNNING" || state == "STOPPED", "ended in {state}");
}

#[tokio::test]
async fn fifty_racing_starts_and_stops_end_consistent() {
    let server = TestServer::start().await;
    server.create_template("tiny").await;
    let vm = server.create_vm("web-1", "tiny").await;
    let results = race(&server, &vm, 50).await;
    let succeeded = results.iter().filter(|r| r.is_ok()).count();
    assert!(succeeded >= 1, "{results:?}");
    for r in &results {
        if let Err(code) = r {
            assert!(
                code == "VM_BUSY" || code == "INVALID_STATE",
                "unexpected {code}"
            );
        }
    }
    assert_consistent(&server, &vm).await;
}

#[tokio::test]
async fn callers_that_cannot_get_the_lock_in_time_are_told_who_holds_it() {
    let server =
        TestServer::start_with(|c| c.limits.vm_lock_timeout = Duration::from_millis(1)).await;
    server.create_template("tiny").await;
    let vm = server.create_vm("web-1", "tiny").await;
    let results = race(&server, &vm, 50).await;
    let busy = results
        .iter()
        .filter(|r| matches!(r, Err(c) if c == "VM_BUSY"))
        .count();
    assert!(
        busy >= 1,
        "with a 1 ms deadline some of 50 racing calls must be busy: {results:?}"
    );
    for r in &results {
        if let Err(code) = r {
            assert!(
                code == "VM_BUSY" || code == "INVALID_STATE",
                "unexpected {code}"
            );
        }
    }
    assert_consistent(&server, &vm).await;

    // A busy answer names the operation holding the lock.
    let held = server
        .app
        .ctx
        .locks
        .lock(
            &vm,
            "0194f0a0-0000-7000-8000-00000000beef",
            vman::operation::OperationKind::RestartVm,
        )
        .await
        .unwrap();
    let response = server
        .post(
            "mutation($id: ID!) { pauseVm(id: $id) { vm { state } } }",
            json!({"id": vm}),
        )
        .await;
    let extensions = &response["errors"][0]["extensions"];
    assert_eq!(extensions["code"], "VM_BUSY", "{response}");
    assert_eq!(
        extensions["operationId"],
        "0194f0a0-0000-7000-8000-00000000beef"
    );
    assert_eq!(extensions["operationKind"], "RESTART_VM");
    drop(held);
}

/// Until `n` callers hold or wait for `id`'s lock.
async fn until_callers(server: &TestServer, id: &str, n: usize) {
    while server.app.ctx.locks.callers(id) < n {
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn a_disk_attached_while_its_resize_waits_is_not_resized() {
    let server = std::sync::Arc::new(TestServer::start().await);
    server.create_template("tiny").await;
    let vm = server.create_vm("web-1", "tiny").await;
    server.start_vm(&vm).await;
    let disk = server.create_disk("data", 1 << 20, "RAW").await;

    // The attach goes first (it holds the VM and waits for the disk), then the
    // resize, which read the disk as detached and so locks no VM.
    let held = server
        .app
        .ctx
        .locks
        .lock(&disk, "op-test", vman::operation::OperationKind::ResizeDisk)
        .await
        .unwrap();
    let call = |query: &'static str| {
        let (server, disk, vm) = (server.clone(), disk.clone(), vm.clone());
        tokio::spawn(async move { server.post(query, json!({"d": disk, "v": vm})).await })
    };
    let attach = call(
        "mutation($d: ID!, $v: ID!) { attachDisk(diskId: $d, vmId: $v) { disk { attachment } } }",
    );
    until_callers(&server, &disk, 2).await;
    let resize = call(
        "mutation($d: ID!) { resizeDisk(diskId: $d, sizeBytes: 2097152) { disk { sizeBytes } } }",
    );
    until_callers(&server, &disk, 3).await;
    drop(held);

    let attached = attach.await.unwrap();
    assert_eq!(
        attached["data"]["attachDisk"]["disk"]["attachment"], "ATTACHED",
        "{attached}"
    );
    let resized = resize.await.unwrap();
    assert_eq!(
        resized["errors"][0]["extensions"]["code"], "CONFLICT",
        "{resized}"
    );
    let now = server
        .ok(
            "query($d: ID!) { disk(id: $d) { sizeBytes vm { id } } }",
            json!({"d": disk}),
        )
        .await;
    assert_eq!(now["disk"]["sizeBytes"], 1 << 20, "{now}");
    assert_eq!(now["disk"]["vm"]["id"], vm.as_str(), "{now}");
}
