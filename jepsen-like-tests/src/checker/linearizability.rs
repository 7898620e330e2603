//! Linearizability of the register workload: unit by unit, then, when that
//! cannot decide, as a whole table.
//!
//! Every request pins one unit, so the history splits into one history per
//! unit (as Knossos's `independent` checker splits by key). Each is searched
//! ([`super::wgl`]) against [`UnitLock`]: a lock with a FIFO queue, which is
//! what the table does with single-unit requests of equal priority. A unit
//! that fits no order makes the whole history fit none, so that is a
//! verdict. But a read returns every unit at one instant, and its per-unit
//! parts fitting their units does not make it fit as a whole; so when every
//! unit passes and a read spans several units, the units are searched
//! together ([`super::whole_read`]), each read one call.
//!
//! * `acquire(r)` takes effect once (r enters: holder if the unit is free,
//!   else queued) and answers r's status at some moment after that within
//!   the call. A retried allocate returns the record as it is now (queued
//!   then granted: "allocated"), so the effect and the observation are two
//!   calls of the model spanning the same interval. When the client sent
//!   the call once (`attempts: 1` in the history), the answer is the
//!   effect's own, and the two are one call ([`LockInput::EnterAndObserve`]):
//!   the strict model. A deliberate resend of
//!   an acknowledged request changes nothing and answers the request's
//!   status: `allocated`, `queued`, `released` or `cancelled`.
//! * `release(r)`: the holder's release hands the unit to the first queued
//!   request; a queued request's release cancels it; releasing again answers
//!   the same; an unknown request is `not-found`.
//! * `read`: the set of holders must be exactly the model's holder.

use std::collections::BTreeMap;

use serde::Serialize;

use super::operations::Operation;
use super::wgl::{self, Call, Linearization, Model, SearchLimits};
use super::whole_read;
use super::{CheckerResult, Violation};
use crate::history::{OpType, Payload, RELEASE_NOT_FOUND};

/// What one request is, in the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RequestStatus {
    /// Not in the table (yet, or ever).
    Unknown,
    Queued,
    Holding,
    Released,
    Cancelled,
}

/// One unit: its holder, its queue, and every request's status (by the
/// unit's local request number).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct LockState {
    pub holder: Option<u32>,
    pub queue: Vec<u32>,
    pub status: Vec<RequestStatus>,
}

/// A call of the model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LockInput {
    /// The effect of an acquire: the request enters the table.
    Enter(u32),
    /// The effect of a resend: the request enters unless it is known already.
    EnterIfNew(u32),
    /// What an acquire answered about its request.
    Observe(u32),
    /// An acquire sent once: it enters, and answers its status at that moment.
    EnterAndObserve(u32),
    /// A resend sent once: enters if new, and answers its status at that moment.
    EnterIfNewAndObserve(u32),
    Release(u32),
    Read,
}

/// What a call answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LockOutput {
    /// The effect part of an acquire answers nothing by itself.
    Entered,
    /// `allocated`, `queued`, or anything else the reply said.
    Status(String),
    /// `released`, `cancelled`, `not-found`, or a state.
    Outcome(String),
    Holders(Vec<u32>),
}

/// The lock-with-queue specification of one unit.
pub struct UnitLock {
    pub requests: usize,
}

impl Model for UnitLock {
    type State = LockState;
    type Input = LockInput;
    type Output = LockOutput;

    fn init(&self) -> LockState {
        LockState {
            holder: None,
            queue: Vec::new(),
            status: vec![RequestStatus::Unknown; self.requests],
        }
    }

