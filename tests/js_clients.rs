//! Interop with two ordinary GraphQL clients over a real port: the npm
//! `graphql-ws` client (everything over the websocket) and Apollo Client
//! (HttpLink + GraphQLWsLink) each run a query, createTemplate and createVm,
//! and receive the vmStateChanged pushes of a startVm (`tests/js/clients.mjs`),
//! over http and ws, and over https and wss with a test CA that node trusts
//! through `NODE_EXTRA_CA_CERTS`.
//! Needs `npm ci --prefix tests/js` (the test command does it).

mod common;

const JS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/js");

/// Runs `clients.mjs` against `server` (with `env` added): its exit status
/// and its output.
async fn clients(
    server: &common::TestServer,
    env: Vec<(&'static str, std::path::PathBuf)>,
) -> (std::process::ExitStatus, String) {
    for package in ["graphql-ws", "@apollo/client", "ws"] {
        assert!(
            std::path::Path::new(JS)
                .join("node_modules")
                .join(package)
                .is_dir(),
            "tests/js/node_modules/{package} is missing: run `make deps` (or `npm ci --prefix tests/js`)"
        );
    }
    let env = env
        .into_iter()
        .map(|(key, value)| (key.to_string(), value.display().to_string()))
        .collect();
    let args = vec![server.url.clone(), server.ws_url.clone()];
    let output = common::node("clients.mjs", args, env).await;
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status, text)
}

/// Runs `clients.mjs` and fails the test unless every check passed.
async fn run_clients(server: &common::TestServer, env: Vec<(&'static str, std::path::PathBuf)>) {
    let (status, output) = clients(server, env).await;
    println!("{output}");
    assert!(status.success(), "clients.mjs failed ({status}):\n{output}");
}

#[tokio::test]
async fn graphql_ws_and_apollo_clients_query_mutate_and_subscribe() {
    let server = common::TestServer::start().await;
    run_clients(&server, Vec::new()).await;
}

#[tokio::test]
async fn the_same_clients_over_https_and_wss() {
    let ca = common::tls::TestCa::new("vman");
    let server = common::TestServer::start_tls(&ca).await;
    assert!(server.url.starts_with("https://"), "{}", server.url);
    assert!(server.ws_url.starts_with("wss://"), "{}", server.ws_url);
    // Node trusts its built-in roots and this CA.
    run_clients(&server, vec![("NODE_EXTRA_CA_CERTS", ca.ca_file.clone())]).await;

    // Trusting another CA instead, both clients fail at the handshake.
    let stranger = common::tls::TestCa::new("stranger");
    let (status, output) = clients(
        &server,
        vec![("NODE_EXTRA_CA_CERTS", stranger.ca_file.clone())],
    )
    .await;
    println!("{output}");
    assert!(
        !status.success()
            && output.contains("unable to verify the first certificate")
            && output.contains("0 passed, 2 failed"),
        "{output}"
    );
}
