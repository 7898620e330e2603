//! A short run against a healthy build: 3 replicas, kill and partition
//! nemeses, the register workload. It must be valid, and its report whole.

mod support;

use qm_jepsen::checker::Validity;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_run_with_kills_and_partitions_is_valid() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("report");
    let config = support::config(
        &[
            "--nodes",
            "3",
            "--time-limit",
            "30",
            "--nemesis",
            "kill,partition",
            "--seed",
            "20261121",
            "--rate",
            "25",
        ],
        &out,
    );

    // --- run it, bounded
    let support::FinishedRun {
        outcome,
        reproduce,
        summary,
    } = support::run_bounded(config).await;
    let results = &outcome.results;

    // --- the verdict
    assert_eq!(
        Validity::VALID,
        results.valid,
        "seed {}; reproduce: {reproduce}\n{summary}",
        results.seed
    );
    assert!(summary.trim_end().ends_with(&qm_jepsen::report::verdict_line(results)), "{summary}");
    assert!(results.stats.total.ok > 100, "the clients got work done: {summary}");

    // --- the nemesis did its job, and healed
    let history = std::fs::read_to_string(out.join("history.jsonl")).expect("history.jsonl");
    for fault in ["\"f\":\"kill\"", "\"f\":\"start\"", "\"f\":\"partition\"", "\"f\":\"heal\""] {
        assert!(history.contains(fault), "no {fault} in the history; reproduce: {reproduce}");
    }
    assert!(history.contains("\"final_read\":true"), "a final read");

    // --- the report is complete
    for file in ["test.json", "results.json", "latency.png", "rate.png", "nodes/replica-1.log"] {
        assert!(out.join(file).exists(), "{file} is missing");
    }
}
