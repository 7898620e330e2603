//! No acknowledged allocation is lost, and no acknowledged release is undone.
//!
//! Judged against the final read (every record the table remembers, read
//! after the final heal when no client runs any more):
//!
//! * a request acknowledged as allocated, with no release attempted, must be
//!   active at the end, on the same units (a `movable` one, which a live
//!   move may have put elsewhere: with the same amount of each kind);
//! * a request acknowledged as queued, with no release attempted, must still
//!   be live (queued, or granted since);
//! * a request whose release was acknowledged (it found the record and
//!   finished it) must not be live at the end;
//! * nothing unacknowledged is held: a request live at the end was sent at
//!   least once with an outcome other than `fail` (`ok`, or `info`: it may
//!   have taken effect), since a `fail` means it certainly did not.
//!
//! * a request that was preempted (`--preemption` runs; see
//!   [`super::holds::preemptions`]) and never released by its worker is
//!   judged by what its request asked instead: requeued, it must still be
//!   live at the end (queued, or granted again anywhere); released on
//!   preemption, it must be finished with a reason saying it was
//!   preempted. An acknowledged allocation that was preempted is not lost.
//!   Without a whole event log a request that merely may have been
//!   preempted may end either way.
//!
//! Without a successful final read the verdict is unknown.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::holds::{held_amounts, movable_requests, preemptions, reads};
use super::{AllocationHistory, CheckerResult, Violation};
use crate::history::{GrantView, OpType, Payload, RecordView};

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum LostAllocationViolation {
    /// Acknowledged allocated, never released, not active at the end.
    LostAllocation {
        request_id: String,
        /// The state the final read found it in; `None` when it was not there at all.
        final_state: Option<String>,
        acknowledged: Vec<u64>,
        final_read: Vec<u64>,
    },
    /// Acknowledged allocated, never released, active at the end on other units.
    PlacementChanged {
        request_id: String,
        acknowledged_grants: Vec<GrantView>,
        final_grants: Vec<GrantView>,
        acknowledged: Vec<u64>,
        final_read: Vec<u64>,
    },
    /// Acknowledged queued, never released, gone at the end.
    LostQueuedRequest {
        request_id: String,
        final_state: Option<String>,
        acknowledged: Vec<u64>,
        final_read: Vec<u64>,
    },
    /// Its release was acknowledged, yet it is live at the end.
    ReleaseUndone {
        request_id: String,
        final_state: String,
        release: Vec<u64>,
        final_read: Vec<u64>,
    },
    /// Preempted, and at the end not as its `on_preemption` says: a
    /// requeued victim gone, or a victim released on preemption still live
    /// (or finished for another reason).
    PreemptedVictimMisplaced {
        request_id: String,
        /// What the events said (`None`: it only may have been preempted).
        requeued: Option<bool>,
        final_state: Option<String>,
        final_reason: Option<String>,
        acknowledged: Vec<u64>,
        final_read: Vec<u64>,
    },
    /// Live at the end, though every send of it failed for certain (or it
    /// was never sent): the table holds something nobody was told about.
    UnacknowledgedHeld {
        request_id: String,
        final_state: String,
        /// The failed sends.
        failed: Vec<u64>,
        final_read: Vec<u64>,
    },
}

impl Violation for LostAllocationViolation {
    fn describe(&self) -> String {
        let found = |state: &Option<String>| state.clone().map_or("absent".to_owned(), |state| format!("in state {state}"));
        match self {
            LostAllocationViolation::LostAllocation {
                request_id, final_state, ..
            } => {
                format!(
                    "acknowledged allocation {request_id} was never released but is {} at the end",
                    found(final_state)
                )
            }
            LostAllocationViolation::PlacementChanged {
                request_id,
                acknowledged_grants,
                final_grants,
                ..
            } => format!("allocation {request_id} was acknowledged on {acknowledged_grants:?} but holds {final_grants:?} at the end"),
            LostAllocationViolation::LostQueuedRequest {
                request_id, final_state, ..
            } => {
                format!(
                    "acknowledged queued request {request_id} was never cancelled but is {} at the end",
                    found(final_state)
                )
            }
            LostAllocationViolation::ReleaseUndone {
                request_id, final_state, ..
            } => format!("release of {request_id} was acknowledged, yet it is {final_state} at the end"),
            LostAllocationViolation::PreemptedVictimMisplaced {
                request_id,
                requeued,
                final_state,
                final_reason,
                ..
            } => format!(
                "preempted request {request_id} ({}) is {} at the end (reason {:?})",
                match requeued {
                    Some(true) => "requeued: must stay live",
                    Some(false) => "released on preemption: must be finished as preempted",
                    None => "maybe preempted: live, or finished as preempted",
                },
                found(final_state),
                final_reason.clone().unwrap_or_default()
            ),
            LostAllocationViolation::UnacknowledgedHeld {
                request_id,
                final_state,
                failed,
                ..
            } => format!(
                "request {request_id} is {final_state} at the end, though its {} send(s) all failed for certain",
                failed.len() / 2
            ),
        }
    }