    fn step(&self, state: &LockState, input: &LockInput, output: Option<&LockOutput>) -> Option<LockState> {
        match input {
            LockInput::Enter(request) => {
                let request = *request as usize;
                if state.status[request] != RequestStatus::Unknown {
                    return None;
                }
                let mut next = state.clone();
                match next.holder {
                    None => {
                        next.holder = Some(request as u32);
                        next.status[request] = RequestStatus::Holding;
                    }
                    Some(_) => {
                        next.queue.push(request as u32);
                        next.status[request] = RequestStatus::Queued;
                    }
                }
                Some(next)
            }
            LockInput::EnterIfNew(request) => match state.status[*request as usize] {
                RequestStatus::Unknown => self.step(state, &LockInput::Enter(*request), output),
                _ => Some(state.clone()),
            },
            LockInput::Observe(request) => {
                let expected = match state.status[*request as usize] {
                    RequestStatus::Holding => "allocated",
                    RequestStatus::Queued => "queued",
                    RequestStatus::Released => "released",
                    RequestStatus::Cancelled => "cancelled",
                    RequestStatus::Unknown => return None,
                };
                matches!(output, Some(LockOutput::Status(status)) if status == expected).then(|| state.clone())
            }
            LockInput::EnterAndObserve(request) => {
                let entered = self.step(state, &LockInput::Enter(*request), None)?;
                self.step(&entered, &LockInput::Observe(*request), output)
            }
            LockInput::EnterIfNewAndObserve(request) => {
                let entered = self.step(state, &LockInput::EnterIfNew(*request), None)?;
                self.step(&entered, &LockInput::Observe(*request), output)
            }
            LockInput::Release(request) => {
                let request = *request as usize;
                let mut next = state.clone();
                let outcome = match state.status[request] {
                    RequestStatus::Unknown => RELEASE_NOT_FOUND,
                    RequestStatus::Released => "released",
                    RequestStatus::Cancelled => "cancelled",
                    RequestStatus::Holding => {
                        next.status[request] = RequestStatus::Released;
                        next.holder = None;
                        if !next.queue.is_empty() {
                            let first = next.queue.remove(0);
                            next.holder = Some(first);
                            next.status[first as usize] = RequestStatus::Holding;
                        }
                        "released"
                    }
                    RequestStatus::Queued => {
                        next.status[request] = RequestStatus::Cancelled;
                        next.queue.retain(|queued| *queued as usize != request);
                        "cancelled"
                    }
                };
                match output {
                    None => Some(next),
                    Some(LockOutput::Outcome(answered)) if answered == outcome => Some(next),
                    Some(_) => None,
                }
            }
            LockInput::Read => match output {
                Some(LockOutput::Holders(holders)) if *holders == state.holder.into_iter().collect::<Vec<_>>() => Some(state.clone()),
                _ => None,
            },
        }
    }
}

/// One unit's calls, with what the report needs to show them.
#[derive(Clone)]
pub struct UnitHistory {
    pub unit: String,
    pub calls: Vec<Call<LockInput, LockOutput>>,
    /// Per call: the operation's history indexes and its process.
    pub origins: Vec<CallOrigin>,
    /// Local request number → request id.
    pub request_ids: Vec<String>,
}

/// Where a call came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CallOrigin {
    pub ops: Vec<u64>,
    pub process: String,
    /// The operation as a person reads it, e.g. `acquire r3 -> allocated`.
    pub label: String,
}

impl UnitHistory {
    fn local(&mut self, request_id: &str, locals: &mut BTreeMap<String, u32>) -> u32 {
        *locals.entry(request_id.to_owned()).or_insert_with(|| {
            self.request_ids.push(request_id.to_owned());
            (self.request_ids.len() - 1) as u32
        })
    }

    fn push(&mut self, operation: &Operation, input: LockInput, output: Option<LockOutput>, label: String) {
        let complete_ns = operation.complete_ns();
        self.calls.push(Call {
            id: self.calls.len(),
            invoke_ns: operation.invoke_ns(),
            complete_ns,
            input,
            output: complete_ns.and(output),
        });
        self.origins.push(CallOrigin {
            ops: operation.indexes(),
            process: operation.process.to_string(),
            label,
        });
    }

    /// A short name for a local request number: `r<n>`.
    pub fn request_name(request: u32) -> String {
        format!("r{request}")
    }

    /// The state as a person reads it.
    pub fn describe(state: &LockState) -> String {
        let holder = state
            .holder
            .map_or("free".to_owned(), |holder| format!("held by {}", Self::request_name(holder)));
        match state.queue.is_empty() {
            true => holder,
            false => format!(
                "{holder}, queue [{}]",
                state
                    .queue
                    .iter()
                    .map(|request| Self::request_name(*request))
                    .collect::<Vec<_>>()
                    .join(" ")
            ),
        }
    }
}

