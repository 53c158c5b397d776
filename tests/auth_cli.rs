//! `vman token …` and `vman serve` with auth, as processes: what an
//! operator types.

mod common;

use std::process::Command;

use common::{VmanProcess, database_env, free_port, postgres};
use serde_json::json;

fn vman() -> Command {
    Command::new(env!("CARGO_BIN_EXE_vman"))
}

#[test]
fn serving_beyond_loopback_without_auth_is_refused_with_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let out = vman()
        .args([
            "serve",
            "--listen",
            &format!("0.0.0.0:{}", free_port()),
            "--data-dir",
        ])
        .arg(dir.path())
        .env("VMAN_CONFIG", dir.path().join("none.toml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains("auth.mode") && stderr.contains("vman token create"),
        "{stderr}"
    );
    // With tokens it starts (and `config check` agrees on both).
    let check = vman()
        .args(["config", "check", "--data-dir"])
        .arg(dir.path())
        .env("VMAN_LISTEN", "0.0.0.0:8080")
        .env("VMAN_AUTH_MODE", "token")
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
}

/// `vman token <args> --data-dir <data>` (on `data`'s database).
fn token(data: &std::path::Path, args: &[&str]) -> std::process::Output {
    vman()
        .arg("token")
        .args(args)
        .arg("--data-dir")
        .arg(data)
        .envs(database_env(data))
        .output()
        .unwrap()
}

fn succeeded(out: &std::process::Output) {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every file under `dir`, as bytes.
fn files_under(dir: &std::path::Path, out: &mut Vec<(std::path::PathBuf, Vec<u8>)>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files_under(&path, out);
        } else if let Ok(bytes) = std::fs::read(&path) {
            out.push((path, bytes));
        }
    }
}

#[tokio::test]
async fn a_token_made_on_the_command_line_works_and_its_secret_is_kept_nowhere() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let made = token(
        &data,
        &[
            "create",
            "--name",
            "ops",
            "--role",
            "admin",
            "--expires",
            "30d",
        ],
    );
    succeeded(&made);
    let secret = String::from_utf8(made.stdout).unwrap().trim().to_string();
    assert!(
        secret.starts_with("vman_") && !secret.contains(' '),
        "{secret}"
    );
    let again = token(&data, &["create", "--name", "ops", "--role", "viewer"]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("CONFLICT"));

    // The server's own output is kept too, to look for the secret in.
    let port = free_port();
    let output = |name: &str| std::fs::File::create(dir.path().join(name)).unwrap();
    let child = vman()
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--dry-run",
            "--data-dir",
        ])
        .arg(&data)
        .env("VMAN_AUTH_MODE", "token")
        .env("VMAN_LOG_LEVEL", "debug")
        .envs(database_env(&data))
        .stdout(output("serve.out"))
        .stderr(output("serve.err"))
        .spawn()
        .unwrap();
    let mut server = VmanProcess {
        child,
        url: format!("http://127.0.0.1:{port}/graphql"),
        run_dir: data.join("run"),
    };
    let http = reqwest::Client::new();
    server.ready(&http).await;
    let refused = http
        .post(&server.url)
        .json(&json!({"query": "{ vms { totalCount } }"}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    let response: serde_json::Value = http
        .post(&server.url)
        .bearer_auth(&secret)
        .json(&json!({"query": r#"mutation { createTemplate(input: {name: "t", vcpus: 1, memoryMib: 64}) { operation { actor } } }"#}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        response["data"]["createTemplate"]["operation"]["actor"], "ops",
        "{response}"
    );

    let list = token(&data, &["list"]);
    let listed = String::from_utf8(list.stdout).unwrap();
    assert!(
        listed.contains("ops") && listed.contains("admin"),
        "{listed}"
    );
    assert!(!listed.contains(&secret));
    // On PostgreSQL, the rows while the token's is there (revoking removes
    // it), searched for the secret below with the files.
    let rows_with_the_token = match postgres::Backend::from_env() {
        postgres::Backend::Sqlite => None,
        postgres::Backend::Postgres => {
            let rows = postgres::dump(&postgres::database_for(&data)).await;
            assert!(
                rows.lines()
                    .any(|row| row.starts_with("api_tokens: ") && row.contains("ops")),
                "no token row:\n{rows}"
            );
            Some(rows)
        }
    };
    succeeded(&token(&data, &["revoke", "ops"]));
    let after = http
        .post(&server.url)
        .bearer_auth(&secret)
        .json(&json!({"query": "{ vms { totalCount } }"}))
        .send()
        .await
        .unwrap();
    assert_eq!(after.status(), 401);
    server.child.kill().unwrap();
    server.child.wait().unwrap();

    // Not in the database, its journal or the logs: no file under the data
    // dir (or the server's output) holds it, nor, on PostgreSQL, any row,
    // before or after the revoke.
    let mut files = Vec::new();
    files_under(dir.path(), &mut files);
    match rows_with_the_token {
        None => assert!(files.iter().any(|(path, _)| path.ends_with("vman.db"))),
        Some(before) => {
            let after = postgres::dump(&postgres::database_for(&data)).await;
            files.push(("rows with the token".into(), before.into_bytes()));
            files.push(("rows after the revoke".into(), after.into_bytes()));
        }
    }
    assert!(
        files
            .iter()
            .any(|(path, _)| path.starts_with(data.join("logs")))
    );
    // The secret part: its last 43 characters (base64url may hold `_`).
    let random = &secret[secret.len() - 43..];
    for (path, bytes) in &files {
        for needle in [secret.as_bytes(), random.as_bytes()] {
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle),
                "the secret is in {}",
                path.display()
            );
        }
    }
}
