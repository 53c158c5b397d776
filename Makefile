# The commands of the README: `make run`, `make test` and `make coverage`.
SHELL := /bin/bash
.DEFAULT_GOAL := run
.PHONY: run test coverage deps guest lint schema

# Install what is missing, build, and serve on 127.0.0.1:8080 (playground at /).
# Runs in dry-run mode only when QEMU is truly absent. The `quick` profile
# (Cargo.toml) is release without whole-program optimisation: minutes shorter
# to build; `cargo build --release` makes the binary to ship (and benchmark).
run: deps
	cargo build --profile quick
	./target/quick/vman serve $$(command -v qemu-system-x86_64 >/dev/null || echo --dry-run)

# The test files run a second time on PostgreSQL (VMANTEST_DATABASE=postgres:
# each test server on a fresh database of its own, each `vman` process a test
# starts on the database of its data directory). Left out: backup (`vman
# backup`, `restore` and `doctor` are SQLite's file only; on PostgreSQL they
# refuse, pg_dump's job), database_busy (SQLite's write lock and busy
# timeout), full_disk (fills the filesystem under SQLite's file), query_plans
# (SQLite's EXPLAIN QUERY PLAN); cluster and postgres (PostgreSQL already, in
# the first pass); docs_drift, network_plan, playground_bundle, qemu_argv (no
# database).
POSTGRES_TESTS := api_scenario api_bad_input api_pages_and_readiness api_concurrency \
	api_graph api_limits api_disk_lifecycle auth auth_cli batched_loading cli_client \
	cloud_init console_api console_guest dashboard_browser graphql_http_audit \
	host_failures image_download install_media js_clients metrics mutations_succeed \
	network_guests network_host observer_sweep playground_browser qemu_guest qemu_host \
	qmp_reconnect readme_walkthrough schema_and_cli snapshots stats tls vm_clone \
	vm_update ws_protocol ws_shared

# The whole test suite: format, lints, and every test, real QEMU and real
# guests included (CI runs exactly this), inside a throwaway PostgreSQL cluster
# (scripts/pg-test-cluster.sh); then POSTGRES_TESTS again on PostgreSQL. Slow real-guest tests run alone with `cargo test --test qemu_guest`.
test: deps guest lint
	./scripts/pg-test-cluster.sh run bash -c '\
	  status=0; \
	  cargo test --workspace --lib --bins --tests --no-fail-fast || status=1; \
	  VMANTEST_DATABASE=postgres cargo test --no-fail-fast $(POSTGRES_TESTS:%=--test %) || status=1; \
	  exit $$status'

# Line coverage of src/ by the same tests, one row per file and the total
# (cargo-llvm-cov, installed on first use; its own target directory, so a
# first run rebuilds everything instrumented). HTML in target/llvm-cov/html.
coverage: deps guest
	./scripts/install-coverage.sh
	./scripts/coverage.sh

deps:
	./scripts/install-deps.sh

# The tiny Linux guest the real-QEMU tests boot (target/vman-guest).
guest:
	./tests/guest/build.sh

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

# Regenerate schema.graphql after changing the schema; review the diff (the
# CLI's typed documents are built against the file, so it is replaced only
# once the new one is printed, never read half-written). Then
# lint it: every type, field, argument and value needs a description
# (tests/docs_drift.rs runs the same check in `make test`). The dashboard's
# introspection (playground/src/dashboard/graphql-env.d.ts, gql.tada) is
# written again from it: commit it with the schema.
schema:
	cargo run --quiet -- schema > schema.graphql.new
	mv schema.graphql.new schema.graphql
	npm run --silent --prefix tests/js schema-lint
	npm run --silent --prefix playground typegen
