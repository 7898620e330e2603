//! No grant takes a namespace past the quota in force when the log applied
//! it, judged on the table's events in log order (`--preemption` runs).
//!
//! [`super::quota`] sees only the instants reads caught, and with the quota
//! changing under it can only hold them to the largest quota there may have
//! been. The events ([`crate::events`]) give the order the log applied
//! things in, so this checker replays them per namespace:
//!
//! * `quota_set` replaces the namespace's quota; `quota_deleted` lifts it;
//! * `allocation_granted` adds what the request was granted (per kind, its
//!   grants' amounts: what it asked, for the workload's units of capacity 1
//!   and its divisible memory), `allocation_moved` replaces it (a move keeps
//!   the amounts), `allocation_released`, `allocation_expired`,
//!   `allocation_preempted` and `request_cancelled` take it away;
//!
//! and at every grant asserts that the namespace's total of each bounded
//! kind the grant takes is within its quota. A quota lowered below what is
//! held is no violation by itself (nothing is evicted; lost-allocation
//! checks that): only a grant of that kind made while over it is; grants
//! of other kinds go on. A grant right after
//! `allocation_preempted` events naming its request as the preemptor is a
//! preemptor's, reported as such: a preemptor never passes its own quota.
//!
//! Also, since quotas evict nothing and these runs have no leases: every
//! `allocation_released` names a request whose release the history
//! invoked (one no client asked to release was taken away).
//!
//! Without the event log, or with one that is not whole, the verdict is unknown.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::{AllocationHistory, CheckerResult, Violation};
use crate::events::WatchedEvent;
use crate::history::{OpType, Payload};

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum QuotaLogViolation {
    /// A grant left the namespace holding more than the quota in force.
    GrantOverQuota {
        namespace: String,
        resource_kind: String,
        quota: u64,
        held: u64,
        request_id: String,
        revision: u64,
    },
    /// The same, for a preemptor's grant.
    PreemptorOverQuota {
        namespace: String,
        resource_kind: String,
        quota: u64,
        held: u64,
        request_id: String,
        revision: u64,
    },
    /// An allocation was released though no client asked for it.
    ReleasedUnasked { request_id: String, revision: u64 },
}

impl Violation for QuotaLogViolation {
    fn describe(&self) -> String {
        match self {
            QuotaLogViolation::GrantOverQuota {
                namespace,
                resource_kind,
                quota,
                held,
                request_id,
                revision,
            } => format!(
                "the grant to {request_id} (revision {revision}) left {namespace} holding {held} {resource_kind}, over its quota of {quota}"
            ),
            QuotaLogViolation::PreemptorOverQuota {
                namespace,
                resource_kind,
                quota,
                held,
                request_id,
                revision,
            } => format!(
                "preemptor {request_id}'s grant (revision {revision}) left {namespace} holding {held} {resource_kind}, over its quota of {quota}"
            ),
            QuotaLogViolation::ReleasedUnasked { request_id, revision } => {
                format!("{request_id} was released (revision {revision}) though no client asked to release it")
            }
        }
    }

    fn ops(&self) -> Vec<u64> {
        // Events are not history operations: the revision names them.
        Vec::new()
    }
}

/// One namespace as the replay has it.
#[derive(Default)]
struct NamespaceState {
    /// Kind → limit; kinds not named are unbounded.
    quota: BTreeMap<String, u64>,
    /// Request → kind → amount held.
    held: BTreeMap<String, BTreeMap<String, u64>>,
}

impl NamespaceState {
    fn total(&self, kind: &str) -> u64 {
        self.held.values().filter_map(|amounts| amounts.get(kind)).sum()
    }
}

fn amounts(event: &WatchedEvent) -> BTreeMap<String, u64> {
    let mut amounts: BTreeMap<String, u64> = BTreeMap::new();
    for grant in &event.grants {
        *amounts.entry(grant.kind.clone()).or_default() += grant.amount;
    }
    amounts
}

/// What the replay went through, for the notes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReplayCounts {
    pub grants: usize,
    /// Quotas set below what their namespace held at that point of the log.
    pub set_below_use: usize,
}

