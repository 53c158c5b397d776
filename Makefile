# The two commands of the README: `make run` and `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := run
.PHONY: run test deps guest lint schema

# Install what is missing, build, and serve on 127.0.0.1:8080 (playground at /).
# Runs in dry-run mode only when QEMU is truly absent.
run: deps
	cargo build --release
	./target/release/vman serve $$(command -v qemu-system-x86_64 >/dev/null || echo --dry-run)

# The whole test suite: format, lints, and every test, real QEMU and real
# guests included (CI runs exactly this). Slow real-guest tests run alone with
# `cargo test --test qemu_guest`.
test: deps guest lint
	cargo test --workspace --lib --bins --tests --no-fail-fast

deps:
	./scripts/install-deps.sh

# The tiny Linux guest the real-QEMU tests boot (target/vman-guest).
guest:
	./tests/guest/build.sh

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

# Regenerate schema.graphql after changing the schema; review the diff. Then
# lint it: every type, field, argument and value needs a description
# (tests/docs_drift.rs runs the same check in `make test`).
schema:
	cargo run --quiet -- schema > schema.graphql
	npm run --silent --prefix tests/js schema-lint
