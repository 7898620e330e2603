//! The checkers must be able to fail. Replicas started with the test-only
//! `--unsafe-stale-reads` answer reads from their own state. The partition
//! nemesis isolates the leader; the clients whose reads start at that
//! replica keep reading its frozen state while the majority moves on, so
//! stale reads are certain, and the linearizability checker must say
//! `valid: false`.

mod support;

use qm_jepsen::checker::Validity;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_reads_from_an_isolated_leader_are_caught() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("report");
    let config = support::config(
        &[
            "--nodes",
            "3",
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

    // --- caught: invalid, with a time-line page for a unit
    assert_eq!(
        Validity::INVALID,
        results.valid,
        "the planted stale reads were not caught; seed {}; reproduce: {reproduce}\n{summary}",
        results.seed
    );
    let linearizability = &results.checkers[0];
    assert_eq!("linearizability", linearizability.name);
    assert!(linearizability.anomaly_count > 0);
    assert!(
        linearizability.anomalies[0].description.contains("read ->"),
        "a read is what fits nowhere: {summary}"
    );
    let pages = std::fs::read_dir(&out)
        .expect("report dir")
        .filter_map(Result::ok)
        .filter(|entry| entry.file_name().to_string_lossy().starts_with("linearizability-"))
        .count();
    assert!(pages > 0, "a time-line page per failing unit");
    assert!(qm_jepsen::report::verdict_line(results).starts_with("valid: false"));
    assert!(
        qm_jepsen::report::verdict_line(results).contains("--unsafe-stale-reads"),
        "the reproduce command"
    );
}
