//! What the allocation checkers share: the units a record holds, the
//! intervals during which an acknowledged allocation certainly held them,
//! and the reads.

use std::collections::BTreeMap;

use serde::Serialize;

use super::operations::Operation;
use crate::history::{OpType, Payload, RecordView};

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
/// invoked (or forever). Nothing else ends an allocation in these runs: no
/// leases, and providers are kept alive.
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

/// Every certain hold of every acknowledged active allocation.
pub fn certain_holds(operations: &[Operation]) -> Vec<Hold> {
    let released = first_release_ns(operations);
    let mut holds = Vec::new();
    for operation in operations.iter().filter(|operation| operation.is_ok()) {
        let Payload::Allocate(value) = operation.value() else { continue };
        let (Some(record), Some(from_ns)) = (&value.record, operation.complete_ns()) else {
            continue;
        };
        let until_ns = released.get(&record.request_id).copied().unwrap_or(u64::MAX);
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
