//! vman on PostgreSQL (`database.url`): the migrations on an empty database,
//! the API scenario, the journal's sequence when several writers (two vman
//! apps, as two nodes would be) write at once, a journal lock held elsewhere
//! (`DATABASE_BUSY`), and a server that cannot be reached, whose password
//! no message shows.
//!
//! Each test has a database of its own on the test cluster
//! (`tests/common/postgres.rs`). The other test files that use a database
//! also run on PostgreSQL whole: `make test` runs them again with
//! `VMANTEST_DATABASE=postgres` (the Makefile's `POSTGRES_TESTS`).

mod common;

use std::time::Duration;

use common::{
    TestServer,
    postgres::{Backend, TestDatabase},
};
use migration::{Migrator, MigratorTrait};
use sea_orm::{
    ConnectionTrait, DbBackend, Statement,
    sqlx::{AssertSqlSafe, Connection, Executor, PgConnection},
};
use serde_json::json;
use vman::{config::DatabaseUrl, db::Location};

fn location(database: &TestDatabase) -> Location {
    Location::Postgres(DatabaseUrl::new(database.url.clone()))
}

async fn count(db: &impl ConnectionTrait, sql: &str) -> i64 {
    db.query_one_raw(Statement::from_string(DbBackend::Postgres, sql))
        .await
        .unwrap()
        .unwrap()
        .try_get_by_index::<i64>(0)
        .unwrap()
}

#[tokio::test]
async fn the_migrations_run_up_on_an_empty_database_down_and_up_again() {
    let database = TestDatabase::create().await;
    let db = vman::db::connect(location(&database), Duration::from_secs(5))
        .await
        .unwrap();
    vman::db::migrate(&db).await.unwrap();
    let applied = Migrator::migrations().len() as i64;
    assert_eq!(
        count(&db, "SELECT count(*) FROM seaql_migrations").await,
        applied
    );
    // Up again is nothing to do.
    vman::db::migrate(&db).await.unwrap();
    // The partial unique index is one: a second open issue of the same kind
    // and subject is refused, a resolved one is not in its way.
    let issue = |id: &str, resolved: &str| {
        format!(
            "INSERT INTO coherence_issues (id, kind, subject_type, subject_id, expected, observed, detected_at, resolved_at) \
             VALUES ('{id}', 'K', 'VM', 's', '', '', now(), {resolved})"
        )
    };
    db.execute_unprepared(&issue("a", "now()")).await.unwrap();
    db.execute_unprepared(&issue("b", "NULL")).await.unwrap();
    assert!(db.execute_unprepared(&issue("c", "NULL")).await.is_err());
    // One open per host: the same drift on two hosts is two issues.
    let on_host = |id: &str, host: &str| {
        format!(
            "INSERT INTO coherence_issues (id, kind, subject_type, subject_id, expected, observed, detected_at, host_id) \
             VALUES ('{id}', 'K', 'VM', 's', '', '', now(), '{host}')"
        )
    };
    db.execute_unprepared(&on_host("d", "h1")).await.unwrap();
    db.execute_unprepared(&on_host("e", "h2")).await.unwrap();
    assert!(db.execute_unprepared(&on_host("f", "h2")).await.is_err());
    db.execute_unprepared("DELETE FROM coherence_issues WHERE host_id IS NOT NULL")
        .await
        .unwrap();

    Migrator::down(&db, None).await.unwrap();
    assert_eq!(count(&db, "SELECT count(*) FROM seaql_migrations").await, 0);
    vman::db::migrate(&db).await.unwrap();
    assert_eq!(
        count(&db, "SELECT count(*) FROM seaql_migrations").await,
        applied
    );
    db.close().await.unwrap();
}

