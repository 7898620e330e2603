//! Provider agents as real processes against a real 3-replica cluster: an
//! allocation on agent A moves to agent B when A is killed, the events say
//! so, A's units come back when it returns; and the same with the leader
//! killed during the reallocation.
//!
//! Timings are printed (`cargo test -p qm-client --test agent_failover -- --nocapture`).

use qm_client::convert::{state_name, status_name};
use std::time::{Duration, Instant};

use qm_client::{Client, Confirmation, Consistency, Error};
use qm_state_machine::ResourceRequest;
use qm_testkit::agent_cluster::{bounded, Cluster, Lines, FAILURE_WINDOW_MS};
use serde_json::{json, Value};

/// The cluster tests share the two cores of a small CI machine: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
/// Every test ends within this, whatever happens.
const TEST_TIME_MAX: Duration = Duration::from_secs(150);
/// Slack granted on top of the failure window for the move (the bound).
const MOVE_SLACK: Duration = Duration::from_secs(2);
/// Upper bound on electing a new leader after the old one is killed.
const ELECTION_MAX: Duration = Duration::from_secs(3);
const WAIT_MAX: Duration = Duration::from_secs(20);

fn failure_window() -> Duration {
    Duration::from_millis(FAILURE_WINDOW_MS)
}

fn cpu_request(requester: &str, cpus: u64, provider: Option<&str>) -> ResourceRequest {
    let mut request = json!({
        "request_id": uuid::Uuid::new_v4().to_string(),
        "requester_id": requester,
        "resource_requirements": {"cpu_cores": cpus},
        "priority": 1,
    });
    if let Some(provider) = provider {
        request["constraints"] = json!({"provider_id": provider});
    }
    serde_json::from_value(request).unwrap()
}

/// Two agents, A and B, each with `cpu_1`, `cpu_2` and `vol_1`, registered.
struct Setup {
    cluster: Cluster,
    client: Client,
    watch: Lines,
    agent_a: Lines,
    agent_b: Lines,
}

async fn two_agents() -> Setup {
    let cluster = Cluster::start(3);
    cluster.wait_for_leader().await;
    let client = cluster.client();
    let revision = client.system_state(Consistency::Linearizable).await.unwrap().revision;
    let watch = cluster.start_watch(revision + 1);
    let agent_a = cluster.start_agent("agent-a", &cluster.inventory("agent-a", 2));
    let agent_b = cluster.start_agent("agent-b", &cluster.inventory("agent-b", 2));
    for agent in [&agent_a, &agent_b] {
        agent.wait_for("registration", WAIT_MAX, |line| line["event"] == "registered").await;
    }
    Setup {
        cluster,
        client,
        watch,
        agent_a,
        agent_b,
    }
}

/// Allocates one CPU (best fit's tie goes to the lower id: agent-a) and waits
/// for agent A's confirmation; returns the allocation id.
async fn allocate_on_agent_a(setup: &Setup) -> String {
    let granted = setup.client.allocate(cpu_request("job_1", 1, None)).await.unwrap();
    assert_eq!(("allocated", "agent-a"), (status_name(&granted), granted.provider_id.as_str()));
    let allocation_id = granted.allocation_id.clone();
    setup
        .agent_a
        .wait_for("agent A's confirmation", WAIT_MAX, |line| {
            line["event"] == "confirmed" && line["allocation_id"] == allocation_id.as_str()
        })
        .await;
    let record = setup.client.get(&allocation_id, Consistency::Linearizable).await.unwrap();
    assert_eq!("monitoring", state_name(&record), "the confirmation is visible to the requester");
    allocation_id
}

