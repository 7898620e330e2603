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

    // --- run it, bounded; caught as a whole
    let support::FinishedRun {
        outcome,
        reproduce,
        summary,
    } = support::run_planted_stale_reads("allocation", &dir.path().join("report")).await;
    let results = &outcome.results;

    // --- by the stale-read checker
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
}
