//! Who may do what, over the real port: tokens and roles on HTTP and
//! websockets, revocation, the Origin and Host checks, and that the secret
//! is kept nowhere.

mod common;

use std::time::{Duration, Instant};

use common::{TestServer, WsClient};
use reqwest::StatusCode;
use serde_json::{Value, json};
use vman::config::AuthMode;

const MISSING: &str = "01940000-0000-7000-8000-000000000001";

/// Every mutation, with arguments that pass validation (the IDs name
/// nothing), and the least role that may run it.
fn mutations() -> Vec<(&'static str, &'static str, &'static str)> {
    vec![
        (
            "createVm",
            "operator",
            r#"createVm(input: {name: "x"}) { vm { id } }"#,
        ),
        ("startVm", "operator", "startVm(id: $id) { vm { id } }"),
        ("stopVm", "operator", "stopVm(id: $id) { vm { id } }"),
        ("restartVm", "operator", "restartVm(id: $id) { vm { id } }"),
        ("pauseVm", "operator", "pauseVm(id: $id) { vm { id } }"),
        ("resumeVm", "operator", "resumeVm(id: $id) { vm { id } }"),
        ("deleteVm", "operator", "deleteVm(id: $id) { vm { id } }"),
        (
            "cloneVm",
            "operator",
            r#"cloneVm(id: $id, name: "copy") { vm { id } }"#,
        ),
        (
            "cancelOperation",
            "operator",
            "cancelOperation(id: $id) { id }",
        ),
        (
            "updateVm",
            "operator",
            "updateVm(id: $id, input: {vcpus: 1}) { vm { id } }",
        ),
        (
            "clearPendingChanges",
            "operator",
            "clearPendingChanges(id: $id) { vm { id } }",
        ),
        (
            "attachCdrom",
            "operator",
            "attachCdrom(id: $id, imageId: $id) { vm { id } }",
        ),
        (
            "ejectCdrom",
            "operator",
            "ejectCdrom(id: $id) { vm { id } }",
        ),
        (
            "updateTemplate",
            "admin",
            "updateTemplate(id: $id, input: {vcpus: 1}) { template { id } }",
        ),
        (
            "createDisk",
            "operator",
            r#"createDisk(input: {name: "d", sizeBytes: 1048576, format: QCOW2}) { disk { id } }"#,
        ),
        (
            "attachDisk",
            "operator",
            "attachDisk(diskId: $id, vmId: $id) { disk { id } }",
        ),
        (
            "detachDisk",
            "operator",
            "detachDisk(diskId: $id) { disk { id } }",
        ),
        (
            "resizeDisk",
            "operator",
            "resizeDisk(diskId: $id, sizeBytes: 2097152) { disk { id } }",
        ),
        (
            "deleteDisk",
            "operator",
            "deleteDisk(id: $id) { disk { id } }",
        ),
        (
            "attachNic",
            "operator",
            "attachNic(vmId: $id, networkId: $id) { nic { id } }",
        ),
        (
            "detachNic",
            "operator",
            "detachNic(nicId: $id) { nic { id } }",
        ),
        (
            "sendConsoleInput",
            "operator",
            r#"sendConsoleInput(vmId: $id, data: "ls\r") { bytes }"#,
        ),
        (
            "createTemplate",
            "admin",
            r#"createTemplate(input: {name: "t", vcpus: 1, memoryMib: 64}) { template { id } }"#,
        ),
        (
            "deleteTemplate",
            "admin",
            "deleteTemplate(id: $id) { template { id } }",
        ),
        (
            "importImage",
            "admin",
            r#"importImage(input: {name: "i", kind: KERNEL, path: "nothing"}) { image { id } }"#,
        ),
        (
            "deleteImage",
            "admin",
            "deleteImage(id: $id) { image { id } }",
        ),
        (
            "createNetwork",
            "admin",
            r#"createNetwork(input: {name: "n", vlanId: 7}) { network { id } }"#,
        ),
        (
            "deleteNetwork",
            "admin",
            "deleteNetwork(id: $id) { network { id } }",
        ),
        (
            "createSnapshot",
            "operator",
            r#"createSnapshot(vmId: $id, name: "s") { snapshot { id } }"#,
        ),
        (
            "restoreSnapshot",
            "operator",
            "restoreSnapshot(id: $id) { snapshot { id } }",
        ),
        (
            "deleteSnapshot",
            "operator",
            "deleteSnapshot(id: $id) { snapshot { id } }",
        ),
        (
            "runCoherenceSweep",
            "admin",
            "runCoherenceSweep { startedAt }",
        ),
        (
            "createApiToken",
            "admin",
            r#"createApiToken(input: {name: "made", role: VIEWER}) { secret }"#,
        ),
        (
            "revokeApiToken",
            "admin",
            r#"revokeApiToken(name: "nobody") { token { id } }"#,
        ),
    ]
}

