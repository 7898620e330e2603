//! No read of the allocation workload is older than what was acknowledged
//! before it began.
//!
//! A read lists the active allocations (the `monitoring` state) and is
//! meant to be linearizable: one moment of the table, somewhere between its
//! invocation and its completion. So it cannot miss what certainly held
//! units through that whole interval, nor list what had certainly finished
//! before it. The other allocation checkers never compare a read with the
//! writes acknowledged before it (issue 28); this one does, by a real-time
//! rule that flags only what is certain:
//!
//! * **A missed allocation.** Request R was *certainly held* from time `t`
//!   if an `ok` operation completed at `t` showed it in state `monitoring`:
//!   an allocate (or resend) whose answer says so, or an earlier read that
//!   listed it. A read invoked after `t` and completed before any release of
//!   R was *invoked* must list R.
//! * **A finished request shown held.** R was *certainly finished* from
//!   time `t` if an `ok` operation completed at `t` showed it finished: a
//!   release answered `released`, `cancelled` or a finished state, or an
//!   allocate answered `idle`, `deallocation` or `error`. A read invoked
//!   after `t` must not list R as active: `request_id` is the idempotency
//!   key, and a finished record never becomes active again.
//!
//! Why each case is left out, so that no correct run is flagged:
//!
//! * `fail` and `info` reads are not judged: they returned nothing. The
//!   final read is not judged either: it comes after everything, and
//!   [`super::lost_allocation`] compares it with the whole history.
//! * A release of R, whatever its outcome (even `fail`, although a `fail`
//!   is trusted elsewhere), ends the certain hold at its *invocation*: an
//!   `info` release may take effect at any time after it, and ignoring the
//!   few failed ones costs almost nothing.
//! * An acknowledgement of R as `queued` says nothing about when it was
//!   granted (any release of another request may grant it), so it is no
//!   evidence; a later read that lists it is.
//! * Only `monitoring` counts as held, because it is what the workload's
//!   reads ask for: an allocation in state `allocation` is not listed until
//!   its provider confirms it (the workload's providers never need to).
//! * A preemption (`--preemption` runs) ends an allocation without a
//!   release of it: a certain hold ends at the invocation of its
//!   preemptor's first allocate ([`super::holds::preemptions`]), as at a
//!   release's. A victim released for good is finished, and a requeued one
//!   is not, so the second rule needs nothing new.
//! * Leases end allocations without a release: the workload's requests
//!   carry no lease (`workload::allocation::random_request`), so nothing
//!   expires. Deadlines reject only queued requests.
//! * A failed or deregistered provider's allocations are moved elsewhere
//!   (still listed: this checker looks at request ids, not units) or put
//!   back into the queue (no longer listed). The workload never deregisters,
//!   and a provider is declared failed only after
//!   [`defaults::PROVIDER_FAILURE_WINDOW_MS`] without a heartbeat, counted
//!   from its registration at the earliest, which comes after the history's
//!   time zero. Reads completed later than that are not judged for misses
//!   (only a run longer than ten minutes has any).
//! * A live move (of a `movable` request) keeps its request id, which is all
//!   this checker looks at, and the workload's providers confirm nothing, so
//!   a move begins and ends in one log entry: no read finds a record in
//!   `optimization` (which a `monitoring` read would not list).
//! * A finished request is forgotten after the table's dedupe window, or
//!   sooner when more than `finished_requests_max` requests are finished;
//!   a resend of a forgotten request allocates it afresh. So a read is
//!   judged for showing a finished request only if it completed within the
//!   dedupe window of the request's first invocation (it cannot have
//!   finished, let alone been forgotten, earlier), and only while the
//!   history holds no more requests than the table keeps.
//! * A read is one page of at most [`LIST_LIMIT_MAX`] records. The
//!   workload's units cannot hold a tenth of that many allocations at once,
//!   but a read that came back full could have been cut short, so it is not
//!   judged for misses.
//! * Time is the harness's monotonic clock: an invocation is stamped before
//!   the call is sent and a completion after its answer arrived, so real
//!   time order between two operations is never overstated. Every
//!   comparison is strict.

use std::collections::{BTreeMap, BTreeSet};

