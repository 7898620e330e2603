//! The history: every operation as an invocation and then its completion
//! (`ok`, `fail` or `info`), client and nemesis alike, in the order they
//! happened, as Jepsen records them. Written as JSON lines while the run goes
//! (`history.jsonl`) and kept in memory for the checkers.
//!
//! * `ok`: the operation took effect, and its value is what it returned.
//! * `fail`: it certainly did not take effect.
//! * `info`: nobody knows (a timeout): it may take effect at any time later,
//!   or never. A process whose operation ended in `info` is retired, and its
//!   client carries on under a new process id, as in Jepsen.
//!
//! Each operation carries the monotonic time since the run started
//! (`time_ns`, what the checkers order by) and the wall clock (`wall_ms`).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::config::HISTORY_OPS_MAX;
use crate::error::JepsenError;

/// How an operation's record ends, or that it is the invocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OpType {
    Invoke,
    Ok,
    Fail,
    Info,
}

/// Who ran an operation: a client process (a number) or the nemesis.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Process {
    Client(u64),
    Nemesis(NemesisProcess),
}

/// The nemesis's name in the history: `"nemesis"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NemesisProcess {
    Nemesis,
}

impl Process {
    pub const NEMESIS: Process = Process::Nemesis(NemesisProcess::Nemesis);

    pub fn is_nemesis(self) -> bool {
        self == Process::NEMESIS
    }
}

impl std::fmt::Display for Process {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Process::Client(process) => write!(f, "{process}"),
            Process::Nemesis(_) => write!(f, "nemesis"),
        }
    }
}

/// What an operation is (`f` in the history) and its value.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "f", content = "value", rename_all = "kebab-case")]
pub enum Payload {
    /// Register workload: take one unit with a fresh request.
    Acquire(AcquireValue),
    /// Allocation workload: a free-form request (or a resend of one).
    Allocate(AllocateValue),
    /// Both workloads: release (or cancel) a request by its id.
    Release(ReleaseValue),
    /// Both workloads: a linearizable read of the active allocations.
    Read(ReadValue),
    // The nemesis's operations.
    Kill(NemesisValue),
    Start(NemesisValue),
    Pause(NemesisValue),
    Resume(NemesisValue),
    Partition(NemesisValue),
    Heal(NemesisValue),
    AddReplica(NemesisValue),
    RemoveReplica(NemesisValue),
    /// The optimize nemesis's fault: an optimization plan and a drain.
    Optimize(NemesisValue),
    /// Its heal: the drained provider open again.
    Uncordon(NemesisValue),
    /// Allocation workload with `--preemption`: the admin sets the
    /// namespace's quota (raised, or lowered, even below what it holds).
    SetQuota(QuotaValue),
}

impl Payload {
    /// The `f` of this payload, as written in the history.
    pub fn name(&self) -> &'static str {
        match self {
            Payload::Acquire(_) => "acquire",
            Payload::Allocate(_) => "allocate",
            Payload::Release(_) => "release",
            Payload::Read(_) => "read",
            Payload::Kill(_) => "kill",
            Payload::Start(_) => "start",
            Payload::Pause(_) => "pause",
            Payload::Resume(_) => "resume",
            Payload::Partition(_) => "partition",
            Payload::Heal(_) => "heal",
            Payload::AddReplica(_) => "add-replica",
            Payload::RemoveReplica(_) => "remove-replica",
            Payload::Optimize(_) => "optimize",
            Payload::Uncordon(_) => "uncordon",
            Payload::SetQuota(_) => "set-quota",
        }
    }

    /// Changes the table (as opposed to reading it or being a fault).
    pub fn is_write(&self) -> bool {
        matches!(
            self,
            Payload::Acquire(_) | Payload::Allocate(_) | Payload::Release(_) | Payload::SetQuota(_)
        )
    }

    /// A deliberate resend of an acknowledged request: a write call that the
    /// table answers without a new log entry.
    pub fn is_resend(&self) -> bool {
        match self {
            Payload::Acquire(value) => value.resend,
            Payload::Allocate(value) => value.resend,
            _ => false,
        }
    }

    pub fn nemesis(&self) -> Option<&NemesisValue> {
        match self {
            Payload::Kill(value)
            | Payload::Start(value)
            | Payload::Pause(value)
            | Payload::Resume(value)
            | Payload::Partition(value)
            | Payload::Heal(value)
            | Payload::AddReplica(value)
            | Payload::RemoveReplica(value)
            | Payload::Optimize(value)
            | Payload::Uncordon(value) => Some(value),
            _ => None,
        }
    }

    /// Starts a fault (as opposed to healing one).
    pub fn is_fault(&self) -> bool {
        matches!(
            self,
            Payload::Kill(_) | Payload::Pause(_) | Payload::Partition(_) | Payload::AddReplica(_) | Payload::Optimize(_)
        )
    }
}

