//! vman over TLS on a real port: https and wss with a certificate from a
//! test CA (made here with rcgen), clients that trust that CA and no other
//! root, what a plain-http or untrusting client gets, graceful shutdown, the
//! `vman serve` start line, and the `[tls]` config errors.

mod common;

use std::{
    io::BufRead,
    process::{Command, Stdio},
};

use common::{TestServer, WAIT, WsClient, tls::TestCa};
use serde_json::json;

const EVENTS: &str = "subscription($after: String) { events(after: $after) { sequence kind } }";

/// An error with its whole chain of causes, for asserting on what failed.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

/// The journal's last sequence: a subscription `after` it misses nothing
/// that commits next.
async fn head(server: &TestServer) -> String {
    server.journal().await.last().map_or("0".into(), |event| {
        event["sequence"].as_str().unwrap().to_string()
    })
}

#[tokio::test]
async fn https_graphql_answers_a_client_that_trusts_the_ca() {
    let ca = TestCa::new("vman");
    let server = TestServer::start_tls(&ca).await;
    assert!(
        server.url.starts_with("https://127.0.0.1:"),
        "{}",
        server.url
    );
    assert!(
        server.ws_url.starts_with("wss://127.0.0.1:"),
        "{}",
        server.ws_url
    );
    assert_eq!(server.app.ctx.config.scheme(), "https");

    let response = server
        .http
        .post(&server.url)
        .json(&json!({"query": "{ health { ready } }"}))
        .send()
        .await
        .expect("an https POST /graphql");
    assert_eq!(response.status(), 200);
    assert_eq!(response.version(), reqwest::Version::HTTP_11);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["data"]["health"]["ready"], true, "{body}");

    // Mutations too, and `localhost` is in the certificate as well.
    server.create_template("over-tls").await;
    let url = server.url.replace("127.0.0.1", "localhost");
    let body: serde_json::Value = server
        .http
        .post(&url)
        .json(&json!({"query": "{ templates { totalCount } }"}))
        .send()
        .await
        .expect("an https POST to localhost")
        .json()
        .await
        .unwrap();
    assert_eq!(body["data"]["templates"]["totalCount"], 1, "{body}");
}

#[tokio::test]
async fn plain_http_to_the_tls_port_fails_and_the_port_serves_on() {
    let ca = TestCa::new("vman");
    let server = TestServer::start_tls(&ca).await;
    let plain = server.url.replace("https://", "http://");
    let result = tokio::time::timeout(
        WAIT,
        reqwest::Client::new()
            .post(&plain)
            .json(&json!({"query": "{ health { ready } }"}))
            .send(),
    )
    .await
    .expect("a plain-http request is refused, not left hanging");
    assert!(
        result.is_err(),
        "plain http to the TLS port got an answer: {result:?}"
    );
    // The failed handshake did not stop the listener.
    let data = server.ok("{ health { ready } }", json!({})).await;
    assert_eq!(data["health"]["ready"], true);
}

#[tokio::test]
async fn a_client_that_does_not_trust_the_ca_fails_the_handshake() {
    let ca = TestCa::new("vman");
    let server = TestServer::start_tls(&ca).await;
    let stranger = TestCa::new("stranger");

    let error = stranger
        .http_client()
        .post(&server.url)
        .json(&json!({"query": "{ health { ready } }"}))
        .send()
        .await
        .expect_err("a client that trusts another CA must not connect");
    let text = chain(&error);
    assert!(
        error.is_connect() && text.contains("certificate") && text.contains("UnknownIssuer"),
        "{text}"
    );

    let request = server.ws_url.as_str();
    let error = tokio_tungstenite::connect_async_tls_with_config(
        request,
        None,
        false,
        Some(tokio_tungstenite::Connector::Rustls(
            stranger.rustls_client(),
        )),
    )
    .await
    .expect_err("a wss client that trusts another CA must not connect");
    let text = chain(&error);
    assert!(text.contains("UnknownIssuer"), "{text}");

    // The server's own CA still gets in.
    let data = server.ok("{ health { ready } }", json!({})).await;
    assert_eq!(data["health"]["ready"], true);
}

