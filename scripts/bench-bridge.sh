#!/usr/bin/env bash
# Requests through the broker against the same cluster over gRPC, in one run
# (BENCHMARKS.md, "Through the broker").
#
#   scripts/bench-bridge.sh [--duration SECS] [--rounds N]
#
# Starts a local 3-replica release cluster, a RabbitMQ node of its own (free
# port, data under target/bench-bridge, stopped by pid), one `qm bridge
# amqp`, and registers a provider with 1,024 cores. Then, for concurrency 1,
# 16 and 64 and N rounds, interleaved: `qm bench` (alloc+release pairs over
# gRPC) and the amqp_bench example (the same pairs as the protocol's JSON
# through the broker and the bridge, each waiting for its reply). Prints one
# table; raw JSON lines go to target/bench-bridge/results.jsonl.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
DURATION=10
ROUNDS=2
while [ $# -gt 0 ]; do
  case "$1" in
    --duration) DURATION=${2:?}; shift 2 ;;
    --rounds) ROUNDS=${2:?}; shift 2 ;;
    *) echo "usage: scripts/bench-bridge.sh [--duration SECS] [--rounds N]" >&2; exit 2 ;;
  esac
done

scripts/install-services.sh
cargo build --release -q -p qm-bridge --example amqp_bench
export QM_CLUSTER_DIR=$ROOT/.cluster-bench-bridge
export QM_BASE_PORT=${QM_BASE_PORT:-7500} QM_METRICS_BASE_PORT=${QM_METRICS_BASE_PORT:-7600}
OUT=$ROOT/target/bench-bridge
rm -rf "$OUT"; mkdir -p "$OUT"
RESULTS=$OUT/results.jsonl
QM=$ROOT/target/release/qm
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  [ -f "$OUT/beam.pid" ] && kill "$(cat "$OUT/beam.pid")" 2>/dev/null || true
  sleep 1
  for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
  scripts/cluster.sh down >/dev/null 2>&1 || true
}
trap cleanup EXIT

QM_REBUILD=1 scripts/cluster.sh up --nodes 3 --same-session -- --provider-failure-window-ms 600000 >"$OUT/cluster-up.txt"
export QM_ENDPOINTS; QM_ENDPOINTS=$(grep '^QM_ENDPOINTS=' "$OUT/cluster-up.txt" | tail -n 1 | sed 's/^QM_ENDPOINTS=//')

# A broker of our own: its own epmd, ports, node name and data.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
AMQP_PORT=$(free_port); DIST_PORT=$(free_port); EPMD_PORT=$(free_port)
mkdir -p "$OUT/rabbitmq"
echo "[]." >"$OUT/rabbitmq/enabled_plugins"
echo "loopback_users = none" >"$OUT/rabbitmq/rabbitmq.conf"
epmd -port "$EPMD_PORT" & pids+=($!)
HOME=$OUT/rabbitmq RABBITMQ_NODENAME=qmbench$AMQP_PORT@localhost RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 \
  RABBITMQ_NODE_PORT=$AMQP_PORT RABBITMQ_DIST_PORT=$DIST_PORT ERL_EPMD_PORT=$EPMD_PORT \
  RABBITMQ_MNESIA_BASE=$OUT/rabbitmq/mnesia RABBITMQ_LOG_BASE=$OUT/rabbitmq/log \
  RABBITMQ_ENABLED_PLUGINS_FILE=$OUT/rabbitmq/enabled_plugins RABBITMQ_CONFIG_FILE=$OUT/rabbitmq/rabbitmq \
  RABBITMQ_PID_FILE=$OUT/beam.pid RABBITMQ_LOGS=- \
  /usr/lib/rabbitmq/bin/rabbitmq-server >"$OUT/rabbitmq.log" 2>&1 </dev/null & pids+=($!)
for _ in $(seq 1 600); do grep -q "Server startup complete" "$OUT/rabbitmq.log" && break; sleep 0.1; done
grep -q "Server startup complete" "$OUT/rabbitmq.log" || { echo "bench-bridge: rabbitmq did not start" >&2; tail "$OUT/rabbitmq.log" >&2; exit 1; }
URL="amqp://guest:guest@127.0.0.1:$AMQP_PORT/%2f"

python3 -c 'import json; print(json.dumps({"provider_id": "bench_amqp", "resources": [{"resource_id": f"cpu_{n}", "kind": "cpu_cores", "capacity": 1} for n in range(1, 1025)]}))' >"$OUT/provider.json"
"$QM" provider register --file "$OUT/provider.json" >/dev/null
"$QM" bridge amqp --amqp-url "$URL" >"$OUT/bridge.log" 2>&1 & pids+=($!)
sleep 2

for round in $(seq 1 "$ROUNDS"); do
  for concurrency in 1 16 64; do
    "$QM" --output json bench --quiet --duration "$DURATION" --workload alloc-release --concurrency "$concurrency" |
      python3 -c 'import json,sys; r=json.load(sys.stdin); a=r["latency"]["allocate"]; print(json.dumps({"via":"grpc","concurrency":r["concurrency"],"pairs_per_s":r["allocations_per_s"],"allocate_p50_ms":a["p50_ms"],"allocate_p99_ms":a["p99_ms"]}))' >>"$RESULTS"
    "$ROOT/target/release/examples/amqp_bench" "$URL" "$DURATION" "$concurrency" >>"$RESULTS"
  done
done

echo "Quartermaster, 3 replicas on $(nproc) cores, alloc+release pairs, ${DURATION}s each, $ROUNDS rounds interleaved"
python3 - "$RESULTS" <<'PY'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
print(f"{'via':<6}{'conc':>6}{'pairs/s':>10}{'alloc p50':>11}{'p99':>9}")
for r in sorted(rows, key=lambda r: (r["concurrency"], r["via"])):
    print(f"{r['via']:<6}{r['concurrency']:>6}{r['pairs_per_s']:>10.0f}{r['allocate_p50_ms']:>9.2f}ms{r['allocate_p99_ms']:>8.2f}ms")
PY
