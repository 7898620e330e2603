//! Recovery after losing a majority: kill -9 two of three replicas while
//! clients write, then `qm-node recover` makes the survivor a one-replica
//! cluster that serves everything it had, and a fresh replica joins it.

mod support;

use std::collections::BTreeSet;
use std::process::Output;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use qm_client::proto::api::*;
use qm_testkit::LocalCluster;
use support::*;

fn recover(cluster: &LocalCluster, id: u64, accept: bool) -> Output {
    let mut command = std::process::Command::new(node_binary());
    command
        .arg("recover")
        .arg("--data-dir")
        .arg(&cluster.replicas[&id].data_dir)
        .args(["--id", &id.to_string()]);
    if accept {
        command.arg("--accept-data-loss");
    }
    command.output().expect("qm-node recover runs")
}

/// Allocates and releases one core after another through any replica,
/// recording the request ids acknowledged as held; errors (the kills) are
/// outcomes unknown and simply not recorded.
fn start_load(cluster: Arc<LocalCluster>, stop: Arc<AtomicBool>, held: Arc<Mutex<BTreeSet<String>>>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut round = 0u64;
        while !stop.load(Ordering::SeqCst) {
            round += 1;
            let Ok(reply) = allocate_anywhere(&cluster, &request("loader", 1), Duration::from_secs(1)).await else {
                continue;
            };
            if reply.status() == AllocationStatus::Allocated && round % 4 != 0 {
                held.lock().unwrap().insert(reply.request_id);
            }
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_survivor_of_a_lost_majority_becomes_a_cluster_again() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let cluster = Arc::new(start_cluster(3, &[]).await);
        cluster.kill_after(TEST_TIMEOUT);
        let (leader, mut api) = leader_client(&cluster).await;
        api.register_provider(provider("node_1", 64)).await.expect("register");

        // --- clients write; a follower has applied everything acknowledged so far
        let stop = Arc::new(AtomicBool::new(false));
        let held = Arc::new(Mutex::new(BTreeSet::new()));
        let load = start_load(cluster.clone(), stop.clone(), held.clone());
        while held.lock().unwrap().len() < 20 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let acknowledged = held.lock().unwrap().clone();
        let survivor = *cluster.replicas.keys().find(|id| **id != leader).expect("a follower");
        let commit_index = cluster.status_of(leader).await.expect("status").commit_index;
        cluster
            .wait_for_applied(survivor, commit_index, Duration::from_secs(30))
            .await
            .expect("the survivor caught up");

        // --- kill -9 the other two (the leader among them) while clients write
        for id in cluster.replicas.keys().filter(|id| **id != survivor) {
            cluster.kill(*id).expect("kill");
        }
        cluster.kill(survivor).expect("stop the survivor to recover it");
        stop.store(true, Ordering::SeqCst);
        load.await.expect("load ran");

        // --- without the operator's explicit acceptance, nothing happens
        let refused = recover(&cluster, survivor, false);
        assert_eq!(Some(1), refused.status.code());
        let line = String::from_utf8_lossy(&refused.stderr).trim().to_owned();
        assert_eq!(1, line.lines().count(), "{line}");
        assert!(line.contains("--accept-data-loss"), "{line}");
        let data_dir = &cluster.replicas[&survivor].data_dir;
        assert!(data_dir.join("db").exists());
        let kept = std::path::PathBuf::from(format!("{}.pre-recovery", data_dir.display()));
        assert!(!kept.exists(), "a refused recovery moved the data dir");

        // --- recover: a one-replica cluster with everything the survivor had
        let recovered = recover(&cluster, survivor, true);
        assert!(recovered.status.success(), "{}", String::from_utf8_lossy(&recovered.stderr));
        assert!(kept.join("db").exists(), "the old data dir is kept");
        cluster.start_replica(survivor).expect("start");
        assert_eq!(survivor, cluster.wait_for_leader(Duration::from_secs(30)).await.expect("a leader"));
        let mut api = client(cluster.addr(survivor)).await;
        let records = api.list(ListRequest::default()).await.expect("list").into_inner().records;
        let now_held = held_ids(&records);
        let lost: Vec<_> = acknowledged.difference(&now_held).collect();
        assert!(lost.is_empty(), "acknowledged allocations lost: {lost:?}");
        let status = cluster.status_of(survivor).await.expect("status");
        assert_eq!(vec![survivor], status.members.iter().map(|member| member.id).collect::<Vec<_>>());

        // --- it takes writes, and a fresh replica joins it
        let reply = api
            .allocate(AllocateRequest {
                request: Some(request("after_recovery", 1)),
            })
            .await
            .expect("allocate")
            .into_inner();
        assert_eq!(AllocationStatus::Allocated, reply.status());
        let mut cluster = Arc::into_inner(cluster).expect("the load let go of the cluster");
        let addr = cluster.add_blank_replica(4).expect("a blank replica");
        api.add_replica(AddReplicaRequest {
            id: 4,
            addr,
            learner_only: false,
        })
        .await
        .expect("add replica 4");
        let commit_index = cluster.status_of(survivor).await.expect("status").commit_index;
        cluster
            .wait_for_applied(4, commit_index, Duration::from_secs(30))
            .await
            .expect("4 caught up");
        let mut fresh = client(cluster.addr(4)).await;
        let copied = fresh
            .list(ListRequest {
                stale: true,
                ..Default::default()
            })
            .await
            .expect("stale list")
            .into_inner()
            .records;
        assert_eq!(held_ids(&records).len() + 1, held_ids(&copied).len());
    })
    .await
    .expect("the test finished in time");
}

fn held_ids(records: &[AllocationReply]) -> BTreeSet<String> {
    held(records)
}
