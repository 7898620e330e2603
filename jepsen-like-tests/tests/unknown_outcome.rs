//! "Not the leader" after a proposal is not "nothing happened" (issue 28).
//!
//! Two real 5-replica clusters behind the fault-injection proxies:
//!
//! * A write that the leader appended and replicated, but whose commit it
//!   never learned before it was cut off, is reported **unknown** (never
//!   failed), and is then found with its request id: the new leader held
//!   the entry and committed it.
//! * A write that an isolated leader appended, and that the new leader's log
//!   truncated when the old one rejoined, is answered with the replica's
//!   distinct `outcome-unknown` code, not `not-leader`: the replica knows the
//!   entry was in its log, so another replica may still hold and commit it.
//!   With the old classification (any `ForwardToLeader` a `not-leader`) this
//!   test fails.

mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use qm_client::convert::status_name;
use qm_client::proto::api;
use qm_client::proto::api::quartermaster_client::QuartermasterClient;
use qm_client::wire::WireError;
use qm_client::{Client, ClientConfig, Consistency, Error};
use qm_jepsen::cluster::TestCluster;
use qm_jepsen::proxy::LinkState;

/// The replicas answer a write they could not commit after this long.
/// Long enough that the isolated leader of the second test is still waiting
/// for its write when the new leader's log reaches it (an election and
/// [`REPLICATION_WAIT`], about two seconds).
const NODE_REQUEST_TIMEOUT_MS: u64 = 5_000;
/// How long the majority may take to elect a new leader and commit.
const ELECTION_WAIT: Duration = Duration::from_secs(20);
/// How long an appended entry is given to reach the followers before the
/// leader is cut off entirely.
const REPLICATION_WAIT: Duration = Duration::from_millis(700);

/// Runs a test body within the suite's bound, so a hang fails the test.
async fn bounded(test: impl std::future::Future<Output = ()>) {
    tokio::time::timeout(support::TEST_TIMEOUT, test)
        .await
        .unwrap_or_else(|_| panic!("the test did not finish within {:?}", support::TEST_TIMEOUT));
}

/// A 5-replica cluster whose replicas answer uncommitted writes after
/// [`NODE_REQUEST_TIMEOUT_MS`], with the register workload's provider.
async fn five_replicas(dir: &std::path::Path) -> (TestCluster, Client) {
    let request_timeout = format!("--request-timeout-ms={NODE_REQUEST_TIMEOUT_MS}");
    let config = support::config(
        &["--nodes", "5", "--seed", "1", "--node-arg", &request_timeout],
        &dir.join("report"),
    );
    support::register_cluster(&config, 2).await
}

/// Every directed link between `leader` and the others, one way or both.
fn links_of(leader: u64, members: &BTreeSet<u64>, towards_leader: bool, from_leader: bool) -> LinkState {
    let mut links = LinkState::default();
    for other in members.iter().copied().filter(|id| *id != leader) {
        if towards_leader {
            links.cut.insert((other, leader));
        }
        if from_leader {
            links.cut.insert((leader, other));
        }
    }
    links
}

/// The leader the majority (everyone but `old`) agrees on.
async fn new_leader(cluster: &TestCluster, old: u64) -> u64 {
    let deadline = Instant::now() + ELECTION_WAIT;
    loop {
        if let Some(leader) = cluster.leader().await.filter(|leader| *leader != old) {
            return leader;
        }
        assert!(Instant::now() < deadline, "no new leader within {ELECTION_WAIT:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_whose_commit_the_leader_never_learned_is_unknown_then_found() {
    bounded(async {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cluster, everyone) = five_replicas(dir.path()).await;
        let leader = cluster.leader().await.expect("a leader");
        let members = cluster.members().clone();

        // --- the followers stop answering the leader, which still reaches them
        cluster.set_links(links_of(leader, &members, true, false));

        // --- a write to the leader alone: appended and replicated, never acknowledged to it.
        // The client knows only the leader: one that followed the membership
        // would ask the others who leads once the attempt went unanswered for
        // `LEADER_CHECK_AFTER_MS`, resend to the new leader with the same
        // request id and be answered `allocated` (the outcome resolved, not
        // unknown), which is what a default client does.
        let only_leader = Client::new(ClientConfig {
            request_timeout_ms: 2 * NODE_REQUEST_TIMEOUT_MS,
            attempt_timeout_ms: 2 * NODE_REQUEST_TIMEOUT_MS,
            retries_max: 0,
            follow_membership: false,
            ..ClientConfig::with_endpoints([cluster.addr(leader).to_owned()])
        })
        .expect("client");
        let request = support::unit_request("unknown-outcome", 0);
        let request_id = request.request_id.clone().expect("set");
        let write = tokio::spawn(async move { only_leader.allocate(request).await });

        // --- then the leader is cut off entirely; the followers, who hold the entry, elect one of them
        tokio::time::sleep(REPLICATION_WAIT).await;
        cluster.set_links(links_of(leader, &members, true, true));
        let elected = new_leader(&cluster, leader).await;

        // --- unknown, never failed
        let answer = write.await.expect("the write task");
        assert!(
            matches!(answer, Err(Error::Unknown { .. })),
            "the write to cut-off replica {leader} must be unknown: {answer:?}"
        );

        // --- and found with its request id: the new leader committed it
        cluster.heal_network();
        let found = everyone
            .get(&request_id, Consistency::Linearizable)
            .await
            .expect("the request is known");
        assert_eq!(
            "allocated",
            status_name(&found),
            "replica {elected} holds the write the old leader {leader} reported unknown: {found:?}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_truncated_from_the_old_leaders_log_is_outcome_unknown_not_not_leader() {
    bounded(async {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cluster, _everyone) = five_replicas(dir.path()).await;
        let leader = cluster.leader().await.expect("a leader");
        let members = cluster.members().clone();

        // --- the leader is cut off before the write: only its own log gets it
        cluster.set_links(links_of(leader, &members, true, true));
        let endpoint = format!("http://{}", cluster.addr(leader));
        let mut old_leader = QuartermasterClient::connect(endpoint).await.expect("connects");
        let request = qm_client::convert::request_to_proto(&support::unit_request("unknown-outcome", 1));
        let write = tokio::spawn(async move { old_leader.allocate(api::AllocateRequest { request: Some(request) }).await });

        // --- the majority elects a leader, whose log differs at that index; the old leader rejoins
        let elected = new_leader(&cluster, leader).await;
        tokio::time::sleep(REPLICATION_WAIT).await;
        cluster.heal_network();

        // --- the old leader's entry is truncated: it answers outcome-unknown, not not-leader
        let status = write
            .await
            .expect("the write task")
            .expect_err("the cut-off leader cannot commit it");
        let decoded = WireError::from_status(&status);
        assert!(
            matches!(decoded, Some(WireError::OutcomeUnknown { .. })),
            "replica {leader} had the write in its log when replica {elected} truncated it: the outcome is unknown, \
             but it answered {status:?} (decoded {decoded:?})"
        );
    })
    .await;
}
