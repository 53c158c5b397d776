//! The tests' second backend: a fresh PostgreSQL database per test on a
//! throwaway cluster.
//!
//! The cluster is `VMANTEST_POSTGRES_URL` (`make test` starts one with
//! `scripts/pg-test-cluster.sh run`); without it, the first test that needs
//! one starts its own with `scripts/pg-test-cluster.sh start`, which stops
//! by itself once this test process is gone. Under CI (`CI=true`) a missing
//! URL fails the test instead: CI must not quietly test something else.
//!
//! The variables start `VMANTEST_`, not `VMAN_`: vman reads every `VMAN_*`
//! variable as config, and the vman processes some tests start would refuse
//! an unknown key.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::{Mutex, OnceLock},
};

use sea_orm::sqlx::{AssertSqlSafe, Connection, Executor, PgConnection};

/// Which database a test server runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// SQLite at `<data_dir>/vman.db` (the default).
    Sqlite,
    /// A fresh database on the test cluster.
    Postgres,
}

impl Backend {
    /// `VMANTEST_DATABASE=postgres` runs a test binary's servers and the
    /// `vman` processes it starts on PostgreSQL (`make test` does it for
    /// the Makefile's `POSTGRES_TESTS`); SQLite otherwise.
    pub fn from_env() -> Backend {
        match std::env::var("VMANTEST_DATABASE").as_deref() {
            Ok("postgres") => Backend::Postgres,
            Ok("sqlite") | Err(_) => Backend::Sqlite,
            Ok(other) => panic!("VMANTEST_DATABASE={other}: use sqlite or postgres"),
        }
    }
}

/// The cluster's URL (its `postgres` database, as the superuser).
pub fn cluster_url() -> &'static str {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| {
        if let Ok(url) = std::env::var("VMANTEST_POSTGRES_URL") {
            return url;
        }
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "VMANTEST_POSTGRES_URL is not set: under CI the PostgreSQL tests run in `scripts/pg-test-cluster.sh run` (make test)"
        );
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/pg-test-cluster.sh");
        let out = std::process::Command::new(script)
            .args(["start", &std::process::id().to_string()])
            .stderr(std::process::Stdio::inherit())
            .output()
            .expect("running scripts/pg-test-cluster.sh");
        assert!(out.status.success(), "scripts/pg-test-cluster.sh start failed");
        let url = String::from_utf8(out.stdout).unwrap().trim().to_string();
        eprintln!("PostgreSQL tests: started a cluster of their own at {url}");
        url
    })
}

/// A database of its own on the cluster, dropped when this is.
pub struct TestDatabase {
    pub url: String,
    name: String,
}

impl TestDatabase {
    pub async fn create() -> TestDatabase {
        let name = format!("vman_test_{}", uuid::Uuid::now_v7().simple());
        let mut admin = PgConnection::connect(cluster_url())
            .await
            .expect("connecting to the test cluster");
        admin
            .execute(AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .await
            .expect("CREATE DATABASE");
        let _ = admin.close().await;
        let mut url = reqwest::Url::parse(cluster_url()).expect("the cluster's URL");
        url.set_path(&name);
        TestDatabase {
            url: url.to_string(),
            name,
        }
    }
}

impl Drop for TestDatabase {
    /// On a thread of its own (a test's runtime may be the one dropping
    /// this); `WITH (FORCE)` ends the pools' connections still open.
    fn drop(&mut self) {
        let name = self.name.clone();
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                let mut admin = PgConnection::connect(cluster_url()).await?;
                admin
                    .execute(AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                    )))
                    .await?;
                admin.close().await
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("dropping test database {}: {dropped:?}", self.name);
        }
    }
}

/// The URL of the database of the data directory `data` (for the `vman`
/// processes a test starts on it: `vman serve`, `vman token` and the
/// like): a fresh one the first time `data` is named, the same one after,
/// so a vman restarted on `data` finds its rows again, as it finds its
/// SQLite file.
///
/// These databases are never dropped: the map is a static, and a static's
/// values are never dropped. They live as long as the cluster, which is
/// throwaway (`scripts/pg-test-cluster.sh run` removes it when its command
/// ends; one a test process started stops once that process is gone).
pub fn database_for(data: &Path) -> String {
    static DATABASES: Mutex<BTreeMap<PathBuf, TestDatabase>> = Mutex::new(BTreeMap::new());
    let key = std::path::absolute(data).expect("an absolute data directory");
    let mut databases = DATABASES.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(database) = databases.get(&key) {
        return database.url.clone();
    }
    // On a thread with a runtime of its own: the caller may be a test's
    // runtime (blocking on another runtime inside one panics) or none.
    let database = std::thread::spawn(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(TestDatabase::create())
    })
    .join()
    .expect("creating a test database");
    let url = database.url.clone();
    databases.insert(key, database);
    url
}

/// Every row of every table of the database at `url`, as text (a row per
/// line, PostgreSQL's text form of the row): what a test searches for
/// something that must not be stored.
pub async fn dump(url: &str) -> String {
    let mut conn = PgConnection::connect(url)
        .await
        .expect("connecting to the test database");
    let tables: Vec<String> = sea_orm::sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables \
         WHERE table_schema = 'public' AND table_type = 'BASE TABLE' ORDER BY 1",
    )
    .fetch_all(&mut conn)
    .await
    .expect("listing the tables");
    assert!(!tables.is_empty(), "no table in {url}");
    let mut text = String::new();
    for table in tables {
        let rows: Vec<String> = sea_orm::sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT t::text FROM \"{table}\" t"
        )))
        .fetch_all(&mut conn)
        .await
        .expect("reading a table");
        for row in rows {
            text.push_str(&table);
            text.push_str(": ");
            text.push_str(&row);
            text.push('\n');
        }
    }
    let _ = conn.close().await;
    text
}
