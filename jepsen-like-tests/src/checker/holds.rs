//! What the allocation checkers share: the units a record holds, the
//! intervals during which an acknowledged allocation certainly held them,
//! and the reads.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::operations::Operation;
use super::AllocationHistory;
use crate::history::{GrantView, OpType, Payload, RecordView};
use crate::workload::allocation::PREEMPTOR_PRIORITY;

/// A unit: provider and resource.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct UnitKey {
    pub provider_id: String,
    pub resource_id: String,
}

impl std::fmt::Display for UnitKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.provider_id, self.resource_id)
    }
}

/// The units `record` holds now (empty unless it is active), with amounts.
pub fn held_units(record: &RecordView) -> Vec<(UnitKey, u64)> {
    if !record.is_active() {
        return Vec::new();
    }
    record
        .grants
        .iter()
        .map(|grant| {
            (
                UnitKey {
                    provider_id: record.provider_id.clone(),
                    resource_id: grant.resource_id.clone(),
                },
                grant.amount,
            )
        })
        .collect()
}

/// A stretch of time during which an allocation certainly held a unit: from
/// the acknowledgement that it was active until its release was first
/// invoked, or its first possible preemption ([`preemptions`]), or forever.
/// Nothing else ends an allocation in these runs: no leases, and providers
/// are kept alive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hold {
    pub request_id: String,
    pub allocation_id: String,
    pub unit: UnitKey,
    pub amount: u64,
    pub from_ns: u64,
    pub until_ns: u64,
    /// History indexes of the acknowledgement.
    pub ops: Vec<u64>,
}

/// When each request's release was first invoked (releases that certainly
/// failed do not count).
pub fn first_release_ns(operations: &[Operation]) -> BTreeMap<String, u64> {
    let mut first: BTreeMap<String, u64> = BTreeMap::new();
    for operation in operations.iter().filter(|operation| operation.kind() != OpType::Fail) {
        if let Payload::Release(value) = &operation.invoke.payload {
            let at = first.entry(value.request_id.clone()).or_insert(u64::MAX);
            *at = (*at).min(operation.invoke_ns());
        }
    }
    first
}

/// The requests sent `movable`: the table may move them to other units
/// at any moment (a plan, automatic or asked for, or a drain), keeping
/// their allocation id and what they hold of each kind.
pub fn movable_requests(operations: &[Operation]) -> BTreeSet<&str> {
    operations
        .iter()
        .filter_map(|operation| match &operation.invoke.payload {
            Payload::Allocate(value) if value.movable => Some(value.request_id.as_str()),
            _ => None,
        })
        .collect()
}

/// What a record holds of each kind, whatever the units: the part of its
/// grants a live move keeps (a move changes provider and units, never
/// the amounts).
pub fn held_amounts(record: &RecordView) -> BTreeMap<&str, u64> {
    let mut amounts: BTreeMap<&str, u64> = BTreeMap::new();
    for GrantView { kind, amount, .. } in &record.grants {
        *amounts.entry(kind.as_str()).or_default() += amount;
    }
    amounts
}

/// How a request may have been preempted (`--preemption` runs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Preempted {
    /// The earliest moment it may have lost its units: the invocation of
    /// the first allocate of its (first) preemptor. A preemption is applied
    /// after its preemptor's allocate reached the log, so not before that.
    pub from_ns: u64,
    /// The table's events say it was preempted (`allocation_preempted`);
    /// false when the run has no whole event log and it merely may have been.
    pub certain: bool,
    /// `requeued` of its last `allocation_preempted` (certain ones only).
    pub requeued: bool,
    /// History indexes of the preemptor's first allocate.
    pub preemptor_ops: Vec<u64>,
}

