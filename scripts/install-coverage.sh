#!/usr/bin/env bash
# Installs what `make coverage` needs (cargo-llvm-cov and LLVM's tools for
# the Rust toolchain), and nothing when it is all there. `make test` does
# not use it.
set -euo pipefail

say() { printf 'install-coverage: %s\n' "$*"; }

if ! rustup component list --installed 2>/dev/null | grep -q '^llvm-tools'; then
  say "adding the Rust component llvm-tools-preview"
  rustup component add llvm-tools-preview
fi
if ! cargo llvm-cov --version >/dev/null 2>&1; then
  say "installing cargo-llvm-cov from crates.io (a few minutes)"
  cargo install cargo-llvm-cov --locked
fi
say "ok ($(cargo llvm-cov --version))"
