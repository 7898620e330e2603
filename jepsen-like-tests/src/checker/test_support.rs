//! Hand-built histories for the checkers' tests: operations at chosen times.

use std::collections::BTreeMap;

use super::operations::{client_operations, Operation};
use super::{AllocationHistory, CheckerResult};
use crate::events::{EventLog, WatchedEvent};
use crate::history::{AcquireValue, AllocateValue, GrantView, Op, OpType, Payload, Process, ReadValue, RecordView, ReleaseValue};
use crate::workload::allocation::unit_specs;

/// Builds a history one event at a time, with explicit times.
#[derive(Default)]
pub struct HistoryBuilder {
    pub ops: Vec<Op>,
}

impl HistoryBuilder {
    pub fn event(&mut self, time_ns: u64, kind: OpType, process: u64, payload: Payload) -> &mut Self {
        self.ops.push(Op {
            index: self.ops.len() as u64,
            kind,
            process: Process::Client(process),
            payload,
            time_ns,
            wall_ms: 0,
            error: None,
        });
        self
    }

    /// An operation invoked at `from` and completed (`kind`) at `to`.
    pub fn op(&mut self, process: u64, from: u64, to: u64, kind: OpType, invoked: Payload, completed: Payload) -> &mut Self {
        self.event(from, OpType::Invoke, process, invoked)
            .event(to, kind, process, completed)
    }

    pub fn ok(&mut self, process: u64, from: u64, to: u64, completed: Payload) -> &mut Self {
        self.op(process, from, to, OpType::Ok, completed.clone(), completed)
    }

    pub fn info(&mut self, process: u64, from: u64, to: u64, invoked: Payload) -> &mut Self {
        self.op(process, from, to, OpType::Info, invoked.clone(), invoked)
    }

    pub fn fail(&mut self, process: u64, from: u64, to: u64, invoked: Payload) -> &mut Self {
        self.op(process, from, to, OpType::Fail, invoked.clone(), invoked)
    }

    /// The events sorted by time (as a recorder would have written them).
    pub fn operations(&mut self) -> Vec<Operation> {
        self.ops.sort_by_key(|op| op.time_ns);
        for (index, op) in self.ops.iter_mut().enumerate() {
            op.index = index as u64;
        }
        client_operations(&self.ops)
    }
}

pub fn acquire(unit: &str, request: &str, status: Option<&str>) -> Payload {
    Payload::Acquire(AcquireValue {
        unit: unit.into(),
        request_id: request.into(),
        resend: false,
        status: status.map(Into::into),
        attempts: None,
    })
}

/// An acquire the client sent once: its answer is from the moment it took effect.
pub fn acquire_once(unit: &str, request: &str, status: Option<&str>) -> Payload {
    Payload::Acquire(AcquireValue {
        unit: unit.into(),
        request_id: request.into(),
        resend: false,
        status: status.map(Into::into),
        attempts: Some(1),
    })
}

pub fn resend(unit: &str, request: &str, status: Option<&str>) -> Payload {
    Payload::Acquire(AcquireValue {
        unit: unit.into(),
        request_id: request.into(),
        resend: true,
        status: status.map(Into::into),
        attempts: None,
    })
}

pub fn release(unit: &str, request: &str, outcome: Option<&str>) -> Payload {
    Payload::Release(ReleaseValue {
        request_id: request.into(),
        unit: Some(unit.into()),
        outcome: outcome.map(Into::into),
        record: None,
        attempts: None,
    })
}

pub fn read_units(holders: &[(&str, &[&str])]) -> Payload {
    Payload::Read(ReadValue {
        holders: Some(
            holders
                .iter()
                .map(|(unit, requests)| (unit.to_string(), requests.iter().map(|request| request.to_string()).collect()))
                .collect(),
        ),
        ..Default::default()
    })
}

/// A record holding `grants` (provider, resource, amount) in state `state`.
pub fn record(request: &str, state: &str, provider: &str, grants: &[(&str, &str, u64)]) -> RecordView {
    RecordView {
        request_id: request.into(),
        allocation_id: format!("alloc-{request}"),
        response_id: format!("resp-{request}"),
        status: match state {
            "queued" => "queued".into(),
            "error" => "rejected".into(),
            _ => "allocated".into(),
        },
        state: state.into(),
        provider_id: provider.into(),
        grants: grants
            .iter()
            .map(|(resource, kind, amount)| GrantView {
                resource_id: resource.to_string(),
                kind: kind.to_string(),
                amount: *amount,
            })
            .collect(),
        reason: String::new(),
    }
}

pub fn allocate(request: &str, resend: bool, answer: Option<RecordView>) -> Payload {
    Payload::Allocate(AllocateValue {
        request_id: request.into(),
        requirements: BTreeMap::from([("cpu_cores".to_owned(), 1)]),
        priority: 0,
        resend,
        movable: false,
        release_on_preemption: false,
        record: answer,
        attempts: None,
    })
}

