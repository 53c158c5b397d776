//! Live subscriptions that many connections make alike, on a real port:
//! every subscriber gets the same events in order under its own id, whatever
//! its subprotocol; different variables get their own results; a subscriber
//! that stops reading is dropped with its resume point while the others of
//! its document carry on (`api::ws::hub`).

mod common;

use std::time::Duration;

use common::{TestServer, WAIT, WsClient};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpSocket;
use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest, http::HeaderValue};

const EVENTS: &str = "subscription { events { sequence kind subjectId } }";

/// The next message that is not a keepalive (`ka`, or a server `ping`,
/// which `WsClient` answers).
async fn next(client: &mut WsClient) -> Value {
    loop {
        let message = client.next_message().await;
        if message["type"] != "ka" {
            return message;
        }
    }
}

/// Subscribes `client` to `query` as `id` on `protocol` and waits until the
/// server has handled it: a query sent after it is answered.
async fn subscribe(client: &mut WsClient, protocol: &str, id: &str, query: &str, variables: Value) {
    let start = match protocol {
        "graphql-ws" => "start",
        _ => "subscribe",
    };
    client
        .send(json!({"type": start, "id": id, "payload": {"query": query, "variables": variables}}))
        .await;
    client
        .send(json!({"type": start, "id": "joined", "payload": {"query": "{ __typename }"}}))
        .await;
    let answer = next(client).await;
    assert_eq!(answer["id"], "joined", "{answer}");
    assert_eq!(
        next(client).await,
        json!({"type": "complete", "id": "joined"})
    );
}

/// A result's `sequence` (under its root field `field`).
fn sequence(message: &Value, field: &str) -> u64 {
    message["payload"]["data"][field]["sequence"]
        .as_str()
        .unwrap_or_else(|| panic!("a result with a sequence: {message}"))
        .parse()
        .unwrap()
}

/// Makes events with `make` until `client`'s live subscription has one;
/// that first message. A live subscription starts at the journal's head
/// when the server first polls it, which no client can see, so what is
/// made before that is not sent: this is the one wait without an event to
/// await.
async fn first_live<F, Fut>(client: &mut WsClient, mut make: F) -> Value
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for attempt in 0..50 {
        make(attempt).await;
        if let Ok(message) = tokio::time::timeout(Duration::from_millis(200), next(client)).await {
            return message;
        }
    }
    panic!("the live subscription never started");
}

