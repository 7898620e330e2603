//! Issue 24: every original replica replaced, one by one, while a library
//! client, a `qm agent` and a `qm watch` run, each configured with the
//! original replicas only. They follow the membership (the refresh reads
//! it), so once the last original is gone they still work: the client's
//! calls succeed, the agent heartbeats and confirms an allocation placed
//! then, and the watch goes on with contiguous revisions.
//!
//! Before the refresh, a client learned a replica only from a NotLeader
//! hint, which names the leader and comes only from a live replica the
//! client knows; the new replicas joined as followers, and the originals
//! were stopped once removed, so every call after the last one went met a
//! closed port, with no redirect to follow.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use qm_client::convert::status_name;
use qm_client::{Client, Consistency};
use qm_state_machine::ResourceRequest;
use qm_testkit::agent_cluster::{bounded, Cluster, Lines};
use serde_json::{json, Value};

/// Every test ends within this, whatever happens.
const TEST_TIME_MAX: Duration = Duration::from_secs(120);
const WAIT_MAX: Duration = Duration::from_secs(20);
/// Allocate/release pairs the client completes after the last original is gone.
const PAIRS_AFTER: usize = 10;

fn request(requester: &str, provider: &str) -> ResourceRequest {
    serde_json::from_value(json!({
        "request_id": uuid::Uuid::new_v4().to_string(),
        "requester_id": requester,
        "resource_requirements": {"cpu_cores": 1},
        "priority": 1,
        "constraints": {"provider_id": provider},
    }))
    .unwrap()
}

/// What the background client saw: pairs completed and failures, each
/// marked by whether the last original replica was gone when it happened.
#[derive(Default)]
struct Outcomes {
    pairs_after: usize,
    failures_after: Vec<String>,
    failures_before: Vec<String>,
}

