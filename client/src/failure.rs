//! [`Failure`]: what a failed attempt on one replica means for the call.
//!
//! The server's conventions (see `proto/quartermaster.proto`): a follower
//! answers a write or a linearizable read with `UNAVAILABLE`, message
//! `not the leader ...` and the leader's address in `x-qm-leader-addr` when
//! it knows one, `no leader is known ...` when it does not. Bad input is `INVALID_ARGUMENT` naming the field in
//! `x-qm-field`. A write whose commit the server could not see in time is
//! `DEADLINE_EXCEEDED` or `UNAVAILABLE`: its outcome is unknown.

use std::error::Error as _;

use tonic::{Code, Status};

use crate::error::{ConflictKind, Error};

/// Metadata key of the leader's `host:port` on a NotLeader answer.
pub const LEADER_ADDR_HEADER: &str = "x-qm-leader-addr";
/// Metadata key of the leader's node id on a NotLeader answer.
pub const LEADER_ID_HEADER: &str = "x-qm-leader-id";
/// Metadata key of the bad field on an `INVALID_ARGUMENT` answer.
pub const FIELD_HEADER: &str = "x-qm-field";
/// How a NotLeader answer's message starts: "not the leader ..." with a
/// leader hint, "no leader is known ..." (qm-node) or "not the leader ..."
/// without one. Such an answer means the call did nothing: the replica
/// refused it before proposing, or (openraft's `ForwardToLeader` on a pending
/// write) its entry was truncated by a new leader and can never commit.
pub const NOT_LEADER_PREFIXES: [&str; 2] = ["not the leader", "no leader is known"];

/// One failed attempt, classified.
#[derive(Debug)]
pub(crate) enum Failure {
    /// A replica that is not the leader refused the call before doing
    /// anything; the leader is at `leader_addr` if it knows one.
    NotLeader {
        leader_addr: Option<String>,
        leader_id: Option<String>,
    },
    /// The replica or the path to it failed; another replica may serve the
    /// call. `maybe_applied` is false only when the call provably did not
    /// reach any state machine (the connection could not even be opened).
    /// `unreachable` when no answer came from the replica at all (a
    /// connection error, a broken stream), as opposed to a replica that
    /// answered it could not finish in time.
    Retryable {
        maybe_applied: bool,
        unreachable: bool,
        cause: String,
    },
    /// A definite answer: give it to the caller.
    Final(Error),
}

impl Failure {
    pub(crate) fn from_status(status: &Status) -> Failure {
        let message = status.message().to_owned();
        match status.code() {
            Code::Unavailable => {
                let leader_addr = metadata(status, LEADER_ADDR_HEADER);
                if leader_addr.is_some() || NOT_LEADER_PREFIXES.iter().any(|prefix| message.starts_with(prefix)) {
                    return Failure::NotLeader {
                        leader_addr,
                        leader_id: metadata(status, LEADER_ID_HEADER),
                    };
                }
                let maybe_applied = !is_connect_error(status);
                Failure::Retryable {
                    maybe_applied,
                    unreachable: is_local(status),
                    cause: describe(status),
                }
            }
            Code::DeadlineExceeded | Code::Cancelled => Failure::Retryable {
                maybe_applied: true,
                unreachable: is_local(status),
                cause: describe(status),
            },
            // A status the client made up from a broken connection (a reset
            // stream, a closed socket) rather than one the server sent.
            Code::Unknown | Code::Internal if is_local(status) => Failure::Retryable {
                maybe_applied: true,
                unreachable: true,
                cause: describe(status),
            },
            Code::InvalidArgument => Failure::Final(invalid_argument(status)),
            Code::NotFound => Failure::Final(Error::NotFound { message }),
            Code::AlreadyExists => Failure::Final(Error::Conflict {
                kind: ConflictKind::AlreadyExists,
                message,
            }),
            Code::FailedPrecondition => Failure::Final(Error::Conflict {
                kind: ConflictKind::FailedPrecondition,
                message,
            }),
            code => Failure::Final(Error::Server { code, message }),
        }
    }
}

/// `invalid <field>: <reason>`, with the field from `x-qm-field` when given.
fn invalid_argument(status: &Status) -> Error {
    let message = status.message();
    let parsed = message.strip_prefix("invalid ").and_then(|rest| rest.split_once(": "));
    match (metadata(status, FIELD_HEADER), parsed) {
        (Some(field), Some((named, reason))) if named == field => Error::invalid(field, reason),
        (Some(field), _) => Error::invalid(field, message),
        (None, Some((field, reason))) => Error::invalid(field, reason),
        (None, None) => Error::invalid("request", message),
    }
}

fn metadata(status: &Status, key: &str) -> Option<String> {
    let value = status.metadata().get(key)?.to_str().ok()?.trim();
    (!value.is_empty()).then(|| value.to_owned())
}

/// Made up by the client from a transport error, not sent by the server:
/// tonic keeps the error it came from as the status's source.
fn is_local(status: &Status) -> bool {
    status.source().is_some()
}

