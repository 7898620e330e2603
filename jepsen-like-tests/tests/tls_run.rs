//! A short run on a mutual-TLS cluster (`--tls`): 3 replicas, kill,
//! partition and membership nemeses, the allocation workload. Every client
//! presents its role's certificate: workers and the final read a consumer's,
//! each provider its own, the membership nemesis an admin's. The run must be
//! valid, and must have got real work done: a run in which the replicas
//! refused every call would also be "valid" (nothing happened), so this
//! also requires many acknowledged allocations and no refusal anywhere.

mod support;

use qm_jepsen::credentials::CERTS_DIR;

/// Fewer would mean most calls were refused or timed out: a healthy 20 s
/// run at this rate acknowledges well over a hundred allocations.
const ALLOCATIONS_OK_MIN: u64 = 50;
const RELEASES_OK_MIN: u64 = 20;
/// How a refusal by authentication or authorization shows in a history
/// (`the server answered PermissionDenied: ...`) or a nemesis detail.
const REFUSALS: [&str; 2] = ["PermissionDenied", "Unauthenticated"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_tls_run_with_kills_partitions_and_membership_is_valid() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("report");
    let config = support::config(
        &[
            "--tls",
            "--nodes",
            "3",
            "--time-limit",
            "26",
            "--workload",
            "allocation",
            "--nemesis",
            "kill,partition,membership",
            "--seed",
            "20261122",
            "--rate",
            "25",
            // Shorter cycles than the defaults, so that 26 s hold two faults of each kind.
            "--fault-secs",
            "2",
            "--heal-secs",
            "1.5",
        ],
        &out,
    );
    assert!(config.tls);

    // --- run it, bounded
    let finished = support::run_bounded(config).await;
    let (results, summary, reproduce) = (&finished.outcome.results, &finished.summary, &finished.reproduce);

    // --- the verdict, and that it was a TLS run
    finished.assert_valid();
    assert!(results.tls, "results.json records TLS");
    assert!(summary.contains("transport: mutual TLS"), "{summary}");

    // --- real work was done, and nothing was refused
    let counts = |operation: &str| results.stats.counts.get(operation).copied().unwrap_or_default();
    assert!(
        counts("allocate").ok > ALLOCATIONS_OK_MIN,
        "acknowledged allocations: {:?}; reproduce: {reproduce}\n{summary}",
        counts("allocate")
    );
    assert!(
        counts("release").ok > RELEASES_OK_MIN,
        "acknowledged releases: {:?}; reproduce: {reproduce}\n{summary}",
        counts("release")
    );
    let history = std::fs::read_to_string(out.join("history.jsonl")).expect("history.jsonl");
    for refusal in REFUSALS {
        let line = history.lines().find(|line| line.contains(refusal));
        assert!(line.is_none(), "a call was refused: {line:?}; reproduce: {reproduce}");
    }
    assert!(history.contains("\"final_read\":true"), "a final read");

    // --- the namespace's quota (set with the admin certificate) bound, and held
    let quota = results
        .checkers
        .iter()
        .find(|checker| checker.name == "quota")
        .expect("the quota checker ran");
    assert!(quota.valid.is_valid(), "{quota:?}");
    assert!(
        history.contains("quota_exceeded"),
        "no request waited for the quota; reproduce: {reproduce}"
    );

    // --- the nemesis did its job, the membership changes with the admin certificate
    for fault in ["\"f\":\"kill\"", "\"f\":\"partition\"", "\"f\":\"add-replica\""] {
        assert!(history.contains(fault), "no {fault} in the history; reproduce: {reproduce}");
    }

    // --- the replicas really served TLS, with the run's own certificates
    let replica_log = std::fs::read_to_string(out.join("nodes/replica-1.log")).expect("replica-1.log");
    assert!(replica_log.contains("mutual TLS on"), "replica 1 did not start on TLS");
    assert!(!replica_log.contains("INSECURE"), "replica 1 started without TLS");
    let certs = out.join(CERTS_DIR);
    assert!(certs.join("ca.crt").exists(), "the run's CA certificate is kept");
    assert!(!certs.join("ca.key").exists(), "the CA key is never written");
    for provider in qm_jepsen::workload::provider_ids(results.workload) {
        assert!(
            certs.join(format!("provider-{provider}.crt")).exists(),
            "{provider} has its own certificate"
        );
    }
}
