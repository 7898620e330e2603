#!/usr/bin/env bash
# The README's first command: a local 3-replica Quartermaster cluster doing real work.
#
#   scripts/demo.sh [--keep]
#
# Builds (release), starts 3 replicas on 127.0.0.1:7101-7103, registers two
# providers, sends the protocol's example resource_request, kills -9 the
# leader, shows the client failing over with the allocation intact, releases
# it, restarts the killed replica, and tears everything down (--keep leaves
# the cluster up; stop it later with scripts/cluster.sh down).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
KEEP=no
[ "${1:-}" = --keep ] && KEEP=yes

QM="${CARGO_TARGET_DIR:-$ROOT/target}/release/qm"
CLUSTER="$ROOT/scripts/cluster.sh"
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }
json_field() { tr -d '\n' | sed -n "s/.*\"$1\": *\"\{0,1\}\([^,\"}]*\).*/\1/p"; }

cleanup() {
  if [ $KEEP = no ]; then "$CLUSTER" down >/dev/null 2>&1 || true; fi
}
trap cleanup EXIT

say "Build and start a 3-replica cluster"
# No provider agents run in this demo (they would heartbeat); a long failure
# window keeps the leader from declaring the sample providers failed.
QM_REBUILD=${QM_REBUILD:-1} "$CLUSTER" up --nodes 3 -- --provider-failure-window-ms 3600000 | tail -n 2 >/tmp/qm-demo-endpoints.$$
export QM_ENDPOINTS; QM_ENDPOINTS=$(sed -n 's/^QM_ENDPOINTS=//p' /tmp/qm-demo-endpoints.$$)
QM_HTTP_ENDPOINTS=$(sed -n 's/^QM_HTTP_ENDPOINTS=//p' /tmp/qm-demo-endpoints.$$); rm -f /tmp/qm-demo-endpoints.$$
echo "QM_ENDPOINTS=$QM_ENDPOINTS"
echo "QM_HTTP_ENDPOINTS=$QM_HTTP_ENDPOINTS"
echo "Web UI: ${QM_HTTP_ENDPOINTS%%,*}/ui/ (every replica serves it)"
run "$QM" cluster status

say "Two providers register their units"
run "$QM" provider register --file scripts/demo/provider-node_1.json
run "$QM" provider register --file scripts/demo/provider-node_2.json
run "$QM" provider list

say "The protocol's example resource_request"
# The example's deadline (2024-03-21) has passed, and a request whose deadline
# is already past is rejected; the demo moves it one hour ahead, nothing else.
deadline=$(date -u -d '+1 hour' +%Y-%m-%dT%H:%M:%SZ)
request=$(mktemp)
cat >"$request" <<JSON
{
  "request_id": "550e8400-e29b-41d4-a716-446655440000",
  "requester_id": "agent_123",
  "resource_requirements": {
    "cpu_cores": 2,
    "memory_gb": 4,
    "storage_gb": 100
  },
  "priority": 1,
  "deadline": "$deadline"
}
JSON
cat "$request"
response=$("$QM" --output json allocate --file "$request")
echo "$response"
allocation_id=$(echo "$response" | json_field allocation_id)
rm -f "$request"

say "Kill -9 the leader"
leader=$("$QM" --output json cluster status | json_field leader_id)
run "$CLUSTER" kill "$leader"

say "The client fails over to the new leader; the allocation is still there"
start=$(date +%s%N)
run "$QM" --output json get 550e8400-e29b-41d4-a716-446655440000
echo "(answered $(( ($(date +%s%N) - start) / 1000000 )) ms after the kill, through the new leader)"
run "$QM" cluster status

say "Release it"
run "$QM" release "$allocation_id"
run "$QM" state

say "Restart the killed replica: it rejoins with its data and catches up"
run "$CLUSTER" start "$leader"
sleep 1
run "$CLUSTER" status

if [ $KEEP = yes ]; then
  say "The cluster stays up (--keep): QM_ENDPOINTS=$QM_ENDPOINTS, web UI ${QM_HTTP_ENDPOINTS%%,*}/ui/; stop it with scripts/cluster.sh down"
else
  say "Tear down"
fi