/// The connection could not be opened, so the request never left the client.
fn is_connect_error(status: &Status) -> bool {
    let mut source = status.source();
    while let Some(error) = source {
        if error.is::<tonic::ConnectError>() {
            return true;
        }
        source = error.source();
    }
    false
}

/// The status and its source chain in one line, for logs and `last_cause`.
fn describe(status: &Status) -> String {
    let mut text = format!("{:?}: {}", status.code(), status.message());
    let mut source = status.source();
    while let Some(error) = source {
        let cause = error.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
        source = error.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use tonic::metadata::MetadataValue;

    use super::*;

    fn with_metadata(mut status: Status, entries: &[(&'static str, &str)]) -> Status {
        for (key, value) in entries {
            status.metadata_mut().insert(*key, MetadataValue::try_from(*value).unwrap());
        }
        status
    }

    #[test]
    fn a_redirect_names_the_leader() {
        let status = with_metadata(
            Status::unavailable("not the leader; the leader is node 2"),
            &[(LEADER_ADDR_HEADER, "127.0.0.1:7102"), (LEADER_ID_HEADER, "2")],
        );

        let failure = Failure::from_status(&status);

        assert!(
            matches!(&failure, Failure::NotLeader { leader_addr: Some(addr), leader_id: Some(id) } if addr == "127.0.0.1:7102" && id == "2"),
            "{failure:?}"
        );
    }

    #[test]
    fn no_known_leader_is_a_redirect_without_hint() {
        let failure = Failure::from_status(&Status::unavailable("not the leader, and no leader is known"));

        assert!(
            matches!(
                failure,
                Failure::NotLeader {
                    leader_addr: None,
                    leader_id: None
                }
            ),
            "{failure:?}"
        );
    }

    #[test]
    fn qm_nodes_no_leader_answer_is_a_redirect_without_hint() {
        let status = Status::unavailable("no leader is known right now (election in progress or no quorum); retry shortly");

        let failure = Failure::from_status(&status);

        assert!(
            matches!(
                failure,
                Failure::NotLeader {
                    leader_addr: None,
                    leader_id: None
                }
            ),
            "{failure:?}"
        );
    }

    #[test]
    fn an_unavailable_server_may_have_applied_the_write() {
        let failure = Failure::from_status(&Status::unavailable("commit outcome unknown"));

        assert!(
            matches!(
                failure,
                Failure::Retryable {
                    maybe_applied: true,
                    unreachable: false,
                    ..
                }
            ),
            "{failure:?}"
        );
    }

    #[test]
    fn a_deadline_may_have_applied_the_write() {
        let failure = Failure::from_status(&Status::deadline_exceeded("no commit in time"));

        assert!(matches!(failure, Failure::Retryable { maybe_applied: true, .. }), "{failure:?}");
    }

    #[test]
    fn a_refused_connection_applied_nothing() {
        let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused");
        let status = Status::from_error(Box::new(tonic::ConnectError(Box::new(refused))));
        assert_eq!(Code::Unavailable, status.code());

        let failure = Failure::from_status(&status);

        assert!(
            matches!(&failure, Failure::Retryable { maybe_applied: false, unreachable: true, cause } if cause.contains("connection refused")),
            "{failure:?}"
        );
    }

    #[test]
    fn invalid_argument_names_the_field_from_metadata() {
        let status = with_metadata(
            Status::invalid_argument("invalid resource_requirements.cpu_cores: must be positive, got -1"),
            &[(FIELD_HEADER, "resource_requirements.cpu_cores")],
        );

        let Failure::Final(Error::InvalidArgument { field, reason }) = Failure::from_status(&status) else {
            panic!("not an InvalidArgument")
        };

        assert_eq!(
            ("resource_requirements.cpu_cores", "must be positive, got -1"),
            (field.as_str(), reason.as_str())
        );
    }

    #[test]
    fn invalid_argument_without_metadata_parses_the_message() {
        let Failure::Final(Error::InvalidArgument { field, reason }) =
            Failure::from_status(&Status::invalid_argument("invalid priority: is required"))
        else {
            panic!("not an InvalidArgument")
        };

        assert_eq!(("priority", "is required"), (field.as_str(), reason.as_str()));
    }

    #[test]
    fn refusals_are_final() {
        let cases = [
            (Status::not_found("no request or allocation with id x"), "NotFound"),
            (
                Status::already_exists("request_id x was already used for a different request"),
                "Conflict(AlreadyExists)",
            ),
            (
                Status::failed_precondition("allocation x has no lease to renew"),
                "Conflict(FailedPrecondition)",
            ),
            (
                Status::permission_denied("consumers may not add replicas"),
                "Server(PermissionDenied)",
            ),
            (Status::internal("bug"), "Server(Internal)"),
        ];
        for (status, expected) in cases {
            let kind = match Failure::from_status(&status) {
                Failure::Final(Error::NotFound { .. }) => "NotFound".to_owned(),
                Failure::Final(Error::Conflict { kind, .. }) => format!("Conflict({kind:?})"),
                Failure::Final(Error::Server { code, .. }) => format!("Server({code:?})"),
                other => format!("{other:?}"),
            };
            assert_eq!(expected, kind);
        }
    }
}