#[tokio::test]
async fn wss_speaks_graphql_transport_ws_and_pushes_after_a_mutation() {
    let ca = TestCa::new("vman");
    let server = TestServer::start_tls(&ca).await;
    // connect_tls sends connection_init and asserts connection_ack.
    let mut ws = WsClient::connect_tls(&server.ws_url, ca.rustls_client()).await;
    ws.subscribe("events", EVENTS, json!({"after": head(&server).await}))
        .await;
    server.create_template("pushed-over-wss").await;
    let data = ws.next_data("events").await;
    assert_eq!(data["events"]["kind"], "TEMPLATE_CREATED", "{data}");
    let sequence = data["events"]["sequence"].as_str();
    assert_eq!(sequence, Some(head(&server).await.as_str()), "{data}");

    // A query over the same socket sees the template just made.
    ws.subscribe("q", "{ templates { totalCount } }", json!({}))
        .await;
    let data = ws.next_data("q").await;
    assert_eq!(data["templates"]["totalCount"], 1, "{data}");
    ws.close().await;
}

#[tokio::test]
async fn a_tls_server_shuts_down_on_cancel_and_closes_its_websockets() {
    let ca = TestCa::new("vman");
    let mut server = TestServer::start_tls(&ca).await;
    let mut ws = WsClient::connect_tls(&server.ws_url, ca.rustls_client()).await;
    ws.subscribe("events", EVENTS, json!({})).await;
    server.app.ctx.cancel.cancel();
    assert_eq!(ws.closed().await.0, 1001);
    tokio::time::timeout(WAIT, &mut server.serving)
        .await
        .expect("serve_on ends after cancel")
        .unwrap()
        .expect("serve_on ends without an error");
    let error = server
        .http
        .get(server.url.replace("/graphql", "/healthz"))
        .send()
        .await
        .expect_err("nothing listens after shutdown");
    assert!(error.is_connect(), "{}", chain(&error));
}

/// Kills the child when the test ends, however it ends.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn vman() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_vman"));
    command.env_remove("RUST_LOG");
    command
}

#[tokio::test]
async fn vman_serve_with_tls_from_the_environment_logs_and_serves_https() {
    let ca = TestCa::new("vman");
    let data = ca.dir().join("data");
    let mut child = Child(
        vman()
            .current_dir(ca.dir())
            .args([
                "serve",
                "--dry-run",
                "--listen",
                "127.0.0.1:0",
                "--data-dir",
            ])
            .arg(&data)
            .env("VMAN_TLS_CERT", &ca.cert_file)
            .env("VMAN_TLS_KEY", &ca.key_file)
            .env("VMAN_LOG_LEVEL", "info")
            .envs(common::database_env(&data))
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stderr = child.0.stderr.take().unwrap();
    // The start line is the event to wait for: it names the bound port.
    let line = tokio::time::timeout(
        WAIT,
        tokio::task::spawn_blocking(move || {
            let mut seen = String::new();
            for line in std::io::BufReader::new(stderr).lines() {
                let line = line.unwrap();
                if line.contains("vman is serving") {
                    return line;
                }
                seen.push_str(&line);
                seen.push('\n');
            }
            panic!("vman ended before its start line:\n{seen}");
        }),
    )
    .await
    .expect("the start line within the wait")
    .unwrap();
    let field = |name: &str| {
        line.split_whitespace()
            .find_map(|word| word.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("no {name}= in {line}"))
            .to_string()
    };
    let graphql = field("graphql");
    assert!(graphql.starts_with("https://127.0.0.1:"), "{line}");
    assert!(graphql.ends_with("/graphql"), "{line}");
    assert_eq!(field("playground"), graphql.replace("/graphql", "/"));
    assert_eq!(
        field("websocket"),
        graphql.replace("https://", "wss://") + "/ws"
    );
    assert!(field("metrics").starts_with("https://"), "{line}");

    let body: serde_json::Value = ca
        .http_client()
        .post(&graphql)
        .json(&json!({"query": "{ health { dryRun } }"}))
        .send()
        .await
        .expect("https to the vman process")
        .json()
        .await
        .unwrap();
    assert_eq!(body["data"]["health"]["dryRun"], true, "{body}");
    let ws = WsClient::connect_tls(&field("websocket"), ca.rustls_client()).await;
    ws.close().await;
}

/// `vman config check` in `dir` with `vman.toml` holding `toml`; its exit
/// code and stderr.
fn config_check(
    dir: &std::path::Path,
    toml: &str,
    env: &[(&str, &std::path::Path)],
) -> (i32, String) {
    std::fs::write(dir.join("vman.toml"), toml).unwrap();
    let out = vman()
        .current_dir(dir)
        .args(["config", "check"])
        .envs(env.iter().map(|(k, v)| (*k, v.as_os_str())))
        .output()
        .unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8(out.stderr).unwrap() + &String::from_utf8(out.stdout).unwrap(),
    )
}

