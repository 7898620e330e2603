//! Every preemption follows the rules (`--preemption` runs), judged on the
//! table's events in log order ([`crate::events`]) and the history's requests:
//!
//! * the preemptor's priority is strictly higher than the victim's;
//! * the victim's namespace does not forbid being preempted (its last
//!   `preemption_set` before, `preemptible: false`);
//! * the preemptor's priority lets it preempt under the setting in force
//!   (its namespace's own, else the cluster's);
//! * the priorities the event names are those the clients sent, and the
//!   victim was requeued or released as its request asked (`on_preemption`);
//! * what a preemption frees goes to its preemptor: the next event kept
//!   after a preemptor's `allocation_preempted` events is its own
//!   `allocation_granted`.
//!
//! That the preemptor never passes its own quota is
//! [`super::quota_log`]'s (it knows the quota in force).
//!
//! Without a whole event log the verdict is unknown.

use std::collections::BTreeMap;

use qm_state_machine::PreemptionSetting;
use serde::Serialize;

use super::{AllocationHistory, CheckerResult, Violation};
use crate::events::WatchedEvent;
use crate::history::Payload;

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum PreemptionViolation {
    /// The victim's priority is not strictly below the preemptor's.
    NotStrictlyHigher {
        victim: String,
        priority: i64,
        preemptor: String,
        preemptor_priority: i64,
        revision: u64,
    },
    /// The victim's namespace forbids being preempted.
    ProtectedVictim {
        victim: String,
        namespace: String,
        preemptor: String,
        revision: u64,
    },
    /// The setting in force does not let the preemptor's priority preempt.
    PreemptorNotAllowed {
        preemptor: String,
        preemptor_priority: i64,
        setting: Option<PreemptionSetting>,
        revision: u64,
    },
    /// The event says something of a request that its client did not send.
    EventDisagreesWithRequest {
        request_id: String,
        field: String,
        event: String,
        sent: String,
        revision: u64,
    },
    /// After its victims were taken, the preemptor was not the next granted.
    PreemptorNotGrantedNext {
        preemptor: String,
        /// The revision of its last victim's event.
        revision: u64,
        /// The event that came instead (type and revision), if any.
        instead: Option<String>,
    },
}

impl Violation for PreemptionViolation {
    fn describe(&self) -> String {
        match self {
            PreemptionViolation::NotStrictlyHigher {
                victim,
                priority,
                preemptor,
                preemptor_priority,
                revision,
            } => format!(
                "revision {revision}: {preemptor} (priority {preemptor_priority}) preempted {victim} of priority {priority}, not strictly lower"
            ),
            PreemptionViolation::ProtectedVictim {
                victim,
                namespace,
                preemptor,
                revision,
            } => format!("revision {revision}: {preemptor} preempted {victim} of {namespace}, which forbids being preempted"),
            PreemptionViolation::PreemptorNotAllowed {
                preemptor,
                preemptor_priority,
                setting,
                revision,
            } => format!(
                "revision {revision}: {preemptor} preempted at priority {preemptor_priority}, which the setting in force ({setting:?}) does not allow"
            ),
            PreemptionViolation::EventDisagreesWithRequest {
                request_id,
                field,
                event,
                sent,
                revision,
            } => format!("revision {revision}: the event gives {request_id} {field} {event}, but its client sent {sent}"),
            PreemptionViolation::PreemptorNotGrantedNext {
                preemptor,
                revision,
                instead,
            } => format!(
                "after preempting for {preemptor} (revision {revision}) the next event was {}, not its grant",
                instead.clone().unwrap_or_else(|| "none".to_owned())
            ),
        }
    }

    fn ops(&self) -> Vec<u64> {
        // Events are not history operations: the revision names them.
        Vec::new()
    }
}

/// What the clients sent of a request: priority, and `on_preemption: release`.
pub type SentRequests<'a> = BTreeMap<&'a str, (i64, bool)>;

