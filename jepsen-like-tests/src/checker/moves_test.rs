//! The allocation checkers on histories with a live move: a `movable`
//! allocation seen on one provider's units, then (after the table moved
//! it) on another's, while its first unit goes to someone else. That is
//! valid; the same history with the request not movable is not, and a real
//! double allocation stays caught whether the requests are movable or not.

use super::test_support::{allocate, allocate_movable, allocation_verdict, anomaly_kinds, free, read_records, record, HistoryBuilder};
use super::{capacity, double_allocation, idempotency, lost_allocation, quota, stale_read, AllocationHistory, CheckerResult, Validity};
use crate::history::{Payload, RecordView};

type Check = fn(&AllocationHistory) -> CheckerResult;

/// Every checker of the allocation workload, by name.
const CHECKERS: [(&str, Check); 6] = [
    ("double-allocation", double_allocation::check),
    ("capacity", capacity::check),
    ("lost-allocation", lost_allocation::check),
    ("idempotency", idempotency::check),
    ("stale-read", stale_read::check),
    ("quota", quota::check),
];

fn on(request: &str, provider: &str, core: &str) -> RecordView {
    record(request, "monitoring", provider, &[(core, "cpu_cores", 1)])
}

/// `a` is granted p0/cpu-0, read there, moved to p1/cpu-3 (the next read
/// shows it there), and `b` is granted p0/cpu-0, which the move freed; the
/// final read finds `a` on p1/cpu-3. `allocate_a` builds a's allocate:
/// movable or not.
fn a_moves_and_b_takes_its_core(allocate_a: fn(&str, bool, Option<RecordView>) -> Payload) -> HistoryBuilder {
    let (a_before, a_after, b) = (
        on("a", "jepsen-p0", "cpu-0"),
        on("a", "jepsen-p1", "cpu-3"),
        on("b", "jepsen-p0", "cpu-0"),
    );
    let mut history = HistoryBuilder::default();
    history
        .ok(0, 0, 10, allocate_a("a", false, Some(a_before.clone())))
        .ok(2, 15, 18, read_records(vec![a_before], false))
        .ok(2, 30, 35, read_records(vec![a_after.clone()], false))
        .ok(1, 40, 50, allocate("b", false, Some(b.clone())))
        .ok(2, 60, 65, read_records(vec![a_after.clone(), b.clone()], false))
        .ok(3, 100, 110, read_records(vec![a_after, b], true));
    history
}

fn invalid_checkers(history: &mut HistoryBuilder) -> Vec<&'static str> {
    CHECKERS
        .iter()
        .filter(|(_, check)| allocation_verdict(history, *check).valid != Validity::VALID)
        .map(|(name, _)| *name)
        .collect()
}

#[test]
fn a_movable_allocation_moved_to_other_units_is_valid_for_every_checker() {
    let mut history = a_moves_and_b_takes_its_core(allocate_movable);
    assert_eq!(Vec::<&str>::new(), invalid_checkers(&mut history));
    // A resend of `a` after the move answers with its new units: the same
    // allocation, not a second one.
    let a_after = on("a", "jepsen-p1", "cpu-3");
    history.ok(0, 70, 75, allocate_movable("a", true, Some(a_after)));
    assert_eq!(Vec::<&str>::new(), invalid_checkers(&mut history));
}

#[test]
fn the_same_history_without_movable_is_a_double_allocation_and_a_changed_placement() {
    let mut history = a_moves_and_b_takes_its_core(allocate);
    assert_eq!(
        vec!["double-allocation", "capacity", "lost-allocation", "idempotency"],
        invalid_checkers(&mut history)
    );
    let result = allocation_verdict(&mut history, double_allocation::check);
    assert_eq!(vec!["overlapping-holds"], anomaly_kinds(&result));
}

#[test]
fn two_movable_allocations_on_one_core_in_one_read_are_a_double_allocation() {
    let (a, b) = (on("a", "jepsen-p1", "cpu-3"), on("b", "jepsen-p1", "cpu-3"));
    let mut history = HistoryBuilder::default();
    history
        .ok(0, 0, 10, allocate_movable("a", false, Some(on("a", "jepsen-p0", "cpu-0"))))
        .ok(1, 5, 15, allocate_movable("b", false, Some(b.clone())))
        .ok(2, 20, 30, read_records(vec![a, b], false));
    let result = allocation_verdict(&mut history, double_allocation::check);
    assert_eq!(Validity::INVALID, result.valid);
    // Movable: their acknowledgements prove nothing past their instants,
    // the read (one instant of the table) does.
    assert_eq!(vec!["shared-in-read"], anomaly_kinds(&result));
    assert!(result.anomalies[0].description.contains("jepsen-p1/cpu-3"));
}

#[test]
fn pinned_allocations_acknowledged_on_one_core_stay_a_double_allocation_next_to_moves() {
    let mut history = HistoryBuilder::default();
    history
        .ok(0, 0, 10, allocate_movable("a", false, Some(on("a", "jepsen-p0", "cpu-0"))))
        .ok(1, 20, 30, allocate("c", false, Some(on("c", "jepsen-p1", "cpu-3"))))
        .ok(2, 40, 50, allocate("d", false, Some(on("d", "jepsen-p1", "cpu-3"))));
    let result = allocation_verdict(&mut history, double_allocation::check);
    assert_eq!(vec!["overlapping-holds"], anomaly_kinds(&result));
}

#[test]
fn a_move_keeps_the_amounts_so_a_movable_allocation_that_shrank_is_still_caught() {
    let before = record(
        "a",
        "monitoring",
        "jepsen-p0",
        &[("cpu-0", "cpu_cores", 1), ("cpu-1", "cpu_cores", 1)],
    );
    let after = on("a", "jepsen-p1", "cpu-3");
    let mut history = HistoryBuilder::default();
    history
        .ok(0, 0, 10, allocate_movable("a", false, Some(before)))
        .ok(2, 30, 35, read_records(vec![after.clone()], false))
        .ok(3, 100, 110, read_records(vec![after], true));
    assert_eq!(vec!["lost-allocation", "idempotency"], invalid_checkers(&mut history));
    let lost = allocation_verdict(&mut history, lost_allocation::check);
    assert_eq!(vec!["placement-changed"], anomaly_kinds(&lost));
    let idempotent = allocation_verdict(&mut history, idempotency::check);
    assert_eq!(vec!["different-units"], anomaly_kinds(&idempotent));
}

#[test]
fn a_movable_allocation_released_before_it_moved_is_not_held_against_the_next_holder() {
    let mut history = HistoryBuilder::default();
    history
        .ok(0, 0, 10, allocate_movable("a", false, Some(on("a", "jepsen-p0", "cpu-0"))))
        .ok(0, 20, 30, free("a", Some("released")))
        .ok(1, 40, 50, allocate_movable("b", false, Some(on("b", "jepsen-p0", "cpu-0"))))
        .ok(3, 100, 110, read_records(vec![on("b", "jepsen-p2", "cpu-5")], true));
    assert_eq!(Vec::<&str>::new(), invalid_checkers(&mut history));
}
