//! The dashboard (`/dashboard`) in headless Chromium against a real `vman
//! serve`, real QEMU and the test guest under TCG (`tests/js/dashboard.mjs`,
//! which starts vman itself so it can SIGKILL and restart it on the same
//! port): a VM created and started through the API turns RUNNING in the
//! table within 1 s; its serial terminal takes `echo hi` and shows `hi`; a
//! Start click starts a VM; a SIGKILLed QEMU shows CRASHED within 1 s; vman
//! killed shows "reconnecting", and restarted, the page resumes and shows
//! what happened meanwhile; a full clone's progress bar on the clone's page
//! moves as `operationProgress` pushes, with no query sent meanwhile (no
//! polling); no request leaves the vman origin. With
//! `auth.mode = "token"` (dry run): the page asks for a token, and with a
//! viewer's it follows VMs live; a viewer's Start click shows FORBIDDEN.
//!
//! `docs/dashboard.png` and `docs/dashboard-vm.png` are its screenshots:
//! `DASHBOARD_DOCS_SHOTS=$PWD/docs cargo test --test dashboard_browser`
//! takes them again (then `pngquant --quality=60-90 --strip --force --ext
//! .png docs/dashboard*.png` to shrink them).
//!
//! Slow (a guest boots under TCG). Needs what `tests/playground_browser.rs`
//! needs (`make deps`) and the test guest (`make guest`).

mod common;

use std::path::Path;

/// One walk at a time: the real-QEMU walk boots a guest under TCG (a whole
/// core) and drives a Chromium of its own, and the token walk's 1 s bound
/// should not depend on it (the token walk failed 3 times in about 20 runs
/// while both ran at once, each time right after a build).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test]
async fn the_dashboard_follows_vms_live_runs_their_console_and_survives_a_vman_restart() {
    let _serial = SERIAL.lock().await;
    assert!(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("playground/dist/dashboard.html")
            .is_file(),
        "the dashboard is not built: run `make deps` (it builds playground/)"
    );
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // QEMU outlives vman by design: end this test's VMs however it ends.
    struct EndVms(std::path::PathBuf);
    impl Drop for EndVms {
        fn drop(&mut self) {
            common::kill_vms_under(&self.0);
        }
    }
    let _end = EndVms(data.join("run"));
    let args = vec![
        env!("CARGO_BIN_EXE_vman").to_string(),
        data.display().to_string(),
        common::free_port().to_string(),
        common::guest_dir().display().to_string(),
    ];
    // dashboard.mjs hands its environment to the vman it starts: on
    // PostgreSQL, the data directory's database (the same after the restart).
    let env = common::database_env(&data)
        .into_iter()
        .map(|(key, value)| (key.to_string(), value))
        .collect();
    common::run_browser_script("dashboard.mjs", args, env).await;
}

#[tokio::test]
async fn the_dashboard_asks_for_a_token_and_uses_it_on_http_and_the_websocket() {
    let _serial = SERIAL.lock().await;
    let (server, tokens) = common::TestServer::with_tokens(|_| {}).await;
    let env = vec![
        ("DASHBOARD_ADMIN_TOKEN".to_string(), tokens.admin.clone()),
        ("DASHBOARD_VIEWER_TOKEN".to_string(), tokens.viewer.clone()),
    ];
    common::run_browser_script("dashboard.mjs", vec![server.url.clone()], env).await;
}