    fn ops(&self) -> Vec<u64> {
        match self {
            LostAllocationViolation::LostAllocation {
                acknowledged, final_read, ..
            }
            | LostAllocationViolation::PlacementChanged {
                acknowledged, final_read, ..
            }
            | LostAllocationViolation::LostQueuedRequest {
                acknowledged, final_read, ..
            }
            | LostAllocationViolation::PreemptedVictimMisplaced {
                acknowledged, final_read, ..
            } => acknowledged.iter().chain(final_read).copied().collect(),
            LostAllocationViolation::ReleaseUndone { release, final_read, .. } => release.iter().chain(final_read).copied().collect(),
            LostAllocationViolation::UnacknowledgedHeld { failed, final_read, .. } => failed.iter().chain(final_read).copied().collect(),
        }
    }
}

/// How the table's reason for a preempted request begins
/// (`preempted: by request <id>`).
pub const PREEMPTED_REASON_PREFIX: &str = "preempted";

fn sorted(grants: &[GrantView]) -> Vec<GrantView> {
    let mut grants = grants.to_vec();
    grants.sort();
    grants
}

/// Where `end` holds what `acknowledged` held: the same units, or for a
/// movable request (a live move changes its units) the same amounts.
fn same_place(end: &RecordView, acknowledged: &RecordView, movable: bool) -> bool {
    match movable {
        true => held_amounts(end) == held_amounts(acknowledged),
        false => sorted(&end.grants) == sorted(&acknowledged.grants),
    }
}

pub fn check(history: &AllocationHistory) -> CheckerResult {
    let Some((final_operation, final_records, _)) = reads(history.operations).into_iter().find(|(_, _, final_read)| *final_read) else {
        return CheckerResult::from_violations::<LostAllocationViolation>(
            "no-lost-allocation",
            &[],
            vec!["no successful final read: nothing to compare with".to_owned()],
            true,
        );
    };
    let final_ops = final_operation.indexes();
    let at_end: BTreeMap<&str, &RecordView> = final_records.iter().map(|record| (record.request_id.as_str(), record)).collect();
    // Requests whose release may have taken effect; and those acknowledged finished.
    let mut release_attempted: BTreeSet<&str> = BTreeSet::new();
    let mut released: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for operation in history.operations.iter().filter(|operation| operation.kind() != OpType::Fail) {
        let Payload::Release(value) = operation.value() else { continue };
        release_attempted.insert(&value.request_id);
        if operation.is_ok() && matches!(value.outcome.as_deref(), Some("released" | "cancelled")) {
            released.entry(&value.request_id).or_insert_with(|| operation.indexes());
        }
    }
    // The latest acknowledgement of each request (a resend may show it granted since).
    let mut acknowledged: BTreeMap<&str, (&RecordView, Vec<u64>)> = BTreeMap::new();
    for operation in history.operations.iter().filter(|operation| operation.is_ok()) {
        if let Payload::Allocate(value) = operation.value() {
            if let Some(record) = &value.record {
                acknowledged.insert(&record.request_id, (record, operation.indexes()));
            }
        }
    }

    let movable = movable_requests(history.operations);
    let preempted = preemptions(history);
    let mut violations = Vec::new();
    let mut preempted_judged = 0usize;
    for (request_id, (record, ops)) in &acknowledged {
        if release_attempted.contains(request_id) {
            continue;
        }
        let found = at_end.get(request_id).copied();
        let final_state = found.map(|record| record.state.clone());
        if let Some(preempted) = preempted.get(request_id) {
            preempted_judged += 1;
            let live = found.is_some_and(RecordView::is_live);
            let finished_as_preempted = found.is_some_and(|end| !end.is_live() && end.reason.starts_with(PREEMPTED_REASON_PREFIX));
            let as_asked = match (preempted.certain, preempted.requeued) {
                (true, true) => live,
                (true, false) => finished_as_preempted,
                (false, _) => live || finished_as_preempted,
            };
            if !as_asked {
                violations.push(LostAllocationViolation::PreemptedVictimMisplaced {
                    request_id: request_id.to_string(),
                    requeued: preempted.certain.then_some(preempted.requeued),
                    final_state,
                    final_reason: found.map(|end| end.reason.clone()),
                    acknowledged: ops.clone(),
                    final_read: final_ops.clone(),
                });
            }
            continue;
        }
        if record.is_active() {
            match found {
                Some(end) if end.is_active() && !same_place(end, record, movable.contains(request_id)) => {
                    violations.push(LostAllocationViolation::PlacementChanged {
                        request_id: request_id.to_string(),
                        acknowledged_grants: sorted(&record.grants),
                        final_grants: sorted(&end.grants),
                        acknowledged: ops.clone(),
                        final_read: final_ops.clone(),
                    })
                }
                Some(end) if end.is_active() => {}
                _ => violations.push(LostAllocationViolation::LostAllocation {
                    request_id: request_id.to_string(),
                    final_state,
                    acknowledged: ops.clone(),
                    final_read: final_ops.clone(),
                }),
            }
        } else if record.state == "queued" && !found.is_some_and(RecordView::is_live) {
            violations.push(LostAllocationViolation::LostQueuedRequest {
                request_id: request_id.to_string(),
                final_state,
                acknowledged: ops.clone(),
                final_read: final_ops.clone(),
            });
        }
    }
    for (request_id, release) in &released {
        if let Some(end) = at_end.get(request_id).filter(|end| end.is_live()) {
            violations.push(LostAllocationViolation::ReleaseUndone {
                request_id: request_id.to_string(),
                final_state: end.state.clone(),
                release: release.clone(),
                final_read: final_ops.clone(),
            });
        }
    }
    violations.extend(unacknowledged_held(history, &at_end, &final_ops));
    let mut notes = vec![format!(
        "{} acknowledged requests and {} acknowledged releases compared with the final read of {} records",
        acknowledged.len(),
        released.len(),
        final_records.len()
    )];
    if !preempted.is_empty() {
        notes.push(format!(
            "{preempted_judged} unreleased requests that were (or may have been) preempted judged by their on_preemption"
        ));
    }
    CheckerResult::from_violations("no-lost-allocation", &violations, notes, false)
}