/// The violations of `events` (in log order), with what was replayed.
pub fn replay(events: &[WatchedEvent], release_invoked: &BTreeSet<&str>) -> (Vec<QuotaLogViolation>, ReplayCounts) {
    let mut namespaces: BTreeMap<String, NamespaceState> = BTreeMap::new();
    let mut preemptors: BTreeSet<String> = BTreeSet::new();
    let mut violations = Vec::new();
    let mut counts = ReplayCounts::default();
    for event in events {
        let (Some(namespace), request_id) = (event.namespace.clone(), event.request_id.clone().unwrap_or_default()) else {
            continue;
        };
        let state = namespaces.entry(namespace.clone()).or_default();
        match event.kind.as_str() {
            "quota_set" => {
                state.quota = event.limits.clone().unwrap_or_default();
                if state.quota.iter().any(|(kind, limit)| state.total(kind) > *limit) {
                    counts.set_below_use += 1;
                }
            }
            "quota_deleted" => state.quota.clear(),
            "allocation_granted" => {
                counts.grants += 1;
                let granted = amounts(event);
                let preemptor = preemptors.remove(&request_id);
                state.held.insert(request_id.clone(), granted.clone());
                // Only the kinds this grant takes: over a lowered quota,
                // grants of other kinds go on.
                for (kind, quota) in state
                    .quota
                    .iter()
                    .filter(|(kind, _)| granted.get(*kind).is_some_and(|amount| *amount > 0))
                {
                    let held = state.total(kind);
                    if held <= *quota {
                        continue;
                    }
                    let (resource_kind, quota, request_id, revision) = (kind.clone(), *quota, request_id.clone(), event.revision);
                    violations.push(match preemptor {
                        true => QuotaLogViolation::PreemptorOverQuota {
                            namespace: namespace.clone(),
                            resource_kind,
                            quota,
                            held,
                            request_id,
                            revision,
                        },
                        false => QuotaLogViolation::GrantOverQuota {
                            namespace: namespace.clone(),
                            resource_kind,
                            quota,
                            held,
                            request_id,
                            revision,
                        },
                    });
                }
            }
            "allocation_moved" => {
                state.held.insert(request_id, amounts(event));
            }
            "allocation_preempted" => {
                state.held.remove(&request_id);
                if let Some(preemptor) = &event.preemptor_request_id {
                    preemptors.insert(preemptor.clone());
                }
            }
            "allocation_released" => {
                if !release_invoked.contains(request_id.as_str()) {
                    violations.push(QuotaLogViolation::ReleasedUnasked {
                        request_id: request_id.clone(),
                        revision: event.revision,
                    });
                }
                state.held.remove(&request_id);
            }
            "allocation_expired" | "request_cancelled" => {
                state.held.remove(&request_id);
            }
            _ => {}
        }
    }
    (violations, counts)
}

pub fn check(history: &AllocationHistory) -> CheckerResult {
    const NAME: &str = "quota-in-log-order";
    let Some(log) = history.events.filter(|log| log.complete) else {
        let why = match history.events {
            None => "no event log: the run did not watch the table's events".to_owned(),
            Some(log) => format!("the event log is not whole: {}", log.notes.join("; ")),
        };
        return CheckerResult::from_violations::<QuotaLogViolation>(NAME, &[], vec![why], true);
    };
    let release_invoked: BTreeSet<&str> = history
        .operations
        .iter()
        .filter(|operation| operation.kind() != OpType::Fail)
        .filter_map(|operation| match &operation.invoke.payload {
            Payload::Release(value) => Some(value.request_id.as_str()),
            _ => None,
        })
        .collect();
    let (violations, counts) = replay(&log.events, &release_invoked);
    let quota_sets = log.events.iter().filter(|event| event.kind == "quota_set").count();
    let notes = vec![format!(
        "{} grants replayed in log order against {quota_sets} quota settings, {} of them below what was held ({} events up to revision {})",
        counts.grants,
        counts.set_below_use,
        log.events.len(),
        log.final_revision
    )];
    CheckerResult::from_violations(NAME, &violations, notes, false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checker::test_support::*;
    use crate::checker::Validity;

    #[test]
    fn lowering_below_use_only_holds_new_grants_back() {
        let log = whole_log(vec![
            quota_set(1, 4),
            granted(2, "a", 3),
            quota_set(3, 2),              // below the 3 held: nothing is taken
            granted(4, "memory-only", 0), // no cores: not held back
            released(5, "a"),
            granted(6, "b", 2), // at the lowered quota
        ]);
        let mut history = HistoryBuilder::default();
        history.ok(0, 0, 10, free("a", Some("released")));
        let result = verdict_with_events(&mut history, &log, check);
        assert_eq!(Validity::VALID, result.valid, "{result:#?}");
        assert!(result.notes[0].contains("3 grants replayed"), "{:?}", result.notes);
        assert!(
            result.notes[0].contains("2 quota settings, 1 of them below what was held"),
            "{:?}",
            result.notes
        );
    }

    #[test]
    fn a_grant_past_a_lowered_quota_is_caught_in_log_order() {
        let log = whole_log(vec![
            quota_set(1, 8),
            granted(2, "a", 3),
            quota_set(3, 4), // lowered: a holds 3 of 4
            granted(4, "b", 2),
        ]);
        let result = verdict_with_events(&mut HistoryBuilder::default(), &log, check);
        assert_eq!(vec!["grant-over-quota"], anomaly_kinds(&result));
        assert!(
            result.anomalies[0].description.contains("holding 5 cpu_cores, over its quota of 4"),
            "{result:#?}"
        );
    }

    #[test]
    fn a_preemptor_past_its_quota_and_an_unasked_release_are_caught() {
        let log = whole_log(vec![
            quota_set(1, 4),
            granted(2, "low", 2),
            granted(3, "other", 2),
            preempted(4, "low", 1, "high", 10, true),
            granted(5, "high", 3), // 2 + 3 > 4
            released(6, "other"),  // nobody released it
        ]);
        let result = verdict_with_events(&mut HistoryBuilder::default(), &log, check);
        assert_eq!(vec!["preemptor-over-quota", "released-unasked"], anomaly_kinds(&result));
    }

    #[test]
    fn without_a_whole_log_the_verdict_is_unknown() {
        let mut log = whole_log(vec![granted(2, "a", 30)]);
        log.complete = false;
        assert_eq!(
            Validity::Unknown,
            verdict_with_events(&mut HistoryBuilder::default(), &log, check).valid
        );
        assert_eq!(Validity::Unknown, allocation_verdict(&mut HistoryBuilder::default(), check).valid);
    }
}
