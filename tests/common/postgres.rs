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

use std::sync::OnceLock;

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
    /// `VMANTEST_DATABASE=postgres` runs a test binary's servers on
    /// PostgreSQL (`make test` does it for the database-heavy ones);
    /// SQLite otherwise.
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
