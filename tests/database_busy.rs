//! A database another connection keeps busy: a second connection to
//! `vman.db` (what a `sqlite3` shell, a backup tool or `vman token` would
//! be) holds SQLite's write lock with `BEGIN IMMEDIATE`. Mutations wait for
//! it, retrying, and succeed once it is let go; past `database.busy_timeout`
//! they answer `DATABASE_BUSY` and change nothing. None answers `INTERNAL`,
//! and queries are served meanwhile (WAL: readers do not wait for writers).

mod common;

use std::time::Duration;

use common::TestServer;
use sea_orm::sqlx::{Connection, Executor, SqliteConnection};
use serde_json::{Value, json};
use tokio::time::Instant;

/// A connection of the test's own that holds SQLite's write lock until
/// [`WriteLock::release`].
struct WriteLock(SqliteConnection);

impl WriteLock {
    async fn take(server: &TestServer) -> WriteLock {
        let path = server.app.ctx.config.db_path();
        let mut conn = SqliteConnection::connect(&format!("sqlite://{}", path.display()))
            .await
            .unwrap();
        conn.execute("BEGIN IMMEDIATE").await.unwrap();
        WriteLock(conn)
    }

    async fn release(mut self) {
        self.0.execute("ROLLBACK").await.unwrap();
        self.0.close().await.unwrap();
    }
}

/// One mutation of each class that writes without a VM lock, and with one
/// (a lifecycle change with host steps, dry-run here).
fn mutations(vm: &str, n: usize) -> Vec<(String, Value)> {
    vec![
        (
            "mutation($n: String!) { createTemplate(input: {name: $n, vcpus: 1, memoryMib: 128, defaultDiskSizeBytes: 1048576}) { template { id } } }".into(),
            json!({"n": format!("t-{n}")}),
        ),
        (
            "mutation($n: String!) { createVm(input: {name: $n, templateName: \"base\"}) { vm { id } } }".into(),
            json!({"n": format!("vm-{n}")}),
        ),
        (
            "mutation($n: String!) { createDisk(input: {name: $n, sizeBytes: 1048576, format: RAW}) { disk { id } } }".into(),
            json!({"n": format!("disk-{n}")}),
        ),
        (
            "mutation($n: String!, $v: Int!) { createNetwork(input: {name: $n, vlanId: $v}) { network { id } } }".into(),
            json!({"n": format!("net-{n}"), "v": 100 + n}),
        ),
        (
            "mutation($id: ID!) { startVm(id: $id) { vm { state } } }".into(),
            json!({"id": vm}),
        ),
    ]
}

/// Sends every mutation at once; each response with when it arrived.
async fn send_all(server: &TestServer, mutations: Vec<(String, Value)>) -> Vec<(Value, Instant)> {
    let sends = mutations.into_iter().map(|(query, variables)| async move {
        let response =
            tokio::time::timeout(Duration::from_secs(30), server.post(&query, variables))
                .await
                .expect("an answer within 30 s");
        (response, Instant::now())
    });
    futures_util::future::join_all(sends).await
}

fn code(response: &Value) -> Option<&str> {
    response["errors"][0]["extensions"]["code"].as_str()
}

#[tokio::test]
async fn mutations_wait_for_a_write_lock_held_elsewhere_and_succeed_once_it_is_let_go() {
    let server = TestServer::start().await;
    server.create_template("base").await;
    let vm = server.create_vm("vm", "base").await;

    let lock = WriteLock::take(&server).await;
    // Held for a while, well inside the default busy timeout (5 s).
    let (answers, released) = tokio::join!(send_all(&server, mutations(&vm, 1)), async {
        tokio::time::sleep(Duration::from_millis(800)).await;
        let released = Instant::now();
        lock.release().await;
        released
    });
    for (response, at) in &answers {
        assert_eq!(code(response), None, "{response:#}");
        assert!(
            *at >= released,
            "answered before the lock was let go: {response}"
        );
    }
    assert_eq!(server.vm_state(&vm).await, "RUNNING");
}

#[tokio::test]
async fn queries_are_served_while_another_connection_holds_the_write_lock() {
    let server = TestServer::start().await;
    server.create_template("base").await;
    let lock = WriteLock::take(&server).await;
    let started = Instant::now();
    let data = server.ok("{ templates { totalCount } }", json!({})).await;
    assert_eq!(data["templates"]["totalCount"], 1);
    assert!(started.elapsed() < Duration::from_secs(1));
    lock.release().await;
}

#[tokio::test]
async fn past_the_busy_timeout_mutations_answer_database_busy_and_change_nothing() {
    let bound = Duration::from_millis(400);
    let server = TestServer::start_with(|c| c.database.busy_timeout = bound).await;
    server.create_template("base").await;
    let vm = server.create_vm("vm", "base").await;
    let before = server.snapshot().await;

    let lock = WriteLock::take(&server).await;
    let sent = Instant::now();
    let answers = send_all(&server, mutations(&vm, 1)).await;
    for (response, at) in &answers {
        assert_eq!(code(response), Some("DATABASE_BUSY"), "{response:#}");
        let took = *at - sent;
        assert!(took >= bound, "gave up after {took:?}, before the bound");
        assert!(
            took < bound + Duration::from_secs(2),
            "gave up after {took:?}, long past the bound"
        );
    }
    // Queries still answer while the lock is held, and see nothing new.
    assert_eq!(server.snapshot().await, before);
    lock.release().await;
    assert_eq!(server.snapshot().await, before, "nothing was changed");

    // The same mutations succeed at once now.
    let started = Instant::now();
    for (response, _) in send_all(&server, mutations(&vm, 1)).await {
        assert_eq!(code(&response), None, "{response:#}");
    }
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(server.vm_state(&vm).await, "RUNNING");
}
