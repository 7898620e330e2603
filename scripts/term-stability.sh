#!/usr/bin/env bash
# Does a busy cluster keep its leader? A fresh local 3-replica release
# cluster under closed-loop allocate/release load for SECS seconds (default
# 600), then the Raft term of every replica before and after: a term that
# moved is an election, which under load means the election timeouts are too
# short for this machine's stalls (README, *Failover*). Exits 1 if the term
# moved.
#
#   scripts/term-stability.sh [SECS] [qm bench flags...]
#   scripts/term-stability.sh 600 --concurrency 64
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
SECS=${1:-600}
shift || true
[[ "$SECS" =~ ^[0-9]+$ ]] && [ "$SECS" -gt 0 ] || { echo "term-stability.sh: SECS must be a positive number" >&2; exit 2; }

export QM_CLUSTER_DIR=${QM_CLUSTER_DIR:-$ROOT/.cluster-term}
export QM_BASE_PORT=${QM_BASE_PORT:-7500} QM_METRICS_BASE_PORT=${QM_METRICS_BASE_PORT:-7600} QM_HTTP_BASE_PORT=${QM_HTTP_BASE_PORT:-7700}
QM="$ROOT/target/release/qm"
OUT_DIR="$ROOT/target/term-stability"
mkdir -p "$OUT_DIR"

QM_REBUILD=1 scripts/cluster.sh up --nodes 3 --same-session >"$OUT_DIR/cluster-up.txt"
trap 'scripts/cluster.sh down >/dev/null 2>&1 || true' EXIT
export QM_ENDPOINTS; QM_ENDPOINTS=$(tail -n 1 "$OUT_DIR/cluster-up.txt" | sed 's/^QM_ENDPOINTS=//')

leader_and_term() { "$QM" --output json cluster status | python3 -c '
import json, sys
status = json.load(sys.stdin)
print("leader", status["leader_id"], "term", status["term"])'; }

before=$(leader_and_term)
echo "before: $before"
"$QM" bench --quiet --duration "$SECS" --workload alloc-release --concurrency 64 "$@" | tail -n 3
after=$(leader_and_term)
echo "after:  $after"
# openraft logs this line on every replica whose election timer fired.
campaigns=$(cat "$QM_CLUSTER_DIR"/*/node.log | grep -c "election timeout passed" || true)
echo "election timers that fired: $campaigns"
if [ "$before" = "$after" ]; then
  echo "term-stability: the leader and its term held for $SECS s under load"
else
  echo "term-stability: the term moved under load ($before -> $after)"
  exit 1
fi
