#!/usr/bin/env bash
# A local 3-replica release cluster at scale (issues 23 and 26): load it,
# then print what an operator feels at that size.
#
#   scripts/scale.sh [--quick] [--providers N] [--allocations M] [--concurrency C] [--keep]
#   scripts/scale.sh --mass-failure [--quick] [--providers N] [--allocations M] [--failed F] [--concurrency C] [--keep]
#
# 1. Starts 3 replicas (scripts/cluster.sh, release builds, its own ports and
#    a cluster dir under target/, so it runs beside scripts/bench.sh and
#    scripts/cluster.sh's default cluster). The replicas snapshot as their
#    defaults say (every 1,000,000 commands or 2 s of apply time, whichever
#    comes first: several times during the load, and the last one with the
#    table about full), and declare a provider failed only after a day of silence:
#    the loader's providers do not heartbeat (10,000 heartbeating providers
#    would be a load of their own on this machine; the memory is the table's).
# 2. Registers N providers (default 10,000) of one-unit slots and places M
#    allocations (default 1,000,000) through the cluster with
#    `client/examples/scale_load.rs`, C in flight (default 256).
# 3. Once no replica has built a snapshot for QM_SCALE_SNAPSHOT_QUIET_S
#    (default 8), prints, per replica: resident memory (VmRSS now, VmHWM the
#    peak, from /proc/PID/status), how many snapshots it built and the last
#    one's build (its log line: copy, encode, save, bytes).
# 4. Kills a follower with -9, starts it again on its data dir, and prints
#    how long until it serves reads: it answers, knows the leader and has
#    applied everything committed before the kill (what a linearizable read
#    on it waits for); and how many entries it applied again after its
#    snapshot, in how long.
# 5. Starts a 4th replica on an empty data dir, adds it (`qm cluster add`:
#    learner, caught up by snapshot, promoted), and prints how long that took
#    and its resident memory.
# 6. Prints every replica's resident memory again, QM_SCALE_SETTLE_S
#    (default 10) later: settled, once the last snapshot's buffers are freed.
# Then stops every replica it started (by pid) and deletes the data, unless
# --keep. --quick is 1,000 providers and 100,000 allocations, for a trial.
# Figures: BENCHMARKS.md, "Memory and disk". The machine's cores are shared
# by the replicas and the loader; the times are this machine's.
#
# --mass-failure (issue 26) runs 1-3 with providers that heartbeat, then,
# instead of 4-5, a mass failure and a bulk release:
# 1. The replicas declare a provider failed after QM_SCALE_FAILURE_WINDOW_MS
#    (default 5,000) of silence; the loader keeps every provider
#    heartbeating every QM_SCALE_HEARTBEAT_MS (default 1,000) from its
#    registration on, and stays up after the load. Default size: 600
#    providers (2,084 slots each) for 1,000,000 allocations, so that the
#    survivors have room for what the failed ones held; --quick: 60 and
#    100,000.
# 2. Stops the heartbeats of F providers at once (default a sixth of them:
#    100 of 600; the loader's first ones, which placement filled first).
# 3. Prints how long until all F are declared failed and every evacuated
#    allocation is placed or queued (`evacuations_pending` 0 in `qm state
#    --output json`), and per replica, before and after: the longest apply
#    (`apply_duration_max_seconds`), the applies over 10 and 100 ms (the
#    `apply_duration_seconds` histogram), and the longest interval without
#    hearing from the leader (`leader_contact_age_max_seconds`); the leader
#    and its term before and after.
# 4. Releases the whole namespace (`qm release --namespace scale`: the
#    million) and prints how long it took, the same apply figures, and the
#    term again.
# Figures: BENCHMARKS.md, "Mass provider failure and bulk release".
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

PROVIDERS=10000
ALLOCATIONS=1000000
CONCURRENCY=256
KEEP=no
MASS_FAILURE=no
QUICK=no
FAILED=
PROVIDERS_GIVEN=
ALLOCATIONS_GIVEN=
usage() {
  echo "usage: scripts/scale.sh [--mass-failure [--failed F]] [--quick] [--providers N] [--allocations M] [--concurrency C] [--keep]" >&2
  exit 2
}
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=yes; shift ;;
    --mass-failure) MASS_FAILURE=yes; shift ;;
    --failed) FAILED=${2:?}; shift 2 ;;
    --providers) PROVIDERS_GIVEN=${2:?}; shift 2 ;;
    --allocations) ALLOCATIONS_GIVEN=${2:?}; shift 2 ;;
    --concurrency) CONCURRENCY=${2:?}; shift 2 ;;
    --keep) KEEP=yes; shift ;;
    *) usage ;;
  esac