fn rank(role: &str) -> u8 {
    match role {
        "viewer" => 1,
        "operator" => 2,
        "admin" => 3,
        _ => 0,
    }
}

fn code(response: &Value) -> Option<&str> {
    response["errors"][0]["extensions"]["code"].as_str()
}

#[tokio::test]
async fn each_role_may_do_what_its_table_says_and_a_refusal_changes_nothing() {
    // Three requests per mutation and caller, two of them the admin's
    // snapshots, as fast as they go: more than the default rate allows.
    let (server, tokens) = TestServer::with_tokens(|c| c.limits.requests_per_second = 10_000).await;
    let callers: [(&str, Option<&str>); 4] = [
        ("nobody", None),
        ("viewer", Some(&tokens.viewer)),
        ("operator", Some(&tokens.operator)),
        ("admin", Some(&tokens.admin)),
    ];
    // The table covers every mutation of the schema.
    let names: Vec<&str> = mutations().iter().map(|(name, _, _)| *name).collect();
    for (name, _) in vman::auth::guard::MUTATIONS {
        assert!(names.contains(name), "{name} is not in this test's table");
    }
    for (name, needs, selection) in mutations() {
        let document = if selection.contains("$id") {
            format!("mutation($id: ID!) {{ {selection} }}")
        } else {
            format!("mutation {{ {selection} }}")
        };
        for (caller, token) in callers {
            let before = server.snapshot().await;
            let (status, response) = server
                .post_as(token, &document, json!({"id": MISSING}))
                .await;
            let after = server.snapshot().await;
            if token.is_none() {
                assert_eq!(status, StatusCode::UNAUTHORIZED, "{name} by {caller}");
                assert_eq!(code(&response), Some("UNAUTHENTICATED"), "{response}");
                assert_eq!(before, after, "{name} by {caller} changed something");
            } else if rank(caller) < rank(needs) {
                assert_eq!(status, StatusCode::OK, "{name} by {caller}: {response}");
                assert_eq!(
                    code(&response),
                    Some("FORBIDDEN"),
                    "{name} by {caller}: {response}"
                );
                assert_eq!(response["errors"][0]["path"], json!([name]), "{response}");
                assert_eq!(before, after, "{name} by {caller} changed something");
            } else {
                // It ran: it succeeded, or its own resolver refused it (the
                // IDs name nothing), which an error with its path says.
                let code = code(&response);
                assert!(
                    !matches!(code, Some("FORBIDDEN" | "UNAUTHENTICATED")),
                    "{name} by {caller} was refused: {response}"
                );
                assert!(
                    response["errors"].is_null() || response["errors"][0]["path"] == json!([name]),
                    "{name} by {caller} did not run: {response}"
                );
            }
        }
    }
}

