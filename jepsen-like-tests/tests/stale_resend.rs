//! A resend of a known request (same `request_id`) is answered by
//! `qm-node`'s allocate path from the replica's applied table, without a new
//! log entry. This run found that it was answered after `require_leader()`
//! only: a deposed leader that had not noticed yet answered retries from
//! stale state, saying an allocation was still active after its release was
//! acknowledged by the new leader. The node now passes a read barrier first
//! (raft-node `api/requests.rs`); this test keeps it that way.

mod support;

use std::time::{Duration, Instant};

use qm_client::convert::state_name;
use qm_client::{Client, ClientConfig};
use qm_jepsen::nemesis::partition::{self, PartitionShape};
use rand::SeedableRng;

/// How long the release may take while the majority elects a new leader.
const RELEASE_DEADLINE: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resend_to_a_deposed_leader_does_not_report_a_released_allocation_active() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = support::config(&["--nodes", "3", "--seed", "1"], &dir.path().join("report"));
    let (mut cluster, everyone) = support::register_cluster(&config, 1).await;

    // --- allocate unit-0
    let request = support::unit_request("stale-resend", 0);
    let request_id = request.request_id.clone().expect("set");
    let granted = everyone.allocate(request.clone()).await.expect("allocated");
    assert_eq!("monitoring", state_name(&granted));

    // --- isolate the leader
    let leader = cluster.leader().await.expect("a leader");
    let members: Vec<u64> = cluster.members().iter().copied().collect();
    let drawn = partition::draw(
        PartitionShape::IsolateLeader,
        &members,
        Some(leader),
        &mut rand::rngs::StdRng::seed_from_u64(1),
    );
    cluster.set_links(drawn.links);

    // --- release through the majority, acknowledged
    let majority: Vec<String> = members
        .iter()
        .filter(|id| **id != leader)
        .map(|id| cluster.addr(*id).to_owned())
        .collect();
    let majority_client = Client::new(ClientConfig::with_endpoints(majority)).expect("client");
    let deadline = Instant::now() + RELEASE_DEADLINE;
    let released = loop {
        match majority_client.release(&request_id).await {
            Ok(reply) => break reply,
            Err(error) if Instant::now() < deadline => eprintln!("release not yet: {error}"),
            Err(error) => panic!("the majority never released: {error}"),
        }
    };
    assert_eq!(("idle", "released"), (state_name(&released), released.reason.as_str()));

    // --- resend the same request to the old leader, which still believes it leads
    let old_leader = Client::new(ClientConfig::with_endpoints([cluster.addr(leader).to_owned()])).expect("client");
    let answer = old_leader.allocate(request).await;
    cluster.stop(&dir.path().join("nodes")).expect("stopped");
    if let Ok(reply) = answer {
        assert_ne!(
            "monitoring",
            state_name(&reply),
            "replica {leader}, cut off from the others, answered a retry of {request_id} as active after the new leader \
             acknowledged its release: a stale answer"
        );
    }
}
