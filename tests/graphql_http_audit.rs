//! The GraphQL-over-HTTP audit from the `graphql-http` npm package, run
//! against vman's real router: no error, no warning, no notice.
//! Needs `npm ci --prefix tests/js` (the test command does it).

mod common;

#[tokio::test]
async fn graphql_http_server_audits_all_pass() {
    let js = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/js");
    assert!(
        std::path::Path::new(js)
            .join("node_modules/graphql-http")
            .is_dir(),
        "tests/js/node_modules is missing: run `npm ci --prefix tests/js` (make test does)"
    );
    let server = common::TestServer::start().await;
    let output = common::node("audit.mjs", vec![server.url.clone()], Vec::new()).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    println!("{stdout}");
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
