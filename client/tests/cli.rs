//! The `qm` binary end to end: its environment, exit codes, error lines and
//! JSON shapes, against fake replicas.

mod support;

use std::io::Write;
use std::process::{Command, Output, Stdio};

use qm_state_machine::Command as TableCommand;
use serde_json::{json, Value};
use support::fake::FakeCluster;

/// The protocol's `resource_request` example, verbatim.
const PROTOCOL_EXAMPLE: &str = r#"{
    "request_id": "550e8400-e29b-41d4-a716-446655440000",
    "requester_id": "agent_123",
    "resource_requirements": {
      "cpu_cores": 2,
      "memory_gb": 4,
      "storage_gb": 100
    },
    "priority": 1,
    "deadline": "2024-03-21T10:30:00Z"
  }"#;

const REGISTRATION: &str = r#"{"provider_id": "node_1", "labels": {"zone": "a"}, "resources": [
    {"resource_id": "cpu_1", "kind": "cpu_cores", "capacity": 1},
    {"resource_id": "cpu_2", "kind": "cpu_cores", "capacity": 1},
    {"resource_id": "block_1", "kind": "memory_gb", "capacity": 2},
    {"resource_id": "block_2", "kind": "memory_gb", "capacity": 2},
    {"resource_id": "vol_1", "kind": "storage_gb", "capacity": 500}]}"#;

/// Runs `qm` with `args`, `stdin` as its input, and no QM_* variables
/// inherited from the developer's shell.
fn qm(args: &[&str], envs: &[(&str, &str)], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_qm"))
        .args(args)
        .env_remove("QM_ENDPOINTS")
        .env_remove("QM_OUTPUT")
        .env_remove("QM_TIMEOUT_MS")
        .envs(envs.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn stdout_json(output: &Output) -> Value {
    assert!(output.status.success(), "qm failed: {}", stderr(output));
    serde_json::from_slice(&output.stdout).unwrap_or_else(|error| panic!("not JSON ({error}): {}", String::from_utf8_lossy(&output.stdout)))
}

#[test]
fn help_is_printed_and_exits_0() {
    let output = qm(&["allocate", "--help"], &[], "");

    assert_eq!(Some(0), output.status.code());
    assert!(String::from_utf8_lossy(&output.stdout).contains("--cpu-cores"));
}

#[test]
fn endpoints_come_from_qm_endpoints_and_a_bad_one_is_bad_input() {
    let output = qm(&["state"], &[("QM_ENDPOINTS", "127.0.0.1:7101,nope")], "");

    assert_eq!(Some(2), output.status.code());
    assert_eq!("qm: invalid endpoints[1]: \"nope\" must be host:port\n", stderr(&output));
}

#[test]
fn a_bad_quantity_is_one_line_naming_the_field_and_exits_2() {
    let output = qm(
        &["allocate", "--requester", "agent_123", "--cpu-cores", "-1"],
        &[("QM_ENDPOINTS", "127.0.0.1:1")],
        "",
    );

    assert_eq!(Some(2), output.status.code());
    assert_eq!(
        "qm: invalid resource_requirements.cpu_cores: must be positive, got -1\n",
        stderr(&output)
    );
}

#[test]
fn no_replica_up_is_one_line_and_exits_1() {
    let endpoint = format!("127.0.0.1:{}", support::free_ports(1)[0]);

    let output = qm(&["state", "--endpoints", &endpoint, "--timeout-ms", "1000"], &[], "");

    assert_eq!(Some(1), output.status.code());
    let message = stderr(&output);
    assert!(message.starts_with("qm: no replica served the call after 4 attempts"), "{message}");
    assert_eq!(1, message.lines().count(), "{message}");
}

#[test]
fn the_protocol_example_allocates_and_prints_the_protocols_response() {
    let cluster = FakeCluster::start(3);
    cluster.elect(1);
    let endpoints = cluster.addrs().join(",");
    let env = [("QM_ENDPOINTS", endpoints.as_str())];

    // --- register a provider from its document on stdin
    let registered = stdout_json(&qm(
        &["provider", "register", "--file", "-", "--output", "json"],
        &env,
        REGISTRATION,
    ));
    assert_eq!(json!({"provider_id": "node_1", "status": "active", "resources": 5}), registered);

    // --- the protocol's example verbatim: its deadline (2024) has passed, a
    // rejection, which is an answer (exit 0), not an error
    let rejected = stdout_json(&qm(&["allocate", "--file", "-", "--output", "json"], &env, PROTOCOL_EXAMPLE));
    assert_eq!(json!("rejected"), rejected["status"]);
    assert_eq!(
        json!("deadline_exceeded: the deadline 2024-03-21T10:30:00.000Z has already passed"),
        rejected["reason"]
    );
    assert_eq!(None, rejected.get("allocated_resources"));

    // --- the same with a deadline to come, under a new request_id
    let example = PROTOCOL_EXAMPLE
        .replace("2024-03-21", "2099-03-21")
        .replace("446655440000", "446655440009");
    let allocated = stdout_json(&qm(&["allocate", "--file", "-", "--output", "json"], &env, &example));

    assert_eq!(json!("550e8400-e29b-41d4-a716-446655440009"), allocated["request_id"]);
    assert_eq!(json!("allocated"), allocated["status"]);
    assert_eq!(
        json!({"cpu_cores": ["cpu_1", "cpu_2"], "memory_gb": ["block_1", "block_2"], "storage_gb": ["vol_1"]}),
        allocated["allocated_resources"]
    );
    assert!(allocated["response_id"]
        .as_str()
        .is_some_and(|id| uuid::Uuid::parse_str(id).is_ok()));

    // --- get prints the same response
    let got = stdout_json(&qm(&["get", "550e8400-e29b-41d4-a716-446655440009", "--output", "json"], &env, ""));
    assert_eq!(allocated, got);

    // --- the table view of the state
    let state = qm(&["state"], &env, "");
    let table = String::from_utf8_lossy(&state.stdout);
    assert!(
        table
            .lines()
            .any(|line| line.split_whitespace().collect::<Vec<_>>() == ["cpu_cores", "2", "2", "0", "0"]),
        "{table}"
    );
}

#[test]
fn watch_prints_one_json_line_per_event() {
    let cluster = FakeCluster::start(3);
    let registration = serde_json::from_str(REGISTRATION).unwrap();
    cluster.apply(TableCommand::RegisterProvider(
        qm_state_machine::ProviderRegistration::validate(registration).unwrap(),
    ));
    let newest = cluster.with_table(|table| table.revision());
    let endpoints = cluster.addrs().join(",");

    let mut child = Command::new(env!("CARGO_BIN_EXE_qm"))
        .args(["watch", "--from", "1", "--endpoints", &endpoints])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(child.stdout.take().unwrap()));
    let revisions: Vec<u64> = (0..newest)
        .map(|_| {
            let line = lines.next().expect("a line per event").unwrap();
            serde_json::from_str::<Value>(&line).unwrap()["revision"].as_u64().unwrap()
        })
        .collect();
    child.kill().unwrap();
    child.wait().unwrap();

    assert_eq!((1..=newest).collect::<Vec<_>>(), revisions);
}
