//! The optimize nemesis (issue 18): the allocation workload, half its
//! requests movable, on 3 replicas under kills and optimization plans with
//! drains. It must be valid, and at least one live move must have completed
//! during it: a run in which nothing moved would prove nothing about moves.

mod support;

use qm_jepsen::history::{read_history, Payload};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_allocation_run_with_kills_optimization_and_drains_is_valid_and_moves() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("report");
    let config = support::config(
        &[
            "--nodes",
            "3",
            "--workload",
            "allocation",
            "--time-limit",
            "30",
            "--nemesis",
            "kill,optimize",
            "--seed",
            "20261207",
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

    // --- the verdict: no double allocation (or any other anomaly) across moves
    finished.assert_valid();
    assert!(results.stats.total.ok > 100, "the clients got work done: {summary}");
    assert!(
        results.nemesis_fired.get("optimize").is_some_and(|fired| *fired >= 2),
        "the optimize nemesis fired twice: {:?}; reproduce: {reproduce}",
        results.nemesis_fired
    );

    // --- some requests were movable, and something moved
    let history = read_history(&out.join("history.jsonl")).expect("history.jsonl");
    let movable = history
        .iter()
        .filter(|op| matches!(&op.payload, Payload::Allocate(value) if value.movable))
        .count();
    assert!(movable > 0, "the workload sent movable requests");
    let moves_completed = history
        .iter()
        .filter_map(|op| match &op.payload {
            Payload::Uncordon(value) => value.moves_completed,
            _ => None,
        })
        .max();
    assert!(
        moves_completed.is_some_and(|moves| moves > 0),
        "no live move completed (the table's count after each uncordon: {moves_completed:?}); reproduce: {reproduce}"
    );
    assert!(history.iter().any(|op| matches!(op.payload, Payload::Optimize(_))));
}