/// Splits the register workload's operations into one history per unit.
/// `fail` operations did nothing and are left out; so are reads that did
/// not answer. An `acquire` becomes two calls (effect, observation).
pub fn split_by_unit(operations: &[Operation]) -> Vec<UnitHistory> {
    let mut units: BTreeMap<String, (UnitHistory, BTreeMap<String, u32>)> = BTreeMap::new();
    for operation in operations.iter().filter(|operation| operation.kind() != OpType::Fail) {
        match operation.value() {
            Payload::Acquire(value) => {
                let (history, locals) = unit_entry(&mut units, &value.unit);
                let request = history.local(&value.request_id, locals);
                let name = UnitHistory::request_name(request);
                let status = value.status.clone().unwrap_or_default();
                let (enter, verb) = match value.resend {
                    true => (LockInput::EnterIfNew(request), "resend"),
                    false => (LockInput::Enter(request), "acquire"),
                };
                if operation.is_ok() && value.attempts == Some(1) {
                    let input = match value.resend {
                        true => LockInput::EnterIfNewAndObserve(request),
                        false => LockInput::EnterAndObserve(request),
                    };
                    let label = format!("{verb} {name} -> {status} (one attempt)");
                    history.push(operation, input, Some(LockOutput::Status(status)), label);
                    continue;
                }
                history.push(operation, enter, Some(LockOutput::Entered), format!("{verb} {name} (takes effect)"));
                if operation.is_ok() {
                    history.push(
                        operation,
                        LockInput::Observe(request),
                        Some(LockOutput::Status(status.clone())),
                        format!("{verb} {name} -> {status}"),
                    );
                }
            }
            Payload::Release(value) => {
                let Some(unit_name) = &value.unit else { continue };
                let (history, locals) = unit_entry(&mut units, unit_name);
                let request = history.local(&value.request_id, locals);
                let outcome = value.outcome.clone().unwrap_or_default();
                let label = match operation.is_ok() {
                    true => format!("release {} -> {outcome}", UnitHistory::request_name(request)),
                    false => format!("release {} -> ?", UnitHistory::request_name(request)),
                };
                history.push(operation, LockInput::Release(request), Some(LockOutput::Outcome(outcome)), label);
            }
            Payload::Read(value) if operation.is_ok() => {
                for (unit_name, holders) in value.holders.iter().flatten() {
                    let (history, locals) = unit_entry(&mut units, unit_name);
                    let mut holders: Vec<u32> = holders.iter().map(|request_id| history.local(request_id, locals)).collect();
                    holders.sort_unstable();
                    let names: Vec<String> = holders.iter().map(|holder| UnitHistory::request_name(*holder)).collect();
                    let label = format!("{}read -> [{}]", if value.final_read { "final " } else { "" }, names.join(" "));
                    history.push(operation, LockInput::Read, Some(LockOutput::Holders(holders)), label);
                }
            }
            _ => {}
        }
    }
    units.into_values().map(|(history, _)| history).collect()
}

/// The history being built for `unit`, with its request numbering.
fn unit_entry<'a>(
    units: &'a mut BTreeMap<String, (UnitHistory, BTreeMap<String, u32>)>,
    unit: &str,
) -> &'a mut (UnitHistory, BTreeMap<String, u32>) {
    units.entry(unit.to_owned()).or_insert_with(|| {
        (
            UnitHistory {
                unit: unit.to_owned(),
                calls: Vec::new(),
                origins: Vec::new(),
                request_ids: Vec::new(),
            },
            BTreeMap::new(),
        )
    })
}