/// `acquire`: a request pinned to one unit.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AcquireValue {
    pub unit: String,
    pub request_id: String,
    /// The request was sent before and acknowledged; this is a retry of it,
    /// on purpose, sometimes through another client.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub resend: bool,
    /// On `ok`: the request's status as the reply showed it: `allocated`
    /// (active), `queued`, `released`, `cancelled`, or the record's state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// Attempts the client sent for this call (a redirect to the named
    /// leader counts); absent in histories recorded before it was kept. One
    /// attempt means the answer describes the moment the call took effect,
    /// so the checker may use the strict single-step model for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<u32>,
}

/// `allocate`: a free-form request.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllocateValue {
    pub request_id: String,
    /// Kind → quantity.
    pub requirements: BTreeMap<String, u64>,
    pub priority: i64,
    /// The harness sent a request it had sent before, unchanged, on purpose.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub resend: bool,
    /// The request allows live moves (`movable`): the table may move it to
    /// other units at any time (an optimization plan or a drain), so the
    /// checkers hold it to its units only at the instants they saw it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub movable: bool,
    /// The request said `on_preemption: release`: a preemptor that takes
    /// its units finishes it for good (the default requeues it).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub release_on_preemption: bool,
    /// On `ok`: the record the reply carried.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record: Option<RecordView>,
    /// Attempts the client sent for this call (a redirect to the named
    /// leader counts); absent in histories recorded before it was kept. One
    /// attempt means the answer describes the moment the call took effect,
    /// so the checker may use the strict single-step model for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<u32>,
}

/// `release`: by request id.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseValue {
    pub request_id: String,
    /// The unit, in the register workload (where each request pins one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    /// On `ok`: `released`, `cancelled`, `not-found`, or the state the record was in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
    /// On `ok`: the record the reply carried (absent for `not-found`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record: Option<RecordView>,
    /// Attempts the client sent for this call (a redirect to the named
    /// leader counts); absent in histories recorded before it was kept. One
    /// attempt means the answer describes the moment the call took effect,
    /// so the checker may use the strict single-step model for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<u32>,
}

/// `set-quota`: the namespace's whole quota becomes `limit` of `kind`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuotaValue {
    pub namespace: String,
    pub kind: String,
    pub limit: u64,
    /// Attempts the client sent for this call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<u32>,
}

/// The outcome of a release that found no such request.
pub const RELEASE_NOT_FOUND: &str = "not-found";

/// `read`: the active allocations (`monitoring` or `allocation` state), or,
/// for the final read, every record the table remembers.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadValue {
    /// The read after the final heal, when no client runs any more.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub final_read: bool,
    /// Register workload, on `ok`: unit → the request ids holding it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holders: Option<BTreeMap<String, Vec<String>>>,
    /// Allocation workload, on `ok`: the records read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub records: Option<Vec<RecordView>>,
    /// Attempts the client sent for this call (a redirect to the named
    /// leader counts); absent in histories recorded before it was kept. One
    /// attempt means the answer describes the moment the call took effect,
    /// so the checker may use the strict single-step model for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<u32>,
}

