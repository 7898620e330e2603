//! Pairs each invocation with its completion (by process, as Jepsen does)
//! and gathers the nemesis's fault windows.

use std::collections::BTreeMap;

use crate::history::{Op, OpType, Payload, Process};

/// A client operation: its invocation and how it ended.
#[derive(Clone, Debug, PartialEq)]
pub struct Operation {
    pub process: Process,
    pub invoke: Op,
    /// `None` when the history ends before the completion (the harness
    /// stopped it): treated as `info`.
    pub completion: Option<Op>,
}

impl Operation {
    /// `ok`, `fail` or `info`.
    pub fn kind(&self) -> OpType {
        self.completion.as_ref().map_or(OpType::Info, |op| op.kind)
    }

    pub fn invoke_ns(&self) -> u64 {
        self.invoke.time_ns
    }

    /// When it completed, if it did with a known outcome (`ok` or `fail`).
    pub fn complete_ns(&self) -> Option<u64> {
        self.completion.as_ref().filter(|op| op.kind != OpType::Info).map(|op| op.time_ns)
    }

    /// When the harness heard back at all (also for `info`).
    pub fn answered_ns(&self) -> Option<u64> {
        self.completion.as_ref().map(|op| op.time_ns)
    }

    /// The completion's value when `ok`, the invocation's otherwise.
    pub fn value(&self) -> &Payload {
        match &self.completion {
            Some(op) if op.kind == OpType::Ok => &op.payload,
            _ => &self.invoke.payload,
        }
    }

    /// History indexes of its invocation and completion.
    pub fn indexes(&self) -> Vec<u64> {
        std::iter::once(self.invoke.index)
            .chain(self.completion.as_ref().map(|op| op.index))
            .collect()
    }

    pub fn is_ok(&self) -> bool {
        self.kind() == OpType::Ok
    }
}

/// The client operations of `history`, in invocation order.
pub fn client_operations(history: &[Op]) -> Vec<Operation> {
    pair(history, |process| !process.is_nemesis())
}

/// The nemesis's operations, in invocation order.
pub fn nemesis_operations(history: &[Op]) -> Vec<Operation> {
    pair(history, Process::is_nemesis)
}

fn pair(history: &[Op], wanted: impl Fn(Process) -> bool) -> Vec<Operation> {
    let mut open: BTreeMap<Process, usize> = BTreeMap::new();
    let mut operations: Vec<Operation> = Vec::new();
    for op in history.iter().filter(|op| wanted(op.process)) {
        match op.kind {
            OpType::Invoke => {
                open.insert(op.process, operations.len());
                operations.push(Operation {
                    process: op.process,
                    invoke: op.clone(),
                    completion: None,
                });
            }
            _ => {
                if let Some(position) = open.remove(&op.process) {
                    operations[position].completion = Some(op.clone());
                }
            }
        }
    }
    operations
}

/// A stretch of time with a fault in force: from a fault's invocation to
/// the completion of the heal that ended it (or the end of the history).
#[derive(Clone, Debug, PartialEq)]
pub struct FaultWindow {
    pub start_ns: u64,
    pub end_ns: u64,
    /// `kill`, `pause`, `partition` or `add-replica`.
    pub fault: &'static str,
    /// The fault's detail, for labels.
    pub label: String,
    /// The leader was among the replicas it hit.
    pub hits_leader: bool,
}

/// The fault windows of `history`, in time order. A fault ends at the next
/// heal of its kind (start after kill, resume after pause, heal after
/// partition, remove-replica after add-replica).
pub fn fault_windows(history: &[Op]) -> Vec<FaultWindow> {
    let end_of_history = history.last().map_or(0, |op| op.time_ns);
    let mut windows: Vec<FaultWindow> = Vec::new();
    let mut open: BTreeMap<&'static str, usize> = BTreeMap::new();
    for operation in nemesis_operations(history) {
        let payload = operation.value();
        let Some(value) = payload.nemesis() else { continue };
        let fault = match payload {
            Payload::Start(_) => Some("kill"),
            Payload::Resume(_) => Some("pause"),
            Payload::Heal(_) => Some("partition"),
            Payload::RemoveReplica(_) => Some("add-replica"),
            Payload::Uncordon(_) => Some("optimize"),
            _ => None,
        };
        if let Some(fault) = fault {
            if let Some(position) = open.remove(fault) {
                windows[position].end_ns = operation.answered_ns().unwrap_or(end_of_history);
            }
            continue;
        }
        open.insert(payload.name(), windows.len());
        windows.push(FaultWindow {
            start_ns: operation.invoke_ns(),
            end_ns: end_of_history,
            fault: payload.name(),
            label: match value.detail.is_empty() {
                true => format!("{} {:?}", payload.name(), value.nodes),
                false => format!("{} {:?} {}", payload.name(), value.nodes, value.detail),
            },
            hits_leader: value.hits_leader(),
        });
    }
    windows
}

/// A nemesis action that took the leader out: killed, paused, cut off, or
/// removed from the membership.
#[derive(Clone, Debug, PartialEq)]
pub struct LeaderFault {
    pub at_ns: u64,
    pub label: String,
}

/// Every nemesis action that took the leader out, in time order.
pub fn leader_faults(history: &[Op]) -> Vec<LeaderFault> {
    nemesis_operations(history)
        .iter()
        .filter_map(|operation| {
            let payload = operation.value();
            let value = payload.nemesis().filter(|value| value.hits_leader())?;
            Some(LeaderFault {
                // When it was done: a removal takes effect when its change
                // commits, a kill or a pause at once.
                at_ns: operation.answered_ns().unwrap_or(operation.invoke_ns()),
                label: format!("{} {:?}", payload.name(), value.nodes),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{HistoryRecorder, NemesisValue, ReadValue};

    #[test]
    fn invocations_pair_with_their_process_completion_and_unfinished_ones_are_info() {
        let recorder = HistoryRecorder::in_memory();
        let read = || Payload::Read(ReadValue::default());
        recorder.invoke(Process::Client(0), read());
        recorder.invoke(Process::Client(1), read());
        recorder.record(OpType::Ok, Process::Client(1), read(), None);
        recorder.record(OpType::Fail, Process::Client(0), read(), None);
        recorder.invoke(Process::Client(0), read());
        let operations = client_operations(&recorder.snapshot());
        let kinds: Vec<(Process, OpType)> = operations.iter().map(|op| (op.process, op.kind())).collect();
        assert_eq!(
            vec![
                (Process::Client(0), OpType::Fail),
                (Process::Client(1), OpType::Ok),
                (Process::Client(0), OpType::Info)
            ],
            kinds
        );
        assert_eq!(vec![0, 3], operations[0].indexes());
    }

    #[test]
    fn a_fault_window_lasts_until_its_heal() {
        let recorder = HistoryRecorder::in_memory();
        let value = NemesisValue {
            nodes: vec![2],
            leader: Some(2),
            detail: String::new(),
            ..Default::default()
        };
        for payload in [Payload::Kill(value.clone()), Payload::Start(value)] {
            recorder.invoke(Process::NEMESIS, payload.clone());
            recorder.record(OpType::Info, Process::NEMESIS, payload, None);
        }
        let history = recorder.snapshot();
        let windows = fault_windows(&history);
        assert_eq!(1, windows.len());
        assert_eq!(("kill", true), (windows[0].fault, windows[0].hits_leader));
        assert_eq!((history[0].time_ns, history[3].time_ns), (windows[0].start_ns, windows[0].end_ns));
    }
}
