//! The `qm` binary end to end: its environment, exit codes, error lines and
//! JSON shapes; the protocol's example and `qm watch` against a real
//! 3-replica `qm-node` cluster.

use std::process::{Output, Stdio};
use std::time::Duration;

use qm_testkit::test_cluster::{bounded, shared_cluster};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

/// The protocol's `resource_request` example, verbatim.
const PROTOCOL_EXAMPLE: &str = include_str!("../../../state-machine/tests/fixtures/resource_request.json");

/// The only provider of `cpu_cores`, `memory_gb` and `storage_gb` in the
/// cluster these tests share (`qm watch`'s test registers GPUs only).
const REGISTRATION: &str = r#"{"provider_id": "node_1", "labels": {"zone": "a"}, "resources": [
    {"resource_id": "cpu_1", "kind": "cpu_cores", "capacity": 1},
    {"resource_id": "cpu_2", "kind": "cpu_cores", "capacity": 1},
    {"resource_id": "block_1", "kind": "memory_gb", "capacity": 2},
    {"resource_id": "block_2", "kind": "memory_gb", "capacity": 2},
    {"resource_id": "vol_1", "kind": "storage_gb", "capacity": 500}]}"#;

/// How long one `qm` run may take; its own call deadline is 5 s.
const QM_RUN_TIME_MAX: Duration = Duration::from_secs(30);

/// Runs `qm` with `args`, `stdin` as its input, and no QM_* variables
/// inherited from the developer's shell; killed if it outlives [`QM_RUN_TIME_MAX`].
async fn qm(args: &[&str], envs: &[(&str, &str)], stdin: &str) -> Output {
    let mut child = qm_command(args, envs).stdin(Stdio::piped()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).await.unwrap();
    tokio::time::timeout(QM_RUN_TIME_MAX, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("qm {args:?} did not exit within {QM_RUN_TIME_MAX:?}"))
        .unwrap()
}

