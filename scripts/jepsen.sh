#!/usr/bin/env bash
# A matrix of qm-jepsen runs: every nemesis, 3 and 5 replicas, several seeds,
# both workloads. One line per run as it ends, then a total and the
# matrix's tables (`qm-jepsen matrix`: per nemesis, transport and workload,
# with availability during faults and failover times) in summary.md, and
# one row per run in matrix.md, in the matrix's directory. Exits non-zero
# if any run was not valid; each such line carries its seed and a reproduce
# command is in its summary.txt.
#
# Configure with environment variables (defaults in brackets):
#   NODES        replica counts                     ["3 5"]
#   NEMESES      nemesis sets, space-separated       ["none kill pause partition membership kill,pause,partition,membership"]
#   WORKLOADS    workloads                           ["register allocation"]
#   SEEDS        seeds                               ["1 2 3"]
#   TIME_LIMIT   seconds per run, at least           [20]  (a run is lengthened to 5 + 14 s per nemesis
#                in its set, so that each fires twice at the default 4 s faults and 3 s heals)
#   RATE         operations per second per run       [30]
#   PROFILE      cargo profile of the binaries       [dev]  (release: faster, closer to production)
#   JOBS         runs at once                        [1]  (each run has its own replicas, ports and
#                data dirs; on a small machine more than 3 measure the machine, not the cluster)
#   OUT          where the runs' reports go          [jepsen-store/matrix-<date>]; runs already
#                in OUT count in its summary.md, so several invocations can fill one matrix
#   BIN_DIR      run the qm-jepsen and qm-node in this directory, no build
#                (a long campaign keeps its binaries while the tree is rebuilt)
#   EXTRA        more flags for every run, e.g. "--unsafe-stale-reads" to see the checkers fail
#   TLS          1: every run on mutual TLS (= --tls)  [0]
#
# Options:
#   --tls        every run on mutual TLS: a fresh CA and certificates per run (in
#                its report's certs/); replicas, workers, providers and the
#                membership nemesis each present their role's certificate
#   --policy     (with --tls) the workers under a capability policy
#   --preemption the allocation runs also preempt and change the quota
#                (qm-jepsen run --preemption; the register runs are unchanged)
#   --campaign   the reliability campaign of the README (204 runs of 60 s on
#                release builds, 3 at a time, ~1.5-2 h): both workloads x 3 and 5
#                replicas x the six nemesis sets, seeds 1-5 in plain gRPC,
#                seeds 1-3 on TLS, seed 1 on TLS under a policy; NODES,
#                NEMESES, WORKLOADS and TIME_LIMIT still apply
#
#   scripts/jepsen.sh                                     # the whole matrix (~40 min)
#   NODES=3 NEMESES=kill SEEDS=1 scripts/jepsen.sh        # one run
#   scripts/jepsen.sh --tls                               # the whole matrix on TLS clusters
#   scripts/jepsen.sh --campaign                          # the README's reliability figures
set -uo pipefail
# The whole script is read before it runs (the braces up to the last
# line): an edit made while a long run goes on cannot change it half-way.
{
cd "$(dirname "${BASH_SOURCE[0]}")/.."

TLS=${TLS:-0}
POLICY=0
CAMPAIGN=0
PREEMPTION=${PREEMPTION:-0}
for arg in "$@"; do
  case "$arg" in
    --tls) TLS=1 ;;
    --policy) POLICY=1 ;;
    --preemption) PREEMPTION=1 ;;
    --campaign) CAMPAIGN=1 ;;
    -h | --help) sed -n '2,/^set -uo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "jepsen.sh: unknown option $arg (see --help)" >&2; exit 3 ;;
  esac
done
if [ "$POLICY" = 1 ] && [ "$TLS" != 1 ] && [ "$CAMPAIGN" != 1 ]; then
  echo "jepsen.sh: --policy needs --tls (policies bind to certificates)" >&2
  exit 3
fi

NODES=${NODES:-"3 5"}
NEMESES=${NEMESES:-"none kill pause partition membership kill,pause,partition,membership"}
WORKLOADS=${WORKLOADS:-"register allocation"}
RATE=${RATE:-30}
EXTRA=${EXTRA:-}
if [ "$CAMPAIGN" = 1 ]; then
  TIME_LIMIT=${TIME_LIMIT:-60}
  PROFILE=${PROFILE:-release}
  JOBS=${JOBS:-3}
else
  SEEDS=${SEEDS:-"1 2 3"}
  TIME_LIMIT=${TIME_LIMIT:-20}
  PROFILE=${PROFILE:-dev}
  JOBS=${JOBS:-1}
fi
[[ "$JOBS" =~ ^[1-9][0-9]*$ ]] || { echo "jepsen.sh: JOBS must be a positive number" >&2; exit 3; }
OUT=${OUT:-jepsen-store/$([ "$CAMPAIGN" = 1 ] && echo campaign || echo matrix)-$(date +%Y%m%d-%H%M%S)$([ "$TLS" = 1 ] && echo -tls)}

case "$PROFILE" in
  dev) target_dir=debug ;;
  *) target_dir=$PROFILE ;;
esac
if [ -n "${BIN_DIR:-}" ]; then
  BIN="$BIN_DIR/qm-jepsen"
  [ -x "$BIN" ] && [ -x "$BIN_DIR/qm-node" ] || { echo "jepsen.sh: no qm-jepsen and qm-node in $BIN_DIR" >&2; exit 3; }
else
  echo "==> building qm-jepsen and qm-node ($PROFILE)"
  cargo build --quiet --profile "$PROFILE" -p qm-jepsen -p qm-raft-node --bins || exit 3
  BIN="${CARGO_TARGET_DIR:-target}/$target_dir/qm-jepsen"
