//! [`Failure`]: what a failed attempt on one replica means for the call.
//!
//! A replica's typed answers are decoded by `qm_api::wire` (a header names
//! each, never the message text): `not-leader` (nothing happened; the leader
//! when known), `outcome-unknown` (the write was in the replica's log when it
//! stopped leading), bad input, not found, a conflict. Any other status (a
//! deadline, a replica stopping, a broken connection) says nothing certain
//! about a write behind it, except a connection that could not be opened.

use std::error::Error as _;

use qm_api::wire::{Leader, WireError};
use tonic::{Code, Status};

use crate::error::Error;

/// One failed attempt, classified.
#[derive(Debug)]
pub(crate) enum Failure {
    /// A replica that is not the leader did not carry the call out; the
    /// leader is at `leader_addr` if it knows one. `maybe_applied` when the
    /// write was already in its log as it stopped leading (the replica's
    /// `outcome-unknown`): a replica that holds the entry may still commit
    /// it. Without it, the replica refused the call before proposing it.
    NotLeader {
        leader_addr: Option<String>,
        leader_id: Option<String>,
        maybe_applied: bool,
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
        if let Some(error) = WireError::from_status(status) {
            return Failure::from_wire(error);
        }
        match status.code() {
            Code::Unavailable => Failure::Retryable {
                maybe_applied: !is_connect_error(status),
                unreachable: is_local(status),
                cause: describe(status),
            },
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
            code => Failure::Final(Error::Server {
                code,
                message: status.message().to_owned(),
            }),
        }
    }

    fn from_wire(error: WireError) -> Failure {
        let redirect = |leader: Option<Leader>, maybe_applied| {
            let (leader_id, leader_addr) = leader.map(|leader| (leader.id.to_string(), leader.addr)).unzip();
            Failure::NotLeader {
                leader_addr,
                leader_id,
                maybe_applied,
            }
        };
        match error {
            WireError::NotLeader { leader } => redirect(leader, false),
            WireError::OutcomeUnknown { leader, .. } => redirect(leader, true),
            WireError::InvalidArgument { field, reason } => Failure::Final(Error::InvalidArgument { field, reason }),
            WireError::NotFound { message } => Failure::Final(Error::NotFound { message }),
            WireError::Conflict { kind, message } => Failure::Final(Error::Conflict { kind, message }),
        }
    }
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
    use super::*;

    fn leader_2() -> Option<Leader> {
        Some(Leader {
            id: 2,
            addr: "127.0.0.1:7102".to_owned(),
        })
    }

    #[test]
    fn a_redirect_names_the_leader() {
        let status = WireError::NotLeader { leader: leader_2() }.to_status();

        let failure = Failure::from_status(&status);

        assert!(
            matches!(&failure, Failure::NotLeader { leader_addr: Some(addr), leader_id: Some(id), maybe_applied: false } if addr == "127.0.0.1:7102" && id == "2"),
            "{failure:?}"
        );
    }

    #[test]
    fn no_known_leader_is_a_redirect_without_hint() {
        let failure = Failure::from_status(&WireError::NotLeader { leader: None }.to_status());

        assert!(
            matches!(
                failure,
                Failure::NotLeader {
                    leader_addr: None,
                    leader_id: None,
                    maybe_applied: false
                }
            ),
            "{failure:?}"
        );
    }

    #[test]
    fn a_lost_leadership_is_a_redirect_after_which_the_write_may_have_happened() {
        let status = WireError::OutcomeUnknown {
            leader: leader_2(),
            reason: "outcome unknown: in the log when leadership was lost".to_owned(),
        }
        .to_status();

        let failure = Failure::from_status(&status);

        assert!(
            matches!(&failure, Failure::NotLeader { leader_addr: Some(addr), maybe_applied: true, .. } if addr == "127.0.0.1:7102"),
            "{failure:?}"
        );
    }

    #[test]
    fn a_not_leader_message_without_its_header_is_no_redirect() {
        // Recognised by the header only: a reworded or foreign message must
        // not be taken for "nothing happened".
        let failure = Failure::from_status(&Status::unavailable("not the leader; the leader is node 2"));

        assert!(matches!(failure, Failure::Retryable { maybe_applied: true, .. }), "{failure:?}");
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
    fn invalid_argument_names_the_field() {
        let status = WireError::invalid("resource_requirements.cpu_cores", "must be positive, got -1").to_status();

        let Failure::Final(Error::InvalidArgument { field, reason }) = Failure::from_status(&status) else {
            panic!("not an InvalidArgument")
        };

        assert_eq!(
            ("resource_requirements.cpu_cores", "must be positive, got -1"),
            (field.as_str(), reason.as_str())
        );
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
