//! Relay pagination with cursors, and readiness when the host goes bad,
//! through the public API on a dry-run server.

mod common;

use common::{TestServer, WAIT};
use serde_json::{Value, json};

const TEMPLATES: &str = "query($first: Int, $after: String) { templates(first: $first, after: $after) { totalCount pageInfo { hasNextPage hasPreviousPage endCursor } edges { cursor node { id name } } } }";

#[tokio::test]
async fn paging_with_cursors_visits_every_item_once_in_id_order() {
    let server = TestServer::start().await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(server.create_template(&format!("t{i}")).await);
    }
    ids.sort();

    let mut seen = Vec::new();
    let mut after = Value::Null;
    let mut pages = 0;
    loop {
        let data = server
            .ok(TEMPLATES, json!({"first": 2, "after": after}))
            .await;
        let page = &data["templates"];
        assert_eq!(page["totalCount"], 5, "{page:#}");
        // A page after a cursor says so; the first one has nothing before it.
        assert_eq!(page["pageInfo"]["hasPreviousPage"], pages > 0, "{page:#}");
        let edges = page["edges"].as_array().unwrap();
        assert!(edges.len() <= 2, "{page:#}");
        for edge in edges {
            // An ID-ordered list's cursor is the node's ID.
            assert_eq!(edge["cursor"], edge["node"]["id"]);
            seen.push(edge["node"]["id"].as_str().unwrap().to_string());
        }
        pages += 1;
        if page["pageInfo"]["hasNextPage"] == false {
            break;
        }
        after = page["pageInfo"]["endCursor"].clone();
        assert!(pages < 10, "paging does not end");
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, ids);

    // After the last item: an empty page, still counting every item.
    let data = server
        .ok(TEMPLATES, json!({"first": 2, "after": ids[4]}))
        .await;
    assert_eq!(data["templates"]["edges"], json!([]));
    assert_eq!(data["templates"]["totalCount"], 5);
    assert_eq!(data["templates"]["pageInfo"]["hasNextPage"], false);

    // `first: 0` counts without listing.
    let data = server.ok(TEMPLATES, json!({"first": 0})).await;
    assert_eq!(data["templates"]["edges"], json!([]));
    assert_eq!(data["templates"]["pageInfo"]["hasNextPage"], true);
}

/// `operations(newestFirst: true)`: the latest first, and each page's
/// `endCursor` leads to older ones, each operation once.
#[tokio::test]
async fn operations_newest_first_page_back_in_time() {
    let server = TestServer::start().await;
    server.create_template("t").await;
    let vm = server.create_vm("vm", "t").await;
    server.start_vm(&vm).await;
    server.stop_vm(&vm).await;
    let query = "query($vm: ID!, $after: String) { operations(vmId: $vm, first: 2, after: $after, newestFirst: true) { totalCount pageInfo { hasNextPage endCursor } nodes { kind } } }";
    let first = server.ok(query, json!({"vm": vm})).await["operations"].clone();
    let kinds = |page: &Value| -> Vec<String> {
        page["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["kind"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(kinds(&first), ["STOP_VM", "START_VM"], "{first}");
    assert_eq!(first["totalCount"], 3);
    assert_eq!(first["pageInfo"]["hasNextPage"], true);
    let after = first["pageInfo"]["endCursor"].clone();
    let older = server.ok(query, json!({"vm": vm, "after": after})).await["operations"].clone();
    assert_eq!(kinds(&older), ["CREATE_VM"], "{older}");
    assert_eq!(older["pageInfo"]["hasNextPage"], false);
}

#[tokio::test]
async fn bad_page_arguments_are_bad_input() {
    let server = TestServer::start().await;
    for variables in [
        json!({"first": 501}),
        json!({"first": -1}),
        json!({"after": "not-an-id"}),
    ] {
        assert_eq!(
            server.error_code(TEMPLATES, variables.clone()).await,
            "BAD_USER_INPUT",
            "{variables}"
        );
    }
    let data = server.ok(TEMPLATES, json!({"first": 500})).await;
    assert_eq!(data["templates"]["totalCount"], 0);
}

async fn readyz(server: &TestServer) -> (u16, Value) {
    let response = server
        .http
        .get(server.url.replace("/graphql", "/readyz"))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

fn check<'a>(health: &'a Value, name: &str) -> &'a Value {
    health["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no check {name:?} in {health:#}"))
}

#[tokio::test]
async fn a_data_directory_vman_cannot_write_makes_it_unready_and_is_named() {
    let server = TestServer::start().await;
    let (status, health) = readyz(&server).await;
    assert_eq!(status, 200, "{health:#}");
    assert_eq!(health["ready"], true);
    assert_eq!(health["dryRun"], true);

    // The images directory becomes a file: nothing can be written under it.
    let images = server.app.ctx.config.storage_dir().join("images");
    std::fs::remove_dir(&images).unwrap();
    std::fs::write(&images, "not a directory").unwrap();

    let (status, health) = readyz(&server).await;
    assert_eq!(status, 503, "{health:#}");
    assert_eq!(health["ready"], false);
    let images_check = check(&health, &format!("writable {}", images.display()));
    assert_eq!(images_check["ok"], false);
    assert!(
        images_check["detail"]
            .as_str()
            .unwrap()
            .contains("Not a directory"),
        "{images_check:#}"
    );
    // The others still pass.
    let run = check(
        &health,
        &format!("writable {}", server.app.ctx.config.run_dir().display()),
    );
    assert_eq!(run["ok"], true);

    let data = server
        .ok("{ health { ready checks { name ok } } }", json!({}))
        .await;
    assert_eq!(data["health"]["ready"], false);
}

#[tokio::test]
async fn a_database_vman_cannot_reach_makes_it_unready() {
    let server = TestServer::start().await;
    assert_eq!(check(&readyz(&server).await.1, "database")["ok"], true);
    tokio::time::timeout(WAIT, server.app.ctx.db.close_by_ref())
        .await
        .expect("the pool closes")
        .unwrap();
    let (status, health) = readyz(&server).await;
    assert_eq!(status, 503, "{health:#}");
    let database = check(&health, "database");
    assert_eq!(database["ok"], false, "{health:#}");
    assert!(!database["detail"].as_str().unwrap().is_empty());
}

/// `journalHead` is the newest event's sequence, so `events(after:
/// journalHead)` starts exactly where the journal stands.
#[tokio::test]
async fn the_journal_head_is_the_newest_events_sequence() {
    let server = TestServer::start().await;
    let last = |journal: Vec<Value>| {
        journal.last().map_or("0".to_string(), |e| {
            e["sequence"].as_str().unwrap().to_string()
        })
    };
    assert_eq!(journal_head(&server).await, last(server.journal().await));
    server.create_template("t").await;
    let after = journal_head(&server).await;
    assert_eq!(after, last(server.journal().await));
    assert_ne!(after, "0");
    let page = server
        .ok(
            "query($a: String) { events(after: $a) { totalCount edges { cursor } } }",
            json!({"a": after}),
        )
        .await;
    assert_eq!(page["events"]["edges"], json!([]), "{page}");
}

async fn journal_head(server: &TestServer) -> String {
    server.ok("{ journalHead }", json!({})).await["journalHead"]
        .as_str()
        .expect("a sequence")
        .to_string()
}
