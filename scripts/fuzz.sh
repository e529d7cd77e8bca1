#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for a given time (seconds, default
# 60) and prints the executions per target and in total. Needs nightly (for
# cargo-fuzz only; everything else builds on stable) and cargo-fuzz; both are
# installed when missing. Each target starts from its committed seed corpus
# in fuzz/corpus/<target>; what it finds goes to target/fuzz-corpus/<target>,
# crashes to fuzz/artifacts/<target>/ (turn each into a regression test).
# FUZZ_SECONDS_<target> (e.g. FUZZ_SECONDS_config_toml=300) overrides the
# time for one target; targets named after the seconds run alone
# (`scripts/fuzz.sh 60 line_protocol`).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
targets=(ingest_body event_normalize config_toml line_protocol replay_codec plugin_output)
if [ $# -gt 1 ]; then targets=("${@:2}"); fi

rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked

# No sanitizer: the code is safe Rust; what the fuzzer looks for is panics,
# wrong answers (the targets assert) and hangs.
(cd fuzz && cargo +nightly fuzz build -s none)
# The binaries are run as built here, not through `cargo fuzz run`, which
# would rebuild (and fuzz whatever the sources have become meanwhile).
bin="fuzz/target/$(rustc +nightly -vV | sed -n 's/^host: //p')/release"

total=0
printf '%-18s %8s %14s %10s\n' target seconds executions crashes
for t in "${targets[@]}"; do
  work="target/fuzz-corpus/$t"
  mkdir -p "$work" "fuzz/artifacts/$t"
  log="target/fuzz-corpus/$t.log"
  status=0
  var="FUZZ_SECONDS_$t"
  secs=${!var:-$seconds}
  "$bin/$t" -artifact_prefix="fuzz/artifacts/$t/" -max_total_time="$secs" \
      -print_final_stats=1 -timeout=10 "$work" "fuzz/corpus/$t" >"$log" 2>&1 || status=$?
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1 || true)
  crashes=$(find "fuzz/artifacts/$t" -type f | wc -l)
  printf '%-18s %8s %14s %10s\n' "$t" "$secs" "${execs:-?}" "$crashes"
  total=$((total + ${execs:-0}))
  if [ "$status" -ne 0 ]; then
    echo "  $t stopped with status $status; see $log"
  fi
done
printf '%-18s %8s %14s\n' total '' "$total"