#[tokio::test]
async fn a_vm_is_created_started_listed_and_journaled_on_postgres() {
    let server = TestServer::start_on(Backend::Postgres, |_| {}).await;
    assert!(server.app.ctx.config.database().is_postgres());
    server.create_template("tiny").await;
    let web = server.create_vm("web-1", "tiny").await;
    server.create_vm("db-1", "tiny").await;
    server.start_vm(&web).await;
    assert_eq!(server.vm_state(&web).await, "RUNNING");

    // Name filters match as on SQLite, upper case in the query included.
    for part in ["web", "WEB", "-1"] {
        let data = server
            .ok(
                "query($p: String) { vms(nameContains: $p, orderBy: NAME) { edges { node { name } } } }",
                json!({"p": part}),
            )
            .await;
        let names: Vec<&str> = data["vms"]["edges"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["node"]["name"].as_str().unwrap())
            .collect();
        let expected: &[&str] = if part == "-1" {
            &["db-1", "web-1"]
        } else {
            &["web-1"]
        };
        assert_eq!(names, expected, "nameContains: {part:?}");
    }

    let journal = server.journal().await;
    let sequences: Vec<i64> = journal
        .iter()
        .map(|e| e["sequence"].as_str().unwrap().parse().unwrap())
        .collect();
    assert_eq!(sequences, (1..=sequences.len() as i64).collect::<Vec<_>>());
    let kinds: Vec<&str> = journal
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert!(
        kinds.ends_with(&["VM_STATE_CHANGED", "VM_STATE_CHANGED"]),
        "{kinds:?}"
    );
}

/// Two apps on one database (two nodes) and many writes at once on
/// each: every sequence from 1 to the head is used once, and each app's
/// writes are journaled in the order they committed.
#[tokio::test]
async fn writers_of_two_apps_at_once_leave_the_journal_gapless() {
    let a = TestServer::start_on(Backend::Postgres, |_| {}).await;
    let url = a.app.ctx.config.database.url.clone();
    let b = TestServer::start_on(Backend::Sqlite, |c| c.database.url = url).await;
    async fn create(server: &TestServer, n: usize) {
        server
            .ok(
                "mutation($n: String!) { createTemplate(input: {name: $n, vcpus: 1, memoryMib: 128}) { template { id } } }",
                json!({"n": format!("t-{n}")}),
            )
            .await;
    }
    let writes = (0..40).map(|n| create(if n % 2 == 0 { &a } else { &b }, n));
    futures_util::future::join_all(writes).await;

    let journal = a.journal().await;
    let sequences: Vec<i64> = journal
        .iter()
        .map(|e| e["sequence"].as_str().unwrap().parse().unwrap())
        .collect();
    // The second node's host joining the first's, then the 40 templates.
    assert_eq!(sequences, (1..=41).collect::<Vec<_>>());
    assert_eq!(journal[0]["kind"], "HOST_ONLINE");
    assert!(journal[1..].iter().all(|e| e["kind"] == "TEMPLATE_CREATED"));
    assert_eq!(b.journal().await, journal, "both read the same journal");
}

/// A write rolled back takes no sequence with it.
#[tokio::test]
async fn a_rolled_back_write_leaves_no_gap() {
    let server = TestServer::start_on(Backend::Postgres, |_| {}).await;
    let bus = &server.app.ctx.bus;
    let event = |name: &str| {
        vman::events::NewEvent::new(
            uuid::Uuid::now_v7().to_string(),
            None,
            vman::events::Payload::TemplateCreated { name: name.into() },
        )
    };
    let mut first = bus.writer().await.unwrap();
    first.record(event("kept")).await.unwrap();
    assert_eq!(first.commit().await.unwrap()[0].sequence, 1);
    let mut dropped = bus.writer().await.unwrap();
    dropped.record(event("rolled-back")).await.unwrap();
    drop(dropped);
    let mut next = bus.writer().await.unwrap();
    next.record(event("a")).await.unwrap();
    next.record(event("b")).await.unwrap();
    let written: Vec<i64> = next
        .commit()
        .await
        .unwrap()
        .iter()
        .map(|e| e.sequence)
        .collect();
    assert_eq!(written, [2, 3]);
}