#[tokio::test]
async fn subscribers_of_one_document_get_the_same_events_in_order_under_their_own_ids() {
    let server = TestServer::start().await;
    // Six on graphql-transport-ws, two on the legacy graphql-ws.
    let protocols = [
        "graphql-transport-ws",
        "graphql-ws",
        "graphql-transport-ws",
        "graphql-transport-ws",
        "graphql-ws",
        "graphql-transport-ws",
        "graphql-transport-ws",
        "graphql-transport-ws",
    ];
    let mut clients = Vec::new();
    for (i, protocol) in protocols.iter().enumerate() {
        let mut client = WsClient::connect_protocol(&server.ws_url, protocol).await;
        subscribe(
            &mut client,
            protocol,
            &format!("sub-{i}"),
            EVENTS,
            json!({}),
        )
        .await;
        clients.push(client);
    }
    let first = first_live(&mut clients[0], |i| {
        let server = &server;
        async move {
            server.create_template(&format!("probe-{i}")).await;
        }
    })
    .await;
    let first = sequence(&first, "events");
    let mut expected: Vec<u64> = vec![first];
    for i in 0..5 {
        server.create_template(&format!("t{i}")).await;
    }
    let head: u64 = server.journal().await.last().unwrap()["sequence"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    expected.extend(first + 1..=head);
    assert!(expected.len() >= 6, "{expected:?}");

    let mut payloads: Vec<Vec<Value>> = Vec::new();
    for (i, (client, protocol)) in clients.iter_mut().zip(protocols).enumerate() {
        let kind = match protocol {
            "graphql-ws" => "data",
            _ => "next",
        };
        let mut got = Vec::new();
        // The first client's first message was read by `first_live`.
        let skip = usize::from(i == 0);
        for &expected_sequence in &expected[skip..] {
            let message = next(client).await;
            assert_eq!(message["type"], kind, "{message}");
            assert_eq!(message["id"], format!("sub-{i}"), "{message}");
            assert_eq!(sequence(&message, "events"), expected_sequence, "{message}");
            got.push(message["payload"].clone());
        }
        payloads.push(got);
    }
    // The same results, byte for byte as JSON values, for everyone.
    for got in &payloads[1..] {
        assert_eq!(got[1..], payloads[0][..], "the same payloads");
    }
}

#[tokio::test]
async fn different_variables_get_their_own_results_and_roles_each_get_theirs() {
    const CHANGES: &str =
        "subscription($vm: ID) { vmStateChanged(vmId: $vm) { vmId to sequence } }";
    let (server, tokens) = TestServer::with_tokens(|_| {}).await;
    server.create_template("tiny").await;
    let web = server.create_vm("web", "tiny").await;
    let db = server.create_vm("db", "tiny").await;
    // (token, VM); the first two share a group, the third has another role,
    // the fourth other variables.
    let subscribers = [
        (&tokens.viewer, &web),
        (&tokens.viewer, &web),
        (&tokens.admin, &web),
        (&tokens.viewer, &db),
    ];
    let mut clients = Vec::new();
    for (i, (token, vm)) in subscribers.iter().enumerate() {
        let mut client = WsClient::connect_with(
            &server.ws_url,
            "graphql-transport-ws",
            json!({"authorization": format!("Bearer {token}")}),
        )
        .await;
        subscribe(
            &mut client,
            "graphql-transport-ws",
            &format!("s{i}"),
            CHANGES,
            json!({"vm": vm}),
        )
        .await;
        clients.push(client);
    }
    // Each VM toggles until each subscriber's stream is live; what a
    // subscriber receives from then on is every later change of its VM.
    let mut firsts = Vec::new();
    for (client, (_, vm)) in clients.iter_mut().zip(subscribers) {
        let message = first_live(client, |_| {
            let server = &server;
            async move {
                match server.vm_state(vm).await.as_str() {
                    "RUNNING" => server.stop_vm(vm).await,
                    _ => server.start_vm(vm).await,
                };
            }
        })
        .await;
        firsts.push(message);
    }
    // One more change of each VM, so that every subscriber has something
    // after its first; then each has every change of its VM up to the head.
    for vm in [&web, &db] {
        if server.vm_state(vm).await == "RUNNING" {
            server.stop_vm(vm).await;
        }
        server.start_vm(vm).await;
    }
    let journal = server.journal().await;
    let changes_of = |vm: &str| -> Vec<u64> {
        journal
            .iter()
            .filter(|event| event["kind"] == "VM_STATE_CHANGED" && event["subjectId"] == vm)
            .map(|event| event["sequence"].as_str().unwrap().parse().unwrap())
            .collect()
    };
    for (i, ((client, (_, vm)), first)) in
        clients.iter_mut().zip(subscribers).zip(firsts).enumerate()
    {
        let all = changes_of(vm);
        let from = sequence(&first, "vmStateChanged");
        let expected: Vec<u64> = all.into_iter().filter(|s| *s >= from).collect();
        let mut got = vec![first];
        while got.len() < expected.len() {
            got.push(next(client).await);
        }
        for (message, expected_sequence) in got.iter().zip(&expected) {
            assert_eq!(message["id"], format!("s{i}"), "{message}");
            let change = &message["payload"]["data"]["vmStateChanged"];
            assert_eq!(change["vmId"], vm.as_str(), "{message}");
            assert_eq!(
                sequence(message, "vmStateChanged"),
                *expected_sequence,
                "{message}"
            );
        }
    }
}

/// A websocket whose kernel receive buffer is small and that stops reading
/// after the handshake and the join.
async fn stalled(
    url: &str,
    query: &str,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    let mut request = url.into_client_request().unwrap();
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static("graphql-transport-ws"),
    );
    let addr = url
        .trim_start_matches("ws://")
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(addr).await.expect("TCP connect");
    let (mut socket, _) =
        tokio_tungstenite::client_async(request, tokio_tungstenite::MaybeTlsStream::Plain(stream))
            .await
            .expect("websocket handshake");
    for message in [
        json!({"type": "connection_init"}),
        json!({"type": "subscribe", "id": "stalled", "payload": {"query": query}}),
        json!({"type": "ping"}),
    ] {
        socket
            .send(Message::text(message.to_string()))
            .await
            .unwrap();
    }
    // The ack, then the pong: the subscription has joined.
    for expected in ["connection_ack", "pong"] {
        let frame = tokio::time::timeout(WAIT, socket.next())
            .await
            .expect("in time")
            .unwrap()
            .unwrap();
        let message: Value = serde_json::from_str(frame.to_text().unwrap()).unwrap();
        assert_eq!(message["type"], expected, "{message}");
    }
    socket
}

