#!/usr/bin/env bash
# Line coverage of src/ by the whole test suite (`make coverage`).
#
# Runs the same tests as `make test` (real QEMU and guests included) under
# cargo-llvm-cov, in its own target directory (target/llvm-cov-target), then
# prints one row per file of src/ (tests/ and migration/ are left out), the
# files with the most uncovered lines, and the total. The HTML report, line
# by line, is in target/llvm-cov/html.
#
# Processes the tests spawn (`vman serve`, `vman schema`) are instrumented
# too and write profiles of their own (`%p`), which are merged in. Several
# tests SIGKILL `vman serve` (a crash is what they test), and a killed
# process never writes its profile at exit, so counters are kept in the
# profile file as they change (LLVM's continuous mode, `%c`; on Linux it
# needs the counters relocatable, which every crate here is built for).
# A test binary with no instrumented code left in it (main.rs's unit tests,
# migration's) says "LLVM Profile Error: Neither __llvm_profile_counter_bias
# nor …" and leaves an empty profile: it had nothing to count, and
# `--failure-mode all` merges the others.
#
# Exits with the tests' status: a failing test still gets its report, but
# `make coverage` fails. `--report-only` reports on the last run again.
set -uo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

# Everything outside src/ of the workspace: integration tests, their helpers,
# the migration crate, benchmarks.
ignore="^$(printf '%s' "$root" | sed 's/[][\.*^$+?(){}|]/\\&/g')/(tests|migration|benches)/"

export RUSTFLAGS="${RUSTFLAGS:-} -Cllvm-args=-runtime-counter-relocation"
export LLVM_PROFILE_FILE_NAME="vman-%p%c.profraw"

tests=0
if [[ ${1:-} != --report-only ]]; then
  cargo llvm-cov clean --workspace || exit
  # Inside a throwaway PostgreSQL cluster, as in `make test`: tests/postgres.rs
  # needs one (and under CI=true does not start its own).
  ./scripts/pg-test-cluster.sh run \
    cargo llvm-cov --no-report --workspace --lib --bins --tests --no-fail-fast
  tests=$?
fi

out=target/llvm-cov
mkdir -p "$out"
cargo llvm-cov report --failure-mode all --ignore-filename-regex "$ignore" --lcov --output-path "$out/lcov.info" || exit
cargo llvm-cov report --failure-mode all --ignore-filename-regex "$ignore" --html --output-dir "$out" >/dev/null || exit

# Lines counted: those lcov gives a count (DA records), minus each file's
# unit tests. The `#[cfg(test)] mod tests` at the end of a src/ file runs
# whenever the tests do, so it would count as covered code; everything
# from the first unindented `#[cfg(test)]` on is left out.
cuts=$(for f in $(find src -name '*.rs'); do
  printf '%s %s\n' "$root/$f" "$(grep -n -m1 '^#\[cfg(test)\]' "$f" | cut -d: -f1)"
done)
rows=$(awk -v root="$root/" '
  NR == FNR { if ($2 != "") cut[$1] = $2; next }
  /^SF:/ { file = substr($0, 4); next }
  /^DA:/ {
    split(substr($0, 4), da, ",")
    if (file in cut && da[1] + 0 >= cut[file] + 0) next
    lines[file]++
    if (da[2] + 0 > 0) hit[file]++
  }
  END {
    for (f in lines) {
      name = index(f, root) == 1 ? substr(f, length(root) + 1) : f
      printf "%-32s %7d %7d %7.2f%%\n", name, lines[f], lines[f] - hit[f], 100 * hit[f] / lines[f]
    }
  }
' - "$out/lcov.info" <<<"$cuts")

table() { printf '%-32s %7s %7s %8s\n' "$1" lines missed cover; }
sum() {
  awk -v name="$1" '{ l += $2; m += $3 } END { printf "%-32s %7d %7d %7.2f%%\n", name, l, m, l ? 100 * (l - m) / l : 0 }'
}
echo "Line coverage per file"
table file
sort -k1,1 <<<"$rows"
echo
echo "Per module (directory of src/)"
table module
while read -r dir; do
  grep -E "^$dir/[^/ ]+ " <<<"$rows" | sum "$dir/"
done < <(awk '{ sub("/[^/]*$", "", $1); print $1 }' <<<"$rows" | sort -u)
echo
echo "Most uncovered lines"
table file
sort -k3,3nr -k1,1 <<<"$rows" | head -n 10
echo
total=$(sum "src/ (total)" <<<"$rows")
table ""
echo "$total"
echo
echo "Line coverage of src/: $(awk '{ print $NF }' <<<"$total")"
echo "(line by line: $out/html/index.html; lcov: $out/lcov.info)"
if ((tests != 0)); then
  echo "coverage: some tests failed (exit status $tests)" >&2
fi
exit "$tests"