done
if [ $MASS_FAILURE = yes ]; then
  PROVIDERS=600
  [ $QUICK = yes ] && { PROVIDERS=60; ALLOCATIONS=100000; }
elif [ $QUICK = yes ]; then
  PROVIDERS=1000; ALLOCATIONS=100000
fi
PROVIDERS=${PROVIDERS_GIVEN:-$PROVIDERS}
ALLOCATIONS=${ALLOCATIONS_GIVEN:-$ALLOCATIONS}
FAILED=${FAILED:-$(((PROVIDERS + 5) / 6))}
for value in "$PROVIDERS" "$ALLOCATIONS" "$CONCURRENCY" "$FAILED"; do
  [[ "$value" =~ ^[1-9][0-9]*$ ]] || usage
done
[ "$FAILED" -lt "$PROVIDERS" ] || usage

export QM_CLUSTER_DIR=${QM_CLUSTER_DIR:-$ROOT/target/scale-cluster}
export QM_BASE_PORT=${QM_BASE_PORT:-7600} QM_METRICS_BASE_PORT=${QM_METRICS_BASE_PORT:-7700}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
# Other binaries (an earlier build's, to compare) with QM_BIN, QM_NODE_BIN
# and QM_SCALE_LOADER; QM_SCALE_SKIP_BUILD=1 then skips the build.
export QM_BIN=${QM_BIN:-$TARGET_DIR/release/qm}
export QM_NODE_BIN=${QM_NODE_BIN:-$TARGET_DIR/release/qm-node}
QM=$QM_BIN
NODE=$QM_NODE_BIN
LOADER=${QM_SCALE_LOADER:-$TARGET_DIR/release/examples/scale_load}
# How long each wait below may take before the run is given up.
WAIT_S=${QM_SCALE_WAIT_S:-600}
SNAPSHOT_WAIT_S=${QM_SCALE_SNAPSHOT_WAIT_S:-120}
# The snapshots are done once none was built for this long (longer than a
# build takes at a million allocations: ~5 s of wall clock).
SNAPSHOT_QUIET_S=${QM_SCALE_SNAPSHOT_QUIET_S:-8}
# How long after the new replica the replicas' memory is sampled again, settled.
SETTLE_S=${QM_SCALE_SETTLE_S:-10}
PROVIDER_FAILURE_WINDOW_MS=86400000
HEARTBEAT_MS=${QM_SCALE_HEARTBEAT_MS:-1000}
if [ $MASS_FAILURE = yes ]; then PROVIDER_FAILURE_WINDOW_MS=${QM_SCALE_FAILURE_WINDOW_MS:-5000}; fi
LOADER_PID=
NEW_ID=4
NEW_ADDR="127.0.0.1:$((QM_BASE_PORT + NEW_ID))"
NEW_DIR="$QM_CLUSTER_DIR/$NEW_ID"
NEW_PID=

if [ -z "${QM_SCALE_SKIP_BUILD:-}" ]; then
  echo "building qm-node, qm and the loader (release)..." >&2
  cargo build --release -p qm-raft-node -p qm-cli --bins >&2
  cargo build --release -p qm-client --example scale_load >&2
fi

stop_all() {
  if [ -n "$LOADER_PID" ] && kill -0 "$LOADER_PID" 2>/dev/null; then
    kill -TERM "$LOADER_PID" 2>/dev/null || true
    wait "$LOADER_PID" 2>/dev/null || true
  fi
  if [ -n "$NEW_PID" ] && kill -0 "$NEW_PID" 2>/dev/null; then
    kill -TERM "$NEW_PID" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$NEW_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$NEW_PID" 2>/dev/null || true
  fi
  if [ $KEEP = yes ]; then
    scripts/cluster.sh down --keep-data >/dev/null 2>&1 || true
  else
    scripts/cluster.sh down >/dev/null 2>&1 || true
  fi
  rm -f "$QM_CLUSTER_DIR.up"
}
trap stop_all EXIT

