//! `qm bridge amqp` against a real RabbitMQ and real replicas, driven by an
//! AMQP client in the test (lapin, used directly: none of the bridge's own
//! code): the protocol's example request allocated and answered, a resend
//! answered with the same response, bad input dead-lettered with a
//! rejection reply, direct reply-to, two bridges that never allocate twice,
//! and the event stream contiguous from revision 1 across a `kill -9` of the
//! bridge, a `kill -9` of the leader and a broker restart.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicGetOptions, BasicPublishOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Connection, ConnectionProperties, ExchangeKind};
use qm_client::proto::api;
use qm_client::{Client, Consistency};
use qm_state_machine::ProviderRegistration;
use qm_testkit::agent_cluster::Reaper;
use qm_testkit::rabbitmq::Broker;
use qm_testkit::test_cluster::{request_on, QUIET_PROVIDERS};
use qm_testkit::{cli_binary, TestCluster};
use serde_json::{json, Value};
use support::*;
use uuid::Uuid;

/// The protocol's example `resource_request`, verbatim but for the
/// deadline: the example's (2024-03-21) has passed, and the table rightly
/// rejects a request past its deadline (`deadline_exceeded`).
const EXAMPLE: &str = r#"{
  "request_id": "550e8400-e29b-41d4-a716-446655440000",
  "requester_id": "agent_123",
  "resource_requirements": {
    "cpu_cores": 2,
    "memory_gb": 4,
    "storage_gb": 100
  },
  "priority": 1,
  "deadline": "2099-03-21T10:30:00Z"
}"#;

struct Setup {
    broker: Broker,
    cluster: TestCluster,
    reaper: Reaper,
    logs: tempfile::TempDir,
}

impl Setup {
    async fn start() -> Setup {
        Setup::start_with(&QUIET_PROVIDERS).await
    }

    async fn start_with(node_args: &[&str]) -> Setup {
        let broker = Broker::start().expect("rabbitmq starts");
        let cluster = TestCluster::start_with(3, node_args);
        cluster.wait_for_leader().await;
        let registration: ProviderRegistration = serde_json::from_value(json!({
            "provider_id": "node_1",
            "resources": (1..=64).map(|n| json!({"resource_id": format!("cpu_{n}"), "kind": "cpu_cores", "capacity": 1}))
                .chain([
                    json!({"resource_id": "mem_1", "kind": "memory_gb", "capacity": 256, "sharing": "divisible"}),
                    json!({"resource_id": "vol_1", "kind": "storage_gb", "capacity": 10000, "sharing": "divisible"}),
                ])
                .collect::<Vec<_>>(),
        }))
        .unwrap();
        cluster.client().register_provider(&registration).await.expect("provider registers");
        Setup {
            broker,
            cluster,
            reaper: Reaper::new(),
            logs: tempfile::tempdir().unwrap(),
        }
    }

    /// Starts `qm bridge amqp` as `name` (also its holder name).
    fn start_bridge(&self, name: &str) {
        self.start_bridge_with(name, &[]);
    }

