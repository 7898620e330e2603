#!/usr/bin/env bash
# A matrix of qm-jepsen runs: every nemesis, 3 and 5 replicas, several seeds,
# both workloads. One line per run, then a total and a markdown table
# (matrix.md in the matrix's directory). Exits non-zero if any run was not
# valid; each such line carries its seed and a reproduce command is in its
# summary.txt.
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
#   OUT          where the runs' reports go          [jepsen-store/matrix-<date>]
#   EXTRA        more flags for every run, e.g. "--unsafe-stale-reads" to see the checkers fail
#   TLS          1: every run on mutual TLS (= --tls)  [0]
#
# Options:
#   --tls        every run on mutual TLS: a fresh CA and certificates per run (in
#                its report's certs/); replicas, workers, providers and the
#                membership nemesis each present their role's certificate
#
#   scripts/jepsen.sh                                     # the whole matrix (~40 min)
#   NODES=3 NEMESES=kill SEEDS=1 scripts/jepsen.sh        # one run
#   scripts/jepsen.sh --tls                               # the whole matrix on TLS clusters
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

TLS=${TLS:-0}
for arg in "$@"; do
  case "$arg" in
    --tls) TLS=1 ;;
    -h | --help) sed -n '2,/^set -uo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "jepsen.sh: unknown option $arg (see --help)" >&2; exit 3 ;;
  esac
done

NODES=${NODES:-"3 5"}
NEMESES=${NEMESES:-"none kill pause partition membership kill,pause,partition,membership"}
WORKLOADS=${WORKLOADS:-"register allocation"}
SEEDS=${SEEDS:-"1 2 3"}
TIME_LIMIT=${TIME_LIMIT:-20}
RATE=${RATE:-30}
PROFILE=${PROFILE:-dev}
EXTRA=${EXTRA:-}
transport=plain
if [ "$TLS" = 1 ]; then
  transport=tls
  EXTRA="$EXTRA --tls"
fi
OUT=${OUT:-jepsen-store/matrix-$(date +%Y%m%d-%H%M%S)$([ "$TLS" = 1 ] && echo -tls)}

case "$PROFILE" in
  dev) target_dir=debug ;;
  *) target_dir=$PROFILE ;;
esac
echo "==> building qm-jepsen and qm-node ($PROFILE)"
cargo build --quiet --profile "$PROFILE" -p qm-jepsen -p qm-raft-node --bins || exit 3
BIN="${CARGO_TARGET_DIR:-target}/$target_dir/qm-jepsen"

mkdir -p "$OUT"
runs=0 valid=0 invalid=0 other=0 ops_total=0 anomalies_total=0
table="$OUT/matrix.md"
{
  echo "Transport: $transport."
  echo
  echo "| workload | nodes | nemesis | seed | valid | ops | ok | info | anomalies | failover median (ms) |"
  echo "|---|---|---|---|---|---|---|---|---|---|"
} > "$table"

for workload in $WORKLOADS; do
  for nodes in $NODES; do
    for nemesis in $NEMESES; do
      for seed in $SEEDS; do
        dir="$OUT/$workload-${nemesis//,/+}-${nodes}n-seed$seed"
        started=$SECONDS
        # qm-jepsen refuses a run too short for every nemesis to fire twice
        # (2 s quiet + 2 x (4 + 3) s per nemesis + 3 s healed).
        kinds=$(tr ',' '\n' <<< "$nemesis" | grep -vc '^none$')
        time_limit=$((5 + 14 * kinds))
        [ "$TIME_LIMIT" -gt "$time_limit" ] && time_limit=$TIME_LIMIT
        # shellcheck disable=SC2086 # EXTRA is a list of flags
        "$BIN" run --workload "$workload" --nodes "$nodes" --nemesis "$nemesis" --seed "$seed" \
          --time-limit "$time_limit" --rate "$RATE" --out "$dir" $EXTRA > "$dir.stdout" 2> "$dir.stderr"
        status=$?
        elapsed=$((SECONDS - started))
        verdict=$(tail -n 1 "$dir.stdout")
        runs=$((runs + 1))
        ops=$(sed -n 's/.*: \([0-9]*\) ops, .*/\1/p' <<< "$verdict")
        ok=$(sed -n 's/.* ops, \([0-9]*\) ok, .*/\1/p' <<< "$verdict")
        info=$(sed -n 's/.* ok, \([0-9]*\) info, .*/\1/p' <<< "$verdict")
        anomalies=$(sed -n 's/.* info, \([0-9]*\) anomalies.*/\1/p' <<< "$verdict")
        failover=$(sed -n 's/^leader failover.* median \([0-9]*\) ms.*/\1/p' "$dir/summary.txt" 2> /dev/null)
        ops_total=$((ops_total + ${ops:-0}))
        anomalies_total=$((anomalies_total + ${anomalies:-0}))
        case $status in
          0) valid=$((valid + 1)); result=true ;;
          1) invalid=$((invalid + 1)); result=false ;;
          2) other=$((other + 1)); result=unknown ;;
          *) other=$((other + 1)); result="error (see $dir.stderr)" ;;
        esac
        printf '%-10s %sn %-40s seed %-4s valid %-7s %6s ops %5s info %3s anomalies  failover %6s ms  %4ss\n' \
          "$workload" "$nodes" "$nemesis" "$seed" "$result" "${ops:--}" "${info:--}" "${anomalies:--}" "${failover:--}" "$elapsed"
        if [ "$result" != true ]; then
          echo "    $verdict"
        fi
        echo "| $workload | $nodes | $nemesis | $seed | $result | ${ops:--} | ${ok:--} | ${info:--} | ${anomalies:--} | ${failover:--} |" >> "$table"
      done
    done
  done
done

echo
echo "runs ($transport): $runs, valid: $valid, invalid: $invalid, unknown or failed: $other; $ops_total operations, $anomalies_total anomalies"
echo "table: $table"
[ "$valid" -eq "$runs" ]