#[tokio::test]
async fn a_stalled_subscriber_is_dropped_with_its_resume_point_and_holds_nobody_up() {
    let (server, fields) = common::server_for_slow_readers(Duration::from_millis(300)).await;
    let query = format!("subscription {{ events {{ sequence kind{fields} }} }}");

    let before = vman::api::ws::lagged_total();
    let mut stalled = stalled(&server.ws_url, &query).await;
    let mut readers = Vec::new();
    for i in 0..3 {
        let mut client = WsClient::connect(&server.ws_url).await;
        subscribe(
            &mut client,
            "graphql-transport-ws",
            &format!("r{i}"),
            &query,
            json!({}),
        )
        .await;
        readers.push(client);
    }
    let first = first_live(&mut readers[0], |i| {
        let server = &server;
        async move {
            server.create_template(&format!("probe-{i}")).await;
        }
    })
    .await;
    let first = sequence(&first, "events");
    // The readers read on, each on a task of its own, while events come.
    let mut received = Vec::new();
    for (i, mut reader) in readers.into_iter().enumerate() {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        if i == 0 {
            tx.send(first).unwrap();
        }
        tokio::spawn(async move {
            loop {
                let message = next(&mut reader).await;
                assert_eq!(message["id"], format!("r{i}"), "{message}");
                if tx.send(sequence(&message, "events")).is_err() {
                    return;
                }
            }
        });
        received.push(rx);
    }
    // Events in batches until the stalled subscriber is given up on.
    let mut made = 0;
    while vman::api::ws::lagged_total() == before {
        assert!(made < 2000, "no lag after {made} events");
        for _ in 0..25 {
            server.create_template(&format!("t{made}")).await;
            made += 1;
        }
    }
    // (No other test in this binary makes a subscriber lag.)
    for _ in 0..5 {
        server.create_template(&format!("t{made}")).await;
        made += 1;
    }
    let head: u64 = server.journal().await.last().unwrap()["sequence"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(head, first + made as u64, "nothing but the templates");
    // Every reader has every event from the first to the head, in order.
    for rx in &mut received {
        let mut got = Vec::new();
        while got.last() != Some(&head) {
            let sequence = tokio::time::timeout(WAIT, rx.recv())
                .await
                .expect("the reader carries on")
                .expect("the reader is reading");
            got.push(sequence);
        }
        assert_eq!(got, (first..=head).collect::<Vec<_>>(), "in order, no gap");
    }

    // The stalled one: what was queued before the lag, in order, then the
    // error with where to resume.
    let mut delivered = Vec::new();
    let error = loop {
        let frame = tokio::time::timeout(WAIT, stalled.next())
            .await
            .expect("in time")
            .unwrap()
            .unwrap();
        let Message::Text(text) = frame else { continue };
        let message: Value = serde_json::from_str(&text).unwrap();
        match message["type"].as_str() {
            Some("next") => delivered.push(sequence(&message, "events")),
            Some("ping") => {}
            _ => break message,
        }
    };
    assert_eq!(
        (error["type"].as_str(), error["id"].as_str()),
        (Some("error"), Some("stalled")),
        "{error}"
    );
    assert_eq!(
        error["payload"][0]["extensions"]["code"], "LAGGED",
        "{error}"
    );
    assert!(
        !delivered.is_empty() && (delivered.len() as u64) < head - first,
        "dropped, not buffered: {} of {}",
        delivered.len(),
        head - first + 1
    );
    assert_eq!(
        delivered,
        (first..first + delivered.len() as u64).collect::<Vec<_>>(),
        "in order, no gap"
    );
    let resume = delivered.last().unwrap().to_string();
    assert_eq!(error["payload"][0]["extensions"]["after"], resume.as_str());
    let message = error["payload"][0]["message"].as_str().unwrap();
    assert!(
        message.contains(&format!("events(after: \"{resume}\")")),
        "{message}"
    );
}
