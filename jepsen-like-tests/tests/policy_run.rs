//! A short run on a mutual-TLS cluster with the workers under a capability
//! policy (`--tls --policy`): every allocate goes through the policy's
//! checks before it is proposed and through apply's exact total
//! (`AllocateUnderPolicy`), under kills and partitions. The run must be
//! valid, with real work done and nothing refused: the policy is generous,
//! so a refusal would be a bug in how it is checked.

mod support;

const ALLOCATIONS_OK_MIN: u64 = 30;
const REFUSALS: [&str; 3] = ["PermissionDenied", "Unauthenticated", "policy"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_run_under_a_capability_policy_is_valid() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("report");
    let config = support::config(
        &[
            "--tls",
            "--policy",
            "--nodes",
            "3",
            "--time-limit",
            "20",
            "--workload",
            "allocation",
            "--nemesis",
            "kill,partition",
            "--seed",
            "20261207",
            "--rate",
            "25",
            "--fault-secs",
            "2",
            "--heal-secs",
            "1.5",
        ],
        &out,
    );
    assert!(config.tls && config.policy);
    assert!(config.reproduce_command().contains(" --policy"));

    let finished = support::run_bounded(config).await;
    let (results, summary, reproduce) = (&finished.outcome.results, &finished.summary, &finished.reproduce);
    finished.assert_valid();

    let counts = |operation: &str| results.stats.counts.get(operation).copied().unwrap_or_default();
    assert!(
        counts("allocate").ok > ALLOCATIONS_OK_MIN,
        "acknowledged allocations: {:?}; reproduce: {reproduce}\n{summary}",
        counts("allocate")
    );
    let history = std::fs::read_to_string(out.join("history.jsonl")).expect("history.jsonl");
    for refusal in REFUSALS {
        let line = history.lines().find(|line| line.contains(refusal));
        assert!(line.is_none(), "a call was refused: {line:?}; reproduce: {reproduce}");
    }
}
