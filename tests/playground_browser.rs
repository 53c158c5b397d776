//! The playground as the binary serves it, in headless Chromium: loads at `/`
//! without a single request leaving loopback, runs a query and shows its
//! result, and shows a vmStateChanged push caused by a mutation made over
//! HTTP from outside the page (`tests/js/playground.mjs`).
//!
//! Needs the system Chromium (`/usr/bin/chromium`, Debian package
//! `chromium`), `npm ci --prefix tests/js` and the built playground: `make
//! deps` does all three. A missing Chromium fails the test, it is not skipped.

mod common;

use std::{path::Path, process::Command};

const CHROMIUM: &str = "/usr/bin/chromium";

#[tokio::test]
async fn playground_runs_a_query_and_shows_a_subscription_push_in_chromium() {
    let root = env!("CARGO_MANIFEST_DIR");
    let js = format!("{root}/tests/js");
    assert!(
        Path::new(CHROMIUM).is_file(),
        "{CHROMIUM} is missing: run `make deps` (scripts/install-deps.sh installs the Debian package chromium; CI does this)"
    );
    assert!(
        Path::new(&js).join("node_modules/playwright-core").is_dir(),
        "tests/js/node_modules/playwright-core is missing: run `make deps` (or `npm ci --prefix tests/js`)"
    );
    assert!(
        Path::new(root).join("playground/dist/index.html").is_file(),
        "playground/dist is not built: run `make deps` (it builds the playground)"
    );
    // Screenshots: removed after a pass, kept (and named) after a failure.
    let shots = tempfile::Builder::new()
        .prefix("vman-playground-shots-")
        .tempdir()
        .expect("temp dir");
    let server = common::TestServer::start().await;
    let url = server.url.clone();
    let shots_dir = shots.path().to_owned();
    let output = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg(format!("{js}/playground.mjs"))
            .arg(url)
            .env("CHROMIUM", CHROMIUM)
            .env("SHOTS", shots_dir)
            .output()
            .expect("node runs")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    println!("{stdout}");
    if !output.status.success() {
        let kept = shots.keep();
        panic!(
            "playground.mjs failed ({}); screenshots kept in {}:\n{stdout}\n{}",
            output.status,
            kept.display(),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}