# shellcheck source=scripts/lib/metrics.sh
. "$ROOT/scripts/lib/metrics.sh"
# The value of metric $2 on replica $1.
metric() { metric_at "$((QM_METRICS_BASE_PORT + $1))" "$2"; }
pid_of() { if [ "$1" = "$NEW_ID" ]; then echo "$NEW_PID"; else cat "$QM_CLUSTER_DIR/$1/pid"; fi; }
status_kb() { awk -v field="$2:" '$1 == field { print $2 }' "/proc/$(pid_of "$1")/status"; }
mb() { echo "$(($1 / 1024)) MB"; }
now_ms() { date +%s%3N; }
# Waits until replica $1 knows a leader and has applied at least $2.
wait_applied() {
  local i=$1 index=$2 deadline=$((SECONDS + WAIT_S)) applied leader
  while [ $SECONDS -lt $deadline ]; do
    applied=$(metric "$i" raft_applied_index || true)
    leader=$(metric "$i" raft_leader_id || true)
    if [ -n "$applied" ] && [ "$applied" -ge "$index" ] && [ -n "$leader" ] && [ "$leader" != 0 ]; then return 0; fi
    sleep 0.1
  done
  echo "scale.sh: replica $i did not apply index $index within ${WAIT_S}s" >&2
  return 1
}
# The fields of the last `snapshot built` line of replica $1's log.
last_snapshot() {
  grep 'snapshot built' "$QM_CLUSTER_DIR/$1/node.log" | tail -n 1 \
    | grep -oE '(bytes|copy_ms|encode_ms|encode_cpu_ms|save_ms)=[0-9]+' | tr '\n' ' ' || true
}
snapshots_built() { grep -c 'snapshot built' "$QM_CLUSTER_DIR/$1/node.log" || true; }

scripts/cluster.sh up --nodes 3 --same-session -- \
  --provider-failure-window-ms "$PROVIDER_FAILURE_WINDOW_MS" >"$QM_CLUSTER_DIR.up" 2>&1 \
  || { cat "$QM_CLUSTER_DIR.up" >&2; exit 1; }
export QM_ENDPOINTS; QM_ENDPOINTS=$(scripts/cluster.sh endpoints)
echo "cluster up: $QM_ENDPOINTS; loading $PROVIDERS providers and $ALLOCATIONS allocations ($CONCURRENCY in flight)"

loaded_at_start=$(now_ms)
if [ $MASS_FAILURE = yes ]; then
  # In the background, heartbeating until stop_all; its first line is the load's.
  LOADER_OUT=$QM_CLUSTER_DIR/loader.out
  "$LOADER" "$QM_ENDPOINTS" "$PROVIDERS" "$ALLOCATIONS" "$CONCURRENCY" \
    --heartbeat-ms "$HEARTBEAT_MS" --stop-on-usr1 "$FAILED" >"$LOADER_OUT" &
  LOADER_PID=$!
  until grep -q '^heartbeating' "$LOADER_OUT" 2>/dev/null; do
    kill -0 "$LOADER_PID" 2>/dev/null || { wait "$LOADER_PID" || true; echo "scale.sh: the loader failed" >&2; exit 1; }
    sleep 0.5
  done
  head -n 1 "$LOADER_OUT"
else
  "$LOADER" "$QM_ENDPOINTS" "$PROVIDERS" "$ALLOCATIONS" "$CONCURRENCY"
fi
echo "load: $(((($(now_ms) - loaded_at_start)) / 1000)) s"

leader=$(scripts/cluster.sh leader)
commit=$(metric "$leader" raft_commit_index)
for i in 1 2 3; do wait_applied "$i" "$commit"; done
# The snapshots asked for during the load: done once no replica has built
# one for SNAPSHOT_QUIET_S (applying nothing more, they ask for no more).
deadline=$((SECONDS + SNAPSHOT_WAIT_S))
built_before=""
quiet_since=$SECONDS
while [ $SECONDS -lt $deadline ] && [ $((SECONDS - quiet_since)) -lt "$SNAPSHOT_QUIET_S" ]; do
  built="$(snapshots_built 1) $(snapshots_built 2) $(snapshots_built 3)"
  if [ "$built" != "$built_before" ]; then built_before=$built; quiet_since=$SECONDS; fi
  sleep 1
done

echo
echo "With $ALLOCATIONS allocations on $PROVIDERS providers (leader: replica $leader, commit index $commit):"
printf '%-8s %-10s %-12s %-12s %s\n' REPLICA PID VMRSS VMHWM "SNAPSHOTS  THE LAST ONE"
for i in 1 2 3; do
  printf '%-8s %-10s %-12s %-12s %-10s %s\n' "$i" "$(pid_of "$i")" "$(mb "$(status_kb "$i" VmRSS)")" "$(mb "$(status_kb "$i" VmHWM)")" \
    "$(snapshots_built "$i")" "$(last_snapshot "$i")"
done
du -sh "$QM_CLUSTER_DIR"/[123]/data | sed 's/^/data dir: /'

if [ $MASS_FAILURE = yes ]; then
  # shellcheck source=scripts/scale-mass-failure.sh
  . scripts/scale-mass-failure.sh
  exit 0
