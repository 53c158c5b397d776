//! The playground as the binary serves it, in headless Chromium
//! (`tests/js/playground.mjs`):
//!
//! - without auth: loads at `/` without a single request leaving loopback,
//!   says no token is needed, runs a query and shows its result, and shows a
//!   vmStateChanged push caused by a mutation made over HTTP from outside the
//!   page;
//! - with `auth.mode = "token"`: says a token is needed (in the token bar,
//!   and in the response panel after the schema fetch and a query got 401),
//!   refuses a wrong token, and with the viewer's token pasted into the bar
//!   (kept over a reload) runs a query and shows a push caused by the
//!   admin's mutation from outside; after Clear a subscription is refused
//!   (4403) at once;
//! - the saved examples (`playground/src/examples.graphql`, the README's
//!   walk): every one run from its own tab, in order, against a fresh
//!   dry-run server, each answer without errors, the subscription among them
//!   in a second browser tab showing the pushes of the steps after it; every
//!   line of every example fits the editor at 1400 px.
//!
//! `docs/playground.png` is the walk's screenshot, at its LookAtVm step:
//! `PLAYGROUND_DOCS_SHOT=$PWD/docs/playground.png cargo test --test
//! playground_browser saved_examples` takes it again; then shrink it to a
//! palette (`apt-get install pngquant`): `pngquant --quality=60-90 --strip
//! --force --output docs/playground.png docs/playground.png` (170 → 60 kB).
//!
//! Needs the system Chromium (`/usr/bin/chromium`, Debian package
//! `chromium`), `npm ci --prefix tests/js` and the built playground: `make
//! deps` does all three. A missing Chromium fails the test, it is not skipped.

mod common;

use std::path::Path;

/// Runs `tests/js/playground.mjs` against `server` with `env`.
async fn drive_playground(server: &common::TestServer, env: &[(&str, &str)]) {
    assert!(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("playground/dist/index.html")
            .is_file(),
        "playground/dist is not built: run `make deps` (it builds the playground)"
    );
    let env = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    common::run_browser_script("playground.mjs", vec![server.url.clone()], env).await;
}

#[tokio::test]
async fn playground_runs_a_query_and_shows_a_subscription_push_in_chromium() {
    let server = common::TestServer::start().await;
    drive_playground(&server, &[]).await;
}

#[tokio::test]
async fn playground_asks_for_a_token_and_sends_it_on_http_and_the_websocket() {
    let (server, tokens) = common::TestServer::with_tokens(|_| {}).await;
    drive_playground(
        &server,
        &[
            ("PLAYGROUND_ADMIN_TOKEN", &tokens.admin),
            ("PLAYGROUND_VIEWER_TOKEN", &tokens.viewer),
        ],
    )
    .await;
}

#[tokio::test]
async fn playground_runs_all_saved_examples_in_order_without_errors() {
    let server = common::TestServer::start().await;
    drive_playground(&server, &[("PLAYGROUND_WALK", "1")]).await;
}
