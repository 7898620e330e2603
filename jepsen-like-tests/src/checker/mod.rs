//! Checkers: each reads the history and says whether it is valid, with the
//! anomalies it found and the operations involved. One file per checker,
//! each with its own `Violation` enum (STYLE.md rule 12).
//!
//! * [`linearizability`]: the register workload, per unit, against a lock-with-queue model ([`wgl`] is the search),
//!   then as a whole table when reads span several units ([`whole_read`]).
//! * [`double_allocation`]: no exclusive unit held by two allocations at once.
//! * [`capacity`]: no unit holds more than its capacity.
//! * [`quota`]: no read shows the workload's namespace over a quota it may have had.
//! * [`quota_log`]: replaying the table's events in log order, no grant takes a namespace past the quota then in force.
//! * [`preemption`]: every preemption takes from strictly lower priority in a namespace that allows it.
//! * [`lost_allocation`]: every acknowledged allocation not released survives; every acknowledged release sticks.
//! * [`idempotency`]: one allocation per `request_id`, however often it is sent.
//! * [`stale_read`]: no read misses an allocation, or lists a release, acknowledged before it began.
//! * [`stats`]: counts, availability during faults, leader failover times (not a verdict).
//! * [`operations`]: invocations paired with completions; fault windows.
//! * [`holds`]: what the allocation checkers share: held units, certain holds, reads,
//!   and when a request may have been preempted ([`holds::preemptions`]).

pub mod capacity;
pub mod double_allocation;
pub mod holds;
pub mod idempotency;
pub mod linearizability;
pub mod lost_allocation;
pub mod operations;
pub mod preemption;
pub mod quota;
pub mod quota_log;
pub mod stale_read;
pub mod stats;
pub mod wgl;
pub mod whole_read;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::events::EventLog;
use crate::workload::allocation::UnitSpec;
use operations::Operation;

/// A checker's verdict, written as Jepsen writes `:valid?`: true, false or "unknown".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Validity {
    Known(bool),
    Unknown,
}

impl Serialize for Validity {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Validity::Known(valid) => serializer.serialize_bool(*valid),
            Validity::Unknown => serializer.serialize_str("unknown"),
        }
    }
}

impl<'de> Deserialize<'de> for Validity {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        match serde_json::Value::deserialize(deserializer)? {
            serde_json::Value::Bool(valid) => Ok(Validity::Known(valid)),
            serde_json::Value::String(text) if text == "unknown" => Ok(Validity::Unknown),
            other => Err(serde::de::Error::custom(format!(
                "expected true, false or \"unknown\", got {other}"
            ))),
        }
    }
}

impl Validity {
    pub const VALID: Validity = Validity::Known(true);
    pub const INVALID: Validity = Validity::Known(false);

    /// Invalid beats unknown beats valid.
    pub fn and(self, other: Validity) -> Validity {
        match (self, other) {
            (Validity::Known(false), _) | (_, Validity::Known(false)) => Validity::INVALID,
            (Validity::Unknown, _) | (_, Validity::Unknown) => Validity::Unknown,
            _ => Validity::VALID,
        }
    }

    pub fn is_valid(self) -> bool {
        self == Validity::VALID
    }
}

impl std::fmt::Display for Validity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Validity::Known(valid) => write!(f, "{valid}"),
            Validity::Unknown => write!(f, "unknown"),
        }
    }
}

/// What every checker's `Violation` enum offers the report.
pub trait Violation: Serialize {
    /// One sentence naming what went wrong, with the values involved.
    fn describe(&self) -> String;
    /// History indexes of the operations involved.
    fn ops(&self) -> Vec<u64>;
}

/// One anomaly, as the report shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Anomaly {
    pub description: String,
    /// History indexes (invocations and completions) of the operations involved.
    pub ops: Vec<u64>,
    /// The violation with every field.
    pub violation: serde_json::Value,
}

impl Anomaly {
    pub fn from_violation(violation: &impl Violation) -> Anomaly {
        Anomaly {
            description: violation.describe(),
            ops: violation.ops(),
            violation: serde_json::to_value(violation).expect("violations serialise"),
        }
    }
}

/// Anomalies written per checker at most; the count is always complete.
pub const ANOMALIES_REPORTED_MAX: usize = 100;

/// One checker's verdict.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CheckerResult {
    pub name: String,
    pub valid: Validity,
    pub anomaly_count: usize,
    pub anomalies: Vec<Anomaly>,
    /// What the checker looked at, or why it could not decide.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

impl CheckerResult {
    /// Valid when there are no violations; `unknown` notes make it unknown.
    pub fn from_violations<V: Violation>(name: &str, violations: &[V], notes: Vec<String>, unknown: bool) -> CheckerResult {
        let valid = match (violations.is_empty(), unknown) {
            (false, _) => Validity::INVALID,
            (true, true) => Validity::Unknown,
            (true, false) => Validity::VALID,
        };
        CheckerResult {
            name: name.to_owned(),
            valid,
            anomaly_count: violations.len(),
            anomalies: violations
                .iter()
                .take(ANOMALIES_REPORTED_MAX)
                .map(Anomaly::from_violation)
                .collect(),
            notes,
        }
    }
}

/// The allocation workload's history, as its checkers need it.
pub struct AllocationHistory<'a> {
    pub operations: &'a [Operation],
    pub units: &'a [UnitSpec],
    /// The table's events in log order (`--preemption` runs; `None` otherwise).
    pub events: Option<&'a EventLog>,
}

#[cfg(test)]
mod moves_test;
#[cfg(test)]
pub(crate) mod test_support;
