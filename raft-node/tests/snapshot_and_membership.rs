//! Log compaction, snapshot install for a lagging replica, and membership
//! changes while clients keep allocating.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use qm_client::proto::api::*;
use qm_testkit::LocalCluster;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_follower_catches_up_by_snapshot_install() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let cluster = start_cluster(3, &["--snapshot-every-entries", "50", "--log-kept-behind-snapshot-entries", "10"]).await;
        let (leader, mut api) = leader_client(&cluster).await;
        api.register_provider(provider("node_1", 32)).await.expect("register");

        // --- pause a follower, then write far past a snapshot
        let follower = *cluster.replicas.keys().find(|id| **id != leader).expect("a follower");
        cluster.pause(follower).expect("pause");
        let mut kept = BTreeSet::new();
        for round in 0..150 {
            let reply = allocate_anywhere(&cluster, &request("agent_s", 1), Duration::from_secs(10))
                .await
                .expect("allocate");
            assert_eq!(reply.status(), AllocationStatus::Allocated, "round {round}: {reply:?}");
            if round % 10 == 0 {
                kept.insert(reply.request_id.clone());
            } else {
                api.release(ReleaseRequest { id: reply.allocation_id }).await.expect("release");
            }
        }
        let leader_status = cluster.status_of(leader).await.expect("status");
        assert!(leader_status.snapshot_index > 0, "the leader took no snapshot: {leader_status:?}");

        // --- resume: the log it missed is purged, so it needs the snapshot
        cluster.resume(follower).expect("resume");
        cluster
            .wait_for_applied(follower, leader_status.commit_index, Duration::from_secs(60))
            .await
            .expect("caught up");
        let status = cluster.status_of(follower).await.expect("follower status");
        assert!(status.snapshot_index > 0, "the follower caught up without a snapshot: {status:?}");
        let mut follower_api = client(cluster.addr(follower)).await;
        let held: BTreeSet<String> = follower_api
            .list(ListRequest {
                state: RequestState::Monitoring as i32,
                stale: true,
                ..Default::default()
            })
            .await
            .expect("stale list")
            .into_inner()
            .records
            .into_iter()
            .map(|r| r.request_id)
            .collect();
        assert_eq!(held, kept);
    })
    .await
    .expect("test finished in time");
}

/// A provider of 8 cores, then 120 rounds of allocate and release: 241
/// commands, in at most 241 entries.
async fn register_then_allocate_and_release(cluster: &LocalCluster, requester: &str) {
    let (_leader, mut api) = leader_client(cluster).await;
    api.register_provider(provider("node_1", 8)).await.expect("register");
    for round in 0..120 {
        let reply = allocate_anywhere(cluster, &request(requester, 1), Duration::from_secs(10))
            .await
            .expect("allocate");
        assert_eq!(reply.status(), AllocationStatus::Allocated, "round {round}: {reply:?}");
        api.release(ReleaseRequest { id: reply.allocation_id }).await.expect("release");
    }
}

/// Waits until every replica has taken a snapshot; its status then.
async fn every_replica_snapshotted(cluster: &LocalCluster) -> Vec<ClusterStatusReply> {
    let mut statuses = Vec::new();
    for id in cluster.replicas.keys().copied().collect::<Vec<_>>() {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let status = cluster.status_of(id).await.expect("status");
            if status.snapshot_index > 0 {
                statuses.push(status);
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "replica {id} took no snapshot: {status:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    statuses
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_replica_snapshots_after_enough_commands_whatever_the_entries() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        // The entry count alone would not snapshot for 100,000 entries.
        let cluster = start_cluster(3, &["--snapshot-every-entries", "100000", "--snapshot-every-commands", "200"]).await;
        register_then_allocate_and_release(&cluster, "agent_c").await;
        // Past 200 commands, far below the entries' bound.
        for status in every_replica_snapshotted(&cluster).await {
            assert!(status.snapshot_index < 100_000, "{status:?}");
        }
    })
    .await
    .expect("test finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_replica_snapshots_after_enough_apply_time_whatever_the_counts() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        // Neither count would snapshot: only the time spent applying does
        // (241 commands take well over a millisecond in any build).
        let cluster = start_cluster(
            3,
            &[
                "--snapshot-every-entries",
                "100000",
                "--snapshot-every-commands",
                "1000000",
                "--snapshot-every-apply-ms",
                "1",
            ],
        )
        .await;
        register_then_allocate_and_release(&cluster, "agent_t").await;
        every_replica_snapshotted(&cluster).await;
    })
    .await
    .expect("test finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_are_added_and_removed_under_load() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let mut cluster = start_cluster(3, &[]).await;
        let (leader, mut api) = leader_client(&cluster).await;
        api.register_provider(provider("node_1", 256)).await.expect("register");

        // --- clients allocate in the background throughout
        let endpoints = cluster.endpoints();
        let load = tokio::spawn(async move {
            let mut acknowledged = Vec::new();
            for _ in 0..60 {
                let request = request("agent_m", 1);
                if let Ok(reply) = allocate_via(&endpoints, &request).await {
                    acknowledged.push(reply.request_id);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            acknowledged
        });

        // --- add a fourth replica (learner, caught up, then voter)
        let addr = cluster.add_blank_replica(4).expect("start replica 4");
        let status = api
            .add_replica(AddReplicaRequest {
                id: 4,
                addr,
                learner_only: false,
            })
            .await
            .expect("add")
            .into_inner();
        assert!(status.members.iter().any(|m| m.id == 4 && m.role != "learner"), "{status:?}");

        // --- remove a follower that is not the leader, then stop it
        let removed = *cluster.replicas.keys().find(|id| **id != leader && **id != 4).expect("a follower");
        let status = api
            .remove_replica(RemoveReplicaRequest { id: removed })
            .await
            .expect("remove")
            .into_inner();
        assert!(status.members.iter().all(|m| m.id != removed), "{status:?}");
        cluster.kill(removed).expect("stop removed");

        // --- the load went on; what it acknowledged is held
        let acknowledged: BTreeSet<String> = load.await.expect("load").into_iter().collect();
        assert!(!acknowledged.is_empty());
        let holding = held(&list_all(&cluster).await);
        assert!(
            acknowledged.is_subset(&holding),
            "lost: {:?}",
            acknowledged.difference(&holding).collect::<Vec<_>>()
        );

        // --- the new replica has the table too
        let commit = cluster.status_of(leader).await.expect("status").commit_index;
        cluster
            .wait_for_applied(4, commit, Duration::from_secs(30))
            .await
            .expect("replica 4 applied");
    })
    .await
    .expect("test finished in time");
}

/// One attempt per endpoint, following the first leader that answers.
async fn allocate_via(endpoints: &[String], request: &ResourceRequest) -> Result<AllocationReply, tonic::Status> {
    let mut last = tonic::Status::unavailable("no endpoint");
    for addr in endpoints {
        let mut api = match qm_client::proto::api::quartermaster_client::QuartermasterClient::connect(format!("http://{addr}")).await {
            Ok(api) => api,
            Err(_) => continue,
        };
        match api
            .allocate(AllocateRequest {
                request: Some(request.clone()),
            })
            .await
        {
            Ok(reply) => return Ok(reply.into_inner()),
            Err(status) => last = status,
        }
    }
    Err(last)
}
