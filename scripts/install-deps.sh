#!/usr/bin/env bash
# Installs what vman needs on a Debian 12 machine, and nothing when it is all there.
# Used by `make run` and `make test` (and so by .ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf 'install-deps: %s\n' "$*"; }

have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }
pkg_version() { dpkg-query -W -f='${Version}' "$1" 2>/dev/null || true; }

# QEMU 7.2 from Debian 12. Some images ship a qemu-utils backport that cannot
# live beside Debian's qemu-system-x86, so both are taken from the same release.
need_qemu=
for p in qemu-system-x86 qemu-utils; do
  have_pkg "$p" || need_qemu=1
done
if [[ -z $need_qemu && "$(pkg_version qemu-utils)" != "$(pkg_version qemu-system-x86)" ]]; then
  need_qemu=1
fi
missing=()
[[ -n $need_qemu ]] && missing+=(qemu-system-x86/bookworm qemu-utils/bookworm)
command -v node >/dev/null || missing+=(nodejs)
command -v npm >/dev/null || missing+=(npm)
# `ip` for the network tests (they read links in their own namespace); `unshare`
# (util-linux) is part of every Debian install.
command -v ip >/dev/null || missing+=(iproute2)
# `curl` and `jq` for the README's walk-through (tests/readme_walkthrough.rs runs it).
command -v curl >/dev/null || missing+=(curl)
command -v jq >/dev/null || missing+=(jq)
# `wrk`, the load generator of `cargo bench --bench api` (docs/BENCHMARKS.md).
command -v wrk >/dev/null || missing+=(wrk)
# Headless Chromium for tests/playground_browser.rs (driven by playwright-core).
[[ -x /usr/bin/chromium ]] || missing+=(chromium)
# PostgreSQL 15's server, for the database tests' second backend
# (scripts/pg-test-cluster.sh starts a throwaway cluster; nothing is configured).
[[ -x /usr/lib/postgresql/15/bin/initdb ]] || missing+=(postgresql-15)
if ((${#missing[@]})); then
  if [[ $(id -u) != 0 ]]; then
    say "missing ${missing[*]}: run as root or install them" >&2
    exit 1
  fi
  say "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get -q -o DPkg::Lock::Timeout=600 update
  apt-get -q -o DPkg::Lock::Timeout=600 install -y --no-install-recommends --allow-downgrades "${missing[@]}"
fi

# `make test` lints with rustfmt and clippy: rustup's minimal profile lacks them.
if command -v rustup >/dev/null; then
  for component in rustfmt clippy; do
    if ! rustup component list --installed 2>/dev/null | grep -q "^$component"; then
      say "adding the Rust component $component"
      rustup component add "$component"
    fi
  done
fi

# npm packages: reinstalled only when the lock file changed.
npm_ci() {
  local dir=$1 stamp="$1/node_modules/.vman-lock"
  if [[ ! -f $stamp ]] || ! cmp -s "$dir/package-lock.json" "$stamp"; then
    say "npm ci in $dir"
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
    cp "$dir/package-lock.json" "$stamp"
  fi
}
npm_ci tests/js
npm_ci playground

# The playground and dashboard bundle, rebuilt when its sources change (the
# schema included: the build checks the dashboard's documents against it).
stamp=playground/dist/.vman-sources
sources=$(cd playground && find package-lock.json index.html dashboard.html vite.config.js tsconfig.json src ../schema.graphql -type f -print0 \
  | sort -z | xargs -0 cat | sha256sum | cut -d' ' -f1)
if [[ ! -f $stamp || "$(cat "$stamp")" != "$sources" ]]; then
  say "building the playground and the dashboard"
  (cd playground && npm run --silent build >/dev/null)
  echo "$sources" > "$stamp"
fi
say "ok"
