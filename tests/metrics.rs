//! `/metrics` in Prometheus text format, parsed by a real parser, moving after a scenario.

mod common;

use common::{TestServer, WsClient};
use serde_json::json;

async fn scrape(server: &TestServer) -> prometheus_parse::Scrape {
    let url = server.url.replace("/graphql", "/metrics");
    let response = server.http.get(url).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let text = response.text().await.unwrap();
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
        .expect("valid Prometheus text")
}

/// The value of a sample with these labels (0 when absent).
fn value(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            prometheus_parse::Value::Histogram(ref buckets) => {
                buckets.last().map_or(0.0, |b| b.count)
            }
            _ => 0.0,
        })
        .sum()
}

#[tokio::test]
async fn counters_move_after_a_scenario() {
    let server = TestServer::start().await;
    let before = scrape(&server).await;
    server.create_template("tiny").await;
    let vm = server.create_vm("web-1", "tiny").await;
    server.start_vm(&vm).await;
    server.ok("{ vms { totalCount } }", json!({})).await;
    let mut ws = WsClient::connect(&server.ws_url).await;
    ws.subscribe(
        "s",
        "subscription { events(after: \"0\") { sequence } }",
        json!({}),
    )
    .await;
    ws.next_data("s").await;
    let after = scrape(&server).await;
    ws.close().await;

    let moved = |name: &str, labels: &[(&str, &str)]| {
        value(&after, name, labels) - value(&before, name, labels)
    };
    assert!(moved("vman_graphql_requests_total", &[("operation", "mutation")]) >= 3.0);
    assert!(moved("vman_graphql_requests_total", &[("operation", "query")]) >= 1.0);
    assert!(
        moved(
            "vman_operations_total",
            &[("kind", "START_VM"), ("result", "succeeded")]
        ) >= 1.0
    );
    assert!(moved("vman_events_published_total", &[]) >= 4.0);
    assert!(value(&after, "vman_vms", &[("state", "RUNNING")]) >= 1.0);
    assert!(value(&after, "vman_websocket_connections", &[]) >= 1.0);
    assert!(value(&after, "vman_websocket_operations", &[]) >= 1.0);
    assert!(
        after
            .samples
            .iter()
            .any(|s| s.metric == "vman_operation_duration_seconds_count"
                || s.metric == "vman_operation_duration_seconds")
    );
}