fn qm_command(args: &[&str], envs: &[(&str, &str)]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_qm"));
    command
        .args(args)
        .env_remove("QM_ENDPOINTS")
        .env_remove("QM_OUTPUT")
        .env_remove("QM_TIMEOUT_MS")
        .envs(envs.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Only this child, by its own handle, if the test fails first.
        .kill_on_drop(true);
    command
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn stdout_json(output: &Output) -> Value {
    assert!(output.status.success(), "qm failed: {}", stderr(output));
    serde_json::from_slice(&output.stdout).unwrap_or_else(|error| panic!("not JSON ({error}): {}", String::from_utf8_lossy(&output.stdout)))
}

fn is_uuid(value: &Value) -> bool {
    value.as_str().is_some_and(|id| uuid::Uuid::parse_str(id).is_ok())
}

#[tokio::test]
async fn help_is_printed_and_exits_0() {
    bounded(async {
        let output = qm(&["allocate", "--help"], &[], "").await;

        assert_eq!(Some(0), output.status.code());
        assert!(String::from_utf8_lossy(&output.stdout).contains("--cpu-cores"));
    })
    .await
}

#[tokio::test]
async fn endpoints_come_from_qm_endpoints_and_a_bad_one_is_bad_input() {
    bounded(async {
        let output = qm(&["state"], &[("QM_ENDPOINTS", "127.0.0.1:7101,nope")], "").await;

        assert_eq!(Some(2), output.status.code());
        assert_eq!("qm: invalid endpoints[1]: \"nope\" must be host:port\n", stderr(&output));
    })
    .await
}

#[tokio::test]
async fn a_bad_quantity_is_one_line_naming_the_field_and_exits_2() {
    bounded(async {
        let output = qm(
            &["allocate", "--requester", "agent_123", "--cpu-cores", "-1"],
            &[("QM_ENDPOINTS", "127.0.0.1:1")],
            "",
        )
        .await;

        assert_eq!(Some(2), output.status.code());
        assert_eq!(
            "qm: invalid resource_requirements.cpu_cores: must be positive, got -1\n",
            stderr(&output)
        );
    })
    .await
}

#[tokio::test]
async fn no_replica_up_is_one_line_and_exits_1() {
    bounded(async {
        let dead = qm_testkit::test_cluster::dead_endpoints(1);

        let output = qm(&["state", "--endpoints", &dead.endpoints[0], "--timeout-ms", "1000"], &[], "").await;

        assert_eq!(Some(1), output.status.code());
        let message = stderr(&output);
        assert!(message.starts_with("qm: no replica served the call after 4 attempts"), "{message}");
        assert_eq!(1, message.lines().count(), "{message}");
    })
    .await
}

#[tokio::test]
async fn the_protocol_example_is_answered_with_the_protocols_response_by_a_real_cluster() {
    bounded(async {
        let cluster = shared_cluster().await;
        let endpoints = cluster.endpoints().join(",");
        let env = [("QM_ENDPOINTS", endpoints.as_str())];

        // --- register a provider from its document on stdin
        let registered = stdout_json(&qm(&["provider", "register", "--file", "-", "--output", "json"], &env, REGISTRATION).await);
        assert_eq!(json!({"provider_id": "node_1", "status": "active", "resources": 5}), registered);

        // --- the protocol's example verbatim: its deadline (2024) has passed, a
        // rejection, which is an answer (exit 0), not an error
        let rejected = stdout_json(&qm(&["allocate", "--file", "-", "--output", "json"], &env, PROTOCOL_EXAMPLE).await);
        assert_eq!(
            (&json!("550e8400-e29b-41d4-a716-446655440000"), &json!("rejected")),
            (&rejected["request_id"], &rejected["status"])
        );
        assert!(is_uuid(&rejected["response_id"]), "{rejected}");
        let reason = rejected["reason"].as_str().unwrap_or_default();
        assert!(
            reason.starts_with("deadline_exceeded") && reason.contains("2024-03-21T10:30:00"),
            "{rejected}"
        );
        assert_eq!(None, rejected.get("allocated_resources"), "{rejected}");
        assert_eq!(json!("error"), rejected["state"], "{rejected}");

        // --- the same with a deadline to come, under a new request_id
        let example = PROTOCOL_EXAMPLE
            .replace("2024-03-21", "2099-03-21")
            .replace("446655440000", "446655440009");
        let allocated = stdout_json(&qm(&["allocate", "--file", "-", "--output", "json"], &env, &example).await);

        assert_eq!(json!("550e8400-e29b-41d4-a716-446655440009"), allocated["request_id"]);
        assert_eq!(json!("allocated"), allocated["status"]);
        assert!(is_uuid(&allocated["response_id"]), "{allocated}");
        assert_ne!(rejected["response_id"], allocated["response_id"]);
        assert_eq!(
            json!({"cpu_cores": ["cpu_1", "cpu_2"], "memory_gb": ["block_1", "block_2"], "storage_gb": ["vol_1"]}),
            allocated["allocated_resources"]
        );
        assert_eq!(json!("monitoring"), allocated["state"], "{allocated}");

        // --- get prints the same response
        let got = stdout_json(&qm(&["get", "550e8400-e29b-41d4-a716-446655440009", "--output", "json"], &env, "").await);
        assert_eq!(allocated, got);

        // --- the table view of the state: capacity, used, free, failed
        let state = qm(&["state"], &env, "").await;
        let table = String::from_utf8_lossy(&state.stdout);
        assert!(
            table
                .lines()
                .any(|line| line.split_whitespace().collect::<Vec<_>>() == ["cpu_cores", "2", "2", "0", "0"]),
            "{table}"
        );
    })
    .await
}

#[tokio::test]
async fn watch_prints_one_json_line_per_event() {
    bounded(async {
        let cluster = shared_cluster().await;
        let endpoints = cluster.endpoints().join(",");
        let gpus = r#"{"provider_id": "node_gpus", "resources": [{"resource_id": "gpu_1", "kind": "gpu", "capacity": 1}]}"#;
        let registered = qm(&["provider", "register", "--file", "-", "--endpoints", &endpoints], &[], gpus).await;
        assert!(registered.status.success(), "{}", stderr(&registered));
        let newest = cluster
            .client()
            .system_state(qm_client::Consistency::Linearizable)
            .await
            .unwrap()
            .revision;

        let mut child = qm_command(&["watch", "--from", "1", "--endpoints", &endpoints], &[])
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut revisions = Vec::new();
        while revisions.len() < newest as usize {
            let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
                .await
                .expect("a line per event within 10 s")
                .unwrap()
                .expect("qm watch goes on");
            revisions.push(serde_json::from_str::<Value>(&line).unwrap()["revision"].as_u64().unwrap());
        }
        child.kill().await.unwrap();

        assert_eq!((1..=newest).collect::<Vec<_>>(), revisions);
    })
    .await
}

#[tokio::test]
async fn bench_leaves_the_cluster_as_it_found_it() {
    bounded(async {
        let cluster = shared_cluster().await;
        let endpoints = cluster.endpoints().join(",");
        let env = [("QM_ENDPOINTS", endpoints.as_str())];

        let dir = tempfile::tempdir().unwrap();
        let intervals = dir.path().join("intervals.jsonl");
        let intervals_arg = intervals.to_str().unwrap();
        let mut args = vec![
            "bench",
            "--rate",
            "40",
            "--concurrency",
            "8",
            "--units",
            "100",
            "--duration",
            "3",
            "--warmup",
            "0",
            "--quiet",
            "--output",
            "json",
            "--intervals-to",
            intervals_arg,
            "--interval-s",
        ];

        // --- an interval under a second is refused by name, nothing run
        args.push("0");
        let refused = qm(&args, &env, "").await;
        assert!(!refused.status.success());
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(stderr.contains("interval-s"), "{stderr}");
        assert!(!intervals.exists());

        // --- an alloc-release run with 1 s intervals: a line each, and together the run's operations
        *args.last_mut().unwrap() = "1";
        let report = stdout_json(&qm(&args, &env, "").await);
        let text = std::fs::read_to_string(&intervals).unwrap();
        let lines: Vec<Value> = text.lines().map(|line| serde_json::from_str(line).unwrap()).collect();
        assert!(lines.len() >= 3, "{text}");
        let ops: u64 = lines.iter().map(|line| line["ops"].as_u64().unwrap()).sum();
        assert_eq!(report["ops"].as_u64().unwrap(), ops, "{report}\n{text}");
        let at: Vec<f64> = lines.iter().map(|line| line["at_s"].as_f64().unwrap()).collect();
        assert!(at.windows(2).all(|pair| pair[0] < pair[1]), "{at:?}");
        assert!(lines[0]["latency"]["allocate"]["p99_ms"].as_f64().unwrap() > 0.0, "{}", lines[0]);

        // --- an alloc-only run on two bench providers (2,000 + 500 units)
        let args = [
            "bench",
            "--workload",
            "alloc-only",
            "--units",
            "2500",
            "--concurrency",
            "8",
            "--duration",
            "1",
            "--warmup",
            "0",
            "--quiet",
            "--output",
            "json",
        ];
        let report = stdout_json(&qm(&args, &env, "").await);
        assert!(report["ops"].as_u64().unwrap_or_default() > 0, "{report}");

        // --- afterwards: no bench provider, failed or not, and nothing of either run live
        // (the bench runs are in this one test: another test's run on the shared cluster
        // would be live here)
        let providers = stdout_json(&qm(&["provider", "list", "--output", "json"], &env, "").await);
        let text = providers.to_string();
        assert!(!text.contains("qm-bench-"), "bench providers left behind: {text}");
        let records = stdout_json(&qm(&["list", "--namespace", "qm-bench", "--output", "json"], &env, "").await);
        let records = records.as_array().expect("a list");
        assert!(!records.is_empty(), "the run's released records are remembered");
        let live: Vec<&Value> = records
            .iter()
            .filter(|record| ["queued", "allocation", "monitoring"].contains(&record["state"].as_str().unwrap_or_default()))
            .collect();
        assert!(live.is_empty(), "{} bench requests still live: {:?}", live.len(), live.first());
    })
    .await
}

#[tokio::test]
async fn a_cordoned_provider_takes_nothing_new_until_uncordoned() {
    bounded(async {
        let cluster = shared_cluster().await;
        let endpoints = cluster.endpoints().join(",");
        let env = [("QM_ENDPOINTS", endpoints.as_str())];
        // A kind of its own, so the other tests sharing the cluster never place on it.
        let registration =
            r#"{"provider_id": "node_cordon", "resources": [{"resource_id": "slot_1", "kind": "cordon_slots", "capacity": 1}]}"#;
        stdout_json(&qm(&["provider", "register", "--file", "-", "--output", "json"], &env, registration).await);

        // --- cordon: the reply, the provider list and qm state say so
        let cordoned = stdout_json(&qm(&["provider", "cordon", "node_cordon", "--output", "json"], &env, "").await);
        assert_eq!(json!({"provider_id": "node_cordon", "scheduling": "cordoned"}), cordoned);
        let providers = stdout_json(&qm(&["provider", "list", "--output", "json"], &env, "").await);
        let listed = providers
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["provider_id"] == "node_cordon")
            .unwrap()
            .clone();
        assert_eq!(json!("cordoned"), listed["scheduling"], "{listed}");
        let state = stdout_json(&qm(&["state", "--output", "json"], &env, "").await);
        assert!(
            state["cordoned_providers"].as_array().unwrap().contains(&json!("node_cordon")),
            "{state}"
        );
        let table = qm(&["provider", "list"], &env, "").await;
        let table = String::from_utf8_lossy(&table.stdout);
        assert!(
            table
                .lines()
                .any(|line| line.starts_with("node_cordon") && line.contains("active, cordoned")),
            "{table}"
        );

        // --- a request only it could hold waits in the queue
        let asked = qm(
            &[
                "allocate",
                "--requester",
                "cordon_test",
                "--kind",
                "cordon_slots=1",
                "--output",
                "json",
            ],
            &env,
            "",
        )
        .await;
        let asked = stdout_json(&asked);
        assert_eq!(json!("queued"), asked["status"], "{asked}");
        let request_id = asked["request_id"].as_str().unwrap().to_owned();

        // --- uncordon: the queued request is placed on it
        let opened = stdout_json(&qm(&["provider", "uncordon", "node_cordon", "--output", "json"], &env, "").await);
        assert_eq!(json!({"provider_id": "node_cordon", "scheduling": "open"}), opened);
        let got = stdout_json(&qm(&["get", &request_id, "--output", "json"], &env, "").await);
        assert_eq!(json!("allocated"), got["status"], "{got}");
        assert_eq!(json!({"cordon_slots": ["slot_1"]}), got["allocated_resources"], "{got}");

        // --- a drain: the pinned allocation cannot move now, and the reply says so at once
        let drained = stdout_json(
            &qm(
                &["provider", "drain", "node_cordon", "--deadline", "1m", "--output", "json"],
                &env,
                "",
            )
            .await,
        );
        assert_eq!(json!("draining"), drained["scheduling"], "{drained}");
        let cannot = drained["cannot_move"][0].as_str().unwrap_or_default();
        assert!(
            cannot.starts_with(got["allocation_id"].as_str().unwrap()) && cannot.contains("pinned"),
            "{drained}"
        );
        let bad = qm(&["provider", "drain", "node_cordon", "--deadline", "10x"], &env, "").await;
        assert!(!bad.status.success());
        stdout_json(&qm(&["provider", "uncordon", "node_cordon", "--output", "json"], &env, "").await);

        // --- an unknown provider is an error naming it, exit 1
        let unknown = qm(&["provider", "cordon", "node_none"], &env, "").await;
        assert!(!unknown.status.success());
        assert!(stderr(&unknown).contains("node_none"), "{}", stderr(&unknown));
    })
    .await
}