use qm_client::wire::LIST_LIMIT_MAX;
use qm_state_machine::TableConfig;
use serde::Serialize;

use super::holds::{preemptions, reads};
use super::operations::Operation;
use super::{AllocationHistory, CheckerResult, Violation};
use crate::config::defaults;
use crate::history::{Payload, Process, RecordView};

/// The checker's name in the report.
pub const CHECKER_NAME: &str = "no-stale-read";
/// The state a request is certainly held in: what the workload's reads list.
pub const HELD_STATE: &str = "monitoring";
/// States a request never leaves (short of being forgotten).
pub const FINISHED_STATES: [&str; 3] = ["deallocation", "idle", "error"];
/// Release outcomes that say the request is finished (see
/// [`crate::workload::register::release_outcome`]).
pub const FINISHED_OUTCOMES: [&str; 2] = ["released", "cancelled"];
/// No provider can have been declared failed before this time in the
/// history (see the module docs).
pub const PROVIDER_FAILURE_WINDOW_NS: u64 = defaults::PROVIDER_FAILURE_WINDOW_MS * 1_000_000;

/// The read a violation is about.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ReadOp {
    pub process: Process,
    /// Nanoseconds since the run started.
    pub invoked_ns: u64,
    pub completed_ns: u64,
    /// History indexes of its invocation and completion.
    pub ops: Vec<u64>,
}

/// The acknowledged operation that fixed a request's state before a read began.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Evidence {
    /// `allocate`, `release` or `read`.
    pub f: &'static str,
    /// The state (or release outcome) it showed.
    pub state: String,
    /// When it completed, nanoseconds since the run started.
    pub acknowledged_ns: u64,
    /// History indexes of its invocation and completion.
    pub ops: Vec<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum StaleReadViolation {
    /// The read did not list a request that certainly held units throughout it.
    MissedAllocation {
        request_id: String,
        read: ReadOp,
        /// What showed it held before the read began.
        held: Evidence,
    },
    /// The read listed as active a request that had certainly finished before it began.
    ShowedFinished {
        request_id: String,
        read: ReadOp,
        /// The state the read listed it in.
        listed_state: String,
        /// What showed it finished before the read began.
        finished: Evidence,
    },
}

fn seconds(ns: u64) -> f64 {
    ns as f64 / 1e9
}

/// The gap before a read, in milliseconds: a lagging follower is stale by less than one.
fn millis(ns: u64) -> f64 {
    ns as f64 / 1e6
}

impl Violation for StaleReadViolation {
    fn describe(&self) -> String {
        match self {
            StaleReadViolation::MissedAllocation { request_id, read, held } => format!(
                "stale read: process {} read at {:.3}-{:.3} s did not list {request_id}, {} per the {} acknowledged at {:.3} s \
                 ({:.1} ms before the read began), with no release of it invoked before the read ended",
                read.process,
                seconds(read.invoked_ns),
                seconds(read.completed_ns),
                held.state,
                held.f,
                seconds(held.acknowledged_ns),
                millis(read.invoked_ns - held.acknowledged_ns),
            ),
            StaleReadViolation::ShowedFinished {
                request_id,
                read,
                listed_state,
                finished,
            } => format!(
                "stale read: process {} read at {:.3}-{:.3} s listed {request_id} as {listed_state}, but the {} acknowledged at {:.3} s \
                 ({:.1} ms before the read began) showed it {}",
                read.process,
                seconds(read.invoked_ns),
                seconds(read.completed_ns),
                finished.f,
                seconds(finished.acknowledged_ns),
                millis(read.invoked_ns - finished.acknowledged_ns),
                finished.state,
            ),
        }
    }

    fn ops(&self) -> Vec<u64> {
        match self {
            StaleReadViolation::MissedAllocation { read, held, .. } => held.ops.iter().chain(&read.ops).copied().collect(),
            StaleReadViolation::ShowedFinished { read, finished, .. } => finished.ops.iter().chain(&read.ops).copied().collect(),
        }
    }
}

