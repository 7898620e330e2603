//! The client against real `qm-node` replicas (build them first:
//! `cargo build -p qm-raft-node`): leader loss, paused replicas, watch resume.

mod support;

use std::time::Duration;

use futures::StreamExt;
use qm_client::{Client, Consistency, Error};
use qm_state_machine::{ProviderRegistration, ResourceRequest};
use serde_json::json;
use support::TestCluster;

fn registration(cpus: u32) -> ProviderRegistration {
    let resources: Vec<_> = (1..=cpus)
        .map(|n| json!({"resource_id": format!("cpu_{n}"), "kind": "cpu_cores", "capacity": 1}))
        .collect();
    serde_json::from_value(json!({"provider_id": "node_1", "resources": resources})).unwrap()
}

fn request(cpus: u32) -> ResourceRequest {
    serde_json::from_value(json!({"requester_id": "agent_123", "resource_requirements": {"cpu_cores": cpus}, "priority": 1})).unwrap()
}

/// A write that must go through eventually: retried while the cluster elects.
async fn allocate_until_answered(client: &Client, request: ResourceRequest) -> qm_client::proto::api::AllocationReply {
    let mut request = request;
    request.request_id.get_or_insert_with(|| uuid::Uuid::new_v4().to_string());
    for _ in 0..10 {
        match client.allocate(request.clone()).await {
            Ok(reply) => return reply,
            Err(Error::Unavailable { .. } | Error::Unknown { .. }) => tokio::time::sleep(Duration::from_millis(200)).await,
            Err(other) => panic!("allocate failed: {other}"),
        }
    }
    panic!("no answer to the allocation after 10 tries")
}

#[tokio::test]
#[ignore = "needs the qm-node binary: cargo build -p qm-raft-node"]
async fn an_acknowledged_allocation_survives_killing_the_leader() {
    let cluster = TestCluster::start(3);
    let leader = cluster.wait_for_leader().await;
    let client = cluster.client();
    client.register_provider(&registration(4)).await.unwrap();
    let granted = client.allocate(request(2)).await.unwrap();
    assert_eq!("allocated", granted.status);

    // --- kill the leader
    cluster.kill(leader);

    // --- the new leader has it, and serves new allocations
    let read = client.get(&granted.request_id, Consistency::Linearizable).await;
    let read = match read {
        Ok(read) => read,
        Err(Error::Unavailable { .. }) => {
            cluster.wait_for_leader().await;
            client.get(&granted.request_id, Consistency::Linearizable).await.unwrap()
        }
        Err(other) => panic!("{other}"),
    };
    assert_eq!(
        (granted.allocation_id.as_str(), "allocated"),
        (read.allocation_id.as_str(), read.status.as_str())
    );
    let second = allocate_until_answered(&client, request(2)).await;
    assert_eq!("allocated", second.status);
    assert_ne!(Some(cluster.node(leader).addr.clone()), client.leader_addr());
}

#[tokio::test]
#[ignore = "needs the qm-node binary: cargo build -p qm-raft-node"]
async fn a_paused_leader_is_failed_over() {
    let cluster = TestCluster::start(3);
    let leader = cluster.wait_for_leader().await;
    let client = cluster.client();
    client.register_provider(&registration(4)).await.unwrap();

    // --- SIGSTOP the leader: it keeps its sockets but answers nothing
    cluster.pause(leader);
    let reply = allocate_until_answered(&client, request(1)).await;
    cluster.resume(leader);

    assert_eq!("allocated", reply.status);
}

#[tokio::test]
#[ignore = "needs the qm-node binary: cargo build -p qm-raft-node"]
async fn a_watch_resumes_without_gaps_after_its_replica_is_killed() {
    let cluster = TestCluster::start(3);
    cluster.wait_for_leader().await;
    let client = cluster.client();
    client.register_provider(&registration(8)).await.unwrap();

    // --- watch from the beginning; the stream starts on the leader
    let watched_on = client.leader_addr().expect("a leader was found");
    let mut events = client.watch(1, None);
    let mut revisions = vec![events.next().await.unwrap().unwrap().revision];

    // --- kill the watched replica, then write more
    let killed = (1..=3).find(|id| cluster.node(*id).addr == watched_on).unwrap();
    cluster.kill(killed);
    for _ in 0..3 {
        allocate_until_answered(&client, request(1)).await;
    }
    let newest = client.system_state(Consistency::Linearizable).await.unwrap().revision;
    while revisions.last() != Some(&newest) {
        let event = tokio::time::timeout(Duration::from_secs(10), events.next())
            .await
            .expect("the watch resumed")
            .unwrap()
            .unwrap();
        revisions.push(event.revision);
    }

    assert_eq!((1..=newest).collect::<Vec<_>>(), revisions, "every revision once, in order");
}

#[tokio::test]
#[ignore = "needs the qm-node binary: cargo build -p qm-raft-node"]
async fn a_watch_moves_off_a_paused_replica() {
    let cluster = TestCluster::start(3);
    cluster.wait_for_leader().await;
    let client = cluster.client();
    client.register_provider(&registration(8)).await.unwrap();
    let watched_on = client.leader_addr().expect("a leader was found");
    let mut events = client.watch(1, None);
    let mut revisions = vec![events.next().await.unwrap().unwrap().revision];

    // --- SIGSTOP the watched replica: its sockets stay open, it answers nothing
    let paused = (1..=3).find(|id| cluster.node(*id).addr == watched_on).unwrap();
    cluster.pause(paused);
    for _ in 0..3 {
        allocate_until_answered(&client, request(1)).await;
    }
    let newest = client.system_state(Consistency::Linearizable).await.unwrap().revision;
    while revisions.last() != Some(&newest) {
        // Keepalive notices the pause within about 1 s + attempt_timeout_ms.
        let event = tokio::time::timeout(Duration::from_secs(10), events.next())
            .await
            .expect("the watch moved")
            .unwrap()
            .unwrap();
        revisions.push(event.revision);
    }
    cluster.resume(paused);

    assert_eq!((1..=newest).collect::<Vec<_>>(), revisions, "every revision once, in order");
}
