//! Live moves with real agents against a real 3-replica cluster: four
//! providers of four cores, eight 1-core movable allocations spread over
//! them, and a 4-core request that no provider alone can hold. The plan
//! (automatic, on the stranded request) packs allocations make-before-break,
//! each agent confirming its side; the request is placed and fragmentation
//! falls. `qm optimize --dry-run` and `qm optimize` answer afterwards. And
//! a drain under load: movable allocations move off make-before-break, both
//! agents confirming, the pinned one is named in the answer and stays.

use std::time::{Duration, Instant};

use qm_client::convert::{state_name, status_name};
use qm_client::{Client, Consistency};
use qm_state_machine::ResourceRequest;
use qm_testkit::agent_cluster::{bounded, Cluster};
use serde_json::{json, Value};

/// Every test ends within this, whatever happens.
const TEST_TIME_MAX: Duration = Duration::from_secs(150);
const WAIT_MAX: Duration = Duration::from_secs(30);
const PROVIDERS: usize = 4;
const CORES: u32 = 4;

fn cpu_request(cpus: u64, movable: bool) -> ResourceRequest {
    serde_json::from_value(json!({
        "request_id": uuid::Uuid::new_v4().to_string(),
        "requester_id": "packer",
        "resource_requirements": {"cpu_cores": cpus},
        "priority": 1,
        "placement": "spread",
        "movable": movable,
    }))
    .unwrap()
}

