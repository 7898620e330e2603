//! A 3-replica cluster keeps allocating through a leader kill, loses no
//! acknowledged allocation, and the killed replica catches up on restart.

mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use qm_client::proto::api::*;
use support::*;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_kill_loses_no_acknowledged_allocation() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let cluster = start_cluster(3, &[]).await;
        let (leader, mut leader_api) = leader_client(&cluster).await;
        leader_api.register_provider(provider("node_1", 64)).await.expect("register");

        // --- a follower does not take writes: it names the leader
        let follower = *cluster.replicas.keys().find(|id| **id != leader).expect("a follower");
        let mut follower_api = client(cluster.addr(follower)).await;
        let redirected = follower_api
            .allocate(AllocateRequest {
                request: Some(request("agent_1", 1)),
            })
            .await
            .expect_err("follower refuses");
        assert_eq!(redirected.code(), Code::Unavailable);
        let hinted = redirected
            .metadata()
            .get("x-qm-leader-addr")
            .expect("leader address header")
            .to_str()
            .expect("ascii");
        assert_eq!(hinted, cluster.addr(leader));

        // --- acknowledged allocations before the kill
        let mut acknowledged = BTreeSet::new();
        for _ in 0..20 {
            let reply = allocate_anywhere(&cluster, &request("agent_1", 1), Duration::from_secs(10))
                .await
                .expect("allocate");
            assert_eq!(reply.status(), AllocationStatus::Allocated);
            acknowledged.insert(reply.request_id);
        }

        // --- kill -9 the leader and keep allocating
        cluster.kill(leader).expect("kill");
        let killed_at = Instant::now();
        let reply = allocate_anywhere(&cluster, &request("agent_1", 1), Duration::from_secs(30))
            .await
            .expect("allocate after kill");
        let failover = killed_at.elapsed();
        eprintln!("first allocation acknowledged {failover:?} after the leader was killed");
        acknowledged.insert(reply.request_id);
        let new_leader = cluster.wait_for_leader(Duration::from_secs(30)).await.expect("new leader");
        assert_ne!(new_leader, leader);
        for _ in 0..10 {
            let reply = allocate_anywhere(&cluster, &request("agent_1", 1), Duration::from_secs(10))
                .await
                .expect("allocate");
            acknowledged.insert(reply.request_id);
        }

        // --- every acknowledged allocation is in the table, each once
        let records = list_all(&cluster).await;
        let present = held(&records);
        assert_eq!(present, acknowledged, "acknowledged allocations and the table differ");
        let units: Vec<&String> = records.iter().flat_map(|r| r.grants.iter().map(|g| &g.resource_id)).collect();
        assert_eq!(units.len(), BTreeSet::from_iter(units.iter()).len(), "a unit is held twice");

        // --- the killed replica restarts with its data and catches up
        cluster.start_replica(leader).expect("restart");
        let commit = cluster.status_of(new_leader).await.expect("status").commit_index;
        cluster
            .wait_for_applied(leader, commit, Duration::from_secs(30))
            .await
            .expect("caught up");
        let mut restarted = client(cluster.addr(leader)).await;
        let stale = restarted
            .list(ListRequest {
                stale: true,
                ..Default::default()
            })
            .await
            .expect("stale list")
            .into_inner()
            .records;
        let there = held(&stale);
        assert_eq!(there, acknowledged, "the restarted replica's table differs");
    })
    .await
    .expect("test finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_replicas_survive_two_failures() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let cluster = start_cluster(5, &[]).await;
        let (leader, mut api) = leader_client(&cluster).await;
        api.register_provider(provider("node_1", 16)).await.expect("register");
        let before = allocate_anywhere(&cluster, &request("agent_5", 2), Duration::from_secs(10))
            .await
            .expect("allocate");

        // --- two replicas die, the leader among them
        let other = *cluster.replicas.keys().find(|id| **id != leader).expect("another replica");
        cluster.kill(leader).expect("kill leader");
        cluster.kill(other).expect("kill another");
        let after = allocate_anywhere(&cluster, &request("agent_5", 2), Duration::from_secs(30))
            .await
            .expect("allocate with 3 of 5");
        assert_eq!(after.status(), AllocationStatus::Allocated);

        // --- both allocations are held
        let holding = held(&list_all(&cluster).await);
        assert_eq!(holding, BTreeSet::from([before.request_id, after.request_id]));
    })
    .await
    .expect("test finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_replicas_killed_and_restarted_keep_every_allocation() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let cluster = start_cluster(3, &[]).await;
        let (_, mut api) = leader_client(&cluster).await;
        api.register_provider(provider("node_1", 32)).await.expect("register");
        let mut acknowledged = BTreeSet::new();
        for _ in 0..15 {
            acknowledged.insert(
                allocate_anywhere(&cluster, &request("agent_2", 1), Duration::from_secs(10))
                    .await
                    .expect("allocate")
                    .request_id,
            );
        }

        // --- kill -9 every replica at once, then start them again
        for id in 1..=3 {
            cluster.kill(id).expect("kill");
        }
        for id in 1..=3 {
            cluster.start_replica(id).expect("restart");
        }

        // --- nothing acknowledged is lost
        let holding = held(&list_all(&cluster).await);
        assert_eq!(holding, acknowledged);
    })
    .await
    .expect("test finished in time");
}
