#!/usr/bin/env bash
# A local Quartermaster cluster on 127.0.0.1, for demos, benchmarks and hands-on work.
#
#   scripts/cluster.sh up [--nodes 3|5] [--tls] [--same-session]
#                                         build (release) if needed, start, wait for a leader; --tls: mutual TLS
#                                         with certificates made by `qm certs init` in .cluster/certs;
#                                         --same-session: replicas stay in the caller's session (see below)
#   scripts/cluster.sh down [--keep-data] stop every replica this script started; delete .cluster/ unless --keep-data
#   scripts/cluster.sh status             pid, liveness and Raft role of each replica
#   scripts/cluster.sh kill N             kill -9 replica N
#   scripts/cluster.sh stop N | cont N    SIGSTOP / SIGCONT replica N
#   scripts/cluster.sh start N            start replica N again with its data dir
#   scripts/cluster.sh rolling-restart    restart every replica, one at a time, the leader last: SIGTERM, wait for
#                                         it to exit, start it (a new binary, if rebuilt), wait until it has applied
#                                         what the leader had committed and a leader is known, then the next
#
# Replica N listens on 127.0.0.1:$((QM_BASE_PORT+N)) (7101, 7102, ...), serves
# Prometheus metrics alone (plain HTTP, --metrics-plain-http with --tls) on 127.0.0.1:$((QM_METRICS_BASE_PORT+N))
# (7201, ...) and the HTTP API (JSON, Consul-compatible catalog, /metrics; TLS
# with --tls) on 127.0.0.1:$((QM_HTTP_BASE_PORT+10*N)) (7210, 7220, ...). Data,
# logs and pids live in .cluster/N/ in the repository (git-ignored). Processes
# are only ever signalled by the pid this script recorded for them.
# With --tls, replica N serves with .cluster/certs/replica-N.crt, and the last
# lines printed are the QM_TLS_* variables that make `qm` an admin.
# Every replica here shares this machine's cores, so each runs one runtime
# worker thread (QM_WORKER_THREADS to change it): measured, ~17% less CPU per
# request than one worker per core each (BENCHMARKS.md).
# Each replica normally gets a session of its own (setsid), so it outlives
# the terminal. Linux's autogroup scheduling then gives every session an equal
# share of the cores whatever its threads' nice values, so a replica encoding a
# snapshot at nice 10 still takes CPU from the leader next to it. With
# --same-session (what scripts/bench.sh uses) the replicas stay in the
# caller's session and group, as services on a machine without autogroup do,
# and background work yields to serving work across replicas (BENCHMARKS.md).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CLUSTER_DIR=${QM_CLUSTER_DIR:-$ROOT/.cluster}
BASE_PORT=${QM_BASE_PORT:-7100}
METRICS_BASE_PORT=${QM_METRICS_BASE_PORT:-7200}
HTTP_BASE_PORT=${QM_HTTP_BASE_PORT:-$METRICS_BASE_PORT}
PROFILE=${QM_PROFILE:-release}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
NODE_BIN=${QM_NODE_BIN:-$TARGET_DIR/$PROFILE/qm-node}
QM_BIN=${QM_BIN:-$TARGET_DIR/$PROFILE/qm}
LEADER_WAIT_S=${QM_LEADER_WAIT_S:-30}
WORKER_THREADS=${QM_WORKER_THREADS:-1}

die() { echo "cluster.sh: $*" >&2; exit 1; }

