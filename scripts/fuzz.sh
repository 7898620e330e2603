#!/usr/bin/env bash
# Fuzzes every decoder a replica runs on outside bytes (fuzz/targets/src/lib.rs
# lists them) with cargo-fuzz and libFuzzer, then reports executions and
# crashes per target.
#
#   scripts/fuzz.sh [--runs N] [--save-corpus] [TARGET ...]
#
# --runs N        executions per target (default 10,000,000)
# --save-corpus   minimize each target's corpus (cargo fuzz cmin) and write it
#                 back to fuzz/corpus/TARGET, which CI replays on stable
#                 (fuzz/targets/tests/replay_corpora.rs)
# Needs the nightly toolchain (rustup's `nightly`); installs cargo-fuzz from
# crates.io when missing. Work and new inputs go to target/fuzz-work; a crash
# leaves its input in fuzz/artifacts/TARGET and the script exits 1: add the
# input to fuzz/corpus/TARGET with the fix, so that CI keeps it.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
RUNS=10000000
SAVE=false
TARGETS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) RUNS=${2:?}; shift 2 ;;
    --save-corpus) SAVE=true; shift ;;
    -*) echo "usage: scripts/fuzz.sh [--runs N] [--save-corpus] [TARGET ...]" >&2; exit 2 ;;
    *) TARGETS+=("$1"); shift ;;
  esac
done
[ "${#TARGETS[@]}" -gt 0 ] || TARGETS=(protocol_request registration grpc_allocate grpc_register snapshot raft_message http_body)

rustup toolchain list | grep -q '^nightly' ||
  { echo "fuzz.sh: needs the nightly toolchain (rustup toolchain install nightly)" >&2; exit 1; }
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked

WORK=$ROOT/target/fuzz-work
REPORT=$WORK/report.txt
mkdir -p "$WORK"
: > "$REPORT"
failed=0
for target in "${TARGETS[@]}"; do
  corpus=$WORK/corpus/$target
  mkdir -p "$corpus"
  cp -n fuzz/corpus/"$target"/* "$corpus"/ 2>/dev/null || true
  log=$WORK/$target.log
  echo "fuzz.sh: $target, $RUNS runs" >&2
  started=$(date +%s)
  # An allocation past the decoders' named bounds (4 GiB for a snapshot's
  # strings, raft-node's codec::DECODED_BYTES_MAX 2 GiB) is a crash.
  if (cd fuzz && cargo +nightly fuzz run "$target" "$corpus" -- \
        -runs="$RUNS" -rss_limit_mb=4200 -malloc_limit_mb=4200 -max_len=65536 -print_final_stats=1) > "$log" 2>&1; then
    outcome=ok
  else
    outcome="CRASH (see $log and fuzz/artifacts/$target)"
    failed=1
  fi
  seconds=$(( $(date +%s) - started ))
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
  printf '%-18s %12s executions %6ss  %s\n' "$target" "${execs:-?}" "$seconds" "$outcome" | tee -a "$REPORT"
  if $SAVE && [ "$outcome" = ok ]; then
    (cd fuzz && cargo +nightly fuzz cmin "$target" "$corpus" >> "$log" 2>&1)
    # The regression inputs (crashes found earlier) and the named seeds
    # stay; the rest is replaced by the minimized corpus.
    find fuzz/corpus/"$target" -type f -regex '.*/[0-9a-f]\{40\}' -delete
    cp -n "$corpus"/* fuzz/corpus/"$target"/
  fi
done
echo "report: $REPORT" >&2
exit $failed
