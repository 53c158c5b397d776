//! The committed SDL, the database settings and the command line.

mod common;

use std::process::Command;

use sea_orm::{ConnectionTrait, Statement};

fn vman() -> Command {
    Command::new(env!("CARGO_BIN_EXE_vman"))
}

#[test]
fn schema_graphql_matches_the_built_schema() {
    let committed =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/schema.graphql")).unwrap();
    let built = vman::api::sdl();
    if std::env::var_os("UPDATE_SCHEMA").is_some() {
        std::fs::write(
            concat!(env!("CARGO_MANIFEST_DIR"), "/schema.graphql"),
            &built,
        )
        .unwrap();
        return;
    }
    assert!(
        committed == built,
        "schema.graphql is stale: run `UPDATE_SCHEMA=1 cargo test --test schema_and_cli` (or `vman schema > schema.graphql`) and review the diff"
    );
    let printed = vman().arg("schema").output().unwrap();
    assert!(printed.status.success());
    assert_eq!(String::from_utf8(printed.stdout).unwrap(), built);
}

/// SQLite's settings: on SQLite whichever backend the binary's other
/// tests run on.
#[tokio::test]
async fn sqlite_is_set_up_for_a_server() {
    let server = common::TestServer::start_on(common::postgres::Backend::Sqlite, |_| {}).await;
    let db = &server.app.ctx.db;
    let pragma = |name: &str| {
        let sql = format!("PRAGMA {name}");
        async move {
            let row = db
                .query_one_raw(Statement::from_string(db.get_database_backend(), sql))
                .await
                .unwrap()
                .unwrap();
            row.try_get_by_index::<String>(0)
                .or_else(|_| row.try_get_by_index::<i64>(0).map(|n| n.to_string()))
                .unwrap()
        }
    };
    assert_eq!(pragma("journal_mode").await, "wal");
    assert_eq!(pragma("foreign_keys").await, "1");
    assert_eq!(pragma("synchronous").await, "1", "NORMAL");
    assert_eq!(pragma("busy_timeout").await, "5000");
    // More than one connection: a reader is not stuck behind a writer.
    let w = server.app.ctx.bus.writer().await.unwrap();
    let health = server
        .ok(
            "{ health { ready checks { name ok } } }",
            serde_json::json!({}),
        )
        .await;
    assert_eq!(health["health"]["ready"], true, "{health}");
    drop(w);
}

#[tokio::test]
async fn foreign_keys_are_enforced_by_the_database_itself_not_only_by_the_services() {
    let server = common::TestServer::start().await;
    let orphan = server
        .app
        .ctx
        .db
        .execute_unprepared(
            "INSERT INTO disks (id, name, format, size_bytes, vm_id, attachment, created_at, updated_at) \
             VALUES ('x', 'x', 'RAW', 1, 'no-such-vm', 'ATTACHED', '2026-01-01T00:00:00Z', '2026-01-01T00:00:00Z')",
        )
        .await;
    // Refused for that reason (SQLite's "FOREIGN KEY constraint failed",
    // PostgreSQL's "violates foreign key constraint"), not another.
    let error = orphan
        .expect_err("a disk pointing at no VM was accepted")
        .to_string();
    assert!(error.to_lowercase().contains("foreign key"), "{error}");
}

#[tokio::test]
async fn migrate_creates_the_database_and_config_check_names_bad_values() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let out = vman()
        .current_dir(dir.path())
        .args(["migrate", "--data-dir"])
        .arg(&data)
        .envs(common::database_env(&data))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    match common::postgres::Backend::from_env() {
        common::postgres::Backend::Sqlite => assert!(data.join("vman.db").exists()),
        common::postgres::Backend::Postgres => {
            assert!(!data.join("vman.db").exists());
            let rows = common::postgres::dump(&common::postgres::database_for(&data)).await;
            assert!(
                rows.lines()
                    .any(|row| row.starts_with("seaql_migrations: ")),
                "no migration recorded:\n{rows}"
            );
        }
    }
    for sub in ["storage", "run", "logs"] {
        assert!(data.join(sub).is_dir(), "{sub}");
    }

    let out = vman()
        .current_dir(dir.path())
        .env("VMAN_OBSERVER_INTERVAL", "3s")
        .args(["config", "check"])
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success());
    assert!(
        text.contains("observer.interval = \"3s\"    # from `VMAN_` environment"),
        "{text}"
    );
    assert!(
        text.contains("listen = \"127.0.0.1:8080\"    # from default"),
        "{text}"
    );

    std::fs::write(dir.path().join("vman.toml"), "[limits]\nmax_vcpus = 0\n").unwrap();
    let out = vman()
        .current_dir(dir.path())
        .args(["config", "check"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("limits.max_vcpus") && err.contains('0'),
        "{err}"
    );

    std::fs::write(dir.path().join("vman.toml"), "lissten = \"x\"\n").unwrap();
    let out = vman()
        .current_dir(dir.path())
        .args(["config", "check"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8(out.stderr).unwrap().contains("lissten"));
}

#[tokio::test]
async fn a_second_vman_on_the_same_data_dir_is_refused() {
    let server = common::TestServer::start().await;
    let mut config = (*server.app.ctx.config).clone();
    config.listen = "127.0.0.1:0".parse().unwrap();
    let second = vman::app::App::start(config).await;
    let error = second
        .err()
        .expect("the second start must fail")
        .to_string();
    assert!(
        error.contains("another vman") && error.contains(&std::process::id().to_string()),
        "{error}"
    );
}

#[tokio::test]
async fn a_data_dir_too_long_for_qmp_sockets_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let long = dir.path().join("d".repeat(80));
    let config = vman::config::Config {
        data_dir: long,
        dry_run: true,
        ..Default::default()
    };
    let error = vman::app::App::start(config)
        .await
        .err()
        .expect("refused")
        .to_string();
    assert!(
        error.contains("too long") && error.contains("107"),
        "{error}"
    );
}