node_count() { cat "$CLUSTER_DIR/nodes" 2>/dev/null || die "no cluster here (run: scripts/cluster.sh up)"; }
addr() { echo "127.0.0.1:$((BASE_PORT + $1))"; }
peers() {
  local n=$1 list="" i
  for ((i = 1; i <= n; i++)); do list+="${list:+,}$i=$(addr "$i")"; done
  echo "$list"
}
endpoints() {
  local n=$1 list="" i
  for ((i = 1; i <= n; i++)); do list+="${list:+,}$(addr "$i")"; done
  echo "$list"
}
http_addr() { echo "127.0.0.1:$((HTTP_BASE_PORT + 10 * $1))"; }
http_peers() {
  local n=$1 list="" i
  for ((i = 1; i <= n; i++)); do list+="${list:+,}$i=$(http_addr "$i")"; done
  echo "$list"
}
http_endpoints() {
  local n=$1 list="" i scheme=http
  tls_on && scheme=https
  for ((i = 1; i <= n; i++)); do list+="${list:+,}$scheme://$(http_addr "$i")"; done
  echo "$list"
}
pid_of() { cat "$CLUSTER_DIR/$1/pid" 2>/dev/null || true; }
CERTS_DIR=$CLUSTER_DIR/certs
tls_on() { [ -f "$CLUSTER_DIR/tls" ]; }
tls_args() {
  tls_on || return 0
  printf '%s\n' --tls-cert "$CERTS_DIR/replica-$1.crt" --tls-key "$CERTS_DIR/replica-$1.key" --tls-ca "$CERTS_DIR/ca.crt"
  # qm certs init writes an (empty) CRL: `qm certs revoke --dir .cluster/certs FILE` then takes effect without a restart.
  [ -f "$CERTS_DIR/ca.crl" ] && printf '%s\n' --tls-crl "$CERTS_DIR/ca.crl"
  # This script reads the leader from the metrics port over bash's /dev/tcp, without a certificate.
  printf '%s\n' --metrics-plain-http
}
tls_env() {
  tls_on || return 0
  echo "QM_TLS_CA=$CERTS_DIR/ca.crt"
  echo "QM_TLS_CERT=$CERTS_DIR/admin.crt"
  echo "QM_TLS_KEY=$CERTS_DIR/admin.key"
}
# A killed replica can linger as a zombie until its (re)parent reaps it: that is not alive.
alive() {
  local pid; pid=$(pid_of "$1")
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && [ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" != Z ]
}
check_id() {
  local n; n=$(node_count)
  [[ "${1:-}" =~ ^[0-9]+$ ]] && [ "$1" -ge 1 ] && [ "$1" -le "$n" ] || die "replica id must be 1..$n, got '${1:-}'"
}

# shellcheck source=scripts/lib/metrics.sh
. "$ROOT/scripts/lib/metrics.sh"
# The value of metric $2 on replica $1.
metric() { metric_at "$((METRICS_BASE_PORT + $1))" "$2"; }

build() {
  if [ -x "$NODE_BIN" ] && [ -x "$QM_BIN" ] && [ -z "${QM_REBUILD:-}" ]; then return; fi
  echo "building qm-node and qm ($PROFILE)..." >&2
  local flag=()
  [ "$PROFILE" = release ] && flag=(--release)
  (cd "$ROOT" && cargo build "${flag[@]}" -p qm-raft-node -p qm-cli --bins) >&2
}

start_node() {
  local i=$1 n; n=$(node_count)
  alive "$i" && die "replica $i is already running (pid $(pid_of "$i"))"
  mkdir -p "$CLUSTER_DIR/$i"
  local tls=()
  mapfile -t tls < <(tls_args "$i")
  # setsid: the replica outlives this script and gets no terminal signals
  # (unless the cluster was started with --same-session).
  local session=(setsid)
  [ -f "$CLUSTER_DIR/same-session" ] && session=()
  "${session[@]}" "$NODE_BIN" --id "$i" --listen "$(addr "$i")" --data-dir "$CLUSTER_DIR/$i/data" \
    --peers "$(peers "$n")" --metrics-listen "127.0.0.1:$((METRICS_BASE_PORT + i))" --http-peers "$(http_peers "$n")" \
    --worker-threads "$WORKER_THREADS" "${tls[@]}" "${EXTRA_NODE_ARGS[@]}" >>"$CLUSTER_DIR/$i/node.log" 2>&1 </dev/null &
  echo $! >"$CLUSTER_DIR/$i/pid"
}

wait_for_leader() {
  local n=$1 deadline=$((SECONDS + LEADER_WAIT_S)) i leader
  while [ $SECONDS -lt $deadline ]; do
    for ((i = 1; i <= n; i++)); do
      alive "$i" || continue
      leader=$(metric "$i" raft_leader_id || true)
      if [ -n "$leader" ] && [ "$leader" != 0 ]; then echo "$leader"; return 0; fi
    done
    sleep 0.2
  done
  return 1
}

cmd_up() {
  local n=3 tls=no same_session=no r
  EXTRA_NODE_ARGS=()
  while [ $# -gt 0 ]; do
    case "$1" in
      --nodes) n=${2:-}; shift 2 ;;
      --tls) tls=yes; shift ;;
      --same-session) same_session=yes; shift ;;
      --) shift; EXTRA_NODE_ARGS=("$@"); break ;;
      *) die "unknown option to up: $1 (usage: up [--nodes 3|5] [--tls] [--same-session] [-- extra qm-node flags])" ;;
    esac
  done
  [[ "$n" =~ ^[1-9]$ ]] || die "--nodes must be 1..9, got '$n'"
  if [ -f "$CLUSTER_DIR/nodes" ]; then
    local i
    for ((i = 1; i <= $(node_count); i++)); do alive "$i" && die "a cluster is already up (run: scripts/cluster.sh down)"; done
  fi
  build
  mkdir -p "$CLUSTER_DIR"
  echo "$n" >"$CLUSTER_DIR/nodes"
  rm -f "$CLUSTER_DIR/tls" "$CLUSTER_DIR/same-session"
  [ $same_session = yes ] && touch "$CLUSTER_DIR/same-session"
  if [ $tls = yes ]; then
    # Certificates are made once and kept with the cluster's data (down removes both).
    if [ ! -f "$CERTS_DIR/ca.key" ]; then
      "$QM_BIN" certs init --dir "$CERTS_DIR" --replicas "$n" --hosts localhost,127.0.0.1 >&2 \
        || die "qm certs init failed"
    fi
    for ((r = 1; r <= n; r++)); do
      [ -f "$CERTS_DIR/replica-$r.crt" ] || die "$CERTS_DIR has no replica-$r.crt (made for fewer replicas?); run: scripts/cluster.sh down"
    done
    touch "$CLUSTER_DIR/tls"
  fi
  # One flag a line; no line at all without flags (an empty line would be an empty argument).
  : >"$CLUSTER_DIR/extra-args"
  if [ ${#EXTRA_NODE_ARGS[@]} -gt 0 ]; then printf '%s\n' "${EXTRA_NODE_ARGS[@]}" >"$CLUSTER_DIR/extra-args"; fi
  local i
  for ((i = 1; i <= n; i++)); do start_node "$i"; done
  local leader
  leader=$(wait_for_leader "$n") || die "no leader within ${LEADER_WAIT_S}s; see $CLUSTER_DIR/*/node.log"
  echo "cluster of $n replicas is up; replica $leader leads$(tls_on && echo ', mutual TLS on (certificates in '"$CERTS_DIR"')')" >&2
  echo "QM_HTTP_ENDPOINTS=$(http_endpoints "$n")"
  echo "QM_ENDPOINTS=$(endpoints "$n")"
  tls_env
}

load_extra_args() {
  EXTRA_NODE_ARGS=()
  [ -s "$CLUSTER_DIR/extra-args" ] && mapfile -t EXTRA_NODE_ARGS <"$CLUSTER_DIR/extra-args"
  return 0
}

# How long a replica may take to exit on SIGTERM, and to catch up after a restart.
STOP_WAIT_S=${QM_STOP_WAIT_S:-30}
CATCH_UP_WAIT_S=${QM_CATCH_UP_WAIT_S:-60}

# Stops replica $1 with SIGTERM (it finishes in-flight calls), then its pid is gone.
stop_node() {
  local i=$1 pid deadline=$((SECONDS + STOP_WAIT_S))
  pid=$(pid_of "$i")
  alive "$i" || return 0
  kill -CONT "$pid" 2>/dev/null || true
  kill -TERM "$pid"
  while alive "$i"; do
    [ $SECONDS -lt $deadline ] || die "replica $i (pid $pid) did not exit within ${STOP_WAIT_S}s of SIGTERM"
    sleep 0.1
  done
  rm -f "$CLUSTER_DIR/$i/pid"
}

# Waits until replica $1 answers, a leader is known, and $1 has applied at least $2.
wait_caught_up() {
  local i=$1 index=$2 deadline=$((SECONDS + CATCH_UP_WAIT_S)) applied leader
  while [ $SECONDS -lt $deadline ]; do
    applied=$(metric "$i" raft_applied_index || true)
    leader=$(metric "$i" raft_leader_id || true)
    if [ -n "$applied" ] && [ "$applied" -ge "$index" ] && [ -n "$leader" ] && [ "$leader" != 0 ]; then return 0; fi
    sleep 0.2
  done
  die "replica $i did not catch up to index $index with a leader within ${CATCH_UP_WAIT_S}s; see $CLUSTER_DIR/$i/node.log"
}

cmd_rolling_restart() {
  local n i leader commit order=()
  n=$(node_count)
  for ((i = 1; i <= n; i++)); do alive "$i" || die "replica $i is not running: start it first"; done
  build
  load_extra_args
  leader=$(wait_for_leader "$n") || die "no leader: not restarting anything"
  # Followers first, the leader last: one election, not one per replica.
  for ((i = 1; i <= n; i++)); do [ "$i" = "$leader" ] || order+=("$i"); done
  order+=("$leader")
  for i in "${order[@]}"; do
    leader=$(wait_for_leader "$n") || die "no leader before restarting replica $i"
    commit=$(metric "$leader" raft_commit_index || echo 0)
    echo "restarting replica $i (leader $leader, commit index $commit)" >&2
    stop_node "$i"
    start_node "$i"
    wait_caught_up "$i" "$commit"
    echo "replica $i is back (pid $(pid_of "$i")) and caught up" >&2
  done
  leader=$(wait_for_leader "$n") || die "no leader after the restart"
  echo "rolling restart done; replica $leader leads" >&2
}

cmd_down() {
  local keep=no i pid n
  [ "${1:-}" = --keep-data ] && keep=yes
  [ -f "$CLUSTER_DIR/nodes" ] || { echo "no cluster here" >&2; return 0; }
  n=$(node_count)
  for ((i = 1; i <= n; i++)); do
    pid=$(pid_of "$i")
    [ -n "$pid" ] || continue
    kill -CONT "$pid" 2>/dev/null || true
    kill -TERM "$pid" 2>/dev/null || true
  done
  for ((i = 1; i <= n; i++)); do
    pid=$(pid_of "$i")
    [ -n "$pid" ] || continue
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    rm -f "$CLUSTER_DIR/$i/pid"
  done
  if [ $keep = no ]; then rm -rf "$CLUSTER_DIR"; echo "cluster down; data removed" >&2; else echo "cluster down; data kept in $CLUSTER_DIR" >&2; fi
}

cmd_status() {
  local n i role leader
  n=$(node_count)
  printf '%-8s %-8s %-9s %-10s %-16s %s\n' REPLICA PID STATE ROLE ADDRESS HTTP
  for ((i = 1; i <= n; i++)); do
    if alive "$i"; then
      leader=$(metric "$i" raft_leader_id || true)
      if [ "$(awk '{print $3}' "/proc/$(pid_of "$i")/stat" 2>/dev/null)" = T ]; then role=paused
      elif [ "$leader" = "$i" ]; then role=leader
      elif [ -n "$leader" ] && [ "$leader" != 0 ]; then role=follower
      else role=unknown; fi
      printf '%-8s %-8s %-9s %-10s %-16s %s\n' "$i" "$(pid_of "$i")" running "$role" "$(addr "$i")" "$(http_addr "$i")"
    else
      printf '%-8s %-8s %-9s %-10s %-16s %s\n' "$i" - down - "$(addr "$i")" "$(http_addr "$i")"
    fi
  done
  echo "QM_ENDPOINTS=$(endpoints "$n")"
  tls_env
}

signal_node() {
  check_id "$2"
  alive "$2" || die "replica $2 is not running"
  kill "-$1" "$(pid_of "$2")"
}

case "${1:-}" in
  up) shift; cmd_up "$@" ;;
  down) shift; cmd_down "$@" ;;
  status) cmd_status ;;
  kill) signal_node KILL "${2:-}"; echo "replica $2 killed (-9)" >&2 ;;
  stop) signal_node STOP "${2:-}"; echo "replica $2 paused" >&2 ;;
  cont) signal_node CONT "${2:-}"; echo "replica $2 resumed" >&2 ;;
  start) check_id "${2:-}"; build; load_extra_args; start_node "$2"; echo "replica $2 started (pid $(pid_of "$2"))" >&2 ;;
  rolling-restart) cmd_rolling_restart ;;
  endpoints) endpoints "$(node_count)" ;;
  leader) wait_for_leader "$(node_count)" ;;
  *) sed -n '2,/^set -euo pipefail/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
