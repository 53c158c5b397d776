//! The websocket endpoint frame by frame: every close code graphql-transport-ws
//! defines, ping/pong both ways, `complete` from the client, the legacy
//! graphql-ws subprotocol end to end, and the per-connection bounds
//! (operations, outgoing buffer) on a real port.

mod common;

use std::time::Duration;

use common::{TestServer, WAIT};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::{
    MaybeTlsStream, WebSocketStream,
    tungstenite::{self, Message, client::IntoClientRequest, http::HeaderValue},
};

const EVENTS: &str = "subscription($after: String) { events(after: $after) { sequence kind } }";
const TRANSPORT: &str = "graphql-transport-ws";
const LEGACY: &str = "graphql-ws";

/// A websocket client that shows every frame, close frames included.
struct Raw {
    socket: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl Raw {
    /// Offers exactly `protocol`, which the server must accept.
    async fn connect(url: &str, protocol: &str) -> Raw {
        let (raw, selected) = Self::connect_with(url, protocol, None).await;
        assert_eq!(selected, protocol, "the server agrees on the subprotocol");
        raw
    }

    /// Offers `protocols`; returns the socket and the protocol the server chose.
    /// With `receive_buffer`, the client's kernel buffer is that small, so a
    /// client that does not read stalls the server's writes early.
    async fn connect_with(
        url: &str,
        protocols: &str,
        receive_buffer: Option<u32>,
    ) -> (Raw, String) {
        let mut request = url.into_client_request().unwrap();
        request.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_str(protocols).unwrap(),
        );
        let addr = url
            .trim_start_matches("ws://")
            .split('/')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let socket = TcpSocket::new_v4().unwrap();
        if let Some(size) = receive_buffer {
            socket.set_recv_buffer_size(size).unwrap();
        }
        let stream = socket.connect(addr).await.expect("TCP connect");
        let (socket, response) =
            tokio_tungstenite::client_async(request, MaybeTlsStream::Plain(stream))
                .await
                .expect("websocket handshake");
        let selected = response.headers()["sec-websocket-protocol"]
            .to_str()
            .unwrap()
            .to_string();
        (Raw { socket }, selected)
    }

    /// Connects and completes `connection_init` → `connection_ack`.
    async fn ready(url: &str, protocol: &str) -> Raw {
        let mut raw = Raw::connect(url, protocol).await;
        raw.init().await;
        raw
    }

    async fn init(&mut self) {
        self.send(json!({"type": "connection_init"})).await;
        let ack = self.recv().await;
        assert_eq!(ack["type"], "connection_ack", "{ack}");
    }

    async fn send(&mut self, message: Value) {
        self.send_text(&message.to_string()).await;
    }

    async fn send_text(&mut self, text: &str) {
        self.socket
            .send(Message::text(text))
            .await
            .expect("ws send");
    }

    async fn subscribe(&mut self, id: &str, query: &str, variables: Value) {
        self.send(json!({"type": "subscribe", "id": id, "payload": {"query": query, "variables": variables}}))
            .await;
    }

    /// The next frame within [`WAIT`]; `None` when the socket ended.
    async fn frame(&mut self) -> Option<Message> {
        let frame = tokio::time::timeout(WAIT, self.socket.next())
            .await
            .expect("a frame within the wait");
        match frame {
            None => None,
            Some(Ok(frame)) => Some(frame),
            // What a client reports as 1006: the socket ended without a close frame.
            Some(Err(error)) => panic!("socket failed without a close frame (1006): {error}"),
        }
    }

    /// The next JSON message as it came, server pings and `ka` included.
    async fn recv_any(&mut self) -> Value {
        loop {
            match self.frame().await {
                Some(Message::Text(text)) => return serde_json::from_str(&text).unwrap(),
                Some(Message::Ping(_) | Message::Pong(_)) => continue,
                other => panic!("expected a message, got {other:?}"),
            }
        }
    }

    /// The next JSON message, answering server pings and skipping `ka`.
    async fn recv(&mut self) -> Value {
        loop {
            let message = self.recv_any().await;
            match message["type"].as_str() {
                Some("ping") => self.send(json!({"type": "pong"})).await,
                Some("ka") => {}
                _ => return message,
            }
        }
    }