/// Calls `function` (`pg_advisory_lock`, `pg_advisory_unlock`) with the
/// journal lock's key on `conn`.
async fn journal_lock(conn: &mut PgConnection, function: &str) {
    let sql = format!("SELECT {function}({})", vman::events::JOURNAL_LOCK);
    conn.execute(AssertSqlSafe(sql)).await.unwrap();
}

/// Another connection (another node, a maintenance script) holds the
/// journal lock: writes wait, retrying, then answer `DATABASE_BUSY` having
/// changed nothing; once it is let go they succeed.
#[tokio::test]
async fn a_journal_lock_held_elsewhere_answers_database_busy() {
    let server = TestServer::start_on(Backend::Postgres, |c| {
        c.database.busy_timeout = Duration::from_millis(300)
    })
    .await;
    let database = server.database.as_ref().unwrap();
    let mut other = PgConnection::connect(&database.url).await.unwrap();
    journal_lock(&mut other, "pg_advisory_lock").await;
    let create = "mutation { createTemplate(input: {name: \"t\", vcpus: 1, memoryMib: 128}) { template { id } } }";
    let before = server.snapshot().await;
    let started = std::time::Instant::now();
    assert_eq!(server.error_code(create, json!({})).await, "DATABASE_BUSY");
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(server.snapshot().await, before, "nothing changed");

    journal_lock(&mut other, "pg_advisory_unlock").await;
    server.ok(create, json!({})).await;
    other.close().await.unwrap();
}

/// A server nobody answers on fails the start at once, naming it; the
/// password in the URL is never shown.
#[tokio::test]
async fn an_unreachable_server_fails_the_start_without_showing_the_password() {
    let dir = tempfile::tempdir().unwrap();
    let config = vman::config::Config {
        data_dir: dir.path().join("data"),
        dry_run: true,
        database: vman::config::DatabaseConfig {
            url: Some(DatabaseUrl::new("postgres://vman:s3cret@127.0.0.1:1/vman")),
            ..vman::config::Config::default().database
        },
        ..vman::config::Config::default()
    };
    config.validate().unwrap();
    let Err(e) = vman::app::App::build(config.clone()).await else {
        panic!("the app started without its database");
    };
    let message = e.to_string();
    assert!(
        message.contains("connecting to postgres://vman:***@127.0.0.1:1/vman"),
        "{message}"
    );
    assert!(!message.contains("s3cret"), "{message}");
    assert!(!format!("{config:?}").contains("s3cret"));
}

/// On the command line: `config check` shows the URL with its password
/// masked, and `backup`, `restore` and `doctor` refuse, naming pg_dump,
/// without connecting; a URL of another scheme is a bad config (2).
#[test]
fn the_command_line_masks_the_password_and_leaves_backups_to_pg_dump() {
    let dir = tempfile::tempdir().unwrap();
    let vman = |url: &str, args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_vman"))
            .current_dir(dir.path())
            .env("VMAN_DATABASE_URL", url)
            .args(args)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(!text.contains("s3cret"), "{args:?}: {text}");
        (out.status.code(), text)
    };
    let url = "postgres://vman:s3cret@127.0.0.1:1/vman";
    let (code, text) = vman(url, &["config", "check"]);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("database.url = \"postgres://vman:***@127.0.0.1:1/vman\""),
        "{text}"
    );
    for args in [&["backup", "b.db"][..], &["restore", "b.db"], &["doctor"]] {
        let (code, text) = vman(url, args);
        assert_eq!(code, Some(1), "{args:?}: {text}");
        assert!(text.contains("pg_dump"), "{args:?}: {text}");
    }
    let (code, text) = vman("mysql://vman:s3cret@h/vman", &["config", "check"]);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("database.url"), "{text}");
}
