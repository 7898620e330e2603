//! The conventions that travel beside the messages: every header name, and
//! the typed errors a replica answers with, each encoded into a
//! [`tonic::Status`] and decoded from it in one place.
//!
//! ```text
//!  replica: WireError::NotLeader { leader } ──into_status──▶ UNAVAILABLE
//!                                                            x-qm-error: not-leader
//!                                                            x-qm-leader-id: 2, x-qm-leader-addr: 127.0.0.1:7102
//!  client:  WireError::from_status(&status) ──▶ Some(WireError::NotLeader { leader: Some(Leader { id: 2, .. }) })
//! ```
//!
//! A status is recognised by its code and the `x-qm-error` header, never by
//! its message: the message is for people and may be reworded freely. A
//! status without that header and with a code no typed error uses (a
//! timeout, a broken connection, a replica that is stopping) decodes to
//! `None`: the caller cannot know whether a write behind it took effect.

use tonic::metadata::MetadataValue;
use tonic::{Code, Status};

/// Which typed error a status carries: `not-leader`, `outcome-unknown`, ...
pub const ERROR_HEADER: &str = "x-qm-error";
/// The leader's node id, on a `not-leader` or `outcome-unknown` answer.
pub const LEADER_ID_HEADER: &str = "x-qm-leader-id";
/// The leader's `host:port`, on a `not-leader` or `outcome-unknown` answer.
pub const LEADER_ADDR_HEADER: &str = "x-qm-leader-addr";
/// The bad field on an `INVALID_ARGUMENT` answer, as the protocol's JSON spells it.
pub const FIELD_HEADER: &str = "x-qm-field";
/// A caller's own correlation id for a call (gRPC metadata or HTTP header),
/// carried into the replica's audit trail; without it the trail uses the
/// request id the call is about.
pub const CORRELATION_ID_HEADER: &str = "x-qm-correlation-id";

/// Records one `List` call returns at most: a `ListRequest` whose `limit` is
/// 0 or larger gets this many, and a client that gets a full page must ask
/// for the next one (`after`) to be sure it has seen everything.
pub const LIST_LIMIT_MAX: usize = 10_000;
/// Log entries one `ReleaseMatching` call proposes before it answers with
/// `next` for the caller to continue: 4,096 entries of at most 1,024
/// releases each cover four million allocations, and the bound keeps a
/// call from running on for ever while new requests keep matching.
pub const BULK_RELEASE_ENTRIES_PER_CALL_MAX: u64 = 4096;
/// The most providers one ListProviders page holds (a larger or zero `limit` gets this many).
pub const PROVIDERS_PAGE_MAX: usize = 10_000;

/// A replica that leads the cluster, as another replica names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Leader {
    pub id: u64,
    /// Where clients reach it: `host:port`.
    pub addr: String,
}

/// Which refusal a [`WireError::Conflict`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConflictKind {
    /// The `request_id` was already used for a different request.
    AlreadyExists,
    /// The resource is in use, the allocation is not active, has no lease,
    /// or is placed on another provider.
    FailedPrecondition,
}

/// A replica's typed answer to a call it did not carry out as asked.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// This replica does not lead and refused the call before doing
    /// anything: nothing happened. The leader, when this replica knows it.
    #[error("not the leader{}", leader_suffix(.leader))]
    NotLeader { leader: Option<Leader> },
    /// The write was already in this replica's log when it stopped leading:
    /// another replica that holds the entry may still commit it, so it may
    /// or may not take effect. Retry with the same request id to learn which.
    /// The reason travels as the status's whole message.
    #[error("{reason}")]
    OutcomeUnknown { leader: Option<Leader>, reason: String },
    /// Bad input; nothing changed.
    #[error("invalid {field}: {reason}")]
    InvalidArgument { field: String, reason: String },
    /// No request, allocation or provider with that id.
    #[error("{message}")]
    NotFound { message: String },
    /// The table refused the operation in its current state; nothing changed.
    #[error("{message}")]
    Conflict { kind: ConflictKind, message: String },
}

fn leader_suffix(leader: &Option<Leader>) -> String {
    match leader {
        Some(leader) => format!("; the leader is replica {} at {}", leader.id, leader.addr),
        None => "; no leader is known right now (election in progress or no quorum)".to_owned(),
    }
}

/// The `x-qm-error` values, one per [`WireError`] variant and conflict kind.
const NOT_LEADER: &str = "not-leader";
const OUTCOME_UNKNOWN: &str = "outcome-unknown";
const INVALID_ARGUMENT: &str = "invalid-argument";
const NOT_FOUND: &str = "not-found";
const ALREADY_EXISTS: &str = "already-exists";
const FAILED_PRECONDITION: &str = "failed-precondition";

