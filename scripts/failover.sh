#!/usr/bin/env bash
# Failover times, as a client that is already running sees them: qm-jepsen
# runs whose every fault hits the leader (--targets leader), one run per
# replica count and fault, then the distribution over all faults of "leader
# killed (or paused) -> next acknowledged write invoked after it".
#
# Configure with environment variables (defaults in brackets):
#   NODES        replica counts                 ["3 5"]
#   FAULTS       kill and/or pause               ["kill pause"]
#   FAULTS_PER_RUN  leader faults per run, about [20]
#   FAULT_SECS   how long the leader stays down  [1.5]
#   HEAL_SECS    between two faults              [3.5]
#   RATE         writes+reads per second         [100]
#   SEED         seed of the runs                [1]
#   EXTRA        more qm-jepsen flags, e.g. "--node-arg=--election-timeout-min-ms=300"
#   OUT          where reports go                [jepsen-store/failover-<date>]
#
#   scripts/failover.sh                       # 3 and 5 replicas, kill and pause (~8 min)
#   NODES=3 FAULTS=kill scripts/failover.sh   # one run
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

NODES=${NODES:-"3 5"}
FAULTS=${FAULTS:-"kill pause"}
FAULTS_PER_RUN=${FAULTS_PER_RUN:-20}
FAULT_SECS=${FAULT_SECS:-1.5}
HEAL_SECS=${HEAL_SECS:-3.5}
RATE=${RATE:-100}
SEED=${SEED:-1}
EXTRA=${EXTRA:-}
OUT=${OUT:-jepsen-store/failover-$(date +%Y%m%d-%H%M%S)}

echo "==> building qm-jepsen and qm-node (release)"
cargo build --release -q -p qm-jepsen -p qm-raft-node --bin qm-jepsen --bin qm-node || exit 3
mkdir -p "$OUT"

# qm-jepsen's schedule: 5 s quiet first, 10 s healed at the end.
time_limit=$(python3 -c "import math; print(math.ceil(5 + $FAULTS_PER_RUN * ($FAULT_SECS + $HEAL_SECS) + 10))")
status=0
for nodes in $NODES; do
  for fault in $FAULTS; do
    dir="$OUT/${fault}-${nodes}n"
    echo "==> $fault of the leader, $nodes replicas, $time_limit s"
    # shellcheck disable=SC2086
    target/release/qm-jepsen run --nodes "$nodes" --workload register --nemesis "$fault" --targets leader \
      --time-limit "$time_limit" --fault-secs "$FAULT_SECS" --heal-secs "$HEAL_SECS" --rate "$RATE" \
      --seed "$SEED" --out "$dir" $EXTRA >"$OUT/${fault}-${nodes}n.log" 2>&1
    code=$?
    tail -1 "$OUT/${fault}-${nodes}n.log"
    [ "$code" = 0 ] || status=1
  done
done

python3 - "$OUT" <<'PY' | tee "$OUT/failover.md"
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
def q(values, quantile):
    return values[round((len(values) - 1) * quantile)]
print("| fault | replicas | faults | measured | min | p50 | p90 | max (ms) |")
print("|---|---|---|---|---|---|---|---|")
for results in sorted(out.glob("*/results.json")):
    fault, nodes = results.parent.name.split("-")
    stats = json.loads(results.read_text())["stats"]
    values = sorted(f["next_ok_write_ms"] for f in stats["failovers"] if f["next_ok_write_ms"] is not None)
    if not values:
        print(f"| {fault} | {nodes[:-1]} | {len(stats['failovers'])} | 0 | - | - | - | - |")
        continue
    print(f"| {fault} | {nodes[:-1]} | {len(stats['failovers'])} | {len(values)} | {values[0]:.0f} | {q(values, 0.5):.0f} | {q(values, 0.9):.0f} | {values[-1]:.0f} |")
PY
exit $status
