#!/usr/bin/env bash
# A throwaway PostgreSQL 15 cluster for the tests: initdb'd under a new
# temporary directory, served on a Unix socket in that directory only,
# trust authentication, C collation (strings sort by bytes, as SQLite's
# BINARY does). Nothing outside the directory is touched,
# and the directory is removed when the cluster stops.
#
#   pg-test-cluster.sh run CMD ARGS...   start a cluster, run CMD with
#                                        VMANTEST_POSTGRES_URL set, stop the
#                                        cluster (also when CMD fails); CMD's status
#   pg-test-cluster.sh start PID         start a cluster that stops by itself once
#                                        process PID is gone; prints its URL
#                                        (what tests/common does when
#                                        VMANTEST_POSTGRES_URL is not set)
#
# initdb refuses to run as root: as root, the cluster runs as the `postgres`
# user. The server binaries come from Debian's postgresql-15
# (scripts/install-deps.sh installs it).
set -euo pipefail

BIN=${VMAN_PG_BIN:-/usr/lib/postgresql/15/bin}
say() { printf 'pg-test-cluster: %s\n' "$*" >&2; }

if [[ ! -x $BIN/initdb ]]; then
  say "no $BIN/initdb: install postgresql-15 (scripts/install-deps.sh does)"
  exit 1
fi

as_owner() {
  if [[ $(id -u) == 0 ]]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

# Starts a cluster; sets DIR and URL.
start_cluster() {
  DIR=$(mktemp -d "${TMPDIR:-/tmp}/vman-pg.XXXXXX")
  [[ $(id -u) == 0 ]] && chown postgres: "$DIR"
  as_owner "$BIN/initdb" -D "$DIR/data" --auth=trust --username=postgres \
    --encoding=UTF8 --locale=C >"$DIR/initdb.log" 2>&1 || {
    cat "$DIR/initdb.log" >&2
    rm -rf "$DIR"
    return 1
  }
  # Only a Unix socket in the cluster's directory, no TCP: no port to find
  # free, and it is reached from the network namespaces some tests run in.
  # Each test makes a database and an app with pools of its own, several at
  # once: many connections, none of them durable (fsync off).
  if as_owner "$BIN/pg_ctl" -D "$DIR/data" -l "$DIR/server.log" -w -t 30 \
    -o "-k $DIR -c listen_addresses= -c max_connections=400 -c fsync=off -c synchronous_commit=off -c full_page_writes=off" \
    start >/dev/null 2>&1; then
    URL="postgres://postgres@localhost/postgres?host=$DIR"
    return 0
  fi
  say "the server did not start:"
  cat "$DIR/server.log" >&2 || true
  rm -rf "$DIR"
  return 1
}

stop_cluster() {
  as_owner "$BIN/pg_ctl" -D "$1/data" -m immediate -w stop >/dev/null 2>&1 || true
  rm -rf "$1"
}

case ${1:-} in
  run)
    shift
    (($#)) || { say "run: no command"; exit 2; }
    start_cluster
    trap 'stop_cluster "$DIR"' EXIT
    trap 'exit 130' INT TERM
    say "PostgreSQL at $URL ($DIR)"
    status=0
    VMANTEST_POSTGRES_URL=$URL "$@" || status=$?
    exit "$status"
    ;;
  start)
    watched=${2:?start: the PID whose end stops the cluster}
    start_cluster
    # Detached, with no tie to the caller's pipes, so that reading this
    # script's output ends when it exits.
    setsid bash -c 'while kill -0 "$1" 2>/dev/null; do sleep 1; done; "$2" stop "$3"' \
      _ "$watched" "$0" "$DIR" </dev/null >/dev/null 2>&1 &
    echo "$URL"
    ;;
  stop)
    stop_cluster "${2:?stop: the cluster directory}"
    ;;
  *)
    say "usage: $0 run CMD ARGS... | start PID | stop DIR"
    exit 2
    ;;
esac
