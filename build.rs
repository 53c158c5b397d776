//! Rebuilds vman when the playground bundle changes, whatever the order of
//! builds.
//!
//! Without debug assertions (`--release`, `--profile quick`, `cargo bench`),
//! rust-embed puts `playground/dist` into the binary (`src/playground.rs`).
//! Its derive `include_bytes!`s each file it finds, so cargo sees a change to
//! one of those files, but not a file added or removed, nor the folder
//! appearing after a build made without it: such a binary kept serving the
//! old bundle, or "the playground is not built", until some Rust file
//! changed. Watching the folder closes that: cargo scans it whole (every
//! file's and directory's mtime) before each build, and reruns this script,
//! and so recompiles vman, when anything in it is newer than the last run.
//! A missing folder counts as changed at every build (so a build made before
//! the bundle existed is never kept), and says so in a warning.
//!
//! Debug builds (tests, `cargo run`) read the folder from disk at run time:
//! nothing to watch, and nothing rebuilt when the bundle changes.

use std::path::Path;

const BUNDLE: &str = "playground/dist";

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    // Set for the crate being built (not for this script), exactly when
    // rust-embed reads from disk instead of embedding.
    if std::env::var_os("CARGO_CFG_DEBUG_ASSERTIONS").is_some() {
        return;
    }
    println!("cargo::rerun-if-changed={BUNDLE}");
    if !Path::new(BUNDLE).join("index.html").is_file() {
        println!(
            "cargo::warning={BUNDLE} is not built: this vman serves no playground. \
             `make deps` (or `npm ci && npm run build` in playground/) builds it, \
             and the next cargo build embeds it"
        );
    }
}