impl WireError {
    /// Bad input in `field`.
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> WireError {
        WireError::InvalidArgument {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// The gRPC code and `x-qm-error` value this error travels as.
    fn code_and_name(&self) -> (Code, &'static str) {
        match self {
            WireError::NotLeader { .. } => (Code::Unavailable, NOT_LEADER),
            WireError::OutcomeUnknown { .. } => (Code::Unavailable, OUTCOME_UNKNOWN),
            WireError::InvalidArgument { .. } => (Code::InvalidArgument, INVALID_ARGUMENT),
            WireError::NotFound { .. } => (Code::NotFound, NOT_FOUND),
            WireError::Conflict {
                kind: ConflictKind::AlreadyExists,
                ..
            } => (Code::AlreadyExists, ALREADY_EXISTS),
            WireError::Conflict {
                kind: ConflictKind::FailedPrecondition,
                ..
            } => (Code::FailedPrecondition, FAILED_PRECONDITION),
        }
    }

    /// The status a replica answers with.
    pub fn to_status(&self) -> Status {
        let (code, name) = self.code_and_name();
        let mut status = Status::new(code, self.to_string());
        let metadata = status.metadata_mut();
        metadata.insert(ERROR_HEADER, MetadataValue::from_static(name));
        match self {
            WireError::NotLeader { leader: Some(leader) } | WireError::OutcomeUnknown { leader: Some(leader), .. } => {
                metadata.insert(LEADER_ID_HEADER, MetadataValue::from(leader.id));
                // An address that is no valid header value (it came from a
                // replica's own configuration) is left out: the client then
                // asks the next replica instead of following a hint.
                if let Ok(addr) = MetadataValue::try_from(leader.addr.as_str()) {
                    metadata.insert(LEADER_ADDR_HEADER, addr);
                }
            }
            WireError::InvalidArgument { field, .. } => {
                if let Ok(field) = MetadataValue::try_from(field.as_str()) {
                    metadata.insert(FIELD_HEADER, field);
                }
            }
            _ => {}
        }
        status
    }

    /// The typed error a status carries, or `None` for a status that carries
    /// none (a timeout, a broken connection, a replica stopping, a status of
    /// another server).
    pub fn from_status(status: &Status) -> Option<WireError> {
        let message = status.message().to_owned();
        let named = header(status, ERROR_HEADER);
        match (status.code(), named.as_deref()) {
            (Code::Unavailable, Some(NOT_LEADER)) => Some(WireError::NotLeader { leader: leader(status) }),
            (Code::Unavailable, Some(OUTCOME_UNKNOWN)) => Some(WireError::OutcomeUnknown {
                leader: leader(status),
                reason: message,
            }),
            // The codes below mean one thing each, so a status of another
            // gRPC server that lacks the header still decodes.
            (Code::InvalidArgument, _) => Some(invalid_argument(status)),
            (Code::NotFound, _) => Some(WireError::NotFound { message }),
            (Code::AlreadyExists, _) => Some(WireError::Conflict {
                kind: ConflictKind::AlreadyExists,
                message,
            }),
            (Code::FailedPrecondition, _) => Some(WireError::Conflict {
                kind: ConflictKind::FailedPrecondition,
                message,
            }),
            _ => None,
        }
    }
}

impl From<WireError> for Status {
    fn from(error: WireError) -> Status {
        error.to_status()
    }
}

impl From<qm_state_machine::InvalidArgument> for WireError {
    fn from(invalid: qm_state_machine::InvalidArgument) -> WireError {
        WireError::InvalidArgument {
            field: invalid.field,
            reason: invalid.reason,
        }
    }
}

/// How the table's refusals travel: one place, used by every replica (and
/// the test harness's fake ones).
impl From<&qm_state_machine::CommandError> for WireError {
    fn from(error: &qm_state_machine::CommandError) -> WireError {
        use qm_state_machine::CommandError;
        let message = error.to_string();
        match error {
            CommandError::InvalidArgument(invalid) => WireError::invalid(invalid.field.clone(), invalid.reason.clone()),
            CommandError::NotFound { .. } | CommandError::UnknownProvider { .. } | CommandError::UnknownPolicy { .. } => {
                WireError::NotFound { message }
            }
            CommandError::RequestIdReused { .. } => WireError::Conflict {
                kind: ConflictKind::AlreadyExists,
                message,
            },
            CommandError::ResourceInUse { .. }
            | CommandError::NotActive { .. }
            | CommandError::NoLease { .. }
            | CommandError::WrongProvider { .. }
            | CommandError::PreemptionUnconfirmed { .. }
            // The API turns a refused capability into PERMISSION_DENIED
            // itself; a policy that changed under a call is a precondition
            // that failed, to be checked again.
            | CommandError::PolicyChanged { .. }
            | CommandError::CapabilityDenied { .. } => WireError::Conflict {
                kind: ConflictKind::FailedPrecondition,
                message,
            },
        }
    }
}

/// The field from `x-qm-field`, the reason from the message (`invalid
/// <field>: <reason>`) when it has that shape.
fn invalid_argument(status: &Status) -> WireError {
    let message = status.message();
    let parsed = message.strip_prefix("invalid ").and_then(|rest| rest.split_once(": "));
    match (header(status, FIELD_HEADER), parsed) {
        (Some(field), Some((named, reason))) if named == field => WireError::invalid(field, reason),
        (Some(field), _) => WireError::invalid(field, message),
        (None, Some((field, reason))) => WireError::invalid(field, reason),
        (None, None) => WireError::invalid("request", message),
    }
}

/// The leader named by the headers; both must be there and the id a number.
fn leader(status: &Status) -> Option<Leader> {
    let id = header(status, LEADER_ID_HEADER)?.parse().ok()?;
    let addr = header(status, LEADER_ADDR_HEADER)?;
    Some(Leader { id, addr })
}

fn header(status: &Status, key: &str) -> Option<String> {
    let value = status.metadata().get(key)?.to_str().ok()?.trim();
    (!value.is_empty()).then(|| value.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leader_2() -> Option<Leader> {
        Some(Leader {
            id: 2,
            addr: "127.0.0.1:7102".to_owned(),
        })
    }

    #[test]
    fn every_error_round_trips() {
        let errors = [
            WireError::NotLeader { leader: leader_2() },
            WireError::NotLeader { leader: None },
            WireError::OutcomeUnknown {
                leader: leader_2(),
                reason: "outcome unknown: the write was in this replica's log when it lost its leadership".to_owned(),
            },
            WireError::OutcomeUnknown {
                leader: None,
                reason: "outcome unknown: lost its leadership".to_owned(),
            },
            WireError::invalid("resource_requirements.cpu_cores", "must be positive, got -1"),
            WireError::NotFound {
                message: "no request or allocation with id x".to_owned(),
            },
            WireError::Conflict {
                kind: ConflictKind::AlreadyExists,
                message: "request_id x was already used for a different request".to_owned(),
            },
            WireError::Conflict {
                kind: ConflictKind::FailedPrecondition,
                message: "allocation x has no lease to renew".to_owned(),
            },
        ];
        for error in errors {
            assert_eq!(Some(error.clone()), WireError::from_status(&error.to_status()));
        }
    }

    #[test]
    fn not_leader_is_recognised_by_its_header_not_its_message() {
        let reworded = WireError::NotLeader { leader: leader_2() }.to_status();
        let reworded = Status::with_metadata(Code::Unavailable, "ask someone else", reworded.metadata().clone());

        assert_eq!(Some(WireError::NotLeader { leader: leader_2() }), WireError::from_status(&reworded));
        assert_eq!(None, WireError::from_status(&Status::unavailable("not the leader")));
    }

    #[test]
    fn statuses_without_a_typed_error_decode_to_none() {
        for status in [
            Status::deadline_exceeded("no commit in time"),
            Status::unavailable("this replica is stopping"),
            Status::internal("bug"),
            Status::permission_denied("consumers may not add replicas"),
        ] {
            assert_eq!(None, WireError::from_status(&status), "{status:?}");
        }
    }

    #[test]
    fn a_leader_hint_needs_both_headers() {
        let mut status = WireError::NotLeader { leader: leader_2() }.to_status();
        status.metadata_mut().remove(LEADER_ADDR_HEADER);

        assert_eq!(Some(WireError::NotLeader { leader: None }), WireError::from_status(&status));
    }

    #[test]
    fn invalid_argument_names_the_field_with_or_without_the_header() {
        let with_header = WireError::invalid("priority", "is required").to_status();
        let without_header = Status::invalid_argument("invalid priority: is required");
        let bare = Status::invalid_argument("cannot parse");

        assert_eq!(
            Some(WireError::invalid("priority", "is required")),
            WireError::from_status(&with_header)
        );
        assert_eq!(
            Some(WireError::invalid("priority", "is required")),
            WireError::from_status(&without_header)
        );
        assert_eq!(Some(WireError::invalid("request", "cannot parse")), WireError::from_status(&bare));
    }
}
