//! No unit ever holds more than its capacity, and grants name only units
//! that exist.
//!
//! Checked in every read (one moment of the table) and over time: the
//! certain holds (see [`super::holds::Hold`]) alive at any instant must fit
//! each unit.

use std::collections::BTreeMap;

use serde::Serialize;

use super::holds::{certain_holds, held_units, reads, UnitKey};
use super::{AllocationHistory, CheckerResult, Violation};

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum CapacityViolation {
    /// One read showed a unit holding more than its capacity.
    OverCapacityInRead {
        unit: UnitKey,
        capacity: u64,
        held: u64,
        request_ids: Vec<String>,
        read: Vec<u64>,
    },
    /// Acknowledged allocations certainly held more than the capacity at once.
    OverCapacityOverTime {
        unit: UnitKey,
        capacity: u64,
        held: u64,
        at_ns: u64,
        request_ids: Vec<String>,
        ops: Vec<u64>,
    },
    /// A grant names a unit no provider registered.
    UnknownUnit { unit: UnitKey, request_id: String, ops: Vec<u64> },
}

impl Violation for CapacityViolation {
    fn describe(&self) -> String {
        match self {
            CapacityViolation::OverCapacityInRead {
                unit,
                capacity,
                held,
                request_ids,
                ..
            } => format!(
                "{unit} holds {held} of its capacity {capacity} in one read ({})",
                request_ids.join(", ")
            ),
            CapacityViolation::OverCapacityOverTime {
                unit,
                capacity,
                held,
                at_ns,
                request_ids,
                ..
            } => format!(
                "{unit} certainly held {held} of its capacity {capacity} at {:.3} s ({})",
                *at_ns as f64 / 1e9,
                request_ids.join(", ")
            ),
            CapacityViolation::UnknownUnit { unit, request_id, .. } => {
                format!("{request_id} was granted {unit}, which no provider registered")
            }
        }
    }

    fn ops(&self) -> Vec<u64> {
        match self {
            CapacityViolation::OverCapacityInRead { read, .. } => read.clone(),
            CapacityViolation::OverCapacityOverTime { ops, .. } | CapacityViolation::UnknownUnit { ops, .. } => ops.clone(),
        }
    }
}

pub fn check(history: &AllocationHistory) -> CheckerResult {
    let capacity: BTreeMap<UnitKey, u64> = history
        .units
        .iter()
        .map(|spec| {
            (
                UnitKey {
                    provider_id: spec.provider_id.clone(),
                    resource_id: spec.resource_id.clone(),
                },
                spec.capacity,
            )
        })
        .collect();
    let mut violations = Vec::new();

    let all_reads = reads(history.operations);
    for (operation, records, _) in &all_reads {
        let mut held: BTreeMap<UnitKey, (u64, Vec<String>)> = BTreeMap::new();
        for record in records.iter() {
            for (unit, amount) in held_units(record) {
                if !capacity.contains_key(&unit) {
                    violations.push(CapacityViolation::UnknownUnit {
                        unit: unit.clone(),
                        request_id: record.request_id.clone(),
                        ops: operation.indexes(),
                    });
                }
                let entry = held.entry(unit).or_default();
                entry.0 += amount;
                entry.1.push(record.request_id.clone());
            }
        }
        for (unit, (amount, request_ids)) in held {
            if let Some(&limit) = capacity.get(&unit).filter(|limit| amount > **limit) {
                violations.push(CapacityViolation::OverCapacityInRead {
                    unit,
                    capacity: limit,
                    held: amount,
                    request_ids,
                    read: operation.indexes(),
                });
            }
        }
    }

    let holds = certain_holds(history);
    let mut by_unit: BTreeMap<&UnitKey, Vec<usize>> = BTreeMap::new();
    for (position, hold) in holds.iter().enumerate() {
        by_unit.entry(&hold.unit).or_default().push(position);
    }
    for (unit, positions) in by_unit {
        let Some(&limit) = capacity.get(unit) else { continue };
        // Sweep: ends before starts at equal times, so handing over is no overlap.
        let mut events: Vec<(u64, bool, usize)> = positions
            .iter()
            .flat_map(|position| {
                [
                    (holds[*position].from_ns, true, *position),
                    (holds[*position].until_ns, false, *position),
                ]
            })
            .collect();
        events.sort();
        let mut live: BTreeMap<&str, usize> = BTreeMap::new();
        let mut over = false;
        for (at_ns, starts, position) in events {
            let hold = &holds[position];
            match starts {
                true => {
                    live.insert(&hold.allocation_id, position);
                }
                false => {
                    live.remove(hold.allocation_id.as_str());
                }
            }
            let held: u64 = live.values().map(|position| holds[*position].amount).sum();
            if held > limit && !over {
                violations.push(CapacityViolation::OverCapacityOverTime {
                    unit: unit.clone(),
                    capacity: limit,
                    held,
                    at_ns,
                    request_ids: live.values().map(|position| holds[*position].request_id.clone()).collect(),
                    ops: live.values().flat_map(|position| holds[*position].ops.clone()).collect(),
                });
            }
            over = held > limit;
        }
    }
    let notes = vec![format!("{} reads and {} acknowledged holds examined", all_reads.len(), holds.len())];
    CheckerResult::from_violations("capacity", &violations, notes, false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checker::test_support::{allocate, allocation_verdict, core, free, read_records, record, HistoryBuilder};
    use crate::checker::Validity;

    #[test]
    fn memory_carved_within_its_capacity_is_fine() {
        let mut history = HistoryBuilder::default();
        let a = record("a", "monitoring", "jepsen-p0", &[("mem", "memory_gb", 40)]);
        let b = record("b", "monitoring", "jepsen-p0", &[("mem", "memory_gb", 24)]);
        let c = record("c", "monitoring", "jepsen-p0", &[("mem", "memory_gb", 40)]);
        history
            .ok(0, 0, 10, allocate("a", false, Some(a.clone())))
            .ok(1, 0, 10, allocate("b", false, Some(b.clone())))
            .ok(2, 20, 30, read_records(vec![a, b], false))
            .ok(0, 40, 50, free("a", Some("released")))
            .ok(0, 60, 70, allocate("c", false, Some(c)));
        assert_eq!(Validity::VALID, allocation_verdict(&mut history, check).valid);
    }

    #[test]
    fn memory_over_its_capacity_is_caught() {
        let mut history = HistoryBuilder::default();
        let a = record("a", "monitoring", "jepsen-p0", &[("mem", "memory_gb", 40)]);
        let b = record("b", "monitoring", "jepsen-p0", &[("mem", "memory_gb", 30)]);
        history
            .ok(0, 0, 10, allocate("a", false, Some(a.clone())))
            .ok(1, 5, 15, allocate("b", false, Some(b.clone())))
            .ok(2, 20, 30, read_records(vec![a, b], false));
        let result = allocation_verdict(&mut history, check);
        assert_eq!(Validity::INVALID, result.valid);
        assert_eq!(2, result.anomaly_count, "{:#?}", result.anomalies);
        assert!(result.anomalies[0].description.contains("holds 70 of its capacity 64"));
    }

    #[test]
    fn a_grant_on_a_unit_nobody_registered_is_caught() {
        let mut history = HistoryBuilder::default();
        let a = core("a", "monitoring", "cpu-99");
        history.ok(2, 20, 30, read_records(vec![a], false));
        let result = allocation_verdict(&mut history, check);
        assert_eq!(Validity::INVALID, result.valid);
        assert!(result.anomalies[0].description.contains("no provider registered"));
    }
}