/// Polls `id` until `done` holds for its record; panics after [`WAIT_MAX`].
async fn wait_for_record(client: &Client, id: &str, what: &str, done: impl Fn(&qm_client::proto::api::AllocationReply) -> bool) {
    let started = Instant::now();
    loop {
        if let Ok(record) = client.get(id, Consistency::Linearizable).await {
            if done(&record) {
                return;
            }
        }
        assert!(started.elapsed() < WAIT_MAX, "{id}: not {what} within {WAIT_MAX:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_stranded_request_is_placed_after_live_moves_confirmed_by_the_agents() {
    bounded(TEST_TIME_MAX, async {
        let cluster = Cluster::start(3);
        cluster.wait_for_leader().await;
        let client = cluster.client();
        let revision = client.system_state(Consistency::Linearizable).await.unwrap().revision;
        let watch = cluster.start_watch(revision + 1);
        let agents: Vec<_> = (1..=PROVIDERS)
            .map(|n| {
                let id = format!("agent-{n}");
                cluster.start_agent(&id, &cluster.inventory(&id, CORES))
            })
            .collect();
        for agent in &agents {
            agent.wait_for("registration", WAIT_MAX, |line| line["event"] == "registered").await;
        }

        // --- eight movable 1-core allocations, spread: two per provider, each confirmed
        let mut allocations = Vec::new();
        for _ in 0..2 * PROVIDERS {
            let granted = client.allocate(cpu_request(1, true)).await.unwrap();
            assert_eq!("allocated", status_name(&granted));
            allocations.push(granted.allocation_id.clone());
        }
        for id in &allocations {
            wait_for_record(&client, id, "confirmed", |record| state_name(record) == "monitoring").await;
        }
        let before = client.system_state(Consistency::Linearizable).await.unwrap();
        let fragmentation_before = before.fragmentation_permille["cpu_cores"];
        assert_eq!(750, fragmentation_before, "2 free on each of 4: 1 - 2/8");

        // --- a 4-core request: 8 cores free in all, none on one provider, so it queues
        let big = client.allocate(cpu_request(4, false)).await.unwrap();
        assert_eq!("queued", status_name(&big), "{big:?}");

        // --- the leader's tick sees it stranded; the plan's moves are confirmed by the agents
        wait_for_record(&client, &big.allocation_id, "placed", |record| state_name(record) == "monitoring").await;
        // Moves of the plan still under way end too (their agents confirm).
        let started = Instant::now();
        let after = loop {
            let state = client.system_state(Consistency::Linearizable).await.unwrap();
            if state.moves_started == state.moves_completed + state.moves_rolled_back {
                break state;
            }
            assert!(started.elapsed() < WAIT_MAX, "moves still under way: {state:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert!(
            after.moves_completed >= 1 && after.moves_completed <= 4,
            "moves: {} started, {} completed, {} rolled back",
            after.moves_started,
            after.moves_completed,
            after.moves_rolled_back
        );
        assert_eq!(0, after.moves_rolled_back);
        assert!(
            after.fragmentation_permille.get("cpu_cores").copied().unwrap_or(0) < fragmentation_before,
            "{:?}",
            after.fragmentation_permille
        );

        // --- every move: begun, confirmed by its target's agent, released by its source's, ended
        let is_moved = |event: &Value| event["type"] == "allocation_moved" && event["reason"] == "optimization";
        let started = Instant::now();
        while watch.json().iter().filter(|event| is_moved(event)).count() < after.moves_completed as usize {
            assert!(
                started.elapsed() < WAIT_MAX,
                "the watch did not show every move:\n{}",
                watch.all().join("\n")
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let events = watch.json();
        let moved: Vec<&Value> = events.iter().filter(|event| is_moved(event)).collect();
        assert_eq!(after.moves_completed as usize, moved.len(), "{moved:?}");
        for event in &moved {
            let (id, from, to) = (&event["allocation_id"], &event["from_provider"], &event["to_provider"]);
            let seen = |kind: &str, provider: &Value| {
                events
                    .iter()
                    .any(|e| e["type"] == kind && e["allocation_id"] == *id && e["provider_id"] == *provider)
            };
            assert!(seen("allocation_confirmed", to), "{to}'s agent did not confirm {id}");
            assert!(seen("deallocation_confirmed", from), "{from}'s agent did not release {id}");
            assert!(events.iter().any(|e| e["type"] == "allocation_moving" && e["allocation_id"] == *id));
        }
        let needed: Vec<&Value> = events.iter().filter(|e| e["type"] == "optimization_needed").collect();
        assert_eq!(
            Some(&json!("stranded_request")),
            needed.first().map(|e| &e["trigger"]),
            "{needed:?}"
        );

        // --- an operator's plan: the dry run shows what the plan then begins
        let dry_run: Value = serde_json::from_str(&cluster.qm(&["--output", "json", "optimize", "--dry-run"])).unwrap();
        assert_eq!(json!(true), dry_run["dry_run"]);
        let plan: Value = serde_json::from_str(&cluster.qm(&["--output", "json", "optimize"])).unwrap();
        assert_eq!(json!(false), plan["dry_run"]);
        assert_eq!(dry_run["moves"], plan["moves"]);
        println!(
            "moves completed: {} · fragmentation {} -> {} permille · operator plan: {} moves",
            after.moves_completed,
            fragmentation_before,
            after.fragmentation_permille.get("cpu_cores").copied().unwrap_or(0),
            plan["moves"].as_array().map_or(0, Vec::len)
        );
    })
    .await
}

#[tokio::test]
async fn a_drain_under_load_moves_movable_allocations_off_with_both_agents_confirming() {
    bounded(TEST_TIME_MAX, async {
        let cluster = Cluster::start(3);
        cluster.wait_for_leader().await;
        let client = cluster.client();
        let agents: Vec<_> = (1..=3)
            .map(|n| {
                let id = format!("agent-{n}");
                cluster.start_agent(&id, &cluster.inventory(&id, CORES))
            })
            .collect();
        for agent in &agents {
            agent.wait_for("registration", WAIT_MAX, |line| line["event"] == "registered").await;
        }

        // --- six movable allocations spread two per provider, and one pinned to agent-1
        let mut movable = Vec::new();
        for _ in 0..6 {
            movable.push(client.allocate(cpu_request(1, true)).await.unwrap().allocation_id);
        }
        let pinned: ResourceRequest = serde_json::from_value(json!({
            "request_id": uuid::Uuid::new_v4().to_string(),
            "requester_id": "packer",
            "resource_requirements": {"cpu_cores": 1},
            "priority": 1,
            "constraints": {"provider_id": "agent-1"},
        }))
        .unwrap();
        let pinned = client.allocate(pinned).await.unwrap().allocation_id;
        for id in movable.iter().chain([&pinned]) {
            wait_for_record(&client, id, "confirmed", |record| state_name(record) == "monitoring").await;
        }
        let on_agent_1: Vec<String> = {
            let mut ids = Vec::new();
            for id in &movable {
                if client.get(id, Consistency::Linearizable).await.unwrap().provider_id == "agent-1" {
                    ids.push(id.clone());
                }
            }
            ids
        };
        assert_eq!(2, on_agent_1.len());

        // --- drain agent-1: its movable allocations move at once, the pinned one is named
        let reply = client.drain_provider("agent-1", 10 * 60 * 1000).await.unwrap();
        assert_eq!("draining", reply.scheduling);
        assert_eq!(2, reply.moving.len(), "{reply:?}");
        assert_eq!(1, reply.cannot_move.len(), "{reply:?}");
        assert!(
            reply.cannot_move[0].starts_with(&pinned) && reply.cannot_move[0].contains("pinned"),
            "{reply:?}"
        );

        // --- each ends on another provider, in monitoring, confirmed by both agents
        for id in &on_agent_1 {
            wait_for_record(&client, id, "moved off agent-1", |record| {
                record.provider_id != "agent-1" && state_name(record) == "monitoring"
            })
            .await;
        }
        let state = client.system_state(Consistency::Linearizable).await.unwrap();
        assert_eq!((2, 2, 0), (state.moves_started, state.moves_completed, state.moves_rolled_back));
        assert_eq!(vec!["agent-1".to_owned()], state.cordoned_providers);
        let pinned_now = client.get(&pinned, Consistency::Linearizable).await.unwrap();
        assert_eq!(
            ("agent-1", "monitoring"),
            (pinned_now.provider_id.as_str(), state_name(&pinned_now))
        );
    })
    .await
}
