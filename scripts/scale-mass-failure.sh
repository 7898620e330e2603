# The mass failure and bulk release of `scripts/scale.sh --mass-failure`
# (issue 26), sourced by it once the cluster is loaded and the loader keeps
# every provider heartbeating: uses its variables (LOADER_PID, LOADER_OUT,
# FAILED, PROVIDER_FAILURE_WINDOW_MS, QM, WAIT_S) and functions.

# The whole /metrics page of replica $1 (scripts/lib/metrics.sh, which scale.sh sources).
scrape() { metrics_page "$((QM_METRICS_BASE_PORT + $1))"; }
# The value of the line of $2 that starts with $1 (name and labels), or "-".
value_of() { awk -v key="$1" 'index($0, key) == 1 { print $NF; found = 1; exit } END { if (!found) print "-" }' <<<"$2"; }
# Replica $1's figures, one line: the longest apply, applies in all, over
# 10 ms, over 100 ms; the longest interval between two contacts from the
# leader, intervals in all, over 250 ms (the shortest election timeout),
# over 500 ms; the term; the apply histogram's cumulative buckets
# (`bound:count,...`, ascending). Counts are since the replica started.
figures() {
  local page count
  page=$(scrape "$1") || { echo "- 0 0 0 - 0 0 0 - -"; return; }
  count=$(value_of 'apply_duration_seconds_count ' "$page")
  gaps=$(value_of 'leader_contact_interval_seconds_count ' "$page")
  [ "$gaps" != - ] || gaps=0
  under() { local v; v=$(value_of "$1_bucket{le=\"$2\"}" "$page"); [ "$v" != - ] || v=0; echo "$v"; }
  echo "$(value_of 'apply_duration_max_seconds ' "$page") $count $((count - $(under apply_duration_seconds 0.01))) $((count - $(under apply_duration_seconds 0.1)))" \
    "$(value_of 'leader_contact_age_max_seconds ' "$page") $gaps $((gaps - $(under leader_contact_interval_seconds 0.25))) $((gaps - $(under leader_contact_interval_seconds 0.5)))" \
    "$(value_of 'raft_term{' "$page")" \
    "$(awk -F'"' '/^apply_duration_seconds_bucket\{le="/ { split($3, rest, " "); printf "%s%s:%s", sep, $2, rest[2]; sep = "," }' <<<"$page")"
}
# The bucket bound the longest apply between two samples of the histogram
# ($1 earlier, $2 later, as figures() prints them) is under: the smallest
# bound whose count grew by as much as all applies did. "-" if none.
phase_apply_bound() {
  awk -v before="$1" -v after="$2" 'BEGIN {
    n = split(after, now, ","); split(before, then, ",")
    for (i = 1; i <= n; i++) { split(now[i], b, ":"); split(then[i], a, ":"); bound[i] = b[1]; grew[i] = b[2] - a[2] }
    if (n == 0 || grew[n] == 0) { print "-"; exit }
    for (i = 1; i <= n; i++) if (grew[i] == grew[n]) { print (bound[i] == "+Inf" ? "over the last bound" : "<= " bound[i] " s"); exit }
  }'
}
declare -A FIGURES
# Samples every replica's figures as phase $1; with a previous phase $2,
# prints them, the counts as what happened since $2.
phase_figures() {
  local i now prev
  for i in 1 2 3; do FIGURES[$1,$i]=$(figures "$i"); done
  echo "$3"
  printf '%-8s %-13s %-11s %-12s %-15s %-12s %-12s %-5s %s\n' REPLICA APPLY_MAX_S "APPLIES>10MS" "APPLIES>100MS" LEADER_GAP_MAX_S "GAPS>250MS" "GAPS>500MS" TERM "LONGEST_APPLY_IN_PHASE"
  for i in 1 2 3; do
    read -r -a now <<<"${FIGURES[$1,$i]}"
    if [ -n "${2:-}" ]; then read -r -a prev <<<"${FIGURES[$2,$i]}"; else prev=(0 0 0 0 0 0 0 0 0 ""); fi
    printf '%-8s %-13s %-11s %-12s %-15s %-12s %-12s %-5s %s\n' "$i" "${now[0]}" "$((now[2] - prev[2]))" "$((now[3] - prev[3]))" \
      "${now[4]}" "$((now[6] - prev[6]))" "$((now[7] - prev[7]))" "${now[8]}" "$(phase_apply_bound "${prev[9]:-}" "${now[9]}")"
  done
}
# `qm state --output json`, the fields this phase follows, one line:
# failed providers, evacuations pending, active allocations, queue length.
state_line() {
  "$QM" --output json state 2>/dev/null \
    | jq -r '"\(.failed_providers | length) \(.evacuations_pending // 0) \(.active_allocations) \(.queue_len)"'
}

read -r failed_before pending_before active_before queued_before <<<"$(state_line)"
leader_before=$(scripts/cluster.sh leader)
term_before=$(metric "$leader_before" raft_term)
echo
echo "mass failure: $FAILED of $PROVIDERS providers stop heartbeating at once (failure window ${PROVIDER_FAILURE_WINDOW_MS} ms);"
echo "before: leader replica $leader_before, term $term_before; $active_before active, $queued_before queued, $failed_before failed providers, $pending_before evacuations pending"
phase_figures before "" "before the failure (maxima and counts since each replica started: the load):"

# --- the mass failure
stopped_at=$(now_ms)
kill -USR1 "$LOADER_PID"
until grep -q '^stopped the heartbeats' "$LOADER_OUT"; do sleep 0.05; done
all_failed_ms= done_ms= pending_max=0 samples=0
deadline=$((SECONDS + WAIT_S))
while [ $SECONDS -lt $deadline ]; do
  read -r failed pending active queued <<<"$(state_line)" || continue
  [ -n "$pending" ] || continue
  samples=$((samples + 1))
  [ "$pending" -gt "$pending_max" ] && pending_max=$pending
  if [ -z "$all_failed_ms" ] && [ "$failed" -ge "$FAILED" ]; then all_failed_ms=$(($(now_ms) - stopped_at)); fi
  if [ -n "$all_failed_ms" ] && [ "$pending" = 0 ]; then done_ms=$(($(now_ms) - stopped_at)); break; fi
  sleep 0.2
done
[ -n "$done_ms" ] || { echo "scale.sh: the evacuation was not done within ${WAIT_S}s" >&2; exit 1; }
leader_after=$(scripts/cluster.sh leader)
term_after=$(metric "$leader_after" raft_term)
echo
echo "failure: all $FAILED declared failed $all_failed_ms ms after their heartbeats stopped; every evacuated allocation placed or queued (evacuations_pending 0) $done_ms ms after (largest evacuations_pending seen: $pending_max, $samples samples of qm state)"
echo "after: leader replica $leader_after, term $term_after ($([ "$term_after" = "$term_before" ] && echo unchanged || echo CHANGED)); $active active, $queued queued, $failed failed providers"
phase_figures failure before "during the failure (maxima since start; counts since the line above):"

# --- the bulk release
released_at=$(now_ms)
release_line=$("$QM" release --namespace scale)
released_ms=$(($(now_ms) - released_at))
leader_released=$(scripts/cluster.sh leader)
term_released=$(metric "$leader_released" raft_term)
read -r _ _ active queued <<<"$(state_line)"
echo
echo "bulk release (qm release --namespace scale): $release_line in $released_ms ms; now $active active, $queued queued"
echo "leader replica $leader_released, term $term_released ($([ "$term_released" = "$term_before" ] && echo unchanged since before the failure || echo CHANGED))"
phase_figures release failure "during the bulk release (maxima since start; counts since the line above):"
