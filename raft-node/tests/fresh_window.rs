//! After `qm-node restore` and after `qm-node recover`, leases and provider
//! heartbeats get a fresh window, as on any leader change (and a recovery
//! keeps the cluster id): an allocation
//! whose lease ran out while the cluster was down is not expired at once,
//! and a provider silent through the downtime is not declared failed at
//! once. Both still happen once the fresh window passes without renewals or
//! heartbeats, so the window is a window, not a pardon.

mod support;

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use qm_client::proto::api;
use qm_client::{Client, ClientConfig, Consistency};
use qm_testkit::LocalCluster;
use support::{node_binary, provider, request};

/// Short enough to pass during the downtime below, long enough for a
/// replica to start and elect itself well within it.
const LEASE_TTL_MS: u64 = 5_000;
/// Longer than the lease, so that the lease expires before the provider
/// fails (a failing provider would move the allocation instead).
const FAILURE_WINDOW_MS: &str = "7000";
/// The cluster is down this long: past the lease and the failure window.
const DOWNTIME: Duration = Duration::from_millis(9_000);
/// How long the window may take to run out once nobody renews (well past
/// both): the allocation must expire and the provider fail within it.
const RUN_OUT_TIMEOUT: Duration = Duration::from_secs(30);
const TEST_TIMEOUT: Duration = Duration::from_secs(150);
/// How long after a leader is known the checks wait, so that its duties
/// have run many rounds (every 100 ms): its take-over, and the ticks that
/// would expire a lease or fail a provider without a fresh window. Well
/// inside the lease.
const DUTY_ROUNDS_SETTLE: Duration = Duration::from_millis(1_500);

fn args() -> [&'static str; 2] {
    ["--provider-failure-window-ms", FAILURE_WINDOW_MS]
}

fn client_of(cluster: &LocalCluster) -> Client {
    Client::new(ClientConfig::with_endpoints(cluster.endpoints())).expect("client")
}

fn run_node(args: &[&str], data_dir: &Path) -> Output {
    let output = std::process::Command::new(node_binary())
        .args(&args[..1])
        .arg("--data-dir")
        .arg(data_dir)
        .args(&args[1..])
        .output()
        .expect("qm-node runs");
    assert!(output.status.success(), "{args:?}: {}", String::from_utf8_lossy(&output.stderr));
    output
}

/// Registers a provider, heartbeats it, and allocates one core with a
/// lease of [`LEASE_TTL_MS`]; returns the request id.
async fn leased_allocation(client: &Client) -> String {
    let registration = qm_client::convert::registration_from_proto(&provider("node_1", 4)).expect("valid");
    client.register_provider(&registration).await.expect("register");
    client.heartbeat("node_1", Vec::new()).await.expect("heartbeat");
    let leased = api::ResourceRequest {
        lease_ttl_ms: Some(LEASE_TTL_MS),
        ..request("leaser", 1)
    };
    let reply = client
        .allocate(qm_client::convert::request_from_proto(&leased).expect("valid"))
        .await
        .expect("allocate");
    assert_eq!(api::RequestState::Monitoring, reply.state(), "{reply:?}");
    reply.request_id
}

/// The allocation is held and the provider active: the fresh window.
async fn assert_fresh_window(client: &Client, request_id: &str) {
    tokio::time::sleep(DUTY_ROUNDS_SETTLE).await;
    let record = client.get(request_id, Consistency::Linearizable).await.expect("get");
    assert_eq!(
        api::RequestState::Monitoring,
        record.state(),
        "a lease that ran out while the cluster was down expired at once: {record:?}"
    );
    let providers = client.list_providers(Consistency::Linearizable).await.expect("providers");
    assert_eq!(
        vec!["active"],
        providers.iter().map(|info| info.status.as_str()).collect::<Vec<_>>(),
        "a provider silent while the cluster was down failed at once"
    );
}