/// What the history says about one request, as the rule needs it.
#[derive(Default)]
struct RequestFacts {
    /// The first invocation of an allocate of it: it cannot exist earlier.
    first_allocate_ns: Option<u64>,
    /// The first invocation of a release of it, whatever the outcome.
    first_release_ns: Option<u64>,
    /// The earliest acknowledgement that it was held.
    held: Option<Evidence>,
    /// The earliest acknowledgement that it was finished.
    finished: Option<Evidence>,
}

/// Keeps the evidence acknowledged first.
fn keep_earliest(slot: &mut Option<Evidence>, evidence: Evidence) {
    if slot.as_ref().is_none_or(|kept| evidence.acknowledged_ns < kept.acknowledged_ns) {
        *slot = Some(evidence);
    }
}

fn evidence(operation: &Operation, f: &'static str, state: &str) -> Evidence {
    Evidence {
        f,
        state: state.to_owned(),
        acknowledged_ns: operation.complete_ns().expect("evidence comes from ok operations"),
        ops: operation.indexes(),
    }
}

fn is_finished(state: &str) -> bool {
    FINISHED_STATES.contains(&state)
}

/// Every request's facts, by request id.
fn gather_facts(operations: &[Operation]) -> BTreeMap<&str, RequestFacts> {
    let mut facts: BTreeMap<&str, RequestFacts> = BTreeMap::new();
    let earliest = |slot: &mut Option<u64>, at: u64| *slot = Some(slot.map_or(at, |kept| kept.min(at)));
    for operation in operations {
        match &operation.invoke.payload {
            Payload::Allocate(value) => earliest(
                &mut facts.entry(&value.request_id).or_default().first_allocate_ns,
                operation.invoke_ns(),
            ),
            Payload::Release(value) => earliest(
                &mut facts.entry(&value.request_id).or_default().first_release_ns,
                operation.invoke_ns(),
            ),
            _ => {}
        }
        if !operation.is_ok() {
            continue;
        }
        match operation.value() {
            Payload::Allocate(value) => {
                let Some(record) = &value.record else { continue };
                let request = facts.entry(&value.request_id).or_default();
                if record.state == HELD_STATE {
                    keep_earliest(&mut request.held, evidence(operation, "allocate", &record.state));
                } else if is_finished(&record.state) {
                    keep_earliest(&mut request.finished, evidence(operation, "allocate", &record.state));
                }
            }
            Payload::Release(value) => {
                let shown = value.record.as_ref().map(|record| record.state.as_str());
                let Some(outcome) = value.outcome.as_deref() else { continue };
                if FINISHED_OUTCOMES.contains(&outcome) || is_finished(outcome) || shown.is_some_and(is_finished) {
                    let request = facts.entry(&value.request_id).or_default();
                    keep_earliest(&mut request.finished, evidence(operation, "release", outcome));
                }
            }
            Payload::Read(value) if !value.final_read => {
                for record in value.records.iter().flatten().filter(|record| record.state == HELD_STATE) {
                    let request = facts.entry(&record.request_id).or_default();
                    keep_earliest(&mut request.held, evidence(operation, "read", &record.state));
                }
            }
            _ => {}
        }
    }
    facts
}

fn read_op(operation: &Operation) -> ReadOp {
    ReadOp {
        process: operation.process,
        invoked_ns: operation.invoke_ns(),
        completed_ns: operation.complete_ns().expect("judged reads are ok"),
        ops: operation.indexes(),
    }
}

