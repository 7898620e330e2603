#!/usr/bin/env bash
# Where a replica's heap goes at scale (issue 23): one follower of a local
# 3-replica release cluster runs under heaptrack while the cluster is loaded.
#
#   scripts/heap-profile.sh [--providers N] [--allocations M] [--out DIR]
#
# 1. Builds qm-node twice: the release build for replicas 1 and 3, and one
#    with `--features system-allocator` (target/heap) for replica 2, since
#    heaptrack sees malloc, not mimalloc's own entry points. Installs
#    heaptrack (Debian) if it is missing.
# 2. Starts the cluster (scripts/cluster.sh, ports 7950+, its own dir), then
#    restarts replica 2 on its data dir (it holds only the cluster's first
#    entry) under heaptrack, with the same flags.
# 3. Loads N providers (default 10,000) and M allocations (default
#    1,000,000) through the cluster (client/examples/scale_load.rs, as
#    scripts/scale.sh does), waits until replica 2 has applied them, and
#    prints its VmRSS and VmHWM.
# 4. Kills replica 2 with -9 (by pid), so that what it held then is what
#    heaptrack reports as not freed: its heap with the table loaded, by
#    allocation site (a graceful stop would free it first). Prints
#    heaptrack's summary and the sites that held the most. The whole
#    profile stays in DIR (default target/heap-profile) for
#    `heaptrack_print` or `heaptrack_gui`.
# The profiled replica runs slower (every malloc is recorded), so it is a
# follower: the leader's pace is the others'. The replicas keep the whole
# log behind their snapshots, so that it applies every entry as a follower
# that kept up does, rather than installing a snapshot once it is behind.
# Figures: BENCHMARKS.md.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

PROVIDERS=10000
ALLOCATIONS=1000000
OUT=$ROOT/target/heap-profile
usage() {
  echo "usage: scripts/heap-profile.sh [--providers N] [--allocations M] [--out DIR]" >&2
  exit 2
}
while [ $# -gt 0 ]; do
  case "$1" in
    --providers) PROVIDERS=${2:-}; shift 2 ;;
    --allocations) ALLOCATIONS=${2:-}; shift 2 ;;
    --out) OUT=${2:-}; shift 2 ;;
    *) usage ;;
  esac
done
[[ "$PROVIDERS" =~ ^[1-9][0-9]*$ ]] && [[ "$ALLOCATIONS" =~ ^[1-9][0-9]*$ ]] && [ -n "$OUT" ] || usage

if ! command -v heaptrack >/dev/null || ! command -v heaptrack_print >/dev/null; then
  echo "installing heaptrack (apt)..." >&2
  if [ "$(id -u)" = 0 ]; then apt-get install -y heaptrack >&2; else sudo apt-get install -y heaptrack >&2; fi
fi
echo "building qm-node (release, and with the system allocator), qm and the loader..." >&2
cargo build --release -p qm-raft-node -p qm-cli --bins >&2
cargo build --release -p qm-client --example scale_load >&2
CARGO_TARGET_DIR=$ROOT/target/heap cargo build --release -p qm-raft-node --features system-allocator --bin qm-node >&2