/// Allocates and releases on `provider` in a loop until `stop`.
fn spawn_client_loop(
    client: Client,
    gone: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    outcomes: Arc<Mutex<Outcomes>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while !stop.load(Ordering::SeqCst) {
            let after = gone.load(Ordering::SeqCst);
            let result = match client.allocate(request("looper", "static")).await {
                Ok(granted) => client.release(&granted.allocation_id).await.map(|_| ()),
                Err(error) => Err(error),
            };
            {
                let mut outcomes = outcomes.lock().unwrap();
                match (result, after) {
                    (Ok(()), true) => outcomes.pairs_after += 1,
                    (Ok(()), false) => {}
                    (Err(error), true) => outcomes.failures_after.push(error.to_string()),
                    (Err(error), false) => outcomes.failures_before.push(error.to_string()),
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
}

/// Waits until the `qm` process `name` logged a membership read naming `addr`.
async fn wait_until_learned(cluster: &Cluster, name: &str, addr: &str) {
    let deadline = std::time::Instant::now() + WAIT_MAX;
    loop {
        let learned = cluster
            .qm_log(name)
            .lines()
            .any(|line| line.contains("membership refreshed") && line.contains(addr));
        if learned {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{name} did not learn {addr} within {WAIT_MAX:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the library client knows `addr` as a member.
async fn wait_until_client_knows(client: &Client, addr: &str) {
    let deadline = std::time::Instant::now() + WAIT_MAX;
    while !client.known_replicas().iter().any(|known| known.addr == addr && known.member) {
        assert!(std::time::Instant::now() < deadline, "the client did not learn {addr}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn revisions(watch: &Lines) -> Vec<u64> {
    watch.json().iter().filter_map(|line| line["revision"].as_u64()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_agents_and_watchers_follow_a_replacement_of_every_original_replica() {
    bounded(TEST_TIME_MAX, async {
        let mut cluster = Cluster::start(3);
        cluster.wait_for_leader().await;
        let admin = cluster.client();
        // A provider of its own for the loop, so the agent's units stay free.
        let registration = serde_json::from_value(json!({
            "provider_id": "static",
            "resources": [{"resource_id": "cpu_1", "kind": "cpu_cores", "capacity": 1}],
        }))
        .unwrap();
        admin.register_provider(&registration).await.unwrap();
        let from = admin.system_state(Consistency::Linearizable).await.unwrap().revision + 1;
        let watch = cluster.start_watch(from);
        let agent = cluster.start_agent("agent-a", &cluster.inventory("agent-a", 2));
        agent.wait_for("registration", WAIT_MAX, |line| line["event"] == "registered").await;

        // --- a client allocating and releasing all along
        let (gone, stop) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
        let outcomes = Arc::new(Mutex::new(Outcomes::default()));
        let looper = spawn_client_loop(cluster.client(), gone.clone(), stop.clone(), outcomes.clone());

        // --- replace 1, 2 and 3 by 4, 5 and 6, one at a time: add the new
        // one, let every client learn it (what its refresh interval
        // promises), then remove the old one and stop it
        for (old, new) in [(1, 4), (2, 5), (3, 6)] {
            let addr = cluster.start_blank_node(new);
            let status = admin.add_replica(new, &addr, false).await.unwrap();
            assert!(status.members.iter().any(|member| member.id == new && member.role != "learner"));
            wait_until_client_knows(&admin, &addr).await;
            wait_until_learned(&cluster, "agent-agent-a", &addr).await;
            wait_until_learned(&cluster, "watch", &addr).await;
            let status = admin.remove_replica(old).await.unwrap();
            assert!(status.members.iter().all(|member| member.id != old), "{old} is out");
            cluster.kill_node(old);
            println!("replica {old} replaced by {new} at {addr}");
        }
        gone.store(true, Ordering::SeqCst);
        let view = admin.known_replicas();
        println!("the admin client's view: {view:?}");

        // --- with no original left, the agent confirms a new allocation
        let agent_lines_before = agent.all().len();
        let placed = admin.allocate(request("after", "agent-a")).await.unwrap();
        assert_eq!("allocated", status_name(&placed));
        let allocation_id = placed.allocation_id.clone();
        agent
            .wait_for("the agent's confirmation", WAIT_MAX, |line| {
                line["event"] == "confirmed" && line["allocation_id"] == allocation_id.as_str()
            })
            .await;
        // --- the loop completes its pairs, and the watch shows the last of them
        let deadline = std::time::Instant::now() + WAIT_MAX;
        while outcomes.lock().unwrap().pairs_after < PAIRS_AFTER {
            assert!(std::time::Instant::now() < deadline, "the client loop stalled");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        stop.store(true, Ordering::SeqCst);
        looper.await.unwrap();
        let last = admin.system_state(Consistency::Linearizable).await.unwrap().revision;
        watch
            .wait_for("the last revision", WAIT_MAX, |line| line["revision"].as_u64() >= Some(last))
            .await;

        // --- nobody failed a call once the originals were gone
        let outcomes = std::mem::take(&mut *outcomes.lock().unwrap());
        println!(
            "client: {} pairs after, failures before the last original went: {:?}",
            outcomes.pairs_after, outcomes.failures_before
        );
        assert_eq!(
            Vec::<String>::new(),
            outcomes.failures_after,
            "the client's calls after the originals were gone"
        );
        let agent_after: Vec<Value> = agent.json().into_iter().skip(agent_lines_before).collect();
        let complaints: Vec<&Value> = agent_after
            .iter()
            .filter(|line| ["warning", "provider_failed", "refused"].contains(&line["event"].as_str().unwrap_or_default()))
            .collect();
        assert!(complaints.is_empty(), "the agent after the originals were gone: {complaints:?}");
        let state = admin.system_state(Consistency::Linearizable).await.unwrap();
        assert!(!state.failed_providers.contains(&"agent-a".to_owned()), "its heartbeats went on");
        let seen = revisions(&watch);
        let expected: Vec<u64> = (from..=*seen.last().unwrap()).collect();
        assert_eq!(expected, seen, "the watch's revisions are contiguous");
        assert!(
            view.iter().all(|known| known.seed != known.member),
            "{view:?}: the seeds are gone, the members new"
        );
    })
    .await
}