fi

# Restart: a follower killed with -9, started again on its data dir.
victim=1
[ "$victim" = "$leader" ] && victim=2
commit=$(metric "$leader" raft_commit_index)
victim_snapshot=$(metric "$victim" raft_snapshot_index)
scripts/cluster.sh kill "$victim" 2>/dev/null
sleep 1
restart_at=$(now_ms)
scripts/cluster.sh start "$victim" 2>/dev/null
wait_applied "$victim" "$commit"
restarted_ms=$(($(now_ms) - restart_at))
echo
echo "restart: replica $victim killed -9 and started on its data: serving reads (leader known, index $commit applied) after $restarted_ms ms; VmRSS $(mb "$(status_kb "$victim" VmRSS)"), VmHWM $(mb "$(status_kb "$victim" VmHWM)")"
echo "  its snapshot was of index $victim_snapshot: $((commit - victim_snapshot)) log entries to apply again after it"
# Where that time went, from the restarted replica's log lines (issue 23):
# ms since the start of each step's line, and the step's own figures.
restart_step() {
  local line at
  line=$(grep "$1" "$QM_CLUSTER_DIR/$victim/node.log" | tail -n 1)
  [ -n "$line" ] || { echo "  $1: (no line)"; return; }
  at=$(date -d "$(awk '{print $1}' <<<"$line")" +%s%3N)
  echo "  at $((at - restart_at)) ms: $1 $(grep -oE '(sled_open_ms|snapshot_load_ms|elapsed_ms|term)=[0-9]+' <<<"$line" | tr '\n' ' ')"
}
for step in "storage opened" "raft started" "replica starting" "first contact from a leader"; do restart_step "$step"; done

# A new replica: empty data dir, added as a learner, caught up, promoted.
# Its --peers name the running replicas too: a replica that finds itself
# first in its --peers and no peer in a cluster initialises a new one (with
# itself alone, a cluster of one, whose id `qm cluster add` then refuses).
mkdir -p "$NEW_DIR"
NEW_PEERS="$(scripts/cluster.sh endpoints | tr ',' '\n' | awk '{ printf "%s%d=%s", (NR > 1 ? "," : ""), NR, $0 }'),$NEW_ID=$NEW_ADDR"
"$NODE" --id "$NEW_ID" --listen "$NEW_ADDR" --data-dir "$NEW_DIR/data" --peers "$NEW_PEERS" \
  --metrics-listen "127.0.0.1:$((QM_METRICS_BASE_PORT + NEW_ID))" --worker-threads 1 \
  --provider-failure-window-ms "$PROVIDER_FAILURE_WINDOW_MS" \
  >>"$NEW_DIR/node.log" 2>&1 </dev/null &
NEW_PID=$!
commit=$(metric "$leader" raft_commit_index)
add_at=$(now_ms)
# A retried add can find its own first attempt still under way (the
# configuration change in progress): try again until it is done.
for attempt in $(seq 30); do
  if "$QM" cluster add --id "$NEW_ID" --addr "$NEW_ADDR" >"$NEW_DIR/add.txt" 2>&1; then break; fi
  [ "$attempt" -lt 30 ] || { cat "$NEW_DIR/add.txt" >&2; exit 1; }
  sleep 1
done
added_ms=$(($(now_ms) - add_at))
wait_applied "$NEW_ID" "$commit"
caught_up_ms=$(($(now_ms) - add_at))
echo "new replica: $NEW_ID added (learner, caught up, voter) in $added_ms ms; applied index $commit after $caught_up_ms ms; VmRSS $(mb "$(status_kb "$NEW_ID" VmRSS)"), VmHWM $(mb "$(status_kb "$NEW_ID" VmHWM)")"

# The same replicas once the last snapshot's buffers are let go (qm-node
# hands freed memory back to the OS every 2 s: raft-node/src/main.rs).
sleep "$SETTLE_S"
settled=""
for i in 1 2 3 "$NEW_ID"; do settled="$settled replica $i $(mb "$(status_kb "$i" VmRSS)");"; done
echo "settled, $SETTLE_S s later: VmRSS$settled"
# What the resident memory is: all of it (Rss), the heap and other private
# memory (Anonymous, Private_Dirty), and how much of the heap is in
# transparent huge pages (AnonHugePages).
for i in 1 2 3 "$NEW_ID"; do
  echo "  replica $i: $(awk '$1 ~ /^(Rss|Anonymous|AnonHugePages|Private_Dirty):$/ { printf "%s %d MB  ", $1, $2 / 1024 }' "/proc/$(pid_of "$i")/smaps_rollup")"
done