#[tokio::test]
async fn reads_and_subscriptions_need_a_token_and_token_admin_needs_admin() {
    let (server, tokens) = TestServer::with_tokens(|_| {}).await;
    let (status, response) = server
        .post_as(None, "{ vms { totalCount } }", json!({}))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(code(&response), Some("UNAUTHENTICATED"));
    let (status, response) = server
        .post_as(
            Some("vman_not-a-real-token_x"),
            "{ vms { totalCount } }",
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{response}");

    let (_, response) = server
        .post_as(
            Some(&tokens.viewer),
            "{ vms { totalCount } me { actor role } }",
            json!({}),
        )
        .await;
    assert_eq!(
        response["data"]["me"],
        json!({"actor": "viewer", "role": "VIEWER"})
    );
    let (_, response) = server
        .post_as(Some(&tokens.operator), "{ apiTokens { name } }", json!({}))
        .await;
    assert_eq!(code(&response), Some("FORBIDDEN"), "{response}");
    let (_, response) = server
        .post_as(
            Some(&tokens.admin),
            "{ apiTokens { name role } }",
            json!({}),
        )
        .await;
    assert_eq!(
        response["data"]["apiTokens"],
        json!([
            {"name": "viewer", "role": "VIEWER"},
            {"name": "operator", "role": "OPERATOR"},
            {"name": "admin", "role": "ADMIN"},
        ])
    );

    // A viewer subscribes; a socket without a token, or with a bad one, is closed 4403.
    let bearer = |secret: &str| json!({"authorization": format!("Bearer {secret}")});
    let mut viewer = WsClient::connect_with(
        &server.ws_url,
        "graphql-transport-ws",
        bearer(&tokens.viewer),
    )
    .await;
    viewer
        .subscribe("1", "subscription { events { sequence kind } }", json!({}))
        .await;
    server.create_template("seen").await;
    let event = viewer.next_data("1").await;
    assert_eq!(event["events"]["kind"], "TEMPLATE_CREATED", "{event}");
    for payload in [json!({}), bearer("vman_xxxxxxxxxxxx_nope")] {
        let mut socket = WsClient::open(&server.ws_url, "graphql-transport-ws", &[]).await;
        socket
            .send(json!({"type": "connection_init", "payload": payload}))
            .await;
        assert_eq!(socket.closed().await.0, 4403, "{payload}");
    }
    // The upgrade's own header works too (clients that are not browsers).
    let mut socket = WsClient::open(
        &server.ws_url,
        "graphql-transport-ws",
        &[("authorization", &format!("Bearer {}", tokens.operator))],
    )
    .await;
    socket
        .send(json!({"type": "connection_init", "payload": {}}))
        .await;
    assert_eq!(socket.next_message().await["type"], "connection_ack");
}

#[tokio::test]
async fn a_revoked_token_is_refused_and_its_subscriptions_close_within_a_second() {
    let (server, tokens) = TestServer::with_tokens(|_| {}).await;
    let bearer = json!({"authorization": format!("Bearer {}", tokens.viewer)});
    let mut socket =
        WsClient::connect_with(&server.ws_url, "graphql-transport-ws", bearer.clone()).await;
    socket
        .subscribe("1", "subscription { events { sequence } }", json!({}))
        .await;
    // Revoked over GraphQL: closed at once.
    let revoked = Instant::now();
    server
        .ok(r#"mutation { revokeApiToken(name: "viewer") { token { name } operation { kind actor } } }"#, json!({}))
        .await;
    let (code, reason) = socket.closed().await;
    assert_eq!(code, 4403, "{reason}");
    assert!(
        revoked.elapsed() < Duration::from_secs(1),
        "{:?}",
        revoked.elapsed()
    );
    let (status, _) = server
        .post_as(Some(&tokens.viewer), "{ vms { totalCount } }", json!({}))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let mut again = WsClient::open(&server.ws_url, "graphql-transport-ws", &[]).await;
    again
        .send(json!({"type": "connection_init", "payload": bearer}))
        .await;
    assert_eq!(again.closed().await.0, 4403);

    // Revoked from the command line (another process, the database only):
    // closed when the server next looks, within a second.
    let bearer = json!({"authorization": format!("Bearer {}", tokens.operator)});
    let mut socket = WsClient::connect_with(&server.ws_url, "graphql-transport-ws", bearer).await;
    let revoked = Instant::now();
    vman::auth::token::revoke_local(&server.app.ctx.db, "operator")
        .await
        .unwrap();
    assert_eq!(socket.closed().await.0, 4403);
    assert!(
        revoked.elapsed() < Duration::from_secs(1),
        "{:?}",
        revoked.elapsed()
    );
}

#[tokio::test]
async fn an_expired_token_is_refused_and_its_socket_closed() {
    let (server, _tokens) = TestServer::with_tokens(|_| {}).await;
    let data = server
        .ok(
            r#"mutation { createApiToken(input: {name: "brief", role: VIEWER, expires: "2s"}) { secret token { expiresAt createdBy } } }"#,
            json!({}),
        )
        .await;
    let secret = data["createApiToken"]["secret"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(data["createApiToken"]["token"]["createdBy"], "admin");
    let bearer = json!({"authorization": format!("Bearer {secret}")});
    let mut socket = WsClient::connect_with(&server.ws_url, "graphql-transport-ws", bearer).await;
    let (status, _) = server
        .post_as(Some(&secret), "{ me { actor } }", json!({}))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(socket.closed().await.0, 4403);
    let (status, response) = server
        .post_as(Some(&secret), "{ me { actor } }", json!({}))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{response}");
}

#[tokio::test]
async fn operations_record_their_actor_and_can_be_filtered_by_it() {
    let (server, tokens) = TestServer::with_tokens(|_| {}).await;
    server.create_template("t").await;
    let (_, response) = server
        .post_as(
            Some(&tokens.operator),
            r#"mutation { createVm(input: {name: "v", templateName: "t"}) { operation { actor } } }"#,
            json!({}),
        )
        .await;
    assert_eq!(
        response["data"]["createVm"]["operation"]["actor"], "operator",
        "{response}"
    );
    let data = server
        .ok(
            r#"{ byOperator: operations(actor: "operator") { edges { node { kind actor } } } byAdmin: operations(actor: "admin") { edges { node { kind } } } }"#,
            json!({}),
        )
        .await;
    assert_eq!(
        data["byOperator"]["edges"],
        json!([{"node": {"kind": "CREATE_VM", "actor": "operator"}}])
    );
    assert_eq!(
        data["byAdmin"]["edges"],
        json!([{"node": {"kind": "CREATE_TEMPLATE"}}])
    );
    // The tokens made by the command line are recorded as `local`.
    let data = server
        .ok(
            r#"{ operations(actor: "local") { totalCount edges { node { kind } } } }"#,
            json!({}),
        )
        .await;
    assert_eq!(data["operations"]["totalCount"], 3);
    assert_eq!(
        data["operations"]["edges"][0]["node"]["kind"],
        "CREATE_API_TOKEN"
    );
}

#[tokio::test]
async fn without_auth_everyone_is_local_and_the_host_must_be_loopback() {
    let server = TestServer::start().await;
    assert_eq!(server.app.ctx.config.auth.mode, AuthMode::None);
    let data = server.ok("{ me { actor role } }", json!({})).await;
    assert_eq!(data["me"], json!({"actor": "local", "role": "ADMIN"}));
    server.create_template("t").await;
    let data = server
        .ok("{ operations { edges { node { actor } } } }", json!({}))
        .await;
    assert_eq!(data["operations"]["edges"][0]["node"]["actor"], "local");

    // A page that re-pointed its own name at 127.0.0.1 sends that name.
    let address = server
        .url
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let port = address.rsplit(':').next().unwrap();
    for (host, allowed) in [
        (address.clone(), true),
        (format!("localhost:{port}"), true),
        (format!("evil.example:{port}"), false),
        ("evil.example".to_string(), false),
    ] {
        for path in ["/graphql", "/graphql/ws", "/healthz", "/"] {
            let response = server
                .http
                .post(format!("http://{address}{path}"))
                .header("host", &host)
                .json(&json!({"query": "{ me { actor } }"}))
                .send()
                .await
                .unwrap();
            if allowed {
                assert_ne!(response.status(), StatusCode::FORBIDDEN, "{host}{path}");
            } else {
                assert_eq!(response.status(), StatusCode::FORBIDDEN, "{host}{path}");
            }
        }
    }
}

/// Opens a websocket with `origin`; whether the upgrade was accepted (the
/// status code when not).
async fn upgrade_with_origin(ws_url: &str, origin: &str) -> Result<(), u16> {
    use tokio_tungstenite::tungstenite::{Error, client::IntoClientRequest, http::HeaderValue};
    let mut request = ws_url.into_client_request().unwrap();
    let headers = request.headers_mut();
    headers.insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static("graphql-transport-ws"),
    );
    headers.insert("Origin", HeaderValue::from_str(origin).unwrap());
    match tokio_tungstenite::connect_async(request).await {
        Ok(_) => Ok(()),
        Err(Error::Http(response)) => Err(response.status().as_u16()),
        Err(other) => panic!("{other}"),
    }
}

#[tokio::test]
async fn a_foreign_origin_is_refused_before_any_message_in_both_modes() {
    for mode in [AuthMode::None, AuthMode::Token] {
        let server = TestServer::start_with(|config| {
            config.auth.mode = mode;
            config.websocket.allowed_origins = vec!["https://dash.example".into()];
        })
        .await;
        let own = format!(
            "http://{}",
            server
                .ws_url
                .trim_start_matches("ws://")
                .split('/')
                .next()
                .unwrap()
        );
        assert_eq!(
            upgrade_with_origin(&server.ws_url, "http://evil.example").await,
            Err(403),
            "{mode:?}"
        );
        assert_eq!(
            upgrade_with_origin(&server.ws_url, &own).await,
            Ok(()),
            "{mode:?}"
        );
        assert_eq!(
            upgrade_with_origin(&server.ws_url, "https://dash.example").await,
            Ok(()),
            "{mode:?}"
        );
        // Plain HTTP from a foreign page is refused as well.
        let response = server
            .http
            .post(&server.url)
            .header("origin", "http://evil.example")
            .json(&json!({"query": "{ vms { totalCount } }"}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::FORBIDDEN, "{mode:?}");
    }
}

#[tokio::test]
async fn cors_lets_a_configured_origin_in_and_answers_its_preflight() {
    let (server, tokens) = TestServer::with_tokens(|config| {
        config.http.cors_origins = vec!["https://dash.example".into()];
    })
    .await;
    let preflight = server
        .http
        .request(reqwest::Method::OPTIONS, &server.url)
        .header("origin", "https://dash.example")
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization, content-type",
        )
        .send()
        .await
        .unwrap();
    assert!(preflight.status().is_success(), "{}", preflight.status());
    assert_eq!(
        preflight.headers()["access-control-allow-origin"],
        "https://dash.example"
    );
    let allowed = preflight.headers()["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    assert!(allowed.contains("authorization"), "{allowed}");
    let response = server
        .http
        .post(&server.url)
        .header("origin", "https://dash.example")
        .bearer_auth(&tokens.viewer)
        .json(&json!({"query": "{ me { actor } }"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()["access-control-allow-origin"],
        "https://dash.example"
    );
}

#[tokio::test]
async fn the_rate_limit_and_the_connection_cap_are_per_token() {
    let (server, tokens) = TestServer::with_tokens(|config| {
        config.limits.requests_per_second = 5;
        config.limits.websocket_connections_per_token = 2;
    })
    .await;
    let mut statuses = Vec::new();
    for _ in 0..20 {
        let response = server
            .http
            .post(&server.url)
            .bearer_auth(&tokens.viewer)
            .json(&json!({"query": "{ me { actor } }"}))
            .send()
            .await
            .unwrap();
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            let retry: u64 = response.headers()["retry-after"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            assert!(retry >= 1);
        }
        statuses.push(response.status());
    }
    assert!(
        statuses.contains(&StatusCode::TOO_MANY_REQUESTS),
        "{statuses:?}"
    );
    // Another token is not slowed by the first one's flood.
    let (status, _) = server
        .post_as(Some(&tokens.operator), "{ me { actor } }", json!({}))
        .await;
    assert_eq!(status, StatusCode::OK);

    let bearer = json!({"authorization": format!("Bearer {}", tokens.admin)});
    let _one = WsClient::connect_with(&server.ws_url, "graphql-transport-ws", bearer.clone()).await;
    let _two = WsClient::connect_with(&server.ws_url, "graphql-transport-ws", bearer.clone()).await;
    let mut three = WsClient::open(&server.ws_url, "graphql-transport-ws", &[]).await;
    three
        .send(json!({"type": "connection_init", "payload": bearer}))
        .await;
    let (code, reason) = three.closed().await;
    assert_eq!(code, 4403);
    assert!(reason.contains("connections"), "{reason}");
}

#[tokio::test]
async fn metrics_need_a_token_unless_public_and_health_is_open() {
    let (server, tokens) = TestServer::with_tokens(|_| {}).await;
    let base = server.url.trim_end_matches("/graphql").to_string();
    let get = |path: &str, token: Option<&str>| {
        let mut request = server.http.get(format!("{base}{path}"));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send()
    };
    assert_eq!(
        get("/metrics", None).await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        get("/metrics", Some(&tokens.viewer))
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        get("/healthz", None).await.unwrap().status(),
        StatusCode::OK
    );
    assert_eq!(get("/readyz", None).await.unwrap().status(), StatusCode::OK);
    let public = TestServer::with_tokens(|config| config.metrics.public = true)
        .await
        .0;
    let response = public
        .http
        .get(public.url.replace("/graphql", "/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_401_says_how_to_authenticate() {
    let (server, _) = TestServer::with_tokens(|_| {}).await;
    let response = server
        .http
        .post(&server.url)
        .json(&json!({"query": "{ me { actor } }"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(response.headers()["www-authenticate"], "Bearer");
    let body: Value = response.json().await.unwrap();
    assert_eq!(code(&body), Some("UNAUTHENTICATED"));
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("vman token create"),
        "{body}"
    );
}
