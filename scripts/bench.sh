#!/usr/bin/env bash
# The standard benchmark set against a fresh local 3-replica release cluster.
#
#   scripts/bench.sh [--duration SECS] [--with-etcd]
#
# Runs `qm bench` closed-loop at concurrency 1, 16, 64, 256 and open-loop at
# 1,000 and 5,000 ops/s (alloc-release pairs; every allocation is durable on a
# majority's disk before it is acknowledged), prints one table, and writes the
# raw JSON lines to target/bench/results.jsonl. With --with-etcd it then runs
# the peer baseline from ../shared/peer-etcd (3-member etcd, the same
# allocate+release work as transactions) on the same machine, right after.
# Replicas and the load generator share this machine's cores: the figures are
# this machine's, CPU-bound, not a statement about larger hardware.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
DURATION=10
WITH_ETCD=no
while [ $# -gt 0 ]; do
  case "$1" in
    --duration) DURATION=${2:?}; shift 2 ;;
    --with-etcd) WITH_ETCD=yes; shift ;;
    *) echo "usage: scripts/bench.sh [--duration SECS] [--with-etcd]" >&2; exit 2 ;;
  esac
done
[[ "$DURATION" =~ ^[0-9]+$ ]] && [ "$DURATION" -gt 0 ] || { echo "bench.sh: --duration must be a positive number of seconds" >&2; exit 2; }

export QM_CLUSTER_DIR=${QM_CLUSTER_DIR:-$ROOT/.cluster-bench}
export QM_BASE_PORT=${QM_BASE_PORT:-7300} QM_METRICS_BASE_PORT=${QM_METRICS_BASE_PORT:-7400}
QM="$ROOT/target/release/qm"
OUT_DIR="$ROOT/target/bench"
mkdir -p "$OUT_DIR"
RESULTS="$OUT_DIR/results.jsonl"
: >"$RESULTS"

QM_REBUILD=1 scripts/cluster.sh up --nodes 3 --same-session >"$OUT_DIR/cluster-up.txt"
trap 'scripts/cluster.sh down >/dev/null 2>&1 || true' EXIT
export QM_ENDPOINTS; QM_ENDPOINTS=$(tail -n 1 "$OUT_DIR/cluster-up.txt" | sed 's/^QM_ENDPOINTS=//')

run() {
  "$QM" --output json bench --quiet --duration "$DURATION" --workload alloc-release "$@" | tee -a "$RESULTS" >/dev/null
}
for concurrency in 1 16 64 256; do run --concurrency "$concurrency"; done
for rate in 1000 5000; do run --concurrency 1024 --rate "$rate"; done

echo "Quartermaster, 3 replicas on $(nproc) cores, alloc+release pairs, ${DURATION}s each"
python3 - "$RESULTS" <<'PY'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
print(f"{'mode':<8}{'conc':>6}{'rate':>7}{'ops/s':>9}{'allocs/s':>10}{'alloc p50':>11}{'p99':>8}{'p999':>8}{'max':>8}  errors")
for r in rows:
    a = r["latency"].get("allocate", {})
    errors = ", ".join(f"{k} {v}" for k, v in r["errors"].items()) or "0"
    print(f"{r['mode']:<8}{r['concurrency']:>6}{str(r['rate'] or '-'):>7}{r['ops_per_s']:>9.0f}{r['allocations_per_s']:>10.0f}"
          f"{a.get('p50_ms', 0):>10.2f}ms{a.get('p99_ms', 0):>7.1f}{a.get('p999_ms', 0):>8.1f}{a.get('max_ms', 0):>8.1f}  {errors}")
PY

if [ $WITH_ETCD = yes ]; then
  scripts/cluster.sh down >/dev/null 2>&1 || true
  PEER="$ROOT/../shared/peer-etcd"
  [ -x "$PEER/baseline.sh" ] || { echo "bench.sh: $PEER/baseline.sh not found" >&2; exit 1; }
  echo
  echo "etcd 3-member baseline on the same machine (allocate+release as two transactions):"
  : >"$OUT_DIR/etcd.jsonl"  # the baseline appends; keep only this run
  DURATION=$DURATION OUT="$OUT_DIR/etcd.jsonl" "$PEER/baseline.sh" >/dev/null
  python3 - "$OUT_DIR/etcd.jsonl" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    print({k: r[k] for k in r if k in ("concurrency", "ops_per_s", "allocs_per_s", "p50_ms", "p99_ms", "p999_ms", "errors")})
PY
fi
