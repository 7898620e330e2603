//! The stale-read checker on hand-built histories: a read that misses an
//! acknowledged allocation and one that lists an acknowledged release are
//! flagged exactly; reads concurrent with the writes, and the cases the
//! checker leaves out on purpose, are not.

use super::*;
use crate::checker::test_support::{allocate, core, free, read_records, HistoryBuilder};
use crate::checker::Validity;
use crate::history::{OpType, ReadValue};
use crate::workload::allocation::unit_specs;

fn violations(history: &mut HistoryBuilder) -> (Vec<StaleReadViolation>, Vec<String>) {
    let operations = history.operations();
    find_violations(&AllocationHistory {
        operations: &operations,
        units: &unit_specs(),
        events: None,
    })
}

fn read(process: u64, invoked_ns: u64, completed_ns: u64, ops: [u64; 2]) -> ReadOp {
    ReadOp {
        process: Process::Client(process),
        invoked_ns,
        completed_ns,
        ops: ops.to_vec(),
    }
}

fn shown(f: &'static str, state: &str, acknowledged_ns: u64, ops: [u64; 2]) -> Evidence {
    Evidence {
        f,
        state: state.to_owned(),
        acknowledged_ns,
        ops: ops.to_vec(),
    }
}

#[test]
fn a_read_that_misses_an_acknowledged_allocation_is_caught() {
    let mut history = HistoryBuilder::default();
    history
        .ok(
            0,
            1_000_000_000,
            1_200_000_000,
            allocate("a", false, Some(core("a", "monitoring", "cpu-0"))),
        )
        .ok(1, 1_500_000_000, 1_510_000_000, read_records(vec![], false));
    let (found, _) = violations(&mut history);
    assert_eq!(
        vec![StaleReadViolation::MissedAllocation {
            request_id: "a".into(),
            read: read(1, 1_500_000_000, 1_510_000_000, [2, 3]),
            held: shown("allocate", "monitoring", 1_200_000_000, [0, 1]),
        }],
        found
    );
    assert_eq!(
        "stale read: process 1 read at 1.500-1.510 s did not list a, monitoring per the allocate acknowledged at 1.200 s \
         (300.0 ms before the read began), with no release of it invoked before the read ended",
        found[0].describe()
    );
    assert_eq!(vec![0, 1, 2, 3], found[0].ops());
}

#[test]
fn a_read_that_lists_an_acknowledged_release_is_caught() {
    let mut history = HistoryBuilder::default();
    history
        .ok(0, 0, 10, allocate("a", false, Some(core("a", "monitoring", "cpu-0"))))
        .ok(0, 20, 30, free("a", Some("released")))
        .ok(1, 40, 50, read_records(vec![core("a", "monitoring", "cpu-0")], false));
    let (found, _) = violations(&mut history);
    assert_eq!(
        vec![StaleReadViolation::ShowedFinished {
            request_id: "a".into(),
            read: read(1, 40, 50, [4, 5]),
            listed_state: "monitoring".into(),
            finished: shown("release", "released", 30, [2, 3]),
        }],
        found
    );
}

#[test]
fn a_rejected_request_listed_as_held_is_caught() {
    let mut history = HistoryBuilder::default();
    history.ok(0, 0, 10, allocate("a", false, Some(core("a", "error", "cpu-0")))).ok(
        1,
        20,
        30,
        read_records(vec![core("a", "monitoring", "cpu-0")], false),
    );
    let (found, _) = violations(&mut history);
    assert_eq!(
        vec![StaleReadViolation::ShowedFinished {
            request_id: "a".into(),
            read: read(1, 20, 30, [2, 3]),
            listed_state: "monitoring".into(),
            finished: shown("allocate", "error", 10, [0, 1]),
        }],
        found
    );
}

#[test]
fn a_grant_seen_by_an_earlier_read_must_be_seen_by_a_later_one() {
    // --- queued when acknowledged, granted later: only the read shows when
    let mut history = HistoryBuilder::default();
    history
        .ok(0, 0, 10, allocate("a", false, Some(core("a", "queued", "cpu-0"))))
        .ok(1, 20, 30, read_records(vec![core("a", "monitoring", "cpu-0")], false))
        .ok(2, 40, 50, read_records(vec![], false));
    let (found, _) = violations(&mut history);
    assert_eq!(
        vec![StaleReadViolation::MissedAllocation {
            request_id: "a".into(),
            read: read(2, 40, 50, [4, 5]),
            held: shown("read", "monitoring", 30, [2, 3]),
        }],
        found
    );
}

