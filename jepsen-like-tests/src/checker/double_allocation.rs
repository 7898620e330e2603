//! No exclusive unit is held by two allocations at once.
//!
//! Two kinds of evidence: a linearizable read (every read is one moment of
//! the table) that lists two allocations on one exclusive unit; and two
//! acknowledged allocations whose certain holds on one exclusive unit
//! overlap in time (see [`super::holds::Hold`]). A `movable` allocation may
//! be moved live at any moment, so it has no certain hold: only the reads
//! judge it.

use std::collections::BTreeMap;

use serde::Serialize;

use super::holds::{certain_holds, held_units, reads, UnitKey};
use super::{AllocationHistory, CheckerResult, Violation};

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum DoubleAllocationViolation {
    /// One read showed several allocations on one exclusive unit.
    SharedInRead {
        unit: UnitKey,
        request_ids: Vec<String>,
        read: Vec<u64>,
    },
    /// Two acknowledged allocations certainly held one exclusive unit at the same time.
    OverlappingHolds {
        unit: UnitKey,
        first: String,
        second: String,
        /// When both certainly held it, nanoseconds since the run started.
        overlap_from_ns: u64,
        first_ops: Vec<u64>,
        second_ops: Vec<u64>,
    },
}

impl Violation for DoubleAllocationViolation {
    fn describe(&self) -> String {
        match self {
            DoubleAllocationViolation::SharedInRead { unit, request_ids, .. } => {
                format!(
                    "exclusive unit {unit} held by {} allocations in one read: {}",
                    request_ids.len(),
                    request_ids.join(", ")
                )
            }
            DoubleAllocationViolation::OverlappingHolds {
                unit,
                first,
                second,
                overlap_from_ns,
                ..
            } => format!(
                "exclusive unit {unit} held by both {first} and {second} from {:.3} s (both acknowledged, neither released)",
                *overlap_from_ns as f64 / 1e9
            ),
        }
    }

    fn ops(&self) -> Vec<u64> {
        match self {
            DoubleAllocationViolation::SharedInRead { read, .. } => read.clone(),
            DoubleAllocationViolation::OverlappingHolds { first_ops, second_ops, .. } => {
                first_ops.iter().chain(second_ops).copied().collect()
            }
        }
    }
}