export QM_CLUSTER_DIR=$OUT/cluster QM_BASE_PORT=7950 QM_METRICS_BASE_PORT=7970
export QM_NODE_BIN=$ROOT/target/release/qm-node QM_BIN=$ROOT/target/release/qm
PROFILED_NODE=$ROOT/target/heap/release/qm-node
PROFILED=2
rm -rf "$OUT"
mkdir -p "$OUT"
HEAPTRACK_PID=
NODE_PID=
# heaptrack's script starts the replica as its child: that child's pid.
node_under_heaptrack() {
  local child
  for child in $(cat "/proc/$HEAPTRACK_PID/task/$HEAPTRACK_PID/children" 2>/dev/null); do
    if [ "$(readlink "/proc/$child/exe" 2>/dev/null)" = "$PROFILED_NODE" ]; then echo "$child"; return; fi
  done
}
stop_all() {
  if [ -z "$NODE_PID" ] && [ -n "$HEAPTRACK_PID" ]; then NODE_PID=$(node_under_heaptrack); fi
  if [ -n "$NODE_PID" ] && kill -0 "$NODE_PID" 2>/dev/null; then kill -KILL "$NODE_PID" 2>/dev/null || true; fi
  if [ -n "$HEAPTRACK_PID" ]; then
    kill -TERM "$HEAPTRACK_PID" 2>/dev/null || true
    wait "$HEAPTRACK_PID" 2>/dev/null || true
  fi
  scripts/cluster.sh down --keep-data >/dev/null 2>&1 || true
}
trap stop_all EXIT

# shellcheck source=scripts/lib/metrics.sh
. "$ROOT/scripts/lib/metrics.sh"
# The value of metric $2 on replica $1.
metric() { metric_at "$((QM_METRICS_BASE_PORT + $1))" "$2"; }

scripts/cluster.sh up --nodes 3 --same-session -- --provider-failure-window-ms 86400000 \
  --log-kept-behind-snapshot-entries 100000000 >"$OUT/up.txt" 2>&1 \
  || { cat "$OUT/up.txt" >&2; exit 1; }
# Replica 2 again, on its data dir, with the same flags, under heaptrack.
mapfile -d '' -t args <"/proc/$(cat "$QM_CLUSTER_DIR/$PROFILED/pid")/cmdline"
scripts/cluster.sh kill "$PROFILED" >/dev/null
heaptrack -o "$OUT/qm-node" "$PROFILED_NODE" "${args[@]:1}" >>"$QM_CLUSTER_DIR/$PROFILED/node.log" 2>&1 </dev/null &
HEAPTRACK_PID=$!
for _ in $(seq 100); do
  NODE_PID=$(node_under_heaptrack)
  [ -n "$NODE_PID" ] && break
  sleep 0.1
done
[ -n "$NODE_PID" ] || { echo "heap-profile.sh: replica $PROFILED did not start under heaptrack" >&2; exit 1; }
echo "replica $PROFILED under heaptrack: pid $NODE_PID"

"$ROOT/target/release/examples/scale_load" "$(scripts/cluster.sh endpoints)" "$PROVIDERS" "$ALLOCATIONS" 256
leader=$(scripts/cluster.sh leader)
commit=$(metric "$leader" raft_commit_index)
deadline=$((SECONDS + 1800))
until [ "$(metric "$PROFILED" raft_applied_index || echo 0)" -ge "$commit" ] 2>/dev/null; do
  [ $SECONDS -lt $deadline ] || { echo "heap-profile.sh: replica $PROFILED did not apply index $commit" >&2; exit 1; }
  sleep 1
done
status() { awk -v field="$1:" '$1 == field { print int($2 / 1024) " MB" }' "/proc/$NODE_PID/status"; }
# A few seconds for whatever follows the last apply (a snapshot build).
sleep 10
echo "replica $PROFILED (system allocator, under heaptrack) applied index $commit: VmRSS $(status VmRSS), VmHWM $(status VmHWM)"

kill -KILL "$NODE_PID"
wait "$HEAPTRACK_PID" || true
HEAPTRACK_PID=
NODE_PID=
profile=$(ls "$OUT"/qm-node.*)
echo "profile: $profile"
heaptrack_print --print-peaks 0 --print-allocators 0 --print-leaks 1 --print-temporary 0 --peak-limit 40 \
  --file "$profile" >"$OUT/summary.txt" 2>&1 || true
grep -E "^(peak heap memory consumption|peak RSS|total memory leaked|calls to allocation functions)" "$OUT/summary.txt" || true
echo "(\"leaked\": held when the replica was killed, its heap with the table loaded)"
echo "the sites that held the most then: $OUT/summary.txt"
