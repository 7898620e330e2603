//! One allocation per `request_id`, however often the request is sent: the
//! client library retries with the same `request_id` across failovers, and
//! the workload resends old requests on purpose.
//!
//! * every answer for one `request_id` names the same allocation and response ids;
//! * every active answer and every read of it shows the same units; a
//!   `movable` request may be moved live to other units, so for it the same
//!   amount of each kind (a move keeps the allocation and response ids too),
//!   and so for a request that was preempted and requeued: granted again,
//!   it may be anywhere ([`super::holds::preemptions`]);
//! * a resend after an acknowledged release does not allocate again;
//! * no read lists one `request_id` twice, or one allocation under two requests.

use std::collections::BTreeMap;

use serde::Serialize;

use super::holds::{held_amounts, movable_requests, preemptions, reads};
use super::{AllocationHistory, CheckerResult, Violation};
use crate::history::{GrantView, Payload, RecordView};

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum IdempotencyViolation {
    /// Answers for one request name different allocations or responses.
    DifferentIdentity {
        request_id: String,
        allocation_ids: Vec<String>,
        response_ids: Vec<String>,
        ops: Vec<u64>,
    },
    /// One request was seen active on different units.
    DifferentUnits {
        request_id: String,
        first: Vec<GrantView>,
        second: Vec<GrantView>,
        ops: Vec<u64>,
    },
    /// A resend after an acknowledged release came back live: allocated twice.
    AllocatedAgainAfterRelease {
        request_id: String,
        state: String,
        release: Vec<u64>,
        resend: Vec<u64>,
    },
    /// One read listed a request twice, or one allocation under two requests.
    DuplicateRecord { id: String, read: Vec<u64> },
}

impl Violation for IdempotencyViolation {
    fn describe(&self) -> String {
        match self {
            IdempotencyViolation::DifferentIdentity {
                request_id,
                allocation_ids,
                response_ids,
                ..
            } => format!("request {request_id} was answered with allocations {allocation_ids:?} and responses {response_ids:?}"),
            IdempotencyViolation::DifferentUnits {
                request_id, first, second, ..
            } => format!("request {request_id} was active on {first:?} and on {second:?}"),
            IdempotencyViolation::AllocatedAgainAfterRelease { request_id, state, .. } => {
                format!("request {request_id} was released, then a resend of it came back {state}: a retry allocated twice")
            }
            IdempotencyViolation::DuplicateRecord { id, .. } => format!("one read listed {id} more than once"),
        }
    }

    fn ops(&self) -> Vec<u64> {
        match self {
            IdempotencyViolation::DifferentIdentity { ops, .. } | IdempotencyViolation::DifferentUnits { ops, .. } => ops.clone(),
            IdempotencyViolation::AllocatedAgainAfterRelease { release, resend, .. } => release.iter().chain(resend).copied().collect(),
            IdempotencyViolation::DuplicateRecord { read, .. } => read.clone(),
        }
    }
}

fn sorted_grants(record: &RecordView) -> Vec<GrantView> {
    let mut grants = record.grants.clone();
    grants.sort();
    grants
}

fn unique(values: impl Iterator<Item = String>) -> Vec<String> {
    let mut values: Vec<String> = values.collect();
    values.sort();
    values.dedup();
    values
}