/// What went wrong with linearizability.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum LinearizabilityViolation {
    /// No order of the unit's operations is consistent with a lock: the
    /// longest consistent prefix ends before `blocking`, which fits after no
    /// prefix that respects real time.
    NotLinearizable {
        unit: String,
        /// The completed operation that could not be placed.
        blocking: CallOrigin,
        /// The state after the longest linearizable prefix.
        state_after_prefix: String,
        longest_prefix: usize,
        calls: usize,
        /// Completed operations overlapping `blocking`, which the search tried before it.
        concurrent: Vec<CallOrigin>,
        /// The request ids behind the `rN` names used above.
        requests: BTreeMap<String, String>,
    },
    /// Every unit fits an order of its own, but the table does not: some
    /// read (or write) fits after no prefix of the units' calls together,
    /// typically a read showing one unit before a write and another after
    /// a later one.
    NotLinearizableAsAWhole {
        /// The completed operation that could not be placed, with its units (`unit-0: acquire r3 ...`).
        blocking: CallOrigin,
        /// Each unit's state after the longest linearizable prefix.
        state_after_prefix: String,
        longest_prefix: usize,
        calls: usize,
        /// Completed operations overlapping `blocking`.
        concurrent: Vec<CallOrigin>,
    },
}

impl Violation for LinearizabilityViolation {
    fn describe(&self) -> String {
        match self {
            LinearizabilityViolation::NotLinearizable {
                unit,
                blocking,
                state_after_prefix,
                longest_prefix,
                calls,
                ..
            } => format!(
                "{unit}: not linearizable: `{}` (process {}) fits nowhere; the longest linearizable prefix is {longest_prefix} of {calls} calls, leaving the unit {state_after_prefix}",
                blocking.label, blocking.process
            ),
            LinearizabilityViolation::NotLinearizableAsAWhole {
                blocking,
                state_after_prefix,
                longest_prefix,
                calls,
                ..
            } => format!(
                "the table as a whole: not linearizable although every unit is: `{}` (process {}) fits nowhere; the longest linearizable prefix is {longest_prefix} of {calls} calls, leaving {state_after_prefix}",
                blocking.label, blocking.process
            ),
        }
    }

    fn ops(&self) -> Vec<u64> {
        match self {
            LinearizabilityViolation::NotLinearizable { blocking, concurrent, .. }
            | LinearizabilityViolation::NotLinearizableAsAWhole { blocking, concurrent, .. } => blocking
                .ops
                .iter()
                .chain(concurrent.iter().flat_map(|origin| &origin.ops))
                .copied()
                .collect(),
        }
    }
}

/// A unit that failed, kept for the time-line page.
pub struct UnitFailure {
    pub history: UnitHistory,
    /// The longest linearizable prefix: call positions and the state after each.
    pub longest: Vec<(usize, LockState)>,
    pub blocking: usize,
}

/// The verdict, and the failing units for the report.
pub struct LinearizabilityReport {
    pub result: CheckerResult,
    pub failures: Vec<UnitFailure>,
}

/// Checks every unit.
pub fn check(operations: &[Operation], limits: SearchLimits) -> LinearizabilityReport {
    let mut violations = Vec::new();
    let mut failures = Vec::new();
    let mut notes = Vec::new();
    let mut unknown = false;
    let units = split_by_unit(operations);
    let mut orders = Vec::new();
    for history in units.iter().cloned() {
        let model = UnitLock {
            requests: history.request_ids.len(),
        };
        match wgl::check(&model, &history.calls, limits) {
            Linearization::Linearizable { order } => {
                notes.push(format!("{}: {} calls, linearizable", history.unit, history.calls.len()));
                orders.push(order);
            }
            Linearization::Unknown { steps, states } => {
                unknown = true;
                notes.push(format!(
                    "{}: {} calls, search stopped at its limits ({steps} steps, {states} states): unknown",
                    history.unit,
                    history.calls.len()
                ));
            }
            Linearization::NotLinearizable { longest, blocking } => {
                let concurrent = concurrent_with(&history.calls, &history.origins, blocking);
                let state_after_prefix = longest
                    .last()
                    .map_or_else(|| UnitHistory::describe(&model.init()), |(_, state)| UnitHistory::describe(state));
                let blocking_origin = history.origins[blocking].clone();
                let requests = named_requests(
                    &history,
                    std::iter::once(&blocking_origin.label)
                        .chain(concurrent.iter().map(|origin| &origin.label))
                        .chain(std::iter::once(&state_after_prefix)),
                );
                violations.push(LinearizabilityViolation::NotLinearizable {
                    unit: history.unit.clone(),
                    blocking: blocking_origin,
                    state_after_prefix,
                    longest_prefix: longest.len(),
                    calls: history.calls.len(),
                    concurrent,
                    requests,
                });
                notes.push(format!("{}: {} calls, NOT linearizable", history.unit, history.calls.len()));
                failures.push(UnitFailure {
                    history,
                    longest,
                    blocking,
                });
            }
        }
    }
    // A unit that fits no order is a verdict for the table too; so is one
    // the search gave up on (the table's search would give up sooner).
    if violations.is_empty() && !unknown {
        unknown = check_whole_table(&units, &orders, limits, &mut violations, &mut notes);
    }
    LinearizabilityReport {
        result: CheckerResult::from_violations("linearizability", &violations, notes, unknown),
        failures,
    }
}