/// The violations in `history`, in read order (per read: misses by request
/// id, then finished requests in the order listed), with notes.
pub fn find_violations(history: &AllocationHistory) -> (Vec<StaleReadViolation>, Vec<String>) {
    let facts = gather_facts(history.operations);
    let preempted = preemptions(history);
    let table = TableConfig::default();
    let dedupe_window_ns = table.dedupe_window_ms.saturating_mul(1_000_000);
    // Past the table's count of finished requests, one may have been forgotten at any time.
    let judge_finished = facts.len() <= table.finished_requests_max;
    let mut judged: Vec<(&Operation, &[RecordView])> = reads(history.operations)
        .into_iter()
        .filter(|(_, _, final_read)| !final_read)
        .map(|(operation, records, _)| (operation, records))
        .collect();
    judged.sort_by_key(|(operation, _)| operation.invoke_ns());

    // Certain holds as (from, until) intervals, swept in read invocation order.
    let mut holds: Vec<(u64, u64, &str)> = facts
        .iter()
        .filter_map(|(request_id, request)| {
            let held = request.held.as_ref()?;
            // A preemption ends a hold as a release does (from its preemptor's invocation).
            let preempted_ns = preempted.get(request_id).map_or(u64::MAX, |preempted| preempted.from_ns);
            let until = request.first_release_ns.unwrap_or(u64::MAX).min(preempted_ns);
            (held.acknowledged_ns < until).then_some((held.acknowledged_ns, until, *request_id))
        })
        .collect();
    holds.sort_unstable();
    let mut next_hold = 0;
    // Holds begun before the current read's invocation, by (until, request id).
    let mut open: BTreeSet<(u64, &str)> = BTreeSet::new();

    let mut violations = Vec::new();
    let mut past_failure_window = 0usize;
    let mut full_pages = 0usize;
    for (operation, records) in &judged {
        let read = read_op(operation);
        while next_hold < holds.len() && holds[next_hold].0 < read.invoked_ns {
            open.insert((holds[next_hold].1, holds[next_hold].2));
            next_hold += 1;
        }
        // A hold that ended by this invocation ends before every later read's completion too.
        while open.first().is_some_and(|(until, _)| *until <= read.invoked_ns) {
            open.pop_first();
        }
        let listed: BTreeSet<&str> = records
            .iter()
            .filter(|record| record.is_active())
            .map(|record| record.request_id.as_str())
            .collect();

        if records.len() >= LIST_LIMIT_MAX {
            full_pages += 1;
        } else if read.completed_ns < PROVIDER_FAILURE_WINDOW_NS {
            let mut missed: Vec<&str> = open
                .range((read.completed_ns.saturating_add(1), "")..)
                .map(|(_, request_id)| *request_id)
                .filter(|request_id| !listed.contains(request_id))
                .collect();
            missed.sort_unstable();
            for request_id in missed {
                violations.push(StaleReadViolation::MissedAllocation {
                    request_id: request_id.to_owned(),
                    read: read.clone(),
                    held: facts[request_id].held.clone().expect("an open hold has evidence"),
                });
            }
        } else {
            past_failure_window += 1;
        }

        for record in records.iter().filter(|record| record.is_active()) {
            let Some(request) = facts.get(record.request_id.as_str()) else {
                continue;
            };
            let Some(finished) = request
                .finished
                .as_ref()
                .filter(|finished| finished.acknowledged_ns < read.invoked_ns)
            else {
                continue;
            };
            let forgettable_from = request.first_allocate_ns.unwrap_or(0).saturating_add(dedupe_window_ns);
            if judge_finished && read.completed_ns < forgettable_from {
                violations.push(StaleReadViolation::ShowedFinished {
                    request_id: record.request_id.clone(),
                    read: read.clone(),
                    listed_state: record.state.clone(),
                    finished: finished.clone(),
                });
            }
        }
    }

    let mut notes = vec![format!(
        "{} reads judged against {} requests acknowledged held and {} acknowledged finished",
        judged.len(),
        facts.values().filter(|request| request.held.is_some()).count(),
        facts.values().filter(|request| request.finished.is_some()).count(),
    )];
    if past_failure_window > 0 {
        notes.push(format!(
            "{past_failure_window} reads completed past the provider failure window ({} ms) were not judged for missed allocations",
            defaults::PROVIDER_FAILURE_WINDOW_MS
        ));
    }
    if full_pages > 0 {
        notes.push(format!(
            "{full_pages} reads came back full ({LIST_LIMIT_MAX} records, maybe cut short) and were not judged for missed allocations"
        ));
    }
    if !judge_finished {
        notes.push(format!(
            "{} requests exceed the {} finished requests the table keeps: no read was judged for showing a finished request",
            facts.len(),
            table.finished_requests_max
        ));
    }
    (violations, notes)
}

pub fn check(history: &AllocationHistory) -> CheckerResult {
    let (violations, notes) = find_violations(history);
    CheckerResult::from_violations(CHECKER_NAME, &violations, notes, false)
}

#[cfg(test)]
#[path = "stale_read_test.rs"]
mod tests;