    /// The next message's text as it came (key order included), answering
    /// server pings and skipping `ka`.
    async fn recv_text(&mut self) -> String {
        loop {
            match self.frame().await {
                Some(Message::Text(text)) => {
                    let message: Value = serde_json::from_str(&text).unwrap();
                    match message["type"].as_str() {
                        Some("ping") => self.send(json!({"type": "pong"})).await,
                        Some("ka") => {}
                        _ => return text.to_string(),
                    }
                }
                Some(Message::Ping(_) | Message::Pong(_)) => continue,
                other => panic!("expected a message, got {other:?}"),
            }
        }
    }

    /// The next `next` message for `id`; its data.
    async fn next_data(&mut self, id: &str) -> Value {
        let message = self.recv().await;
        assert_eq!(
            (message["type"].as_str(), message["id"].as_str()),
            (Some("next"), Some(id)),
            "{message}"
        );
        assert!(message["payload"].get("errors").is_none(), "{message}");
        message["payload"]["data"].clone()
    }

    /// Reads until the server's close frame and returns its code and reason.
    async fn closed(&mut self) -> (u16, String) {
        loop {
            match self.frame().await {
                Some(Message::Close(Some(frame))) => {
                    let reason = frame.reason.to_string();
                    assert!(
                        reason.len() <= 123,
                        "reason too long for a close frame: {reason}"
                    );
                    return (frame.code.into(), reason);
                }
                Some(Message::Close(None)) => panic!("a close frame without a code"),
                Some(_) => continue,
                None => panic!("the socket ended without a close frame (1006)"),
            }
        }
    }
}

/// The journal's last sequence: subscribing `after` it cannot miss what
/// commits next, however late the server starts the subscription.
async fn head(server: &TestServer) -> String {
    server.journal().await.last().map_or("0".into(), |event| {
        event["sequence"].as_str().unwrap().to_string()
    })
}

/// Creates a template; the sequence of its event.
async fn create_template(server: &TestServer, name: &str) -> String {
    server.create_template(name).await;
    head(server).await
}

#[tokio::test]
async fn a_subprotocol_we_do_not_speak_is_refused_before_the_upgrade() {
    let server = TestServer::start().await;
    for offered in [Some("chat"), Some("graphql-transport-ws-v2"), None] {
        let mut request = server.ws_url.as_str().into_client_request().unwrap();
        if let Some(offered) = offered {
            request
                .headers_mut()
                .insert("Sec-WebSocket-Protocol", HeaderValue::from_static(offered));
        }
        match tokio_tungstenite::connect_async(request).await {
            Err(tungstenite::Error::Http(response)) => {
                assert_eq!(response.status(), 400, "{offered:?}")
            }
            other => panic!("{offered:?} should be refused with 400, got {other:?}"),
        }
    }
    // Offering several picks one we speak, the current protocol first.
    for (offered, chosen) in [
        ("chat, graphql-ws", LEGACY),
        ("graphql-ws, graphql-transport-ws", TRANSPORT),
    ] {
        let (mut ws, selected) = Raw::connect_with(&server.ws_url, offered, None).await;
        assert_eq!(selected, chosen, "{offered}");
        ws.init().await;
    }
}

#[tokio::test]
async fn subscribe_before_connection_ack_closes_4401() {
    let server = TestServer::start().await;
    let mut ws = Raw::connect(&server.ws_url, TRANSPORT).await;
    ws.subscribe("1", EVENTS, json!({})).await;
    assert_eq!(ws.closed().await, (4401, "Unauthorized".into()));
}

#[tokio::test]
async fn a_second_subscriber_with_the_same_id_closes_4409() {
    let server = TestServer::start().await;
    let mut ws = Raw::ready(&server.ws_url, TRANSPORT).await;
    ws.subscribe("dup", EVENTS, json!({"after": head(&server).await}))
        .await;
    // The first one is live: it receives an event before the duplicate arrives.
    create_template(&server, "t1").await;
    ws.next_data("dup").await;
    ws.subscribe("dup", EVENTS, json!({})).await;
    assert_eq!(
        ws.closed().await,
        (4409, "Subscriber for dup already exists".into())
    );

    // An id too long for the reason is cut so the frame stays valid.
    let mut ws = Raw::ready(&server.ws_url, TRANSPORT).await;
    let long = "x".repeat(500);
    ws.subscribe(&long, EVENTS, json!({})).await;
    ws.subscribe(&long, EVENTS, json!({})).await;
    let (code, reason) = ws.closed().await;
    assert_eq!(code, 4409);
    assert!(reason.starts_with("Subscriber for xxx"), "{reason}");
}

