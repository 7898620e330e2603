//! A short allocation run with `--preemption` under kills and partitions:
//! high-priority allocates preempt lower-priority allocations (some
//! requeued, some released as their requests asked), the admin raises and
//! lowers the namespace's quota (below what it holds too), and a watcher
//! keeps the table's events across the failovers. The run must be valid,
//! every checker (the log-order quota replay and the preemption rules
//! included) must have judged it, and preemptions and quota changes must
//! actually have happened, counted from the history and the events.

use qm_jepsen::checker::Validity;
use qm_jepsen::events::EventLog;
use qm_jepsen::history::{read_history, OpType, Payload};

mod support;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_with_preemptions_and_quota_changes_under_faults_is_valid() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("report");
    let config = support::config(
        &[
            "--preemption",
            "--nodes",
            "3",
            "--time-limit",
            "30",
            "--workload",
            "allocation",
            "--nemesis",
            "kill,partition",
            "--seed",
            "20261219",
            "--rate",
            "25",
            "--fault-secs",
            "3.5",
            "--heal-secs",
            "2.5",
        ],
        &out,
    );
    assert!(config.reproduce_command().contains(" --preemption"));

    let finished = support::run_bounded(config).await;
    let (results, summary, reproduce) = (&finished.outcome.results, &finished.summary, &finished.reproduce);
    finished.assert_valid();

    // --- every checker judged it, the new ones too (not "unknown")
    for name in ["quota-in-log-order", "preemption", "no-lost-allocation", "no-stale-read"] {
        let checker = results.checkers.iter().find(|checker| checker.name == name);
        assert_eq!(
            Some(Validity::VALID),
            checker.map(|checker| checker.valid),
            "{name}: {checker:?}; reproduce: {reproduce}"
        );
    }

    // --- the new operations happened: from the history and the events
    let history = read_history(&out.join("history.jsonl")).expect("history");
    let quota_changes = history
        .iter()
        .filter(|op| op.kind == OpType::Ok && matches!(op.payload, Payload::SetQuota(_)))
        .count();
    let preemptor_grants = history
        .iter()
        .filter(|op| op.kind == OpType::Ok)
        .filter(
            |op| matches!(&op.payload, Payload::Allocate(value) if value.priority >= qm_jepsen::workload::allocation::PREEMPTOR_PRIORITY),
        )
        .count();
    let events = EventLog::read(&out).expect("events.json").expect("the run kept its events");
    assert!(events.complete, "the watcher missed events: {:?}", events.notes);
    let preemptions: Vec<_> = events.events.iter().filter(|event| event.kind == "allocation_preempted").collect();
    let lowered_below_use = history.iter().any(|op| {
        op.kind == OpType::Ok
            && matches!(&op.payload, Payload::SetQuota(value) if value.limit < qm_jepsen::workload::allocation::QUOTA_CPU_CORES)
    });
    assert!(
        quota_changes > 0 && lowered_below_use,
        "quota changes: {quota_changes}; reproduce: {reproduce}\n{summary}"
    );
    assert!(
        preemptor_grants > 0,
        "no preemptor was acknowledged; reproduce: {reproduce}\n{summary}"
    );
    assert!(!preemptions.is_empty(), "no preemption happened; reproduce: {reproduce}\n{summary}");
    let counts = results.preemption.as_ref().expect("a preemption run counts them");
    assert_eq!(preemptions.len() as u64, counts.preemptions);
    assert_eq!(quota_changes as u64, counts.quota_changes);
}
