#!/usr/bin/env bash
# The kill loop: kill -9 a replica (the leader half the time, else a random
# one) every few seconds under a steady allocate/release load with retries,
# restart it on its data dir, and at the end check from the table that every
# acknowledged allocation exists exactly once, nothing unacknowledged is held
# and no unit is in two allocations. It is one qm-jepsen run of the
# allocation workload with the kill nemesis alone and an exact count of kills
# (`qm-jepsen run --kills N`); its checkers judge the history against the
# final read of the whole table. Replicas are started and killed by pid
# only, on loopback.
#
# Writes <out>/kill-loop.md (kills done, leader kills, acknowledged / failed /
# unknown operations, the failover distribution, every violation) beside the
# run's report. Exit status: 0 valid, 1 a violation, 2 unknown, 3 the harness
# failed.
#
#   scripts/kill-loop.sh --kills 1000                   # about 55 min at the defaults
#   scripts/kill-loop.sh --kills 20 --replicas 5 --interval-ms 2500
#
# Options (defaults in brackets):
#   --kills N          kills to inject                                   [100]
#   --replicas N       3 or 5                                            [3]
#   --interval-ms MS   mean time from one kill to the next               [3200]
#   --down-ms MS       mean time a killed replica stays down, within it  [1200]
#   --rate R           client operations per second                      [20]
#   --seed S           seed of every choice                              [1]
#   --out DIR          the report's directory        [jepsen-store/kill-loop-<date>]
#   --profile P        cargo profile of the binaries                     [release]
#   --no-build         use the binaries already built for that profile
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

KILLS=100
REPLICAS=3
INTERVAL_MS=3200
DOWN_MS=1200
RATE=20
SEED=1
OUT=jepsen-store/kill-loop-$(date +%Y%m%d-%H%M%S)
PROFILE=release
BUILD=1
while [ $# -gt 0 ]; do
  case "$1" in
    --kills) KILLS=$2; shift 2 ;;
    --replicas) REPLICAS=$2; shift 2 ;;
    --interval-ms) INTERVAL_MS=$2; shift 2 ;;
    --down-ms) DOWN_MS=$2; shift 2 ;;
    --rate) RATE=$2; shift 2 ;;
    --seed) SEED=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --profile) PROFILE=$2; shift 2 ;;
    --no-build) BUILD=0; shift ;;
    -h | --help) sed -n '2,/^set -uo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "kill-loop.sh: unknown option $1 (see --help)" >&2; exit 3 ;;
  esac
done
if [ "$DOWN_MS" -ge "$INTERVAL_MS" ]; then
  echo "kill-loop.sh: --down-ms ($DOWN_MS) must be shorter than --interval-ms ($INTERVAL_MS)" >&2
  exit 3
fi
fault_secs=$(python3 -c "print($DOWN_MS / 1000)")
heal_secs=$(python3 -c "print(($INTERVAL_MS - $DOWN_MS) / 1000)")

profile_dir=$PROFILE
[ "$PROFILE" = dev ] && profile_dir=debug
if [ "$BUILD" = 1 ]; then
  echo "==> building qm-jepsen and qm-node ($PROFILE)"
  cargo build --profile "$PROFILE" -q -p qm-jepsen -p qm-raft-node --bin qm-jepsen --bin qm-node || exit 3
fi
mkdir -p "$OUT/bin"
# The loop restarts replicas for an hour: run copies of the binaries, so that
# a build during the loop never swaps the replica binary under it.
cp "target/$profile_dir/qm-jepsen" "target/$profile_dir/qm-node" "$OUT/bin/" || exit 3

echo "==> $KILLS kills, $REPLICAS replicas, one every ${INTERVAL_MS} ms (down ${DOWN_MS} ms), $RATE ops/s; report in $OUT"
"$OUT/bin/qm-jepsen" run --node-binary "$OUT/bin/qm-node" --nodes "$REPLICAS" --workload allocation --kills "$KILLS" \
  --fault-secs "$fault_secs" --heal-secs "$heal_secs" --rate "$RATE" --seed "$SEED" --out "$OUT" \
  >"$OUT/run.log" 2>&1
status=$?
tail -1 "$OUT/run.log"

python3 - "$OUT" "$status" <<'PY' | tee "$OUT/kill-loop.md"
import json, pathlib, sys
out, status = pathlib.Path(sys.argv[1]), int(sys.argv[2])
results_path = out / "results.json"
if not results_path.exists():
    print(f"no results.json: the harness failed (exit {status}); see {out}/run.log")
    sys.exit(0)
results = json.loads(results_path.read_text())
test = json.loads((out / "test.json").read_text())
kills = leader_kills = replicas_killed = 0
for line in (out / "history.jsonl").open():
    op = json.loads(line)
    if op.get("process") != "nemesis" or op.get("f") != "kill" or op.get("type") != "info":
        continue
    value = op.get("value") or {}
    nodes = value.get("nodes") or []
    kills += 1
    replicas_killed += len(nodes)
    leader_kills += int(value.get("leader") in nodes)
stats = results["stats"]
total = stats["total"]
def q(values, quantile):
    return values[round((len(values) - 1) * quantile)]
config = test.get("config", test)
print(f"# Kill loop: {out}")
print()
print(f"- replicas: {config.get('nodes')}, seed {config.get('seed')}, {config.get('rate')} ops/s, "
      f"one kill every {config.get('fault_secs', 0) + config.get('heal_secs', 0):.1f} s on average")
print(f"- kills done: {kills} (replicas killed: {replicas_killed}), of them the leader: {leader_kills}")
print(f"- client operations: {total['ok']} acknowledged, {total['fail']} failed, {total['info']} unknown")
for name, counts in sorted(stats["counts"].items()):
    print(f"  - {name}: {counts['ok']} ok, {counts['fail']} fail, {counts['info']} unknown")
values = sorted(f["next_ok_write_ms"] for f in stats.get("failovers", []) if f["next_ok_write_ms"] is not None)
unmeasured = len(stats.get("failovers", [])) - len(values)
if values:
    print(f"- failover (leader killed -> next acknowledged write), {len(values)} measured"
          f"{f', {unmeasured} without a later write' if unmeasured else ''}: "
          f"min {values[0]:.0f}, p50 {q(values, 0.5):.0f}, p90 {q(values, 0.9):.0f}, "
          f"p99 {q(values, 0.99):.0f}, max {values[-1]:.0f} ms")
print(f"- verdict: valid {str(results['valid']).lower()}")
for checker in results.get("checkers", []):
    print(f"  - {checker['name']}: valid {str(checker['valid']).lower()}, {checker['anomaly_count']} anomalies")
    for anomaly in checker.get("anomalies", [])[:10]:
        print(f"    - VIOLATION: {anomaly['description']} (ops {anomaly['ops']})")
for note in results.get("notes", []):
    print(f"- note: {note}")
PY
exit $status