/// The violations of `events` (in log order) against the requests `sent`,
/// with the number of preemptions seen.
pub fn replay(events: &[WatchedEvent], sent: &SentRequests) -> (Vec<PreemptionViolation>, usize) {
    let mut cluster_setting = PreemptionSetting::Off;
    let mut namespace_setting: BTreeMap<String, Option<PreemptionSetting>> = BTreeMap::new();
    let mut protected: BTreeMap<String, bool> = BTreeMap::new();
    // The preemptor whose grant must come next, and its last victim's revision.
    let mut awaiting: Option<(String, u64)> = None;
    let mut violations = Vec::new();
    let mut preemptions = 0;
    for event in events {
        let request_id = event.request_id.clone().unwrap_or_default();
        if let Some((preemptor, revision)) = awaiting.take() {
            let same_preemption = event.kind == "allocation_preempted" && event.preemptor_request_id.as_ref() == Some(&preemptor);
            let its_grant = event.kind == "allocation_granted" && request_id == preemptor;
            if !same_preemption && !its_grant {
                violations.push(PreemptionViolation::PreemptorNotGrantedNext {
                    preemptor,
                    revision,
                    instead: Some(format!("{} at revision {}", event.kind, event.revision)),
                });
            } else if same_preemption {
                awaiting = Some((preemptor, revision));
            }
        }
        match event.kind.as_str() {
            "preemption_set" => match &event.namespace {
                None => cluster_setting = event.setting.unwrap_or_default(),
                Some(namespace) => {
                    namespace_setting.insert(namespace.clone(), event.setting);
                    protected.insert(namespace.clone(), event.preemptible == Some(false));
                }
            },
            "allocation_preempted" => {
                preemptions += 1;
                let preemptor = event.preemptor_request_id.clone().unwrap_or_default();
                let (priority, preemptor_priority) = (event.priority.unwrap_or_default(), event.preemptor_priority.unwrap_or_default());
                let revision = event.revision;
                if preemptor_priority <= priority {
                    violations.push(PreemptionViolation::NotStrictlyHigher {
                        victim: request_id.clone(),
                        priority,
                        preemptor: preemptor.clone(),
                        preemptor_priority,
                        revision,
                    });
                }
                let namespace = event.namespace.clone().unwrap_or_default();
                if protected.get(&namespace).copied().unwrap_or(false) {
                    violations.push(PreemptionViolation::ProtectedVictim {
                        victim: request_id.clone(),
                        namespace,
                        preemptor: preemptor.clone(),
                        revision,
                    });
                }
                let preemptor_namespace = event.preemptor_namespace.clone().unwrap_or_default();
                let setting = namespace_setting
                    .get(&preemptor_namespace)
                    .copied()
                    .flatten()
                    .unwrap_or(cluster_setting);
                if !setting.allows(preemptor_priority) {
                    violations.push(PreemptionViolation::PreemptorNotAllowed {
                        preemptor: preemptor.clone(),
                        preemptor_priority,
                        setting: Some(setting),
                        revision,
                    });
                }
                let mut disagree = |request_id: &str, field: &str, event: String, sent: String| {
                    if event != sent {
                        violations.push(PreemptionViolation::EventDisagreesWithRequest {
                            request_id: request_id.to_owned(),
                            field: field.to_owned(),
                            event,
                            sent,
                            revision,
                        });
                    }
                };
                if let Some((sent_priority, release)) = sent.get(request_id.as_str()) {
                    disagree(&request_id, "priority", priority.to_string(), sent_priority.to_string());
                    let requeued = event.requeued.unwrap_or(true);
                    disagree(&request_id, "requeued", requeued.to_string(), (!release).to_string());
                }
                if let Some((sent_priority, _)) = sent.get(preemptor.as_str()) {
                    disagree(&preemptor, "priority", preemptor_priority.to_string(), sent_priority.to_string());
                }
                awaiting = Some((preemptor, revision));
            }
            _ => {}
        }
    }
    if let Some((preemptor, revision)) = awaiting {
        violations.push(PreemptionViolation::PreemptorNotGrantedNext {
            preemptor,
            revision,
            instead: None,
        });
    }
    (violations, preemptions)
}