pub fn check(history: &AllocationHistory) -> CheckerResult {
    let mut violations = Vec::new();
    let movable = movable_requests(history.operations);
    let preempted = preemptions(history);
    // Every record seen per request, from answers and reads, with where it was seen.
    let mut seen: BTreeMap<&str, Vec<(&RecordView, Vec<u64>)>> = BTreeMap::new();
    let mut answers = 0usize;
    for operation in history.operations.iter().filter(|operation| operation.is_ok()) {
        if let Payload::Allocate(value) = operation.value() {
            if let Some(record) = &value.record {
                seen.entry(&record.request_id).or_default().push((record, operation.indexes()));
                answers += 1;
            }
        }
    }
    let all_reads = reads(history.operations);
    for (operation, records, _) in &all_reads {
        let mut request_ids: BTreeMap<&str, usize> = BTreeMap::new();
        let mut allocation_ids: BTreeMap<&str, &str> = BTreeMap::new();
        for record in records.iter() {
            *request_ids.entry(&record.request_id).or_default() += 1;
            let owner = allocation_ids.entry(&record.allocation_id).or_insert(&record.request_id);
            if *owner != record.request_id {
                violations.push(IdempotencyViolation::DuplicateRecord {
                    id: record.allocation_id.clone(),
                    read: operation.indexes(),
                });
            }
            if record.is_active() {
                seen.entry(&record.request_id).or_default().push((record, operation.indexes()));
            }
        }
        for (request_id, count) in request_ids {
            if count > 1 {
                violations.push(IdempotencyViolation::DuplicateRecord {
                    id: request_id.to_owned(),
                    read: operation.indexes(),
                });
            }
        }
    }

    for (request_id, records) in &seen {
        let allocation_ids = unique(records.iter().map(|(record, _)| record.allocation_id.clone()));
        let response_ids = unique(records.iter().map(|(record, _)| record.response_id.clone()));
        if allocation_ids.len() > 1 || response_ids.len() > 1 {
            violations.push(IdempotencyViolation::DifferentIdentity {
                request_id: request_id.to_string(),
                allocation_ids,
                response_ids,
                ops: records.iter().flat_map(|(_, ops)| ops.clone()).collect(),
            });
        }
        // A movable request changes units when it moves, never its amounts.
        let may_move = movable.contains(request_id) || preempted.contains_key(request_id);
        let differs = |first: &RecordView, second: &RecordView| match may_move {
            true => held_amounts(first) != held_amounts(second),
            false => sorted_grants(first) != sorted_grants(second),
        };
        let mut active = records.iter().filter(|(record, _)| record.is_active());
        if let Some((first, first_ops)) = active.next() {
            if let Some((second, second_ops)) = active.find(|(record, _)| differs(record, first)) {
                violations.push(IdempotencyViolation::DifferentUnits {
                    request_id: request_id.to_string(),
                    first: sorted_grants(first),
                    second: sorted_grants(second),
                    ops: first_ops.iter().chain(second_ops).copied().collect(),
                });
            }
        }
    }

    // Acknowledged releases, then any resend invoked after one came back live.
    let mut released: BTreeMap<&str, (u64, Vec<u64>)> = BTreeMap::new();
    for operation in history.operations.iter().filter(|operation| operation.is_ok()) {
        let Payload::Release(value) = operation.value() else { continue };
        if matches!(value.outcome.as_deref(), Some("released" | "cancelled")) {
            let complete = operation.complete_ns().expect("ok operations complete");
            released.entry(&value.request_id).or_insert((complete, operation.indexes()));
        }
    }
    for operation in history.operations.iter().filter(|operation| operation.is_ok()) {
        let Payload::Allocate(value) = operation.value() else { continue };
        let Some(record) = &value.record else { continue };
        if let Some((released_ns, release)) = released.get(record.request_id.as_str()) {
            if operation.invoke_ns() > *released_ns && record.is_live() {
                violations.push(IdempotencyViolation::AllocatedAgainAfterRelease {
                    request_id: record.request_id.clone(),
                    state: record.state.clone(),
                    release: release.clone(),
                    resend: operation.indexes(),
                });
            }
        }
    }
    let resends = history
        .operations
        .iter()
        .filter(|operation| matches!(&operation.invoke.payload, Payload::Allocate(value) if value.resend))
        .count();
    let notes = vec![format!(
        "{} requests, {answers} answers ({resends} deliberate resends), {} reads examined",
        seen.len(),
        all_reads.len()
    )];
    CheckerResult::from_violations("idempotent-retries", &violations, notes, false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checker::test_support::{allocate, allocation_verdict, anomaly_kinds, core, free, read_records, HistoryBuilder};
    use crate::checker::Validity;

    #[test]
    fn resends_answered_with_the_same_record_are_fine() {
        let mut history = HistoryBuilder::default();
        history
            .ok(0, 0, 10, allocate("a", false, Some(core("a", "monitoring", "cpu-0"))))
            .ok(0, 20, 30, allocate("a", true, Some(core("a", "monitoring", "cpu-0"))))
            .ok(0, 40, 50, free("a", Some("released")))
            .ok(0, 60, 70, allocate("a", true, Some(core("a", "idle", "cpu-0"))))
            .ok(1, 80, 90, read_records(vec![], false));
        assert_eq!(Validity::VALID, allocation_verdict(&mut history, check).valid);
    }

    #[test]
    fn a_duplicate_from_a_retry_is_caught() {
        // --- the resend after the release was granted again, on another core
        let mut history = HistoryBuilder::default();
        let mut again = core("a", "monitoring", "cpu-3");
        again.allocation_id = "alloc-a-2".into();
        history
            .ok(0, 0, 10, allocate("a", false, Some(core("a", "monitoring", "cpu-0"))))
            .ok(0, 40, 50, free("a", Some("released")))
            .ok(0, 60, 70, allocate("a", true, Some(again.clone())))
            .ok(1, 80, 90, read_records(vec![again, core("a", "monitoring", "cpu-0")], false));
        let result = allocation_verdict(&mut history, check);
        assert_eq!(Validity::INVALID, result.valid);
        let kinds = anomaly_kinds(&result);
        assert_eq!(
            vec![
                "duplicate-record",
                "different-identity",
                "different-units",
                "allocated-again-after-release"
            ],
            kinds,
            "{result:#?}"
        );
    }
}
