//! A short run against a healthy build: 3 replicas, kill and partition
//! nemeses, the register workload. It must be valid, and its report whole.

mod support;

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
            // Cycles short enough for each nemesis to fire twice in 30 s.
            "--fault-secs",
            "3.5",
            "--heal-secs",
            "2.5",
        ],
        &out,
    );

    // --- run it, bounded
    let finished = support::run_bounded(config).await;
    let (results, summary, reproduce) = (&finished.outcome.results, &finished.summary, &finished.reproduce);

    // --- the verdict
    finished.assert_valid();
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
