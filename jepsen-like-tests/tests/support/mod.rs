//! Shared by the integration tests: the qm-node binary, a run's config, and
//! a cluster with the register workload's provider for hand-driven tests.

#![allow(dead_code)] // Each test binary uses a different subset.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use clap::Parser;
use qm_client::{Client, ClientConfig};
use qm_jepsen::cluster::TestCluster;
use qm_jepsen::config::{default_node_binary, Cli, CliCommand, RunConfig, WorkloadKind};
use qm_jepsen::credentials::Credentials;
use qm_jepsen::workload::providers::ProviderClients;
use qm_jepsen::workload::{provider_ids, register};
use qm_jepsen::RunOutcome;
use qm_state_machine::protocol::ConstraintsDocument;
use qm_state_machine::ResourceRequest;

/// The whole-test bound: a run that has not finished by then fails the test.
pub const TEST_TIMEOUT: Duration = Duration::from_secs(150);

/// `qm-node` next to the test binaries, built first if it is missing or
/// stale: a test of an old node binary would prove nothing. Cargo makes the
/// build a no-op when it is fresh.
pub fn node_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        let binary = default_node_binary();
        let release = binary
            .parent()
            .and_then(Path::file_name)
            .is_some_and(|profile| profile == "release");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        let mut build = Command::new(cargo);
        build.args(["build", "--quiet", "-p", "qm-raft-node", "--bin", "qm-node"]);
        if release {
            build.arg("--release");
        }
        let status = build.status().expect("cargo runs");
        assert!(status.success(), "building qm-node failed");
        assert!(binary.exists(), "no qm-node at {}", binary.display());
        binary
    })
}

/// A run configured as `qm-jepsen run <args>` would be, writing to `out`.
pub fn config(args: &[&str], out: &Path) -> RunConfig {
    let binary = node_binary().to_str().expect("utf-8 path").to_owned();
    let out = out.to_str().expect("utf-8 path").to_owned();
    let mut argv = vec!["qm-jepsen", "run", "--node-binary", &binary, "--out", &out];
    argv.extend_from_slice(args);
    let CliCommand::Run(run) = Cli::try_parse_from(argv).expect("flags parse").command else {
        unreachable!("a run command")
    };
    run.into_config(0).expect("a valid config")
}

/// The planted stale-read bug: 3 replicas answering reads from their own
/// state (`--unsafe-stale-reads`), the leader isolated for 4 s of 12, seed 7.
pub const PLANTED_STALE_READS: [&str; 17] = [
    "--nodes",
    "3",
    "--time-limit",
    "15",
    "--nemesis",
    "partition",
    "--partitions",
    "isolate-leader",
    "--fault-secs",
    "4",
    "--heal-secs",
    "1",
    "--seed",
    "7",
    "--unsafe-stale-reads",
    "--workload",
    "register",
];

/// Runs [`PLANTED_STALE_READS`] with `workload`, writing to `out`, and checks
/// that the run as a whole was caught: invalid, with the reproduce command
/// in its verdict.
pub async fn run_planted_stale_reads(workload: &str, out: &Path) -> FinishedRun {
    let mut args = PLANTED_STALE_READS;
    args[PLANTED_STALE_READS.len() - 1] = workload;
    let run = run_bounded(config(&args, out)).await;
    let results = &run.outcome.results;
    assert_eq!(
        qm_jepsen::checker::Validity::INVALID,
        results.valid,
        "the planted stale reads were not caught; seed {}; reproduce: {}\n{}",
        results.seed,
        run.reproduce,
        run.summary
    );
    let verdict = qm_jepsen::report::verdict_line(results);
    assert!(verdict.starts_with("valid: false"), "{verdict}");
    assert!(verdict.contains("--unsafe-stale-reads"), "the reproduce command: {verdict}");
    run
}

/// A finished run: its outcome, the command that reproduces it, its summary.
pub struct FinishedRun {
    pub outcome: RunOutcome,
    pub reproduce: String,
    pub summary: String,
}

/// Runs `config` within [`TEST_TIMEOUT`]; panics with the reproduce command
/// if it does not finish or fails to run.
pub async fn run_bounded(config: RunConfig) -> FinishedRun {
    let reproduce = config.reproduce_command();
    let out = config.out.clone();
    let outcome = tokio::time::timeout(TEST_TIMEOUT, qm_jepsen::run(config))
        .await
        .unwrap_or_else(|_| panic!("the run did not finish within {TEST_TIMEOUT:?}; reproduce: {reproduce}"))
        .unwrap_or_else(|error| panic!("the run failed: {error}; reproduce: {reproduce}"));
    let summary = std::fs::read_to_string(out.join("summary.txt")).expect("summary.txt");
    FinishedRun {
        outcome,
        reproduce,
        summary,
    }
}

impl FinishedRun {
    /// The run was judged valid, and `summary.txt` ends with that verdict;
    /// on failure the message carries the seed and the reproduce command.
    pub fn assert_valid(&self) {
        let results = &self.outcome.results;
        assert_eq!(
            qm_jepsen::checker::Validity::VALID,
            results.valid,
            "seed {}; reproduce: {}\n{}",
            results.seed,
            self.reproduce,
            self.summary
        );
        let verdict = qm_jepsen::report::verdict_line(results);
        assert!(self.summary.trim_end().ends_with(&verdict), "{}", self.summary);
    }
}

/// A plaintext cluster laid out as `config` says, its replicas behind the
/// fault-injection proxies, with the register workload's provider offering
/// `units` units, and a client that knows every replica.
pub async fn register_cluster(config: &RunConfig, units: usize) -> (TestCluster, Client) {
    let credentials = Credentials::plain();
    let cluster = TestCluster::start(config, &credentials).await.expect("cluster starts");
    let everyone = Client::new(ClientConfig::with_endpoints(cluster.endpoints())).expect("client");
    let provider = ProviderClients::new(
        &provider_ids(WorkloadKind::Register),
        &ClientConfig::with_endpoints(cluster.endpoints()),
        &credentials,
    )
    .expect("provider client");
    register::setup(&provider, units).await.expect("provider");
    (cluster, everyone)
}

/// A request by `requester` for unit `unit` of the register workload's
/// provider, with a fresh request id.
pub fn unit_request(requester: &str, unit: usize) -> ResourceRequest {
    ResourceRequest {
        request_id: Some(uuid::Uuid::new_v4().to_string()),
        requester_id: Some(requester.into()),
        resource_requirements: Some([(register::UNIT_KIND.to_owned(), serde_json::Number::from(1))].into()),
        priority: Some(serde_json::Number::from(0)),
        constraints: Some(ConstraintsDocument {
            provider_id: Some(register::PROVIDER_ID.into()),
            resource_ids: vec![register::unit_name(unit)],
            ..Default::default()
        }),
        ..Default::default()
    }
}