pub fn check(history: &AllocationHistory) -> CheckerResult {
    let exclusive: BTreeMap<UnitKey, bool> = history
        .units
        .iter()
        .map(|spec| {
            (
                UnitKey {
                    provider_id: spec.provider_id.clone(),
                    resource_id: spec.resource_id.clone(),
                },
                spec.exclusive,
            )
        })
        .collect();
    let is_exclusive = |unit: &UnitKey| exclusive.get(unit).copied().unwrap_or(false);
    let mut violations = Vec::new();

    let all_reads = reads(history.operations);
    for (operation, records, _) in &all_reads {
        let mut holders: BTreeMap<UnitKey, Vec<String>> = BTreeMap::new();
        for record in records.iter() {
            for (unit, _) in held_units(record) {
                holders.entry(unit).or_default().push(record.request_id.clone());
            }
        }
        for (unit, request_ids) in holders {
            if is_exclusive(&unit) && request_ids.len() > 1 {
                violations.push(DoubleAllocationViolation::SharedInRead {
                    unit,
                    request_ids,
                    read: operation.indexes(),
                });
            }
        }
    }

    let holds = certain_holds(history);
    let mut by_unit: BTreeMap<&UnitKey, Vec<usize>> = BTreeMap::new();
    for (position, hold) in holds.iter().enumerate().filter(|(_, hold)| is_exclusive(&hold.unit)) {
        by_unit.entry(&hold.unit).or_default().push(position);
    }
    for (unit, positions) in by_unit {
        let mut reported: Vec<(&str, &str)> = Vec::new();
        for (i, a) in positions.iter().map(|p| &holds[*p]).enumerate() {
            for b in positions[i + 1..].iter().map(|p| &holds[*p]) {
                let (first, second) = if a.request_id <= b.request_id { (a, b) } else { (b, a) };
                let overlaps = a.from_ns.max(b.from_ns) < a.until_ns.min(b.until_ns);
                if a.allocation_id == b.allocation_id || !overlaps || reported.contains(&(&first.request_id, &second.request_id)) {
                    continue;
                }
                reported.push((&first.request_id, &second.request_id));
                violations.push(DoubleAllocationViolation::OverlappingHolds {
                    unit: unit.clone(),
                    first: first.request_id.clone(),
                    second: second.request_id.clone(),
                    overlap_from_ns: a.from_ns.max(b.from_ns),
                    first_ops: first.ops.clone(),
                    second_ops: second.ops.clone(),
                });
            }
        }
    }
    let notes = vec![format!(
        "{} reads and {} acknowledged holds of exclusive units examined",
        all_reads.len(),
        holds.iter().filter(|hold| is_exclusive(&hold.unit)).count()
    )];
    CheckerResult::from_violations("no-double-allocation", &violations, notes, false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checker::test_support::{allocate, allocation_verdict, anomaly_kinds, core, free, read_records, record, HistoryBuilder};
    use crate::checker::Validity;

    #[test]
    fn a_unit_handed_on_after_a_release_is_fine() {
        let mut history = HistoryBuilder::default();
        let a = core("a", "monitoring", "cpu-0");
        let b = core("b", "monitoring", "cpu-0");
        history
            .ok(0, 0, 10, allocate("a", false, Some(a.clone())))
            .ok(2, 15, 18, read_records(vec![a], false))
            .ok(0, 20, 30, free("a", Some("released")))
            .ok(1, 40, 50, allocate("b", false, Some(b.clone())))
            .ok(2, 60, 70, read_records(vec![b], true));
        assert_eq!(Validity::VALID, allocation_verdict(&mut history, check).valid);
    }

    #[test]
    fn two_allocations_on_one_core_are_caught_in_a_read_and_by_their_acknowledgements() {
        let mut history = HistoryBuilder::default();
        let a = core("a", "monitoring", "cpu-0");
        let b = core("b", "monitoring", "cpu-0");
        history
            .ok(0, 0, 10, allocate("a", false, Some(a.clone())))
            .ok(1, 5, 15, allocate("b", false, Some(b.clone())))
            .ok(2, 20, 30, read_records(vec![a, b], false));
        let result = allocation_verdict(&mut history, check);
        assert_eq!(Validity::INVALID, result.valid);
        let kinds = anomaly_kinds(&result);
        assert_eq!(vec!["shared-in-read", "overlapping-holds"], kinds);
        assert!(result.anomalies[0].description.contains("jepsen-p0/cpu-0"));
    }

    #[test]
    fn sharing_a_divisible_unit_is_not_a_double_allocation() {
        let mut history = HistoryBuilder::default();
        let a = record("a", "monitoring", "jepsen-p0", &[("mem", "memory_gb", 8)]);
        let b = record("b", "monitoring", "jepsen-p0", &[("mem", "memory_gb", 8)]);
        history.ok(2, 20, 30, read_records(vec![a, b], false));
        assert_eq!(Validity::VALID, allocation_verdict(&mut history, check).valid);
    }

    #[test]
    fn a_unit_taken_by_a_preemptor_is_not_a_double_allocation_but_one_taken_by_an_equal_is() {
        use crate::checker::test_support::{allocate_at, granted, preempted, verdict_with_events, whole_log};
        let build = |preemptor_priority: i64| {
            let mut history = HistoryBuilder::default();
            let low = core("low", "monitoring", "cpu-0");
            let high = core("high", "monitoring", "cpu-0");
            history.ok(0, 0, 10, allocate_at("low", 0, false, Some(low))).ok(
                1,
                20,
                30,
                allocate_at("high", preemptor_priority, false, Some(high)),
            );
            history
        };
        let log = whole_log(vec![
            granted(1, "low", 1),
            preempted(2, "low", 0, "high", 10, true),
            granted(3, "high", 1),
        ]);
        let result = verdict_with_events(&mut build(10), &log, check);
        assert_eq!(Validity::VALID, result.valid, "{result:#?}");
        // Without the event log, a preemptor's arrival ends the certain holds below it.
        assert_eq!(Validity::VALID, allocation_verdict(&mut build(10), check).valid);
        // The events name no preemption: the two holds overlap.
        let log = whole_log(vec![granted(1, "low", 1), granted(3, "high", 1)]);
        let result = verdict_with_events(&mut build(10), &log, check);
        assert_eq!(vec!["overlapping-holds"], anomaly_kinds(&result));
        // No preemptor at all, no events: as before.
        assert_eq!(vec!["overlapping-holds"], anomaly_kinds(&allocation_verdict(&mut build(2), check)));
    }
}
