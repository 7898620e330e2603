#!/usr/bin/env bash
# The soak (issue 22): a fresh 3-replica release cluster under a steady load
# for a long time, with real agents and a watcher, sampled every minute.
#
#   scripts/soak.sh [--minutes M] [--rate R] [--agents A] [--out DIR] [--keep]
#   scripts/soak.sh --report DIR      the report and plot of a soak's DIR again
#
# 1. Starts 3 replicas (scripts/cluster.sh, release builds, their own ports
#    and cluster dir under target/, so it runs beside the other scripts'
#    clusters), A `qm agent`s (default 4) offering this host's resources,
#    and `qm watch` following every event of the table (counted, not kept).
# 2. Runs `qm bench` open loop at R allocate+release pairs/s (default 1,000)
#    for M minutes (default 60), writing each minute's operations, errors and
#    latency percentiles (`--intervals-to`); beside it, every 5 s an
#    allocate and release of one core on the agents (which confirm it).
# 3. Every minute samples the resident memory (VmRSS) of each replica, agent,
#    the watcher and the load generator, and each replica's data dir size.
# 4. At the end writes DIR/soak.md: per replica the median RSS of minutes
#    10-19 and of the last 10 minutes (their growth must stay under 10%),
#    the largest after minute 10 (the snapshot cycle's peak), the data dir's
#    median and largest size, the p99 per minute, errors, events the
#    watcher received;
#    and DIR/soak.png (gnuplot: RSS and p99 per minute). DIR/samples.csv and
#    DIR/intervals.jsonl are the raw figures. Exits non-zero if a process
#    died, the load reported errors, or a replica's RSS grew by 10% or more.
# Then stops every process it started (by pid) and deletes the data, unless
# --keep. gnuplot (Debian's gnuplot-nox) is installed if missing (apt, root).
# Figures: BENCHMARKS.md, "The soak". The machine's cores are shared by the
# replicas, the agents, the watcher and the load: the times are this machine's.
set -euo pipefail
# The whole script is read before it runs (the braces up to the last
# line): an edit made while a long run goes on cannot change it half-way.
{
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

MINUTES=60
RATE=1000
AGENTS=4
OUT=$ROOT/target/soak
KEEP=no
REPORT_ONLY=no
usage() { echo "usage: scripts/soak.sh [--minutes M] [--rate R] [--agents A] [--out DIR] [--keep] | --report DIR" >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --minutes) MINUTES=${2:?}; shift 2 ;;
    --rate) RATE=${2:?}; shift 2 ;;
    --agents) AGENTS=${2:?}; shift 2 ;;
    --out) OUT=${2:?}; shift 2 ;;
    --keep) KEEP=yes; shift ;;
    --report) OUT=${2:?}; REPORT_ONLY=yes; shift 2 ;;
    *) usage ;;
  esac
done
for value in "$MINUTES" "$RATE" "$AGENTS"; do
  [[ "$value" =~ ^[1-9][0-9]*$ ]] || usage
done
# The growth is judged from minute 10 on (the tables and caches fill first).
GROWTH_FROM_MINUTE=10
GROWTH_PERCENT_MAX=10
# Minutes whose median is compared: the replicas' RSS swings with the
# snapshot and log-purge cycle (a few minutes), so single samples would
# compare a peak with a trough.
GROWTH_WINDOW_MINUTES=10
SAMPLE_S=60
AGENT_LOAD_INTERVAL_S=5

export QM_CLUSTER_DIR=${QM_CLUSTER_DIR:-$ROOT/target/soak-cluster}
export QM_BASE_PORT=${QM_BASE_PORT:-7800} QM_METRICS_BASE_PORT=${QM_METRICS_BASE_PORT:-7900}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
export QM_BIN=${QM_BIN:-$TARGET_DIR/release/qm}
export QM_NODE_BIN=${QM_NODE_BIN:-$TARGET_DIR/release/qm-node}
QM=$QM_BIN