/// Polls the allocation until it is on `provider` (in `state`, if given);
/// returns when it got there, measured from `since`. Panics after `within`.
async fn wait_until_on(
    client: &Client,
    allocation_id: &str,
    provider: &str,
    state: Option<&str>,
    since: Instant,
    within: Duration,
) -> Duration {
    loop {
        if let Ok(record) = client.get(allocation_id, Consistency::Linearizable).await {
            if record.provider_id == provider && state.is_none_or(|state| state_name(&record) == state) {
                return since.elapsed();
            }
        }
        assert!(
            since.elapsed() < within,
            "{allocation_id} not on {provider} ({state:?}) within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The protocol's resource_status shape: event_id, resource_id, status, metrics.
fn assert_protocol_resource_status(line: &Value) {
    assert!(uuid::Uuid::parse_str(line["event_id"].as_str().unwrap()).is_ok(), "{line}");
    assert!(line["resource_id"].is_string(), "{line}");
    assert!(
        ["available", "allocated", "failed"].contains(&line["status"].as_str().unwrap()),
        "{line}"
    );
    assert!(line["metrics"]["utilization"].is_number(), "{line}");
}

/// Waits until the watch showed agent A's failure and the move to B.
async fn assert_events_tell_the_move(watch: &Lines, allocation_id: &str) {
    watch
        .wait_for("provider_failed", WAIT_MAX, |line| {
            line["type"] == "provider_failed" && line["provider_id"] == "agent-a"
        })
        .await;
    for unit in ["cpu_1", "cpu_2", "vol_1"] {
        let status = watch
            .wait_for("resource_status failed", WAIT_MAX, |line| {
                line["type"] == "resource_status"
                    && line["provider_id"] == "agent-a"
                    && line["resource_id"] == unit
                    && line["status"] == "failed"
            })
            .await;
        assert_protocol_resource_status(&status);
    }
    watch
        .wait_for("allocation_moved", WAIT_MAX, |line| {
            line["type"] == "allocation_moved"
                && line["allocation_id"] == allocation_id
                && line["from_provider"] == "agent-a"
                && line["to_provider"] == "agent-b"
        })
        .await;
    watch
        .wait_for("agent B's allocation_confirmed", WAIT_MAX, |line| {
            line["type"] == "allocation_confirmed" && line["allocation_id"] == allocation_id && line["provider_id"] == "agent-b"
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_agents_allocation_moves_to_the_other_agent_and_its_units_return() {
    let _serial = SERIAL.lock().await;
    bounded(TEST_TIME_MAX, async {
        let setup = two_agents().await;
        let (cluster, client) = (&setup.cluster, &setup.client);
        let allocation_id = allocate_on_agent_a(&setup).await;

        // --- a repeated or misdirected confirmation is answered without a log entry
        let commit_index = client.cluster_status().await.unwrap().commit_index;
        let again = client.confirm(&allocation_id, "agent-a", Confirmation::Allocation).await.unwrap();
        let misdirected = client
            .confirm(&allocation_id, "agent-b", Confirmation::Allocation)
            .await
            .unwrap_err();
        assert_eq!("monitoring", state_name(&again));
        assert!(matches!(misdirected, Error::Conflict { .. }), "{misdirected:?}");
        assert_eq!(commit_index, client.cluster_status().await.unwrap().commit_index);

        // --- kill -9 agent A: within the failure window + 2 s the allocation is on B
        cluster.reaper.kill("agent-agent-a");
        let killed = Instant::now();
        let deadline = failure_window() + MOVE_SLACK;
        let moved = wait_until_on(client, &allocation_id, "agent-b", None, killed, deadline).await;
        let confirmed = wait_until_on(client, &allocation_id, "agent-b", Some("monitoring"), killed, deadline).await;
        println!(
            "agent A killed: allocation moved to B after {moved:?}, confirmed by B after {confirmed:?} (window {FAILURE_WINDOW_MS} ms)"
        );
        assert_events_tell_the_move(&setup.watch, &allocation_id).await;
        setup
            .agent_b
            .wait_for("agent B's placed notice", WAIT_MAX, |line| {
                line["event"] == "placed" && line["allocation_id"] == allocation_id.as_str() && line["moved_from"] == "agent-a"
            })
            .await;
        let state = client.system_state(Consistency::Linearizable).await.unwrap();
        assert_eq!(vec!["agent-a".to_owned()], state.failed_providers);
        let top = cluster.qm(&["top", "--once"]);
        assert!(top.contains("failed providers: agent-a"), "{top}");

        // --- agent A returns: its units are offered again
        let agent_a = cluster.start_agent("agent-a", &cluster.inventory("agent-a", 2));
        agent_a
            .wait_for("registration", WAIT_MAX, |line| line["event"] == "registered")
            .await;
        setup
            .watch
            .wait_for("provider_recovered", WAIT_MAX, |line| {
                line["type"] == "provider_recovered" && line["provider_id"] == "agent-a"
            })
            .await;
        let available = setup
            .watch
            .wait_for("resource_status available", WAIT_MAX, |line| {
                line["type"] == "resource_status"
                    && line["provider_id"] == "agent-a"
                    && line["resource_id"] == "cpu_1"
                    && line["status"] == "available"
            })
            .await;
        assert_protocol_resource_status(&available);
        let state = client.system_state(Consistency::Linearizable).await.unwrap();
        assert!(state.failed_providers.is_empty(), "{state:?}");
        let pinned = client.allocate(cpu_request("job_2", 2, Some("agent-a"))).await.unwrap();
        assert_eq!(("allocated", "agent-a"), (status_name(&pinned), pinned.provider_id.as_str()));
        agent_a
            .wait_for("the returned agent's confirmation", WAIT_MAX, |line| {
                line["event"] == "confirmed" && line["allocation_id"] == pinned.allocation_id.as_str()
            })
            .await;

        // --- a release is confirmed by the agent too (deallocation → idle)
        let released = client.release(&pinned.allocation_id).await.unwrap();
        assert!(["deallocation", "idle"].contains(&state_name(&released)), "{released:?}");
        agent_a
            .wait_for("the release confirmation", WAIT_MAX, |line| {
                line["event"] == "release_confirmed" && line["allocation_id"] == pinned.allocation_id.as_str()
            })
            .await;
        assert_eq!(
            "idle",
            state_name(&client.get(&pinned.allocation_id, Consistency::Linearizable).await.unwrap())
        );

        // --- SIGTERM agent B: it deregisters and its allocation moves back to A
        let exit = cluster.reaper.terminate("agent-agent-b", Duration::from_secs(10));
        assert!(exit.is_some_and(|status| status.success()), "agent B exited with {exit:?}");
        assert!(
            setup.agent_b.json().iter().any(|line| line["event"] == "deregistered"),
            "{:?}",
            setup.agent_b.all()
        );
        let back = wait_until_on(client, &allocation_id, "agent-a", Some("monitoring"), Instant::now(), WAIT_MAX).await;
        println!("agent B stopped: allocation back on A and confirmed after {back:?}");
        let providers = client.list_providers(Consistency::Linearizable).await.unwrap();
        assert_eq!(
            vec!["agent-a"],
            providers.iter().map(|provider| provider.provider_id.as_str()).collect::<Vec<_>>()
        );
    })
    .await
}

/// When the leader is killed, relative to agent A's death.
#[derive(Clone, Copy, Debug)]
enum LeaderKill {
    /// Half a failure window after A: the old leader's silence count is lost.
    BeforeDetection,
    /// As soon as A's failure is in the event stream: B's confirmation of the
    /// moved allocation must reach the new leader.
    AfterDetection,
}

async fn leader_killed_during_reallocation(when: LeaderKill) {
    let setup = two_agents().await;
    let (cluster, client) = (&setup.cluster, &setup.client);
    let allocation_id = allocate_on_agent_a(&setup).await;
    let leader = cluster.wait_for_leader().await;

    // --- kill -9 agent A, then the leader
    cluster.reaper.kill("agent-agent-a");
    let killed = Instant::now();
    match when {
        LeaderKill::BeforeDetection => tokio::time::sleep(failure_window() / 2).await,
        LeaderKill::AfterDetection => {
            setup
                .watch
                .wait_for("provider_failed", failure_window() + MOVE_SLACK, |line| {
                    line["type"] == "provider_failed" && line["provider_id"] == "agent-a"
                })
                .await;
        }
    }
    cluster.kill_node(leader);
    let leader_killed = killed.elapsed();

    // --- a new leader gives every provider a fresh window, then declares A failed
    let bound = leader_killed + ELECTION_MAX + failure_window() + MOVE_SLACK;
    let confirmed = wait_until_on(client, &allocation_id, "agent-b", Some("monitoring"), killed, bound).await;
    let new_leader = cluster.wait_for_leader().await;
    println!(
        "{when:?}: leader {leader} killed {leader_killed:?} after agent A; new leader {new_leader}; allocation on B and confirmed {confirmed:?} after A died (bound {bound:?})"
    );
    assert_ne!(leader, new_leader);
    assert_events_tell_the_move(&setup.watch, &allocation_id).await;
    let state = client.system_state(Consistency::Linearizable).await.unwrap();
    assert_eq!(
        vec!["agent-a".to_owned()],
        state.failed_providers,
        "B heartbeats through the failover"
    );
    // --- B's heartbeats keep it alive under the new leader
    tokio::time::sleep(failure_window() + MOVE_SLACK).await;
    let state = client.system_state(Consistency::Linearizable).await.unwrap();
    assert_eq!(vec!["agent-a".to_owned()], state.failed_providers);
    assert!(setup.agent_b.json().iter().all(|line| line["event"] != "provider_failed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_allocation_moves_when_the_leader_dies_before_the_failure_is_detected() {
    let _serial = SERIAL.lock().await;
    bounded(TEST_TIME_MAX, leader_killed_during_reallocation(LeaderKill::BeforeDetection)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_moved_allocation_is_confirmed_when_the_leader_dies_right_after_the_move() {
    let _serial = SERIAL.lock().await;
    bounded(TEST_TIME_MAX, leader_killed_during_reallocation(LeaderKill::AfterDetection)).await
}