/// An allocate of a request that allows live moves (`movable`).
pub fn allocate_movable(request: &str, resend: bool, answer: Option<RecordView>) -> Payload {
    match allocate(request, resend, answer) {
        Payload::Allocate(value) => Payload::Allocate(AllocateValue { movable: true, ..value }),
        _ => unreachable!("allocate builds an allocate"),
    }
}

pub fn free(request: &str, outcome: Option<&str>) -> Payload {
    Payload::Release(ReleaseValue {
        request_id: request.into(),
        unit: None,
        outcome: outcome.map(Into::into),
        record: None,
        attempts: None,
    })
}

pub fn read_records(records: Vec<RecordView>, final_read: bool) -> Payload {
    Payload::Read(ReadValue {
        final_read,
        records: Some(records),
        ..Default::default()
    })
}

/// An allocation-workload checker's verdict on `history`, with the workload's units.
pub fn allocation_verdict(history: &mut HistoryBuilder, check: fn(&AllocationHistory) -> CheckerResult) -> CheckerResult {
    let operations = history.operations();
    check(&AllocationHistory {
        operations: &operations,
        units: &unit_specs(),
        events: None,
    })
}

/// An allocation-workload checker's verdict on `history` with the table's
/// events `log`.
pub fn verdict_with_events(history: &mut HistoryBuilder, log: &EventLog, check: fn(&AllocationHistory) -> CheckerResult) -> CheckerResult {
    let operations = history.operations();
    check(&AllocationHistory {
        operations: &operations,
        units: &unit_specs(),
        events: Some(log),
    })
}

/// A whole event log of `events` (in log order, as given).
pub fn whole_log(events: Vec<WatchedEvent>) -> EventLog {
    EventLog {
        complete: true,
        final_revision: events.last().map_or(0, |event| event.revision),
        notes: Vec::new(),
        events,
    }
}

fn event(revision: u64, kind: &str, request: &str) -> WatchedEvent {
    WatchedEvent {
        revision,
        kind: kind.into(),
        request_id: Some(request.into()),
        namespace: Some("default".into()),
        ..Default::default()
    }
}

/// `quota_set`: namespace `default` may hold `limit` CPU cores.
pub fn quota_set(revision: u64, limit: u64) -> WatchedEvent {
    WatchedEvent {
        request_id: None,
        limits: Some(BTreeMap::from([("cpu_cores".to_owned(), limit)])),
        ..event(revision, "quota_set", "")
    }
}

/// `preemption_set`: namespace `namespace`'s allocations may (not) be preempted.
pub fn preemption_set(revision: u64, namespace: &str, preemptible: bool) -> WatchedEvent {
    WatchedEvent {
        request_id: None,
        namespace: Some(namespace.into()),
        preemptible: Some(preemptible),
        ..event(revision, "preemption_set", "")
    }
}

/// `allocation_granted`: `request` gets `cores` CPU cores of `jepsen-p0`.
pub fn granted(revision: u64, request: &str, cores: u64) -> WatchedEvent {
    WatchedEvent {
        grants: (0..cores)
            .map(|core| GrantView {
                resource_id: format!("cpu-{core}"),
                kind: "cpu_cores".into(),
                amount: 1,
            })
            .collect(),
        ..event(revision, "allocation_granted", request)
    }
}

pub fn released(revision: u64, request: &str) -> WatchedEvent {
    event(revision, "allocation_released", request)
}

/// `allocation_preempted`: `victim` (of `priority`) taken by `preemptor`.
pub fn preempted(revision: u64, victim: &str, priority: i64, preemptor: &str, preemptor_priority: i64, requeued: bool) -> WatchedEvent {
    WatchedEvent {
        priority: Some(priority),
        preemptor_request_id: Some(preemptor.into()),
        preemptor_namespace: Some("default".into()),
        preemptor_priority: Some(preemptor_priority),
        requeued: Some(requeued),
        ..event(revision, "allocation_preempted", victim)
    }
}

/// An allocate of `request` at `priority`, released on preemption if `release_on_preemption`.
pub fn allocate_at(request: &str, priority: i64, release_on_preemption: bool, answer: Option<RecordView>) -> Payload {
    match allocate(request, false, answer) {
        Payload::Allocate(value) => Payload::Allocate(AllocateValue {
            priority,
            release_on_preemption,
            ..value
        }),
        _ => unreachable!("allocate builds an allocate"),
    }
}

/// A record holding one CPU core of provider `jepsen-p0`.
pub fn core(request: &str, state: &str, core: &str) -> RecordView {
    record(request, state, "jepsen-p0", &[(core, "cpu_cores", 1)])
}

/// The `kind` of each reported anomaly, in report order: what the tests compare.
pub fn anomaly_kinds(result: &CheckerResult) -> Vec<&str> {
    result
        .anomalies
        .iter()
        .map(|anomaly| anomaly.violation["kind"].as_str().expect("violations serialise with a kind"))
        .collect()
}