/// A nemesis operation: which replicas, and what exactly.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NemesisValue {
    /// Replicas acted on.
    #[serde(default)]
    pub nodes: Vec<u64>,
    /// The leader when the fault started, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<u64>,
    /// Human-readable detail: the partition's shape, the grudge, an error.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
    /// The optimize nemesis's heal: live moves completed since the table
    /// began, as the cluster's state said after the uncordon.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moves_completed: Option<u64>,
}

impl NemesisValue {
    /// The fault took the leader out (killed, paused, cut off or removed).
    pub fn hits_leader(&self) -> bool {
        self.leader.is_some_and(|leader| self.nodes.contains(&leader))
    }
}

/// What the harness keeps of an `AllocationReply`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RecordView {
    pub request_id: String,
    pub allocation_id: String,
    pub response_id: String,
    /// `allocated`, `queued` or `rejected`.
    pub status: String,
    /// The protocol state: queued, allocation, monitoring, deallocation, idle, error.
    pub state: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub provider_id: String,
    /// The units held while active; empty otherwise.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub grants: Vec<GrantView>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
}

impl RecordView {
    pub fn from_reply(reply: &qm_client::proto::api::AllocationReply) -> RecordView {
        RecordView {
            request_id: reply.request_id.clone(),
            allocation_id: reply.allocation_id.clone(),
            response_id: reply.response_id.clone(),
            status: qm_client::convert::status_name(reply).to_owned(),
            state: qm_client::convert::state_name(reply).to_owned(),
            provider_id: reply.provider_id.clone(),
            grants: reply
                .grants
                .iter()
                .map(|grant| GrantView {
                    resource_id: grant.resource_id.clone(),
                    kind: grant.kind.clone(),
                    amount: grant.amount,
                })
                .collect(),
            reason: reply.reason.clone(),
        }
    }

    /// Holds units now: granted and not released.
    pub fn is_active(&self) -> bool {
        // `optimization`: a live move under way, holding its units (and the target's).
        matches!(self.state.as_str(), "allocation" | "monitoring" | "optimization")
    }

    /// Not finished: active or still waiting in the queue.
    pub fn is_live(&self) -> bool {
        self.is_active() || self.state == "queued"
    }
}

/// One unit an allocation holds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct GrantView {
    pub resource_id: String,
    pub kind: String,
    pub amount: u64,
}

/// One line of the history.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Op {
    /// Position in the history, from 0.
    pub index: u64,
    #[serde(rename = "type")]
    pub kind: OpType,
    pub process: Process,
    #[serde(flatten)]
    pub payload: Payload,
    /// Monotonic nanoseconds since the run started: what the checkers order by.
    pub time_ns: u64,
    /// Wall clock, milliseconds since the Unix epoch: for reading logs alongside.
    pub wall_ms: u64,
    /// Why it failed or is unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Records operations in memory and appends each to `history.jsonl` as it
/// happens (so a run that dies still leaves its history behind).
pub struct HistoryRecorder {
    started: Instant,
    inner: Mutex<RecorderInner>,
}

struct RecorderInner {
    ops: Vec<Op>,
    file: Option<BufWriter<File>>,
    path: PathBuf,
    write_error: Option<String>,
}

impl HistoryRecorder {
    /// A recorder writing to `path` (created or truncated).
    pub fn create(path: &Path) -> Result<HistoryRecorder, JepsenError> {
        let file = File::create(path).map_err(JepsenError::io(path))?;
        Ok(HistoryRecorder {
            started: Instant::now(),
            inner: Mutex::new(RecorderInner {
                ops: Vec::new(),
                file: Some(BufWriter::new(file)),
                path: path.to_owned(),
                write_error: None,
            }),
        })
    }

    /// A recorder that keeps operations in memory only (tests).
    pub fn in_memory() -> HistoryRecorder {
        HistoryRecorder {
            started: Instant::now(),
            inner: Mutex::new(RecorderInner {
                ops: Vec::new(),
                file: None,
                path: PathBuf::new(),
                write_error: None,
            }),
        }
    }

    /// When the run started: time zero of `time_ns`.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// Nanoseconds since the run started.
    pub fn now_ns(&self) -> u64 {
        self.started.elapsed().as_nanos() as u64
    }