#[test]
fn tls_config_errors_name_the_key_and_stop_vman_with_exit_code_2() {
    let ca = TestCa::new("vman");
    let other = TestCa::new("other");
    let dir = ca.dir();
    let not_pem = dir.join("not-pem.key");
    std::fs::write(&not_pem, b"\x30\x82\x01\x0a this is not a PEM file\n").unwrap();
    let (cert, key) = (&ca.cert_file, &ca.key_file);
    let section = |cert: &std::path::Path, key: &std::path::Path| {
        format!("[tls]\ncert = {:?}\nkey = {:?}\n", cert, key)
    };

    // Both, valid: accepted, and shown with where they came from.
    let (code, out) = config_check(dir, &section(cert, key), &[]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!(
            "tls.cert = {:?}    # from TOML file",
            cert.display().to_string()
        )),
        "{out}"
    );

    // vman.toml, environment, the key the error must name, and why.
    type Case<'a> = (
        String,
        Vec<(&'a str, &'a std::path::Path)>,
        &'a str,
        &'a str,
    );
    let cases: Vec<Case> = vec![
        // A certificate without a key, from the environment.
        (
            String::new(),
            vec![("VMAN_TLS_CERT", cert.as_path())],
            "tls.cert",
            "tls.key is not: set both or neither",
        ),
        // A key without a certificate.
        (
            "[tls]\nkey = \"key.pem\"\n".into(),
            vec![],
            "tls.key",
            "tls.cert is not: set both or neither",
        ),
        (
            section(cert, &not_pem),
            vec![],
            "tls.key",
            "no PEM private key",
        ),
        // A key, but the key of another certificate.
        (
            section(cert, &other.key_file),
            vec![],
            "tls.key",
            "does not match the certificate",
        ),
        (
            section(&dir.join("missing.pem"), key),
            vec![],
            "tls.cert",
            "cannot read",
        ),
        // The key where the certificate should be.
        (
            section(key, key),
            vec![],
            "tls.cert",
            "holds no PEM certificate",
        ),
        (
            section(&not_pem, key),
            vec![],
            "tls.cert",
            "holds no PEM certificate",
        ),
    ];
    for (toml, env, key_named, reason) in &cases {
        let (code, out) = config_check(dir, toml, env);
        assert_eq!(code, 2, "{toml} {env:?}: {out}");
        assert!(
            out.contains(&format!("invalid config: {key_named} = ")) && out.contains(reason),
            "{toml} {env:?}: expected {key_named} and {reason:?} in: {out}"
        );
    }

    // `vman serve` refuses to start the same way.
    std::fs::write(dir.join("vman.toml"), section(cert, &not_pem)).unwrap();
    let out = vman()
        .current_dir(dir)
        .args([
            "serve",
            "--dry-run",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(dir.join("data"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("tls.key") && stderr.contains("no PEM private key"),
        "{stderr}"
    );
}
