//! A full disk under the data directory: each test mounts a small tmpfs of
//! its own (`common::tmpfs`), puts vman's data directory on it and fills it
//! to the last byte. Without the right to mount, a test is skipped and says
//! why.

mod common;

use std::time::{Duration, Instant};

use common::{TestServer, tmpfs::Tmpfs};
use sea_orm::{EntityTrait, PaginatorTrait};
use serde_json::{Value, json};

const CREATE_TEMPLATE: &str = "mutation($name: String!) { createTemplate(input: {name: $name, vcpus: 1, memoryMib: 128, defaultDiskSizeBytes: 1048576}) { template { id } } }";

fn mount(test: &str) -> Option<Tmpfs> {
    match Tmpfs::mount(40) {
        Ok(fs) => Some(fs),
        Err(why) => {
            println!("SKIPPED {test}: {why}");
            None
        }
    }
}

/// The first error's code of a response, or None when it succeeded.
fn code(response: &Value) -> Option<String> {
    response["errors"][0]["extensions"]["code"]
        .as_str()
        .map(str::to_string)
}

/// The report: after writes failed on a full disk and the space
/// came back, writes kept failing with `database is locked` (or went into
/// a transaction that never committed). Every write after the space is
/// back must succeed at once (far below SQLite's busy timeout) and be
/// committed: a connection of its own sees it.
#[tokio::test]
async fn writes_succeed_at_once_and_are_committed_when_a_full_disk_has_room_again() {
    let Some(fs) =
        mount("writes_succeed_at_once_and_are_committed_when_a_full_disk_has_room_again")
    else {
        return;
    };
    let data = fs.path().join("data");
    let server = TestServer::start_with(|c| c.data_dir = data.clone()).await;
    server.create_template("t0").await;
    let filler = fs.fill();

    // The database still has room in its last pages and its WAL for a
    // while; writes fail once it must grow. Four at a time, so that the
    // failures land on several of the pool's connections.
    let mut made = 1;
    let mut failed = 0;
    for round in 0..100 {
        let writes = (0..4).map(|n| {
            server.post(
                CREATE_TEMPLATE,
                json!({"name": format!("full-{round}-{n}")}),
            )
        });
        for response in futures_util::future::join_all(writes).await {
            match code(&response) {
                None => made += 1,
                Some(_) => failed += 1,
            }
        }
        if failed >= 8 {
            break;
        }
    }
    assert!(failed >= 8, "writes fail on a full disk");

    std::fs::remove_file(&filler).unwrap();
    for n in 0..20 {
        let started = Instant::now();
        let response = server
            .post(CREATE_TEMPLATE, json!({"name": format!("after-{n}")}))
            .await;
        let took = started.elapsed();
        assert_eq!(
            code(&response),
            None,
            "write {n} after the space came back: {response:#}"
        );
        assert!(
            took < Duration::from_secs(2),
            "write {n} after the space came back waited {took:?}"
        );
        made += 1;
    }

    // Committed, not only visible to the connection that wrote them.
    let db = vman::db::connect(&server.app.ctx.config.db_path(), Duration::from_secs(5))
        .await
        .unwrap();
    let templates = vman::template::model::Entity::find()
        .count(&db)
        .await
        .unwrap();
    assert_eq!(templates, made, "every write that succeeded is committed");
    db.close().await.unwrap();
    server.app.ctx.cancel.cancel();
}