    /// Appends one operation stamped now, and returns it.
    pub fn record(&self, kind: OpType, process: Process, payload: Payload, error: Option<String>) -> Op {
        let mut inner = self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        // Stamped under the lock, so that the history's order is its time order.
        let op = Op {
            index: inner.ops.len() as u64,
            kind,
            process,
            payload,
            time_ns: self.now_ns(),
            wall_ms: SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64),
            error,
        };
        assert!(
            (op.index) < HISTORY_OPS_MAX,
            "the history outgrew HISTORY_OPS_MAX; the config check should have refused this run"
        );
        if let Some(file) = inner.file.as_mut() {
            let line = serde_json::to_string(&op).expect("operations serialise");
            if let Err(error) = writeln!(file, "{line}") {
                inner.write_error.get_or_insert_with(|| error.to_string());
            }
        }
        inner.ops.push(op.clone());
        op
    }

    pub fn invoke(&self, process: Process, payload: Payload) -> Op {
        self.record(OpType::Invoke, process, payload, None)
    }

    /// Flushes the file and returns every operation recorded.
    pub fn finish(&self) -> Result<Vec<Op>, JepsenError> {
        let mut inner = self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let path = inner.path.clone();
        if let Some(file) = inner.file.as_mut() {
            file.flush().map_err(JepsenError::io(&path))?;
        }
        if let Some(error) = inner.write_error.take() {
            return Err(JepsenError::Io {
                path,
                source: std::io::Error::other(error),
            });
        }
        Ok(inner.ops.clone())
    }

    /// A copy of the operations recorded so far.
    pub fn snapshot(&self) -> Vec<Op> {
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).ops.clone()
    }
}

/// Reads a `history.jsonl` back.
pub fn read_history(path: &Path) -> Result<Vec<Op>, JepsenError> {
    let file = File::open(path).map_err(JepsenError::io(path))?;
    let mut ops = Vec::new();
    for (number, line) in BufReader::new(file).lines().enumerate() {
        let line = line.map_err(JepsenError::io(path))?;
        if line.trim().is_empty() {
            continue;
        }
        let op: Op = serde_json::from_str(&line).map_err(|error| JepsenError::Parse {
            path: path.to_owned(),
            line: number + 1,
            reason: error.to_string(),
        })?;
        ops.push(op);
        if ops.len() as u64 > HISTORY_OPS_MAX {
            return Err(JepsenError::Parse {
                path: path.to_owned(),
                line: number + 1,
                reason: format!("more than {HISTORY_OPS_MAX} operations"),
            });
        }
    }
    Ok(ops)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_operation_round_trips_through_json_as_jepsen_spells_it() {
        let recorder = HistoryRecorder::in_memory();
        let op = recorder.record(
            OpType::Ok,
            Process::Client(3),
            Payload::Acquire(AcquireValue {
                unit: "unit-1".into(),
                request_id: "r".into(),
                resend: false,
                status: Some("allocated".into()),
                attempts: Some(1),
            }),
            None,
        );
        let line = serde_json::to_string(&op).expect("serialises");
        assert!(line.contains(r#""type":"ok""#), "{line}");
        assert!(line.contains(r#""attempts":1"#), "{line}");
        assert!(line.contains(r#""f":"acquire""#), "{line}");
        assert!(line.contains(r#""process":3"#), "{line}");
        assert_eq!(op, serde_json::from_str::<Op>(&line).expect("parses"));

        let nemesis = recorder.record(
            OpType::Info,
            Process::NEMESIS,
            Payload::AddReplica(NemesisValue {
                nodes: vec![4],
                ..Default::default()
            }),
            None,
        );
        let line = serde_json::to_string(&nemesis).expect("serialises");
        assert!(line.contains(r#""process":"nemesis""#), "{line}");
        assert!(line.contains(r#""f":"add-replica""#), "{line}");
        assert_eq!(nemesis, serde_json::from_str::<Op>(&line).expect("parses"));
        assert_eq!(vec![0, 1], recorder.snapshot().iter().map(|op| op.index).collect::<Vec<_>>());
    }
}