#[tokio::test]
async fn invalid_messages_close_4400_with_a_reason_that_fits() {
    let server = TestServer::start().await;
    let long_type = json!({"type": "x".repeat(5000)}).to_string();
    let cases = [
        ("{not json", "not JSON"),
        (r#"{"type":"subscription_start"}"#, "type"),
        (long_type.as_str(), "type"),
        (r#"["connection_init"]"#, "object"),
        (r#"{"id":"1"}"#, "type"),
        (r#"{"type":"next","id":"1","payload":{"data":{}}}"#, "next"),
        (r#"{"type":"subscribe","id":"1"}"#, "payload"),
        (
            r#"{"type":"subscribe","id":"","payload":{"query":"{ __typename }"}}"#,
            "id",
        ),
        (
            r#"{"type":"subscribe","id":"1","payload":{"query":"{ __typename }","variables":[1]}}"#,
            "variables",
        ),
        (r#"{"type":"complete"}"#, "id"),
        (r#"{"type":"ping","payload":"hi"}"#, "payload"),
    ];
    for (text, mentions) in cases {
        let mut ws = Raw::ready(&server.ws_url, TRANSPORT).await;
        ws.send_text(text).await;
        let (code, reason) = ws.closed().await;
        assert_eq!(code, 4400, "{text}: {reason}");
        assert!(reason.contains(mentions), "{text}: {reason}");
    }
    // Before `connection_init` too.
    let mut ws = Raw::connect(&server.ws_url, TRANSPORT).await;
    ws.send_text("\"connection_init\"").await;
    assert_eq!(ws.closed().await.0, 4400);
}

#[tokio::test]
async fn no_connection_init_in_time_closes_4408() {
    let server =
        TestServer::start_with(|c| c.websocket.init_timeout = Duration::from_millis(100)).await;
    let mut ws = Raw::connect(&server.ws_url, TRANSPORT).await;
    assert_eq!(
        ws.closed().await,
        (4408, "Connection initialisation timeout".into())
    );

    // An acknowledged connection outlives the timeout.
    let mut ws = Raw::ready(&server.ws_url, TRANSPORT).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    ws.send(json!({"type": "ping"})).await;
    assert_eq!(ws.recv().await, json!({"type": "pong"}));
}

#[tokio::test]
async fn a_second_connection_init_closes_4429() {
    let server = TestServer::start().await;
    let mut ws = Raw::ready(&server.ws_url, TRANSPORT).await;
    ws.send(json!({"type": "connection_init"})).await;
    assert_eq!(
        ws.closed().await,
        (4429, "Too many initialisation requests".into())
    );
}

#[tokio::test]
async fn ping_and_pong_both_ways() {
    let server = TestServer::start_with(|c| {
        c.websocket.keepalive_interval = Duration::from_millis(50);
    })
    .await;
    let mut ws = Raw::ready(&server.ws_url, TRANSPORT).await;

    // Client → server: the pong echoes the payload.
    ws.send(json!({"type": "ping", "payload": {"at": 1}})).await;
    loop {
        let message = ws.recv_any().await;
        if message["type"] == "pong" {
            assert_eq!(message, json!({"type": "pong", "payload": {"at": 1}}));
            break;
        }
        assert_eq!(
            message,
            json!({"type": "ping"}),
            "only server pings may come first"
        );
    }

    // Server → client: pings keep coming, and pongs (even unsolicited ones) are fine.
    for _ in 0..2 {
        assert_eq!(ws.recv_any().await, json!({"type": "ping"}));
        ws.send(json!({"type": "pong"})).await;
    }
    ws.send(json!({"type": "pong", "payload": {"heartbeat": true}}))
        .await;
    ws.send(json!({"type": "ping"})).await;
    assert_eq!(ws.recv().await, json!({"type": "pong"}));
}

#[tokio::test]
async fn complete_from_the_client_stops_its_subscription() {
    let server = TestServer::start().await;
    let mut ws = Raw::ready(&server.ws_url, TRANSPORT).await;
    ws.subscribe("a", EVENTS, json!({"after": head(&server).await}))
        .await;
    let first = create_template(&server, "t1").await;
    assert_eq!(ws.next_data("a").await["events"]["sequence"], first);

    ws.send(json!({"type": "complete", "id": "a"})).await;
    // A second subscription, from the same point, sees the next two events;
    // had "a" survived, its copy of the first would have come before the second.
    ws.subscribe("b", EVENTS, json!({"after": first})).await;
    let second = create_template(&server, "t2").await;
    assert_eq!(ws.next_data("b").await["events"]["sequence"], second);
    let third = create_template(&server, "t3").await;
    assert_eq!(ws.next_data("b").await["events"]["sequence"], third);

    // Completing an unknown or finished id is not an error, and the id is free again.
    ws.send(json!({"type": "complete", "id": "a"})).await;
    ws.send(json!({"type": "complete", "id": "never"})).await;
    ws.subscribe("a", EVENTS, json!({"after": second})).await;
    assert_eq!(ws.next_data("a").await["events"]["sequence"], third);
}

#[tokio::test]
async fn operations_end_with_complete_and_failures_with_error() {
    let server = TestServer::start().await;
    let mut ws = Raw::ready(&server.ws_url, TRANSPORT).await;

    // A query: one `next`, then `complete`.
    ws.subscribe("q", "{ templates { totalCount } }", json!({}))
        .await;
    assert_eq!(ws.next_data("q").await["templates"]["totalCount"], 0);
    assert_eq!(ws.recv().await, json!({"type": "complete", "id": "q"}));

    // Rejected before execution: `error` with GraphQL errors, no `complete`,
    // and the id is free at once.
    ws.subscribe("bad", "subscription { nope }", json!({}))
        .await;
    let error = ws.recv().await;
    assert_eq!(
        (error["type"].as_str(), error["id"].as_str()),
        (Some("error"), Some("bad")),
        "{error}"
    );
    assert!(
        error["payload"][0]["message"]
            .as_str()
            .unwrap()
            .contains("nope"),
        "{error}"
    );

    // A subscription its root field refuses (a bad argument): `error` with
    // the field's coded error, no `complete`, and the id is free at once.
    ws.subscribe("bad", EVENTS, json!({"after": "not a sequence"}))
        .await;
    let error = ws.recv().await;
    assert_eq!(
        (error["type"].as_str(), error["id"].as_str()),
        (Some("error"), Some("bad")),
        "{error}"
    );
    assert_eq!(
        error["payload"][0]["extensions"]["code"], "BAD_USER_INPUT",
        "{error}"
    );
    assert_eq!(error["payload"][0]["path"], json!(["events"]), "{error}");

    // A mutation that fails is answered, not refused: `next` with the error,
    // then `complete` (the field's error has the same one-segment path).
    let unknown = "01940000-0000-7000-8000-000000000000";
    ws.subscribe(
        "bad",
        "mutation($id: ID!) { startVm(id: $id) { vm { id } } }",
        json!({"id": unknown}),
    )
    .await;
    let next = ws.recv().await;
    assert_eq!(next["type"], "next", "{next}");
    assert_eq!(
        next["payload"]["errors"][0]["extensions"]["code"], "NOT_FOUND",
        "{next}"
    );
    assert_eq!(ws.recv().await, json!({"type": "complete", "id": "bad"}));
}

#[tokio::test]
async fn results_keep_the_selection_order_in_every_event() {
    let server = TestServer::start().await;
    server.create_template("tiny").await;
    let vm = server.create_vm("web-1", "tiny").await;
    let after = head(&server).await;
    let mut ws = Raw::ready(&server.ws_url, TRANSPORT).await;
    // Not alphabetical, nor the schema's order, and `vm` (a database read)
    // first: async-graphql alone puts it wherever its read completes.
    ws.subscribe(
        "o",
        "subscription($vm: ID, $after: String) { vmStateChanged(vmId: $vm, after: $after) { vm { name id } to sequence from reason } }",
        json!({"vm": vm, "after": after}),
    )
    .await;
    server.start_vm(&vm).await;
    server.stop_vm(&vm).await;
    let first: u64 = after.parse::<u64>().unwrap() + 1;
    let moves = [
        ("STOPPED", "STARTING", "start requested"),
        ("STARTING", "RUNNING", "started"),
        ("RUNNING", "STOPPING", "forced stop requested"),
        ("STOPPING", "STOPPED", "stopped by QEMU quit"),
    ];
    for (sequence, (from, to, reason)) in (first..).zip(moves) {
        assert_eq!(
            ws.recv_text().await,
            format!(
                r#"{{"type":"next","id":"o","payload":{{"data":{{"vmStateChanged":{{"vm":{{"name":"web-1","id":"{vm}"}},"to":"{to}","sequence":"{sequence}","from":"{from}","reason":"{reason}"}}}}}}}}"#
            )
        );
    }

    // The same over HTTP.
    let text = server
        .http
        .post(&server.url)
        .json(&json!({
            "query": "query($id: ID) { vm(id: $id) { disks { name } coherenceIssues { kind } state name } }",
            "variables": {"id": vm},
        }))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        text,
        r#"{"data":{"vm":{"disks":[{"name":"web-1-root"}],"coherenceIssues":[],"state":"STOPPED","name":"web-1"}}}"#
    );
}

#[tokio::test]
async fn an_after_beyond_the_journal_head_is_refused_with_the_head() {
    let server = TestServer::start().await;
    let head = create_template(&server, "tiny").await;
    assert_eq!(head, "1");
    let ahead = "42";

    // The `events` query.
    let response = server
        .post(
            "query($after: String) { events(after: $after) { nodes { sequence } } }",
            json!({"after": ahead}),
        )
        .await;
    let error = &response["errors"][0];
    assert_eq!(error["extensions"]["code"], "CURSOR_AHEAD", "{response}");
    assert_eq!(error["extensions"]["head"], "1", "{response}");
    assert_eq!(error["path"], json!(["events"]), "{response}");
    let message = error["message"].as_str().unwrap();
    assert!(
        message.contains("\"42\"") && message.contains("last sequence is 1"),
        "{message}"
    );
    // The head itself is a cursor the journal has reached: an empty page.
    let page = server
        .ok(
            "query($after: String) { events(after: $after) { nodes { sequence } } }",
            json!({"after": head}),
        )
        .await;
    assert_eq!(page["events"]["nodes"], json!([]));

    // Every subscription that takes `after`, on both protocols: an `error`
    // for the operation, nothing more, and the id is free again.
    let subscriptions = [
        ("events", EVENTS),
        (
            "vmStateChanged",
            "subscription($after: String) { vmStateChanged(after: $after) { sequence } }",
        ),
        (
            "coherenceIssues",
            "subscription($after: String) { coherenceIssues(after: $after) { sequence } }",
        ),
    ];
    let mut ws = Raw::ready(&server.ws_url, TRANSPORT).await;
    for (field, query) in subscriptions {
        ws.subscribe("s", query, json!({"after": ahead})).await;
        let error = ws.recv().await;
        assert_eq!(
            (error["type"].as_str(), error["id"].as_str()),
            (Some("error"), Some("s")),
            "{field}: {error}"
        );
        let refusal = &error["payload"][0];
        assert_eq!(refusal["extensions"]["code"], "CURSOR_AHEAD", "{error}");
        assert_eq!(refusal["extensions"]["head"], "1", "{error}");
        assert_eq!(refusal["path"], json!([field]), "{error}");
    }
    // The same id subscribes again (4409 if it were still running), at the
    // head: it gets what commits next, and nothing came in between.
    ws.subscribe("s", EVENTS, json!({"after": head})).await;
    let sequence = create_template(&server, "t2").await;
    assert_eq!(ws.next_data("s").await["events"]["sequence"], sequence);

    let mut legacy = Raw::connect(&server.ws_url, LEGACY).await;
    legacy
        .send(json!({"type": "connection_init", "payload": {}}))
        .await;
    assert_eq!(legacy.recv().await["type"], "connection_ack");
    legacy
        .send(json!({"type": "start", "id": "1", "payload": {
            "query": EVENTS, "variables": {"after": ahead},
        }}))
        .await;
    let error = legacy.recv().await;
    assert_eq!(
        (error["type"].as_str(), error["id"].as_str()),
        (Some("error"), Some("1")),
        "{error}"
    );
    assert_eq!(error["payload"]["extensions"]["code"], "CURSOR_AHEAD");
    assert_eq!(error["payload"]["extensions"]["head"], "2");
}

#[tokio::test]
async fn the_legacy_graphql_ws_protocol_works_end_to_end() {
    let server = TestServer::start().await;
    server.create_template("tiny").await;
    let vm = server.create_vm("web-1", "tiny").await;

    let mut ws = Raw::connect(&server.ws_url, LEGACY).await;
    ws.send(json!({"type": "connection_init", "payload": {}}))
        .await;
    assert_eq!(ws.recv_any().await, json!({"type": "connection_ack"}));
    assert_eq!(
        ws.recv_any().await,
        json!({"type": "ka"}),
        "ka right after the ack"
    );

    ws.send(json!({"type": "start", "id": "1", "payload": {
        "query": "subscription($vm: ID, $after: String) { vmStateChanged(vmId: $vm, after: $after) { vmId from to } }",
        "variables": {"vm": vm, "after": head(&server).await},
    }}))
    .await;
    let started = server.start_vm(&vm).await;
    assert_eq!(started["startVm"]["vm"]["state"], "RUNNING");
    for (from, to) in [("STOPPED", "STARTING"), ("STARTING", "RUNNING")] {
        let data = ws.recv().await;
        assert_eq!(
            (data["type"].as_str(), data["id"].as_str()),
            (Some("data"), Some("1")),
            "{data}"
        );
        let change = &data["payload"]["data"]["vmStateChanged"];
        assert_eq!(change["vmId"], vm.as_str());
        assert_eq!(
            (change["from"].as_str(), change["to"].as_str()),
            (Some(from), Some(to))
        );
    }
    ws.send(json!({"type": "stop", "id": "1"})).await;
    assert_eq!(ws.recv().await, json!({"type": "complete", "id": "1"}));

    // A message it cannot read is answered with `connection_error`; the socket stays.
    ws.send_text("{oops").await;
    let error = ws.recv().await;
    assert_eq!(error["type"], "connection_error", "{error}");
    assert!(error["payload"]["message"].is_string(), "{error}");

    // Queries: `data` then `complete`; a rejected one gets `error`.
    ws.send(json!({"type": "start", "id": "2", "payload": {
        "query": "query($id: ID) { vm(id: $id) { state } }", "variables": {"id": vm},
    }}))
    .await;
    let data = ws.recv().await;
    assert_eq!(data["type"], "data", "{data}");
    assert_eq!(data["payload"]["data"]["vm"]["state"], "RUNNING");
    assert_eq!(ws.recv().await, json!({"type": "complete", "id": "2"}));
    ws.send(json!({"type": "start", "id": "3", "payload": {"query": "{ nope }"}}))
        .await;
    let error = ws.recv().await;
    assert_eq!(
        (error["type"].as_str(), error["id"].as_str()),
        (Some("error"), Some("3")),
        "{error}"
    );
    assert!(
        error["payload"]["message"]
            .as_str()
            .unwrap()
            .contains("nope"),
        "{error}"
    );

    ws.send(json!({"type": "connection_terminate"})).await;
    assert_eq!(ws.closed().await.0, 1000);
}

#[tokio::test]
async fn operations_per_connection_are_limited() {
    let server = TestServer::start_with(|c| c.websocket.max_subscriptions = 2).await;
    let mut ws = Raw::ready(&server.ws_url, TRANSPORT).await;
    let after = json!({"after": head(&server).await});
    ws.subscribe("a", EVENTS, after.clone()).await;
    ws.subscribe("b", EVENTS, after.clone()).await;
    ws.subscribe("c", EVENTS, after.clone()).await;
    let error = ws.recv().await;
    assert_eq!(
        (error["type"].as_str(), error["id"].as_str()),
        (Some("error"), Some("c")),
        "{error}"
    );
    assert_eq!(
        error["payload"][0]["extensions"]["code"], "TOO_MANY_SUBSCRIPTIONS",
        "{error}"
    );

    // The connection and its two subscriptions carry on; freeing one makes room.
    ws.send(json!({"type": "complete", "id": "a"})).await;
    ws.subscribe("c", EVENTS, after).await;
    let sequence = create_template(&server, "t1").await;
    let mut ids = Vec::new();
    for _ in 0..2 {
        let next = ws.recv().await;
        assert_eq!(next["type"], "next", "{next}");
        assert_eq!(next["payload"]["data"]["events"]["sequence"], sequence);
        ids.push(next["id"].as_str().unwrap().to_string());
    }
    ids.sort();
    assert_eq!(ids, ["b", "c"]);
}

#[tokio::test]
async fn a_client_that_does_not_read_loses_its_subscription_with_a_resume_point() {
    let (server, fields) = common::server_for_slow_readers(Duration::from_millis(100)).await;
    let query = format!(
        "subscription($after: String) {{ events(after: $after) {{ sequence kind{fields} }} }}"
    );

    let before = vman::api::ws::lagged_total();
    let (mut ws, _) = Raw::connect_with(&server.ws_url, TRANSPORT, Some(4096)).await;
    ws.init().await;
    ws.subscribe("slow", &query, json!({"after": "0"})).await;
    // Not reading, while events keep coming: the server must give up on this
    // subscriber rather than buffer them all. Events are made in batches
    // until it does, so no particular kernel buffer size is assumed.
    let mut made = 0;
    while vman::api::ws::lagged_total() == before {
        assert!(
            made < 2000,
            "no lag after {made} events: results are being buffered"
        );
        for _ in 0..25 {
            server.create_template(&format!("t{made}")).await;
            made += 1;
        }
    }
    // (No other test in this binary makes a subscriber lag, so the
    // process-wide counter moved for this socket.)

    // What was queued before the lag arrives in order, then the error.
    let mut delivered = Vec::new();
    let error = loop {
        let message = ws.recv().await;
        match message["type"].as_str() {
            Some("next") => delivered.push(
                message["payload"]["data"]["events"]["sequence"]
                    .as_str()
                    .unwrap()
                    .parse::<usize>()
                    .unwrap(),
            ),
            _ => break message,
        }
    };
    assert_eq!(
        (error["type"].as_str(), error["id"].as_str()),
        (Some("error"), Some("slow")),
        "{error}"
    );
    assert!(
        delivered.len() < made,
        "the server dropped the subscriber instead of buffering all {made} results"
    );
    assert_eq!(
        delivered,
        (1..=delivered.len()).collect::<Vec<_>>(),
        "in order, no gap"
    );
    let last = delivered
        .last()
        .expect("some results were delivered")
        .to_string();
    let message = error["payload"][0]["message"].as_str().unwrap();
    assert!(message.contains("lagged"), "{message}");
    assert!(
        message.contains(&format!("events(after: \"{last}\")")),
        "{message}"
    );
    assert_eq!(error["payload"][0]["extensions"]["code"], "LAGGED");
    assert_eq!(error["payload"][0]["extensions"]["after"], last.as_str());

    // Resuming where it says continues without a gap, on the same id, and a
    // client that reads gets the whole backlog through the same small buffer.
    ws.subscribe("slow", EVENTS, json!({"after": last})).await;
    for sequence in delivered.len() + 1..=made {
        let resumed = ws.next_data("slow").await;
        assert_eq!(resumed["events"]["sequence"], sequence.to_string());
    }
}

#[tokio::test]
async fn an_oversized_message_closes_1009() {
    let server = TestServer::start().await;
    let mut ws = Raw::ready(&server.ws_url, TRANSPORT).await;
    let query = format!("{{ __typename }} #{}", "x".repeat(2 << 20));
    ws.subscribe("big", &query, json!({})).await;
    assert_eq!(ws.closed().await.0, 1009);
}

#[tokio::test]
async fn shutdown_closes_sockets_with_1001() {
    let server = TestServer::start().await;
    let mut transport = Raw::ready(&server.ws_url, TRANSPORT).await;
    transport.subscribe("a", EVENTS, json!({})).await;
    let mut legacy = Raw::connect(&server.ws_url, LEGACY).await;
    server.app.ctx.cancel.cancel();
    assert_eq!(transport.closed().await.0, 1001);
    assert_eq!(legacy.closed().await.0, 1001);
}
