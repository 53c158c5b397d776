//! Interop with two ordinary GraphQL clients over a real port: the npm
//! `graphql-ws` client (everything over the websocket) and Apollo Client
//! (HttpLink + GraphQLWsLink) each run a query, createTemplate and createVm,
//! and receive the vmStateChanged pushes of a startVm (`tests/js/clients.mjs`).
//! Needs `npm ci --prefix tests/js` (the test command does it).

mod common;

use std::process::Command;

#[tokio::test]
async fn graphql_ws_and_apollo_clients_query_mutate_and_subscribe() {
    let js = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/js");
    for package in ["graphql-ws", "@apollo/client", "ws"] {
        assert!(
            std::path::Path::new(js)
                .join("node_modules")
                .join(package)
                .is_dir(),
            "tests/js/node_modules/{package} is missing: run `make deps` (or `npm ci --prefix tests/js`)"
        );
    }
    let server = common::TestServer::start().await;
    let (url, ws_url) = (server.url.clone(), server.ws_url.clone());
    let output = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg(format!("{js}/clients.mjs"))
            .arg(url)
            .arg(ws_url)
            .output()
            .expect("node runs")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    println!("{stdout}");
    assert!(
        output.status.success(),
        "clients.mjs failed ({}):\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}