pub fn check(history: &AllocationHistory) -> CheckerResult {
    const NAME: &str = "preemption";
    let Some(log) = history.events.filter(|log| log.complete) else {
        let why = match history.events {
            None => "no event log: the run did not watch the table's events".to_owned(),
            Some(log) => format!("the event log is not whole: {}", log.notes.join("; ")),
        };
        return CheckerResult::from_violations::<PreemptionViolation>(NAME, &[], vec![why], true);
    };
    let sent: SentRequests = history
        .operations
        .iter()
        .filter_map(|operation| match &operation.invoke.payload {
            Payload::Allocate(value) => Some((value.request_id.as_str(), (value.priority, value.release_on_preemption))),
            _ => None,
        })
        .collect();
    let (violations, preemptions) = replay(&log.events, &sent);
    let requeued = log
        .events
        .iter()
        .filter(|event| event.kind == "allocation_preempted" && event.requeued == Some(true))
        .count();
    let notes = vec![format!("{preemptions} preemptions checked ({requeued} victims requeued)")];
    CheckerResult::from_violations(NAME, &violations, notes, false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checker::test_support::*;
    use crate::checker::Validity;

    fn allowed_from_10(revision: u64) -> WatchedEvent {
        WatchedEvent {
            setting: Some(PreemptionSetting::FromPriority(10)),
            ..preemption_set(revision, "default", true)
        }
    }

    fn history_of(requests: &[(&str, i64, bool)]) -> HistoryBuilder {
        let mut history = HistoryBuilder::default();
        for (index, (request, priority, release)) in requests.iter().enumerate() {
            history.info(index as u64, 0, 10, allocate_at(request, *priority, *release, None));
        }
        history
    }

    #[test]
    fn a_preemption_by_the_rules_is_valid() {
        let log = whole_log(vec![
            allowed_from_10(1),
            granted(2, "low", 2),
            granted(3, "mid", 2),
            preempted(4, "low", 0, "high", 10, true),
            preempted(5, "mid", 2, "high", 10, false),
            granted(6, "high", 4),
        ]);
        let mut history = history_of(&[("low", 0, false), ("mid", 2, true), ("high", 10, false)]);
        let result = verdict_with_events(&mut history, &log, check);
        assert_eq!(Validity::VALID, result.valid, "{result:#?}");
    }

    #[test]
    fn equal_priority_a_protected_victim_and_a_disallowed_preemptor_are_caught() {
        let log = whole_log(vec![
            allowed_from_10(1),
            preemption_set(2, "billing", false),
            preempted(3, "peer", 10, "high", 10, true),
            granted(4, "high", 1),
            WatchedEvent {
                namespace: Some("billing".into()),
                ..preempted(5, "kept", 0, "high2", 10, true)
            },
            granted(6, "high2", 1),
            preempted(7, "low", 0, "mid", 5, true),
            granted(8, "mid", 1),
        ]);
        let mut history = history_of(&[("peer", 10, false), ("high", 10, false), ("low", 0, false), ("mid", 5, false)]);
        let result = verdict_with_events(&mut history, &log, check);
        assert_eq!(
            vec!["not-strictly-higher", "protected-victim", "preemptor-not-allowed"],
            anomaly_kinds(&result)
        );
    }

    #[test]
    fn a_victim_handled_against_its_request_and_a_grant_to_someone_else_are_caught() {
        let log = whole_log(vec![
            allowed_from_10(1),
            preempted(2, "low", 0, "high", 10, true), // asked to be released
            granted(3, "thief", 2),                   // not the preemptor
            granted(4, "high", 2),
        ]);
        let mut history = history_of(&[("low", 0, true), ("high", 10, false), ("thief", 1, false)]);
        let result = verdict_with_events(&mut history, &log, check);
        assert_eq!(
            vec!["event-disagrees-with-request", "preemptor-not-granted-next"],
            anomaly_kinds(&result)
        );
    }

    #[test]
    fn without_a_whole_log_the_verdict_is_unknown() {
        assert_eq!(Validity::Unknown, allocation_verdict(&mut HistoryBuilder::default(), check).valid);
    }
}