fi

mkdir -p "$OUT"
table="$OUT/matrix.md"
if [ ! -f "$table" ]; then
  {
    echo "| workload | nodes | nemesis | transport | seed | valid | ops | ok | info | anomalies | failover median (ms) | available during faults |"
    echo "|---|---|---|---|---|---|---|---|---|---|---|---|"
  } > "$table"
fi
started_all=$SECONDS

# One run, in the background when JOBS > 1: its line is printed when it
# ends, its row appended to matrix.md, its verdict left in DIR.status.
one_run() {
  local workload=$1 nodes=$2 nemesis=$3 seed=$4 transport=$5 flags=$6
  local suffix=""
  [ "$transport" != plain ] && suffix="-${transport//+/-}"
  if [ "$PREEMPTION" = 1 ] && [ "$workload" = allocation ]; then
    flags="$flags --preemption"
    suffix="$suffix-preemption"
  fi
  local dir="$OUT/$workload-${nemesis//,/+}-${nodes}n-seed$seed$suffix"
  local started=$SECONDS
  # qm-jepsen refuses a run too short for every nemesis to fire twice
  # (2 s quiet + 2 x (4 + 3) s per nemesis + 3 s healed).
  local kinds time_limit
  kinds=$(tr ',' '\n' <<< "$nemesis" | grep -vc '^none$')
  time_limit=$((5 + 14 * kinds))
  [ "$TIME_LIMIT" -gt "$time_limit" ] && time_limit=$TIME_LIMIT
  # shellcheck disable=SC2086 # EXTRA and flags are lists of flags
  "$BIN" run --workload "$workload" --nodes "$nodes" --nemesis "$nemesis" --seed "$seed" \
    --time-limit "$time_limit" --rate "$RATE" --out "$dir" $EXTRA $flags > "$dir.stdout" 2> "$dir.stderr"
  local status=$?
  local verdict result
  verdict=$(tail -n 1 "$dir.stdout")
  local ops ok info anomalies failover available
  ops=$(sed -n 's/.*: \([0-9]*\) ops, .*/\1/p' <<< "$verdict")
  ok=$(sed -n 's/.* ops, \([0-9]*\) ok, .*/\1/p' <<< "$verdict")
  info=$(sed -n 's/.* ok, \([0-9]*\) info, .*/\1/p' <<< "$verdict")
  anomalies=$(sed -n 's/.* info, \([0-9]*\) anomalies.*/\1/p' <<< "$verdict")
  failover=$(sed -n 's/^leader failover.* median \([0-9]*\) ms.*/\1/p' "$dir/summary.txt" 2> /dev/null)
  available=$(sed -n 's/^availability (ok \/ invoked): \([^ ]*\) during faults.*/\1/p' "$dir/summary.txt" 2> /dev/null)
  case $status in
    0) result=true ;;
    1) result=false ;;
    2) result=unknown ;;
    *) result="error (see $dir.stderr)" ;;
  esac
  echo "$status" > "$dir.status"
  local line
  line=$(printf '%-10s %sn %-40s %-10s seed %-4s valid %-7s %6s ops %5s info %3s anomalies  failover %6s ms  %4ss' \
    "$workload" "$nodes" "$nemesis" "$transport" "$seed" "$result" "${ops:--}" "${info:--}" "${anomalies:--}" \
    "${failover:--}" "$((SECONDS - started))")
  [ "$result" != true ] && line="$line"$'\n'"    $verdict"
  echo "$line"
  echo "| $workload | $nodes | $nemesis | $transport | $seed | $result | ${ops:--} | ${ok:--} | ${info:--} | ${anomalies:--} | ${failover:--} | ${available:--} |" >> "$table"
}

# Every combination of one transport, at most JOBS at once.
matrix() {
  local transport=$1 seeds=$2 workloads=$3 flags=$4
  for workload in $workloads; do
    for nodes in $NODES; do
      for nemesis in $NEMESES; do
        for seed in $seeds; do
          while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do
            wait -n
          done
          one_run "$workload" "$nodes" "$nemesis" "$seed" "$transport" "$flags" &
        done
      done
    done
  done
}

if [ "$CAMPAIGN" = 1 ]; then
  matrix plain "${SEEDS:-1 2 3 4 5}" "$WORKLOADS" ""
  matrix tls "1 2 3" "$WORKLOADS" "--tls"
  matrix tls+policy "1" allocation "--tls --policy"
elif [ "$TLS" = 1 ] && [ "$POLICY" = 1 ]; then
  matrix tls+policy "$SEEDS" "$WORKLOADS" "--tls --policy"
elif [ "$TLS" = 1 ]; then
  matrix tls "$SEEDS" "$WORKLOADS" "--tls"
else
  matrix plain "$SEEDS" "$WORKLOADS" ""
fi
wait

runs=0 valid=0 invalid=0 other=0
for status_file in "$OUT"/*.status; do
  [ -e "$status_file" ] || continue
  runs=$((runs + 1))
  case $(cat "$status_file") in
    0) valid=$((valid + 1)) ;;
    1) invalid=$((invalid + 1)) ;;
    *) other=$((other + 1)) ;;
  esac
done
"$BIN" matrix "$OUT" > "$OUT/summary.md" || exit 3
echo
echo "runs in $OUT: $runs, valid: $valid, invalid: $invalid, unknown or failed: $other ($((SECONDS - started_all)) s)"
echo "tables: $OUT/summary.md (per nemesis, transport, workload), $table (per run)"
cat "$OUT/summary.md"
[ "$runs" -gt 0 ] && [ "$valid" -eq "$runs" ]
exit
}