# The report and the plot of a soak's directory (also: --report DIR).
report() {
  local verdict=0
  python3 - "$OUT" "$GROWTH_FROM_MINUTE" "$GROWTH_PERCENT_MAX" "$GROWTH_WINDOW_MINUTES" << 'PY' || verdict=$?
import csv, json, os, sys
out, growth_from, growth_max, window = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
settings = dict(line.split("=", 1) for line in open(f"{out}/settings").read().split())
rate, agents = settings["rate"], settings["agents"]
died = open(f"{out}/died").read().strip() if os.path.exists(f"{out}/died") else ""
bench_status = int(open(f"{out}/bench.status").read().strip() or 0) if os.path.exists(f"{out}/bench.status") else 0
median = lambda values: sorted(values)[len(values) // 2]
samples = list(csv.DictReader(open(f"{out}/samples.csv")))
intervals = [json.loads(line) for line in open(f"{out}/intervals.jsonl")] if samples else []
with open(f"{out}/p99.dat", "w") as dat:
    for minute, row in enumerate(intervals, 1):
        lat = row["latency"]
        dat.write(f"{minute} {lat.get('allocate', {}).get('p99_ms', 0)} {lat.get('release', {}).get('p99_ms', 0)}\n")
lines = [f"# Soak: {len(samples)} minutes at {rate} allocate+release pairs/s, 3 replicas, {agents} agents, a watcher", ""]
failed = []
if died.strip():
    failed.append(f"died:{died}")
if bench_status:
    failed.append(f"qm bench exited {bench_status}")
lines += [
    f"Growth is the median RSS of the last {window} minutes against the median of minutes {growth_from}-{growth_from + window - 1}"
    f" (a leak raises the second); the largest sample after minute {growth_from} is the peak of the snapshot and log-purge cycle.",
    "",
    f"| replica | RSS, minutes {growth_from}-{growth_from + window - 1} (MB) | RSS, last {window} minutes (MB) | growth | largest after minute {growth_from} (MB) | data dir, median / largest (MB) |",
    "|---|---:|---:|---:|---:|---:|",
]
for r in (1, 2, 3):
    rss = [int(s[f"replica{r}_rss_kb"]) for s in samples]
    data = [int(s[f"replica{r}_data_kb"]) for s in samples]
    disk = f"{median(data) / 1024:.0f} / {max(data) / 1024:.0f}" if data else "-"
    if len(rss) >= growth_from - 1 + 2 * window:
        base = median(rss[growth_from - 1:growth_from - 1 + window])
        end = median(rss[-window:])
        peak = max(rss[growth_from - 1:])
        growth = (end - base) * 100.0 / base
        if growth >= growth_max:
            failed.append(f"replica {r} RSS grew {growth:.1f}%")
        lines.append(f"| {r} | {base / 1024:.0f} | {end / 1024:.0f} | {growth:+.1f}% | {peak / 1024:.0f} ({(peak - base) * 100.0 / base:+.0f}%) | {disk} |")
    else:
        lines.append(f"| {r} | - | - | (shorter than {growth_from - 1 + 2 * window} min) | {max(rss or [0]) / 1024:.0f} | {disk} |")
errors, ops = {}, 0
for row in intervals:
    ops += row["ops"]
    for kind, count in row["errors"].items():
        errors[kind] = errors.get(kind, 0) + count
if errors:
    failed.append(f"errors {errors}")
p99 = [row["latency"].get("allocate", {}).get("p99_ms", 0) for row in intervals]
lines += ["", f"Operations: {ops} calls over {len(intervals)} intervals; errors: {errors or 0}."]
if p99:
    ordered = sorted(p99)
    lines.append(f"allocate p99 per minute: median {ordered[len(ordered) // 2]:.1f} ms, worst {ordered[-1]:.1f} ms (minute {p99.index(ordered[-1]) + 1}).")
if samples:
    last = samples[-1]
    lines.append(f"Agents' largest RSS {int(last['agents_rss_kb_max']) / 1024:.0f} MB, watcher {int(last['watcher_rss_kb']) / 1024:.0f} MB, "
                 f"load generator {int(last['bench_rss_kb']) / 1024:.0f} MB at the end; the watcher received {last['events']} events.")
try:
    n, ok = open(f"{out}/agent-load.count").read().split()
    lines.append(f"Agent grants: {ok} of {n} allocate+release rounds on the agents' cores completed.")
    if int(n) > 0 and int(ok) == 0:
        failed.append("no allocate+release round on the agents completed (see agent-load.err)")
except (OSError, ValueError):
    pass
lines += ["", "Verdict: " + ("FAILED: " + "; ".join(failed) if failed else f"ok (every process alive, no error, RSS growth under {growth_max:.0f}% after minute {growth_from})")]
open(f"{out}/soak.md", "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
sys.exit(1 if failed else 0)
PY
  local rate agents
  rate=$(sed -n 's/^rate=//p' "$OUT/settings")
  agents=$(sed -n 's/^agents=//p' "$OUT/settings")
  gnuplot << GP || echo "soak.sh: gnuplot failed; the figures are in $OUT/samples.csv" >&2
set terminal pngcairo size 1000,700
set output "$OUT/soak.png"
set multiplot layout 2,1 title "Soak: $rate pairs/s, 3 replicas, $agents agents, a watcher"
set datafile separator ","
set key outside right
set xlabel "minute"
set ylabel "resident memory (MB)"
plot for [r=2:4] "$OUT/samples.csv" using 1:(column(r)/1024) skip 1 with lines title sprintf("replica %d", r-1), \
     "$OUT/samples.csv" using 1:(\$7/1024) skip 1 with lines title "qm bench"
set datafile separator whitespace
set ylabel "p99 (ms)"
plot "$OUT/p99.dat" using 1:2 with linespoints title "allocate p99", "$OUT/p99.dat" using 1:3 with linespoints title "release p99"
unset multiplot
GP
  echo "report: $OUT/soak.md, plot: $OUT/soak.png" >&2
  return $verdict
}

if ! command -v gnuplot > /dev/null; then
  echo "soak.sh: installing gnuplot-nox (apt)" >&2
  if [ "$(id -u)" = 0 ]; then
    apt-get update -q >&2 && apt-get install -y -q gnuplot-nox >&2
  else
    sudo apt-get update -q >&2 && sudo apt-get install -y -q gnuplot-nox >&2
  fi
fi
if [ $REPORT_ONLY = yes ]; then
  report
  exit
fi
if [ -z "${QM_SOAK_SKIP_BUILD:-}" ]; then
  echo "building qm-node and qm (release)..." >&2
  cargo build --release -p qm-raft-node -p qm-cli --bins >&2
fi

rm -rf "$OUT"
mkdir -p "$OUT"
printf 'rate=%s\nagents=%s\n' "$RATE" "$AGENTS" > "$OUT/settings"
PIDS=()
stop_all() {
  local pid
  for pid in "${PIDS[@]}"; do kill "$pid" 2> /dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2> /dev/null || true; done
  if [ $KEEP = yes ]; then
    scripts/cluster.sh down --keep-data > /dev/null 2>&1 || true
  else
    scripts/cluster.sh down > /dev/null 2>&1 || true
  fi
}
trap stop_all EXIT

scripts/cluster.sh up --nodes 3 --same-session > "$OUT/cluster-up.txt"
export QM_ENDPOINTS
QM_ENDPOINTS=$(tail -n 1 "$OUT/cluster-up.txt" | sed 's/^QM_ENDPOINTS=//')
replica_pid() { cat "$QM_CLUSTER_DIR/$1/pid"; }

agent_pids=()
for ((i = 1; i <= AGENTS; i++)); do
  "$QM" agent --provider-id "soak-agent-$i" --from-host --label soak=yes > "$OUT/agent-$i.log" 2>&1 &
  agent_pids+=($!)
  PIDS+=($!)
done
# The watcher's events are counted, not kept (over 4,000 a second).
"$QM" watch --output json 2> "$OUT/watch.err" \
  > >(awk -v file="$OUT/events.count" '{ n++ } n % 10000 == 0 { print n > file; close(file) } END { print n + 0 > file }') &
watcher_pid=$!
PIDS+=($watcher_pid)

# One core on the agents, allocated and released every few seconds: the
# agents see and confirm real grants during the whole soak.
agent_load() {
  local n=0 ok=0 reply id
  while true; do
    n=$((n + 1))
    if reply=$("$QM" --output json allocate --requester soak-agents --cpu-cores 1 --label soak=yes --wait --wait-ms 5000 2>> "$OUT/agent-load.err"); then
      id=$(sed -n 's/.*"allocation_id": *"\([^"]*\)".*/\1/p' <<< "$reply" | head -n 1)
      if [ -n "$id" ] && "$QM" release "$id" > /dev/null 2>> "$OUT/agent-load.err"; then
        ok=$((ok + 1))
      fi
    fi
    echo "$n $ok" > "$OUT/agent-load.count"
    sleep "$AGENT_LOAD_INTERVAL_S"
  done
}
agent_load &
PIDS+=($!)

# Wait until every agent has registered its provider.
for _ in $(seq 1 60); do
  registered=$("$QM" --output json provider list 2> /dev/null | grep -o '"soak-agent-[0-9]*"' | sort -u | wc -l || true)
  [ "$registered" -ge "$AGENTS" ] && break
  sleep 1
done

echo "soak: $MINUTES min at $RATE pairs/s, $AGENTS agents and a watcher; report in $OUT" >&2
"$QM" --output json bench --quiet --warmup 5 --duration $((MINUTES * 60)) --rate "$RATE" --concurrency 1024 \
  --workload alloc-release --intervals-to "$OUT/intervals.jsonl" --interval-s "$SAMPLE_S" > "$OUT/bench.json" 2> "$OUT/bench.err" &
bench_pid=$!
PIDS+=($bench_pid)

rss_kb() { sed -n 's/^VmRSS:[[:space:]]*\([0-9]*\) kB/\1/p' "/proc/$1/status" 2> /dev/null || echo 0; }
{
  printf 'minute,replica1_rss_kb,replica2_rss_kb,replica3_rss_kb,agents_rss_kb_max,watcher_rss_kb,bench_rss_kb'
  printf ',replica1_data_kb,replica2_data_kb,replica3_data_kb,events\n'
} > "$OUT/samples.csv"
died=""
for ((minute = 1; minute <= MINUTES; minute++)); do
  sleep "$SAMPLE_S" &
  wait $!
  for id in 1 2 3; do
    kill -0 "$(replica_pid "$id")" 2> /dev/null || died="$died replica-$id"
  done
  for pid in "${agent_pids[@]}" "$watcher_pid" "$bench_pid"; do
    kill -0 "$pid" 2> /dev/null || died="$died pid-$pid"
  done
  agents_max=0
  for pid in "${agent_pids[@]}"; do
    rss=$(rss_kb "$pid")
    [ "$rss" -gt "$agents_max" ] && agents_max=$rss
  done
  printf '%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s\n' "$minute" \
    "$(rss_kb "$(replica_pid 1)")" "$(rss_kb "$(replica_pid 2)")" "$(rss_kb "$(replica_pid 3)")" \
    "$agents_max" "$(rss_kb "$watcher_pid")" "$(rss_kb "$bench_pid")" \
    "$(du -sk "$QM_CLUSTER_DIR/1/data" | cut -f1)" "$(du -sk "$QM_CLUSTER_DIR/2/data" | cut -f1)" \
    "$(du -sk "$QM_CLUSTER_DIR/3/data" | cut -f1)" "$(cat "$OUT/events.count" 2> /dev/null || echo 0)" >> "$OUT/samples.csv"
  [ -n "$died" ] && break
done
bench_status=0
[ -z "$died" ] && { wait "$bench_pid" || bench_status=$?; }
echo "$died" > "$OUT/died"
echo "$bench_status" > "$OUT/bench.status"
report
exit
}