/// The units searched together when reads span several of them; whether
/// the search stopped at its bound (the verdict is then unknown).
fn check_whole_table(
    units: &[UnitHistory],
    orders: &[Vec<usize>],
    limits: SearchLimits,
    violations: &mut Vec<LinearizabilityViolation>,
    notes: &mut Vec<String>,
) -> bool {
    let table = whole_read::table_history(units);
    if table.multi_unit_reads == 0 {
        return false;
    }
    let calls = table.calls.len();
    if whole_read::merge_linearizations(units, orders) {
        notes.push(format!(
            "whole table: {calls} calls, {} reads of several units, linearizable (the units' linearizations put on one time line)",
            table.multi_unit_reads
        ));
        return false;
    }
    match whole_read::check(units, &table, limits) {
        Linearization::Linearizable { .. } => {
            notes.push(format!(
                "whole table: {calls} calls, {} reads of several units, linearizable",
                table.multi_unit_reads
            ));
            false
        }
        Linearization::Unknown { steps, states } => {
            notes.push(format!(
                "whole table: {calls} calls, search stopped at its limits ({steps} steps, {states} states): unknown"
            ));
            true
        }
        Linearization::NotLinearizable { longest, blocking } => {
            let concurrent = concurrent_with(&table.calls, &table.origins, blocking);
            let state_after_prefix = match longest.last() {
                Some((_, state)) => whole_read::describe(units, state),
                None => "every unit free".to_owned(),
            };
            notes.push(format!("whole table: {calls} calls, NOT linearizable"));
            violations.push(LinearizabilityViolation::NotLinearizableAsAWhole {
                blocking: table.origins[blocking].clone(),
                state_after_prefix,
                longest_prefix: longest.len(),
                calls,
                concurrent,
            });
            false
        }
    }
}

/// The request ids of every `rN` name mentioned in `texts`.
fn named_requests<'a>(history: &UnitHistory, texts: impl Iterator<Item = &'a String>) -> BTreeMap<String, String> {
    let mut named = BTreeMap::new();
    for text in texts {
        for word in text.split(|c: char| !c.is_ascii_alphanumeric()) {
            let number = word.strip_prefix('r').and_then(|digits| digits.parse::<usize>().ok());
            if let Some(request_id) = number.and_then(|number| history.request_ids.get(number)) {
                named.insert(word.to_owned(), request_id.clone());
            }
        }
    }
    named
}

/// The completed calls whose span overlaps the blocking call's: the ones a
/// reader of a violation should look at beside it.
fn concurrent_with<I, O>(calls: &[Call<I, O>], origins: &[CallOrigin], blocking: usize) -> Vec<CallOrigin> {
    let blocking_call = &calls[blocking];
    let end = blocking_call.complete_ns.unwrap_or(u64::MAX);
    calls
        .iter()
        .enumerate()
        .filter(|(position, call)| {
            *position != blocking
                && call.complete_ns.is_some()
                && call.invoke_ns <= end
                && call.complete_ns >= Some(blocking_call.invoke_ns)
        })
        .map(|(position, _)| origins[position].clone())
        .collect()
}

#[cfg(test)]
#[path = "linearizability_test.rs"]
mod tests;
