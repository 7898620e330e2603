//! The kill loop in short (`scripts/kill-loop.sh` runs it with 1,000 kills):
//! 3 replicas, the allocation workload, the kill nemesis alone with an exact
//! count of kills (`--kills 12`), one every 2.5 s. Every acknowledged
//! allocation must exist once in the final table, nothing that failed for
//! certain may be held, no unit may be in two allocations.

mod support;

use qm_jepsen::history::{read_history, OpType, Payload};

/// Kills in this short loop; the script's default campaign has 1,000.
const KILLS: u64 = 12;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twelve_kills_under_allocation_load_lose_and_duplicate_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("report");
    let kills = KILLS.to_string();
    let config = support::config(
        &[
            "--nodes",
            "3",
            "--workload",
            "allocation",
            "--kills",
            &kills,
            "--fault-secs",
            "1",
            "--heal-secs",
            "1.5",
            "--rate",
            "20",
            "--seed",
            "20261207",
        ],
        &out,
    );
    assert_eq!(2 + KILLS * 5 / 2 + 3, config.time_limit_secs, "the length follows from the kills");

    // --- run it, bounded
    let finished = support::run_bounded(config).await;
    let (results, summary) = (&finished.outcome.results, &finished.summary);

    // --- the verdict: every checker of the allocation workload, against the final table
    finished.assert_valid();
    for checker in ["no-lost-allocation", "no-double-allocation", "idempotent-retries"] {
        let result = results
            .checkers
            .iter()
            .find(|result| result.name == checker)
            .unwrap_or_else(|| panic!("no {checker} checker in {summary}"));
        assert!(result.valid.is_valid(), "{checker}: {result:?}");
    }
    assert!(results.stats.total.ok > 100, "the clients got work done: {summary}");

    // --- exactly KILLS kills, each restarted, some of them of the leader
    let history = read_history(&out.join("history.jsonl")).expect("history.jsonl");
    let kills: Vec<_> = history
        .iter()
        .filter(|op| op.kind == OpType::Info)
        .filter_map(|op| match &op.payload {
            Payload::Kill(value) => Some(value),
            _ => None,
        })
        .collect();
    assert_eq!(KILLS as usize, kills.len(), "{summary}");
    assert_eq!(Some(&KILLS), results.nemesis_fired.get("kill"), "{summary}");
    let restarts = history
        .iter()
        .filter(|op| op.kind == OpType::Info && matches!(op.payload, Payload::Start(_)))
        .count();
    assert_eq!(KILLS as usize, restarts, "every killed replica was restarted");
    assert!(kills.iter().any(|kill| kill.hits_leader()), "no kill hit the leader: {summary}");
    assert!(history
        .iter()
        .any(|op| matches!(&op.payload, Payload::Read(read) if read.final_read)));
}
