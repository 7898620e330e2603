//! Typed errors. A command that returns an error has changed nothing in the
//! table (STYLE.md rule 4); callers map [`CommandError::InvalidArgument`] to a
//! gRPC `InvalidArgument` naming [`InvalidArgument::field`].

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Bad input: which field, and what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("invalid {field}: {reason}")]
pub struct InvalidArgument {
    /// The field as it is spelled in the protocol's JSON, with a path for
    /// nested fields, e.g. `resource_requirements.cpu_cores`.
    pub field: String,
    pub reason: String,
}

/// The most of a caller's bad value a reason quotes back: enough to
/// recognize it, never the whole of a multi-megabyte value.
pub const QUOTED_VALUE_LEN_MAX: usize = 64;

impl InvalidArgument {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        InvalidArgument {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// `text` given for `field` is not a uuid.
    pub fn not_a_uuid(field: impl Into<String>, text: &str) -> Self {
        InvalidArgument::new(field, format!("{} is not a uuid", quoted(text)))
    }
}

/// `text` quoted for a reason, cut after [`QUOTED_VALUE_LEN_MAX`] bytes (at
/// a character boundary) with `...` after the quotes.
pub fn quoted(text: &str) -> String {
    if text.len() <= QUOTED_VALUE_LEN_MAX {
        return format!("{text:?}");
    }
    let mut cut = QUOTED_VALUE_LEN_MAX;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{:?}...", &text[..cut])
}

/// Why a command was refused. The table is unchanged after any of these.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum CommandError {
    #[error(transparent)]
    InvalidArgument(#[from] InvalidArgument),
    #[error("unknown provider {provider_id}")]
    UnknownProvider { provider_id: String },
    #[error("no request or allocation with id {id}")]
    NotFound { id: Uuid },
    #[error("request_id {request_id} was already used for a different request")]
    RequestIdReused { request_id: Uuid },
    #[error("resource {resource_id} of provider {provider_id} is held by an allocation and cannot be {change}")]
    ResourceInUse {
        provider_id: String,
        resource_id: String,
        change: String,
    },
    #[error("allocation {allocation_id} is not active (it is {state}); only an active allocation can be renewed or confirmed")]
    NotActive { allocation_id: Uuid, state: String },
    #[error("allocation {allocation_id} has no lease to renew")]
    NoLease { allocation_id: Uuid },
    #[error("allocation {allocation_id} is placed on {actual}, not {claimed}")]
    WrongProvider {
        allocation_id: Uuid,
        claimed: String,
        actual: String,
    },
    /// A preemptor's grant is confirmed only once its provider's agent
    /// confirmed the release of every allocation it took (the agent sends
    /// those first). Appended last, so the other variants keep their encoding.
    #[error("allocation {allocation_id} preempted others whose release is not confirmed yet: {waiting_for:?}")]
    PreemptionUnconfirmed { allocation_id: Uuid, waiting_for: Vec<Uuid> },
    /// The capability policy an allocate was checked against changed (or
    /// was deleted) before the allocate was applied: it is refused, to be
    /// checked again against the policy in force. Appended last.
    #[error("policy {policy:?} changed since the call was checked (revision {checked_revision}, now {current_revision:?}); retry")]
    PolicyChanged {
        policy: String,
        checked_revision: u64,
        current_revision: Option<u64>,
    },
    /// The caller's capability does not allow the allocate; `capability`
    /// names which (`max_held` is the one only apply checks exactly).
    #[error("capability {capability}: {detail}")]
    CapabilityDenied { capability: String, detail: String },
    /// A binding named a policy that does not exist. Appended last.
    #[error("no capability policy {name:?}")]
    UnknownPolicy { name: String },
}

impl CommandError {
    /// The protocol field to name in an `InvalidArgument` status, if any.
    pub fn field(&self) -> Option<&str> {
        match self {
            CommandError::InvalidArgument(invalid) => Some(&invalid.field),
            _ => None,
        }
    }
}

/// A snapshot that could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot could not be decoded: {0}")]
    Decode(String),
    /// Written by an older build whose layout this one does not read.
    #[error("snapshot has format version {found}, this build reads {expected}")]
    Version { found: u32, expected: u32 },
    /// Written by a newer build: refused rather than misread.
    #[error("snapshot has format version {found}, newer than this build reads ({expected}): upgrade this replica")]
    NewerVersion { found: u32, expected: u32 },
    #[error("snapshot has {trailing} trailing bytes")]
    Trailing { trailing: usize },
    /// Decoded, but its parts contradict each other (what no table this
    /// build wrote can hold): refused rather than served.
    #[error("snapshot is inconsistent: {reason}")]
    Inconsistent { reason: String },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_bad_value_is_quoted_cut_and_a_short_one_whole() {
        assert_eq!("\"abc\" is not a uuid", InvalidArgument::not_a_uuid("id", "abc").reason);
        let long = "é".repeat(100);
        let reason = InvalidArgument::not_a_uuid("id", &long).reason;
        assert!(reason.len() < QUOTED_VALUE_LEN_MAX + 32, "{reason}");
        assert!(reason.starts_with("\"éé") && reason.ends_with("\"... is not a uuid"), "{reason}");
    }
}