/// Without renewals or heartbeats, the window runs out: the lease expires
/// and the provider fails.
async fn assert_window_runs_out(client: &Client, request_id: &str) {
    let deadline = tokio::time::Instant::now() + RUN_OUT_TIMEOUT;
    loop {
        let record = client.get(request_id, Consistency::Linearizable).await.expect("get");
        let providers = client.list_providers(Consistency::Linearizable).await.expect("providers");
        if record.state() == api::RequestState::Idle && providers.iter().all(|info| info.status == "failed") {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the window never ran out: {record:?} {providers:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_restore_leases_and_heartbeats_get_a_fresh_window() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let dir = tempfile::tempdir().expect("temp dir");
        let source = LocalCluster::start(node_binary(), 1, &args()).await.expect("cluster starts");
        source.kill_after(TEST_TIMEOUT);
        let client = client_of(&source);
        let request_id = leased_allocation(&client).await;

        // --- a backup while the lease and the provider are live, then the cluster is gone
        let file = dir.path().join("qm.backup");
        std::fs::write(&file, client.snapshot_save().await.expect("backup")).expect("write");
        source.kill(1).expect("kill");
        tokio::time::sleep(DOWNTIME).await;

        // --- restored and started: nothing expires or fails at once
        let target = LocalCluster::configure(node_binary(), 1, &args()).expect("lay out");
        target.kill_after(TEST_TIMEOUT);
        let id = "1".to_owned();
        run_node(
            &["restore", "--from", file.to_str().unwrap(), "--id", &id, "--peers", &target.peers()],
            &target.replicas[&1].data_dir,
        );
        target.start_replica(1).expect("start");
        target.wait_for_leader(Duration::from_secs(30)).await.expect("a leader");
        let restored = client_of(&target);
        assert_fresh_window(&restored, &request_id).await;

        // --- and both happen once the fresh window passes in silence
        assert_window_runs_out(&restored, &request_id).await;
    })
    .await
    .expect("the test finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_majority_loss_recovery_leases_and_heartbeats_get_a_fresh_window() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let cluster = LocalCluster::start(node_binary(), 3, &args()).await.expect("cluster starts");
        cluster.kill_after(TEST_TIMEOUT);
        let client = client_of(&cluster);
        let request_id = leased_allocation(&client).await;
        let leader = cluster.wait_for_leader(Duration::from_secs(30)).await.expect("a leader");
        let survivor = *cluster.replicas.keys().find(|id| **id != leader).expect("a follower");
        let commit_index = cluster.status_of(leader).await.expect("status").commit_index;
        cluster
            .wait_for_applied(survivor, commit_index, Duration::from_secs(30))
            .await
            .expect("the survivor caught up");
        let cluster_id = cluster.status_of(survivor).await.expect("status").cluster_id;
        assert!(!cluster_id.is_empty(), "the survivor took the leader's cluster id");

        // --- kill -9 all three; the cluster is down for longer than the lease
        for id in 1..=3 {
            cluster.kill(id).expect("kill");
        }
        tokio::time::sleep(DOWNTIME).await;

        // --- the survivor recovered and started: nothing expires or fails at once
        let id = survivor.to_string();
        run_node(
            &["recover", "--id", &id, "--accept-data-loss"],
            &cluster.replicas[&survivor].data_dir,
        );
        cluster.start_replica(survivor).expect("start");
        let recovered = Client::new(ClientConfig::with_endpoints([cluster.addr(survivor).to_owned()])).expect("client");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while cluster
            .status_of(survivor)
            .await
            .map_or(true, |status| status.leader_id != Some(survivor))
        {
            assert!(tokio::time::Instant::now() < deadline, "the survivor never led");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_fresh_window(&recovered, &request_id).await;
        assert_eq!(
            cluster_id,
            cluster.status_of(survivor).await.expect("status").cluster_id,
            "a recovery keeps the cluster id"
        );

        // --- and both happen once the fresh window passes in silence
        assert_window_runs_out(&recovered, &request_id).await;
    })
    .await
    .expect("the test finished in time");
}
