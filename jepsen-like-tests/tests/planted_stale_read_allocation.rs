//! The planted stale-read bug must be caught by every workload that reads,
//! not only by the register workload's linearizability checker (issue 28).
//! Replicas started with the test-only `--unsafe-stale-reads` answer reads
//! from their own state; the partition nemesis isolates the leader, and the
//! clients whose reads start at that replica keep reading its frozen table
//! while the majority releases and grants. The allocation workload's
//! stale-read checker must say `valid: false` and name the requests.

mod support;

use qm_jepsen::checker::stale_read::CHECKER_NAME;
use qm_jepsen::checker::Validity;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_reads_of_the_allocation_table_are_caught() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("report");
    let config = support::config(
        &[
            "--nodes",
            "3",
            "--workload",
            "allocation",
            "--time-limit",
            "12",
            "--nemesis",
            "partition",
            "--partitions",
            "isolate-leader",
            "--fault-secs",
            "4",
            "--seed",
            "7",
            "--unsafe-stale-reads",
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

    // --- caught: invalid, by the stale-read checker
    assert_eq!(
        Validity::INVALID,
        results.valid,
        "the planted stale reads were not caught; seed {}; reproduce: {reproduce}\n{summary}",
        results.seed
    );
    let stale_read = results
        .checkers
        .iter()
        .find(|checker| checker.name == CHECKER_NAME)
        .expect("the allocation workload runs the stale-read checker");
    assert_eq!(
        Validity::INVALID,
        stale_read.valid,
        "seed {}; reproduce: {reproduce}\n{summary}",
        results.seed
    );
    assert!(stale_read.anomaly_count > 0);

    // --- every anomaly names the request the read got wrong
    for anomaly in &stale_read.anomalies {
        let request_id = anomaly.violation["request_id"].as_str().expect("a stale read names its request");
        assert!(
            anomaly.description.starts_with("stale read: ") && anomaly.description.contains(request_id),
            "{anomaly:#?}"
        );
    }
    let verdict = qm_jepsen::report::verdict_line(results);
    assert!(verdict.starts_with("valid: false"), "{verdict}");
    assert!(verdict.contains("--unsafe-stale-reads"), "the reproduce command: {verdict}");
}