#[test]
fn reads_concurrent_with_the_writes_are_not_flagged() {
    let mut history = HistoryBuilder::default();
    let held = |request: &str| Some(core(request, "monitoring", "cpu-0"));
    history
        // b: acknowledged after the first read began
        .ok(0, 0, 20, allocate("b", false, held("b")))
        // c: a release of unknown outcome invoked before the read
        .ok(2, 0, 5, allocate("c", false, held("c")))
        .info(3, 8, 100, free("c", None))
        // d: released while the reads ran (may or may not have taken effect)
        .ok(4, 0, 5, allocate("d", false, held("d")))
        .ok(4, 25, 60, free("d", Some("released")))
        // e: acknowledged queued, granted nobody knows when
        .ok(6, 0, 5, allocate("e", false, Some(core("e", "queued", "cpu-0"))))
        // f: a release that failed still counts as one that may have happened
        .ok(7, 0, 5, allocate("f", false, held("f")))
        .op(7, 6, 7, OpType::Fail, free("f", None), free("f", None))
        // --- the reads: neither may be judged stale
        .ok(1, 10, 30, read_records(vec![], false))
        .ok(5, 12, 35, read_records(vec![core("d", "monitoring", "cpu-0")], false))
        // --- a failed read and the final read are not judged
        .op(
            8,
            40,
            50,
            OpType::Fail,
            read_records(vec![], false),
            Payload::Read(ReadValue::default()),
        )
        .ok(9, 200, 210, read_records(vec![], true));
    let (found, notes) = violations(&mut history);
    assert_eq!(Vec::<StaleReadViolation>::new(), found);
    assert_eq!(
        vec!["2 reads judged against 4 requests acknowledged held and 1 acknowledged finished".to_owned()],
        notes
    );
}

#[test]
fn reads_past_the_provider_failure_and_dedupe_windows_are_not_flagged() {
    // --- b's provider may have failed by then; a may have been forgotten and sent again
    let late = PROVIDER_FAILURE_WINDOW_NS.max(TableConfig::default().dedupe_window_ms * 1_000_000);
    let mut history = HistoryBuilder::default();
    history
        .ok(0, 0, 10, allocate("a", false, Some(core("a", "monitoring", "cpu-0"))))
        .ok(0, 20, 30, free("a", Some("released")))
        .ok(1, 0, 10, allocate("b", false, Some(core("b", "monitoring", "cpu-1"))))
        .ok(2, late, late + 10, read_records(vec![core("a", "monitoring", "cpu-0")], false));
    let (found, notes) = violations(&mut history);
    assert_eq!(Vec::<StaleReadViolation>::new(), found);
    assert_eq!(
        vec![
            "1 reads judged against 2 requests acknowledged held and 1 acknowledged finished".to_owned(),
            "1 reads completed past the provider failure window (600000 ms) were not judged for missed allocations".to_owned(),
        ],
        notes
    );
}

#[test]
fn the_verdict_is_invalid_with_the_request_named() {
    let mut history = HistoryBuilder::default();
    history
        .ok(0, 0, 10, allocate("a", false, Some(core("a", "monitoring", "cpu-0"))))
        .ok(0, 20, 30, free("a", Some("released")))
        .ok(1, 40, 50, read_records(vec![core("a", "monitoring", "cpu-0")], false));
    let result = crate::checker::test_support::allocation_verdict(&mut history, check);
    assert_eq!(
        (CHECKER_NAME, Validity::INVALID, 1),
        (result.name.as_str(), result.valid, result.anomaly_count)
    );
    assert_eq!("showed-finished", result.anomalies[0].violation["kind"]);
    assert!(result.anomalies[0].description.contains(" listed a as monitoring"), "{result:#?}");
}

#[test]
fn a_read_may_miss_a_preempted_allocation_but_not_one_no_preemptor_took() {
    use crate::checker::test_support::{allocate_at, granted, preempted, whole_log};
    let build = || {
        let mut history = HistoryBuilder::default();
        history
            .ok(
                0,
                1_000_000_000,
                1_200_000_000,
                allocate_at("low", 0, false, Some(core("low", "monitoring", "cpu-0"))),
            )
            .info(2, 1_300_000_000, 1_400_000_000, allocate_at("high", 10, false, None))
            .ok(1, 1_500_000_000, 1_510_000_000, read_records(vec![], false));
        history
    };
    let judge = |history: &mut HistoryBuilder, log: &crate::events::EventLog| {
        let operations = history.operations();
        find_violations(&AllocationHistory {
            operations: &operations,
            units: &unit_specs(),
            events: Some(log),
        })
        .0
    };
    let taken = whole_log(vec![
        granted(1, "low", 1),
        preempted(2, "low", 0, "high", 10, true),
        granted(3, "high", 1),
    ]);
    assert_eq!(0, judge(&mut build(), &taken).len());
    // The events show no preemption: the read missed it.
    let untouched = whole_log(vec![granted(1, "low", 1)]);
    assert_eq!(1, judge(&mut build(), &untouched).len());
}
