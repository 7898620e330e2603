//! The checkers must be able to fail. Replicas started with the test-only
//! `--unsafe-stale-reads` answer reads from their own state. The partition
//! nemesis isolates the leader; the clients whose reads start at that
//! replica keep reading its frozen state while the majority moves on, so
//! stale reads are certain, and the linearizability checker must say
//! `valid: false`.

mod support;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_reads_from_an_isolated_leader_are_caught() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("report");

    // --- run it, bounded; caught as a whole
    let support::FinishedRun { outcome, summary, .. } = support::run_planted_stale_reads("register", &out).await;
    let results = &outcome.results;

    // --- by the linearizability checker, with a time-line page for a unit
    let linearizability = &results.checkers[0];
    assert_eq!("linearizability", linearizability.name);
    assert!(linearizability.anomaly_count > 0);
    // Some unit's first misfit is a read. Not necessarily the first unit's:
    // a write resent after the isolation may be the first misfit of its unit
    // (a resend is answered from the record, which the stale replica may lack).
    assert!(
        linearizability
            .anomalies
            .iter()
            .any(|anomaly| anomaly.description.contains("read ->")),
        "a read is what fits nowhere: {summary}"
    );
    let pages = std::fs::read_dir(&out)
        .expect("report dir")
        .filter_map(Result::ok)
        .filter(|entry| entry.file_name().to_string_lossy().starts_with("linearizability-"))
        .count();
    assert!(pages > 0, "a time-line page per failing unit");
}