    fn start_bridge_with(&self, name: &str, extra_args: &[&str]) {
        let log = std::fs::File::create(self.logs.path().join(format!("{name}.log"))).unwrap();
        let child = Command::new(cli_binary())
            .args(["--endpoints", &self.cluster.endpoints().join(",")])
            .args(["bridge", "amqp", "--amqp-url", &self.broker.url(), "--holder", name])
            .args(["--cursor-hold-ms", "2000", "--cursor-save-ms", "200"])
            .args(extra_args)
            .env("QM_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("qm bridge starts");
        self.reaper.adopt(name, child);
    }

    fn bridge_logs(&self) -> String {
        logs_in(self.logs.path())
    }

    async fn amqp(&self) -> Connection {
        Connection::connect(&self.broker.url(), ConnectionProperties::default())
            .await
            .expect("the test's AMQP client connects")
    }

    async fn client(&self) -> Client {
        self.cluster.client()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_answered_once_and_bad_input_is_dead_lettered() {
    bounded(async {
        let setup = Setup::start().await;
        let metrics_addr = qm_testkit::local_cluster::free_loopback_addr().unwrap();
        setup.start_bridge_with("b1", &["--metrics-listen", &metrics_addr]);
        let connection = setup.amqp().await;
        wait_for_topology(&connection, || setup.bridge_logs()).await;
        let mut requester = Requester::new(&connection).await;

        // --- the protocol's example: allocated, with unit ids
        let first = requester.call("resource_request", EXAMPLE.as_bytes()).await;
        assert_eq!(first["status"], "allocated", "{first}\n{}", setup.bridge_logs());
        assert_eq!(first["request_id"], "550e8400-e29b-41d4-a716-446655440000");
        assert_eq!(first["allocated_resources"]["cpu_cores"].as_array().unwrap().len(), 2, "{first}");
        assert_eq!(first["allocated_resources"]["memory_gb"], json!(["mem_1"]));

        // --- sent again: the same response, nothing more allocated
        let again = requester.call("resource_request", EXAMPLE.as_bytes()).await;
        assert_eq!(again["response_id"], first["response_id"]);
        assert_eq!(again["allocation_id"], first["allocation_id"]);
        let state = setup.client().await.system_state(Consistency::Linearizable).await.unwrap();
        assert_eq!(state.active_allocations, 1);

        // --- bad JSON, a negative quantity, a missing field: rejected naming it, and dead-lettered
        let bad_json = requester.call("resource_request.default", b"{\"request_id\": ").await;
        assert_eq!(
            (bad_json["status"].as_str(), bad_json["field"].as_str()),
            (Some("rejected"), Some("resource_request"))
        );
        let negative = EXAMPLE
            .replace("\"cpu_cores\": 2", "\"cpu_cores\": -2")
            .replace("550e8400-e29b-41d4-a716-446655440000", &Uuid::new_v4().to_string());
        let negative = requester.call("resource_request", negative.as_bytes()).await;
        assert_eq!(negative["field"], "resource_requirements.cpu_cores", "{negative}");
        assert!(negative["reason"].as_str().unwrap().contains("resource_requirements.cpu_cores"));
        let missing = requester.call("resource_release", b"{}").await;
        assert_eq!(
            (missing["status"].as_str(), missing["field"].as_str()),
            (Some("rejected"), Some("request_id"))
        );
        // Dead-lettering follows the reply; wait for all three.
        let mut dead = Vec::new();
        for _ in 0..100 {
            dead.extend(dead_letters(&connection).await);
            if dead.len() >= 3 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(dead.len(), 3, "{dead:?}");
        assert!(dead.iter().any(|body| body == "{\"request_id\": "));
        let state_after = setup.client().await.system_state(Consistency::Linearizable).await.unwrap();
        assert_eq!(state_after.revision, state.revision, "bad input changed nothing in the table");

        // --- direct reply-to: no reply queue of the requester's own
        let channel = connection.create_channel().await.unwrap();
        let mut direct = channel
            .basic_consume(
                "amq.rabbitmq.reply-to".into(),
                "".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        let mut release_body = json!({"request_id": "550e8400-e29b-41d4-a716-446655440000"}).to_string();
        channel
            .basic_publish(
                "resource_management".into(),
                "resource_release.default".into(),
                BasicPublishOptions::default(),
                release_body.as_bytes(),
                BasicProperties::default()
                    .with_reply_to("amq.rabbitmq.reply-to".into())
                    .with_correlation_id("direct".into()),
            )
            .await
            .unwrap();
        let delivery = tokio::time::timeout(REPLY_WAIT_MAX, direct.next()).await.unwrap().unwrap().unwrap();
        let released: Value = serde_json::from_slice(&delivery.data).unwrap();
        assert_eq!(
            (released["state"].as_str(), released["reason"].as_str()),
            (Some("idle"), Some("released")),
            "{released}"
        );
        assert_eq!(delivery.properties.correlation_id().as_ref().map(|id| id.as_str()), Some("direct"));
        release_body.clear();

        // --- a namespace in the body that the routing key contradicts
        let other = EXAMPLE
            .replace("\"priority\": 1", "\"priority\": 1, \"namespace\": \"team-b\"")
            .replace("550e8400-e29b-41d4-a716-446655440000", &Uuid::new_v4().to_string());
        let refused = requester.call("resource_request.team-a", other.as_bytes()).await;
        assert_eq!(refused["field"], "namespace", "{refused}");

        // --- the bridge's metrics, scraped by curl
        let scrape = || {
            let output = Command::new("curl")
                .args(["-sf", &format!("http://{metrics_addr}/metrics")])
                .output()
                .expect("curl runs");
            assert!(output.status.success(), "curl failed: {output:?}");
            String::from_utf8(output.stdout).unwrap()
        };
        let value = |text: &str, name: &str| -> f64 {
            text.lines()
                .find_map(|line| line.strip_prefix(name).and_then(|rest| rest.trim().parse().ok()))
                .unwrap_or_else(|| panic!("no {name} in\n{text}"))
        };
        let mut metrics = scrape();
        for _ in 0..50 {
            if value(&metrics, "qm_bridge_dead_lettered_total") >= 4.0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            metrics = scrape();
        }
        assert_eq!(value(&metrics, "qm_bridge_dead_lettered_total"), 4.0, "{metrics}");
        assert!(value(&metrics, "qm_bridge_events_confirmed_total") > 0.0, "{metrics}");
        assert_eq!(value(&metrics, "qm_bridge_holds_cursor"), 1.0, "{metrics}");
        assert!(
            metrics.contains("qm_bridge_requests_total{action=\"request\",outcome=\"replied\"} 2"),
            "{metrics}"
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_bridges_never_allocate_twice() {
    bounded(async {
        let setup = Setup::start().await;
        setup.start_bridge("b1");
        setup.start_bridge("b2");
        let connection = setup.amqp().await;
        wait_for_topology(&connection, || setup.bridge_logs()).await;
        let mut requester = Requester::new(&connection).await;

        // --- 40 requests, each sent twice at once: the bridges share the queue, so
        // the two copies often go to different bridges
        let requests: Vec<Value> = (0..40).map(|_| serde_json::to_value(request_on("node_1", 1)).unwrap()).collect();
        for (n, request) in requests.iter().enumerate() {
            let body = request.to_string();
            requester.send("resource_request", body.as_bytes(), &format!("{n}-a")).await;
            requester.send("resource_request", body.as_bytes(), &format!("{n}-b")).await;
        }
        let mut responses: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for _ in 0..requests.len() * 2 {
            let (_, reply) = requester.reply().await;
            assert_eq!(reply["status"], "allocated", "{reply}\n{}", setup.bridge_logs());
            responses
                .entry(reply["request_id"].as_str().unwrap().to_owned())
                .or_default()
                .insert(reply["response_id"].as_str().unwrap().to_owned());
        }
        assert_eq!(responses.len(), requests.len());
        assert!(
            responses.values().all(|ids| ids.len() == 1),
            "one response per request: {responses:?}"
        );
        let state = setup.client().await.system_state(Consistency::Linearizable).await.unwrap();
        assert_eq!(state.active_allocations, requests.len() as u64, "each request allocated once");
    })
    .await
}

/// The subscriber's queue on `resource_events`, bound before any bridge runs.
const EVENTS_QUEUE: &str = "test.events";

async fn subscribe_to_events(connection: &Connection) {
    let channel = connection.create_channel().await.unwrap();
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    channel
        .exchange_declare("resource_events".into(), ExchangeKind::Fanout, durable, FieldTable::default())
        .await
        .unwrap();
    channel
        .queue_declare(EVENTS_QUEUE.into(), QueueDeclareOptions::durable(), FieldTable::default())
        .await
        .unwrap();
    channel
        .queue_bind(
            EVENTS_QUEUE.into(),
            "resource_events".into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
}

/// Allocates and releases on `node_1` until told to stop; failures (a
/// leader being killed) are simply retried by the next round.
fn start_load(client: Client, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        let mut rounds = 0;
        while !stop.load(Ordering::Relaxed) {
            if let Ok(reply) = client.allocate(request_on("node_1", 1)).await {
                let _ = client.release(&reply.request_id).await;
            }
            rounds += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        rounds
    })
}

fn revision_of(properties: &BasicProperties) -> u64 {
    match properties
        .headers()
        .as_ref()
        .and_then(|headers| headers.inner().get("x-qm-revision"))
    {
        Some(AMQPValue::LongLongInt(revision)) => *revision as u64,
        other => panic!("an event without x-qm-revision: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_contiguous_across_bridge_kill_leader_kill_and_broker_restart() {
    bounded(async {
        let mut setup = Setup::start().await;
        let connection = setup.amqp().await;
        subscribe_to_events(&connection).await;
        drop(connection);

        let stop = Arc::new(AtomicBool::new(false));
        let load = start_load(setup.client().await, stop.clone());
        setup.start_bridge("b1");
        tokio::time::sleep(Duration::from_millis(1500)).await;

        // --- kill -9 the bridge; another takes over once b1's hold lapses
        setup.reaper.kill("b1");
        setup.start_bridge("b2");
        tokio::time::sleep(Duration::from_millis(3000)).await;

        // --- kill -9 the leader
        let leader = setup.cluster.wait_for_leader().await;
        setup.cluster.kill(leader);
        tokio::time::sleep(Duration::from_millis(2000)).await;
        setup.cluster.wait_for_leader().await;

        // --- restart the broker
        setup.broker.stop().unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        setup.broker.restart().unwrap();
        tokio::time::sleep(Duration::from_millis(3000)).await;
        stop.store(true, Ordering::Relaxed);
        let rounds = load.await.unwrap();
        assert!(rounds > 10, "the load ran ({rounds} rounds)");

        // --- every revision the cluster has, from 1, published, contiguous
        let client = setup.client().await;
        let last = client.system_state(Consistency::Linearizable).await.unwrap().revision;
        let connection = setup.amqp().await;
        let channel = connection.create_channel().await.unwrap();
        let mut published: BTreeMap<u64, Value> = BTreeMap::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while published.len() < last as usize {
            assert!(
                tokio::time::Instant::now() < deadline,
                "only {} of {last} revisions arrived\n{}",
                published.len(),
                setup.bridge_logs()
            );
            match channel
                .basic_get(EVENTS_QUEUE.into(), BasicGetOptions { no_ack: true })
                .await
                .unwrap()
            {
                Some(message) => {
                    let revision = revision_of(&message.delivery.properties);
                    let body: Value = serde_json::from_slice(&message.delivery.data).unwrap();
                    assert_eq!(body["revision"], revision, "header and body agree");
                    assert_eq!(
                        message.delivery.properties.message_id().as_ref().map(|id| id.to_string()),
                        Some(qm_bridge::messages::event_message_id("quartermaster", revision).to_string())
                    );
                    // Duplicates are allowed (at least once) and identical.
                    if let Some(earlier) = published.insert(revision, body.clone()) {
                        assert_eq!(earlier, body, "a duplicate of revision {revision} differs");
                    }
                }
                None => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        let revisions: Vec<u64> = published.keys().copied().collect();
        assert_eq!(revisions, (1..=last).collect::<Vec<_>>(), "contiguous from 1");

        // --- the same events `qm watch --from 1` shows
        let mut watch = client.watch(1, None);
        for revision in 1..=last {
            let event: api::EventMessage = watch.next().await.unwrap().unwrap();
            assert_eq!(event.revision, revision);
            let body = &published[&revision];
            assert_eq!(body["event_id"], event.event_id.as_str(), "revision {revision}");
            assert_eq!(body["event_type"], event.r#type.as_str(), "revision {revision}");
        }
        // b2 took over the cursor, and reconnected after the broker restart.
        let b2 = std::fs::read_to_string(setup.logs.path().join("b2.log")).unwrap();
        assert!(b2.contains("holding the cursor"), "{b2}");
        assert!(b2.contains("reconnecting"), "{b2}");
    })
    .await
}

/// The README's Python agent (`examples/pika_agent.py`), with pika from
/// PyPI: request, reply, the grant on `resource_events`, release.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_agent_with_pika_requests_sees_its_grant_and_releases() {
    bounded(async {
        let setup = Setup::start().await;
        setup.start_bridge("b1");
        let connection = setup.amqp().await;
        wait_for_topology(&connection, || setup.bridge_logs()).await;
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/pika_agent.py");
        let python = qm_testkit::services::venv_python();
        let url = setup.broker.url();
        let output = tokio::task::spawn_blocking(move || Command::new(python).arg(script).arg(url).output())
            .await
            .unwrap()
            .expect("python runs");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "{stdout}\n{}\n{}",
            String::from_utf8_lossy(&output.stderr),
            setup.bridge_logs()
        );
        let line = |prefix: &str| -> Value {
            let line = stdout
                .lines()
                .find_map(|line| line.strip_prefix(prefix))
                .unwrap_or_else(|| panic!("no {prefix:?} line in {stdout}"));
            serde_json::from_str(line.trim_start_matches(|c: char| c.is_ascii_digit() || c == ' ')).unwrap()
        };
        let response = line("allocation_response ");
        assert_eq!(response["status"], "allocated", "{response}");
        let event = line("event ");
        assert_eq!(event["event_type"], "allocation_granted", "{event}");
        assert_eq!(event["request_id"], response["request_id"]);
        let released = line("released ");
        assert_eq!(released["reason"], "released", "{released}");
    })
    .await
}

/// Events the resync test's cluster keeps: fewer than its setup makes.
const SHORT_HISTORY: &str = "50";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cursor_behind_the_kept_history_gets_resync_required_then_contiguous_events() {
    bounded(async {
        let mut node_args = QUIET_PROVIDERS.to_vec();
        node_args.extend(["--event-history-max", SHORT_HISTORY]);
        let setup = Setup::start_with(&node_args).await;
        let connection = setup.amqp().await;
        subscribe_to_events(&connection).await;
        let client = setup.client().await;
        for _ in 0..40 {
            client.allocate(request_on("node_1", 1)).await.unwrap();
        }
        let compacted_at = client.system_state(Consistency::Linearizable).await.unwrap().revision;
        assert!(compacted_at > 50, "more events than the history keeps ({compacted_at})");

        // --- a bridge starting from revision 0 cannot replay from 1: it says so
        setup.start_bridge("b1");
        let channel = connection.create_channel().await.unwrap();
        let next = || {
            let channel = channel.clone();
            async move {
                let deadline = tokio::time::Instant::now() + REPLY_WAIT_MAX;
                loop {
                    if let Some(message) = channel
                        .basic_get(EVENTS_QUEUE.into(), BasicGetOptions { no_ack: true })
                        .await
                        .unwrap()
                    {
                        return (
                            message.delivery.properties.kind().as_ref().map(|kind| kind.to_string()),
                            serde_json::from_slice::<Value>(&message.delivery.data).unwrap(),
                        );
                    }
                    assert!(tokio::time::Instant::now() < deadline, "no event message");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        };
        let (kind, resync) = next().await;
        assert_eq!(kind.as_deref(), Some("resync_required"), "{resync}\n{}", setup.bridge_logs());
        assert_eq!(resync["missed_from_revision"], 1);
        assert!(resync["revision"].as_u64().unwrap() >= compacted_at, "{resync}");
        assert_eq!(resync["system_state"]["active_allocations"], 40, "{resync}");

        // --- then every later event, from the revision after the resync's
        client.allocate(request_on("node_1", 1)).await.unwrap();
        let after = client.system_state(Consistency::Linearizable).await.unwrap().revision;
        let mut expected = resync["revision"].as_u64().unwrap() + 1;
        while expected <= after {
            let (_, event) = next().await;
            let revision = event["revision"].as_u64().unwrap();
            if revision < expected {
                continue; // published twice: at least once
            }
            assert_eq!(revision, expected, "no gap after the resync: {event}");
            expected += 1;
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_while_the_cluster_has_no_leader_waits_and_is_answered_once_it_has() {
    bounded(async {
        let setup = Setup::start().await;
        let metrics_addr = qm_testkit::local_cluster::free_loopback_addr().unwrap();
        setup.start_bridge_with("b1", &["--metrics-listen", &metrics_addr]);
        let connection = setup.amqp().await;
        wait_for_topology(&connection, || setup.bridge_logs()).await;
        let mut requester = Requester::new(&connection).await;
        assert_eq!(requester.call("resource_request", EXAMPLE.as_bytes()).await["status"], "allocated");

        // --- two of three replicas down: no leader, so nothing can be answered
        let leader = setup.cluster.wait_for_leader().await;
        let others: Vec<u64> = setup.cluster.ids().filter(|id| *id != leader).collect();
        setup.cluster.kill(leader);
        setup.cluster.kill(others[0]);
        let body = serde_json::to_vec(&request_on("node_1", 1)).unwrap();
        requester.send("resource_request", &body, "waiting").await;
        // Longer than a call's deadline (5 s): the bridge gives up on the call and requeues.
        let early = tokio::time::timeout(Duration::from_secs(9), requester.reply()).await;
        assert!(early.is_err(), "answered without a majority: {:?}", early.map(|(_, reply)| reply));

        // --- the majority back: the same message, requeued meanwhile, is answered
        setup.cluster.restart(leader);
        let (correlation, reply) = requester.reply().await;
        assert_eq!(correlation, "waiting");
        assert_eq!(reply["status"], "allocated", "{reply}\n{}", setup.bridge_logs());
        let output = Command::new("curl")
            .args(["-sf", &format!("http://{metrics_addr}/metrics")])
            .output()
            .expect("curl runs");
        let metrics = String::from_utf8(output.stdout).unwrap();
        assert!(
            metrics.contains("qm_bridge_requests_total{action=\"request\",outcome=\"requeued\"}"),
            "{metrics}"
        );
        assert!(!metrics.contains("qm_bridge_dead_lettered_total 1"), "{metrics}");
    })
    .await
}