/// Requests live at the end that no send may have created: each send of
/// them ended `fail` (it certainly did not take effect), or none was made.
fn unacknowledged_held(
    history: &AllocationHistory,
    at_end: &BTreeMap<&str, &RecordView>,
    final_ops: &[u64],
) -> Vec<LostAllocationViolation> {
    let mut may_exist: BTreeSet<&str> = BTreeSet::new();
    let mut failed: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for operation in history.operations {
        let Payload::Allocate(value) = &operation.invoke.payload else {
            continue;
        };
        match operation.kind() {
            OpType::Fail => failed.entry(&value.request_id).or_default().extend(operation.indexes()),
            _ => {
                may_exist.insert(&value.request_id);
            }
        }
    }
    at_end
        .iter()
        .filter(|(request_id, record)| record.is_live() && !may_exist.contains(*request_id))
        .map(|(request_id, record)| LostAllocationViolation::UnacknowledgedHeld {
            request_id: request_id.to_string(),
            final_state: record.state.clone(),
            failed: failed.get(request_id).cloned().unwrap_or_default(),
            final_read: final_ops.to_vec(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checker::test_support::{allocate, allocation_verdict, anomaly_kinds, core, free, read_records, record, HistoryBuilder};
    use crate::checker::Validity;

    #[test]
    fn kept_and_released_allocations_end_as_acknowledged() {
        let mut history = HistoryBuilder::default();
        history
            .ok(0, 0, 10, allocate("a", false, Some(core("a", "monitoring", "cpu-0"))))
            .ok(1, 0, 10, allocate("b", false, Some(core("b", "monitoring", "cpu-1"))))
            .ok(1, 20, 30, free("b", Some("released")))
            .ok(2, 0, 10, allocate("c", false, Some(record("c", "queued", "", &[]))))
            .ok(
                9,
                100,
                110,
                read_records(
                    vec![
                        core("a", "monitoring", "cpu-0"),
                        core("b", "idle", "cpu-1"),
                        core("c", "monitoring", "cpu-1"),
                    ],
                    true,
                ),
            );
        let result = allocation_verdict(&mut history, check);
        assert_eq!(Validity::VALID, result.valid, "{result:#?}");
    }

    #[test]
    fn a_lost_write_is_caught() {
        let mut history = HistoryBuilder::default();
        history
            .ok(0, 0, 10, allocate("a", false, Some(core("a", "monitoring", "cpu-0"))))
            .ok(9, 100, 110, read_records(vec![], true));
        let result = allocation_verdict(&mut history, check);
        assert_eq!(Validity::INVALID, result.valid);
        assert!(
            result.anomalies[0].description.contains("never released but is absent"),
            "{result:#?}"
        );
    }

    #[test]
    fn a_moved_allocation_and_an_undone_release_are_caught() {
        let mut history = HistoryBuilder::default();
        history
            .ok(0, 0, 10, allocate("a", false, Some(core("a", "monitoring", "cpu-0"))))
            .ok(1, 0, 10, allocate("b", false, Some(core("b", "monitoring", "cpu-1"))))
            .ok(1, 20, 30, free("b", Some("released")))
            .ok(
                9,
                100,
                110,
                read_records(vec![core("a", "monitoring", "cpu-5"), core("b", "monitoring", "cpu-1")], true),
            );
        let result = allocation_verdict(&mut history, check);
        let kinds = anomaly_kinds(&result);
        assert_eq!(vec!["placement-changed", "release-undone"], kinds);
    }

    #[test]
    fn a_request_held_though_every_send_failed_is_caught_and_an_unknown_one_is_not() {
        let mut history = HistoryBuilder::default();
        history
            .fail(0, 0, 10, allocate("failed", false, None))
            .info(1, 0, 10, allocate("unknown", false, None))
            .fail(2, 0, 10, allocate("failed-then-resent", false, None))
            .info(2, 20, 30, allocate("failed-then-resent", true, None))
            .ok(
                9,
                100,
                110,
                read_records(
                    vec![
                        core("failed", "monitoring", "cpu-0"),
                        core("unknown", "monitoring", "cpu-1"),
                        core("failed-then-resent", "queued", "cpu-2"),
                        core("never-sent", "monitoring", "cpu-3"),
                    ],
                    true,
                ),
            );
        let result = allocation_verdict(&mut history, check);
        assert_eq!(vec!["unacknowledged-held", "unacknowledged-held"], anomaly_kinds(&result));
        let named: Vec<&str> = result.anomalies.iter().map(|anomaly| anomaly.description.as_str()).collect();
        assert!(named[0].contains("request failed is monitoring"), "{named:?}");
        assert!(named[1].contains("request never-sent is monitoring"), "{named:?}");
    }

    #[test]
    fn without_a_final_read_the_verdict_is_unknown() {
        let mut history = HistoryBuilder::default();
        history.ok(0, 0, 10, allocate("a", false, Some(core("a", "monitoring", "cpu-0"))));
        assert_eq!(Validity::Unknown, allocation_verdict(&mut history, check).valid);
    }

    #[test]
    fn preempted_victims_end_as_their_requests_asked() {
        use crate::checker::test_support::{allocate_at, granted, preempted, verdict_with_events, whole_log};
        let preempted_by_high = |state: &str| RecordView {
            reason: "preempted: by request high".into(),
            ..record("released-victim", state, "", &[])
        };
        let build = |requeued_end: Option<RecordView>, released_end: RecordView| {
            let mut history = HistoryBuilder::default();
            let mut end = vec![core("high", "monitoring", "cpu-0"), released_end];
            end.extend(requeued_end);
            history
                .ok(
                    0,
                    0,
                    10,
                    allocate_at("requeued-victim", 0, false, Some(core("requeued-victim", "monitoring", "cpu-0"))),
                )
                .ok(
                    1,
                    0,
                    10,
                    allocate_at("released-victim", 1, true, Some(core("released-victim", "monitoring", "cpu-1"))),
                )
                .ok(2, 20, 30, allocate_at("high", 10, false, Some(core("high", "monitoring", "cpu-0"))))
                .ok(9, 100, 110, read_records(end, true));
            history
        };
        let log = whole_log(vec![
            granted(1, "requeued-victim", 1),
            granted(2, "released-victim", 1),
            preempted(3, "requeued-victim", 0, "high", 10, true),
            preempted(4, "released-victim", 1, "high", 10, false),
            granted(5, "high", 2),
        ]);
        // Requeued and back in the queue; released for good as preempted: not lost.
        let requeued = record("requeued-victim", "queued", "", &[]);
        let result = verdict_with_events(&mut build(Some(requeued.clone()), preempted_by_high("idle")), &log, check);
        assert_eq!(Validity::VALID, result.valid, "{result:#?}");
        // Granted again elsewhere after the requeue: not lost either.
        let elsewhere = core("requeued-victim", "monitoring", "cpu-7");
        let result = verdict_with_events(&mut build(Some(elsewhere), preempted_by_high("idle")), &log, check);
        assert_eq!(Validity::VALID, result.valid, "{result:#?}");
        // The requeued victim gone, the released one still held: both caught.
        let result = verdict_with_events(&mut build(None, preempted_by_high("monitoring")), &log, check);
        assert_eq!(
            vec!["preempted-victim-misplaced", "preempted-victim-misplaced"],
            anomaly_kinds(&result)
        );
        // Finished, but not as preempted (evicted for some other reason): caught.
        let evicted = RecordView {
            reason: "released".into(),
            ..preempted_by_high("idle")
        };
        let result = verdict_with_events(&mut build(Some(requeued), evicted), &log, check);
        assert_eq!(vec!["preempted-victim-misplaced"], anomaly_kinds(&result));
    }
}