/// Every request that may have been preempted, with when.
///
/// With a whole event log, exactly the victims of its
/// `allocation_preempted` events, each from its preemptor's first allocate
/// invocation (from time zero if the history has no such allocate).
/// Without one, every request of lower priority than the history's first
/// preemptor (an allocate of at least [`PREEMPTOR_PRIORITY`]) may have been,
/// from that preemptor's invocation: the checkers then judge less, never
/// wrongly. A history without preemptors and without events has none.
pub fn preemptions<'a>(history: &AllocationHistory<'a>) -> BTreeMap<&'a str, Preempted> {
    let mut first_allocate: BTreeMap<&str, (u64, Vec<u64>)> = BTreeMap::new();
    let mut priorities: BTreeMap<&str, i64> = BTreeMap::new();
    let mut first_preemptor: Option<(u64, Vec<u64>)> = None;
    for operation in history.operations {
        let Payload::Allocate(value) = &operation.invoke.payload else {
            continue;
        };
        first_allocate
            .entry(value.request_id.as_str())
            .or_insert_with(|| (operation.invoke_ns(), operation.indexes()));
        priorities.insert(value.request_id.as_str(), value.priority);
        if value.priority >= PREEMPTOR_PRIORITY && first_preemptor.as_ref().is_none_or(|(at, _)| operation.invoke_ns() < *at) {
            first_preemptor = Some((operation.invoke_ns(), operation.indexes()));
        }
    }
    let mut preempted: BTreeMap<&'a str, Preempted> = BTreeMap::new();
    match history.events.filter(|log| log.complete) {
        Some(log) => {
            for event in log.events.iter().filter(|event| event.kind == "allocation_preempted") {
                let (Some(victim), Some(preemptor)) = (&event.request_id, &event.preemptor_request_id) else {
                    continue;
                };
                let Some((victim, _)) = first_allocate.get_key_value(victim.as_str()) else {
                    continue;
                };
                let (from_ns, preemptor_ops) = first_allocate.get(preemptor.as_str()).cloned().unwrap_or((0, Vec::new()));
                let entry = preempted.entry(victim).or_insert(Preempted {
                    from_ns,
                    certain: true,
                    requeued: true,
                    preemptor_ops,
                });
                entry.from_ns = entry.from_ns.min(from_ns);
                entry.requeued = event.requeued.unwrap_or(true);
            }
        }
        None => {
            if let Some((from_ns, preemptor_ops)) = first_preemptor {
                for (request_id, priority) in priorities {
                    if priority < PREEMPTOR_PRIORITY {
                        preempted.insert(
                            request_id,
                            Preempted {
                                from_ns,
                                certain: false,
                                requeued: true,
                                preemptor_ops: preemptor_ops.clone(),
                            },
                        );
                    }
                }
            }
        }
    }
    preempted
}

/// Every certain hold of every acknowledged active allocation that
/// cannot move. A movable one may move at any moment after its
/// acknowledgement, so where it was says nothing about later instants:
/// the reads (each one instant of the table) judge it instead.
pub fn certain_holds(history: &AllocationHistory) -> Vec<Hold> {
    let operations = history.operations;
    let released = first_release_ns(operations);
    let preempted = preemptions(history);
    let movable = movable_requests(operations);
    let mut holds = Vec::new();
    for operation in operations.iter().filter(|operation| operation.is_ok()) {
        let Payload::Allocate(value) = operation.value() else { continue };
        let (Some(record), Some(from_ns)) = (&value.record, operation.complete_ns()) else {
            continue;
        };
        if movable.contains(record.request_id.as_str()) {
            continue;
        }
        let until_ns = released.get(&record.request_id).copied().unwrap_or(u64::MAX).min(
            preempted
                .get(record.request_id.as_str())
                .map_or(u64::MAX, |preempted| preempted.from_ns),
        );
        if until_ns <= from_ns {
            continue;
        }
        for (unit, amount) in held_units(record) {
            holds.push(Hold {
                request_id: record.request_id.clone(),
                allocation_id: record.allocation_id.clone(),
                unit,
                amount,
                from_ns,
                until_ns,
                ops: operation.indexes(),
            });
        }
    }
    holds
}

/// Every successful read with its records (the final read included).
pub fn reads(operations: &[Operation]) -> Vec<(&Operation, &[RecordView], bool)> {
    operations
        .iter()
        .filter(|operation| operation.is_ok())
        .filter_map(|operation| match operation.value() {
            Payload::Read(value) => value.records.as_deref().map(|records| (operation, records, value.final_read)),
            _ => None,
        })
        .collect()
}
