//! The API edge's one mapping from typed errors to gRPC statuses: the
//! table's refusals and bad input, and the consensus layer's
//! [`ProposeError`], [`ReadError`] and [`NotLeader`]. The encodings
//! themselves (codes, `x-qm-*` headers) are `qm_api::wire`'s, the one place
//! that client and replica share; errors without a typed wire form (a
//! timeout, a replica stopping) are plain statuses, which a client decodes
//! as "cannot know".
//!
//! ```text
//!  ProposeError::NotLeader       ─▶ WireError::NotLeader       (UNAVAILABLE + leader headers: nothing happened)
//!  ProposeError::OutcomeUnknown  ─▶ WireError::OutcomeUnknown  (UNAVAILABLE + leader headers: may take effect)
//!  ProposeError::Rejected(e)     ─▶ WireError::from(&e)        (INVALID_ARGUMENT, NOT_FOUND, ALREADY_EXISTS, FAILED_PRECONDITION)
//!  ProposeError::Timeout         ─▶ DEADLINE_EXCEEDED          (outcome unknown, retry with the same request_id)
//!  ProposeError::Stopping        ─▶ UNAVAILABLE
//!  ReadError::NotLeader          ─▶ WireError::NotLeader       (a read changes nothing: never outcome-unknown)
//!  ReadError::QuorumUnconfirmed, Stopping ─▶ UNAVAILABLE
//! ```

use qm_api::wire::{self, WireError};
use qm_state_machine::{CommandError, InvalidArgument};
use tonic::Status;

use crate::consensus::{Leader, NotLeader, ProposeError, ReadError};

pub fn invalid_argument(invalid: &InvalidArgument) -> Status {
    WireError::from(invalid.clone()).to_status()
}

pub fn command_error(error: &CommandError) -> Status {
    WireError::from(error).to_status()
}

/// This replica cannot serve the call; the leader (if known) can.
pub fn not_leader(leader: Option<Leader>) -> Status {
    WireError::NotLeader {
        leader: wire_leader(leader),
    }
    .to_status()
}

fn wire_leader(leader: Option<Leader>) -> Option<wire::Leader> {
    leader.map(|Leader { id, addr }| wire::Leader { id, addr })
}

impl From<NotLeader> for Status {
    fn from(error: NotLeader) -> Status {
        // Plain UNAVAILABLE, no leader hint: the client tries the other
        // replicas, and whoever reads the error learns which disk failed.
        if let Some(fault) = error.storage_fault {
            return Status::unavailable(fault);
        }
        not_leader(error.leader)
    }
}

impl From<ProposeError> for Status {
    fn from(error: ProposeError) -> Status {
        match error {
            ProposeError::NotLeader { leader, .. } => not_leader(leader),
            ProposeError::OutcomeUnknown { ref leader, .. } => WireError::OutcomeUnknown {
                leader: wire_leader(leader.clone()),
                reason: error.to_string(),
            }
            .to_status(),
            ProposeError::Rejected(refusal) => command_error(&refusal),
            ProposeError::Timeout { .. } => Status::deadline_exceeded(error.to_string()),
            ProposeError::Stopping { .. } => Status::unavailable(error.to_string()),
            ProposeError::Internal { .. } => Status::internal(error.to_string()),
        }
    }
}

impl From<ReadError> for Status {
    fn from(error: ReadError) -> Status {
        match error {
            ReadError::NotLeader { leader } => not_leader(leader),
            ReadError::QuorumUnconfirmed { .. } | ReadError::Stopping { .. } => Status::unavailable(error.to_string()),
        }
    }
}

/// Parses a uuid field of a request.
pub fn parse_uuid(field: &str, text: &str) -> Result<uuid::Uuid, Status> {
    if text.is_empty() {
        return Err(invalid_argument(&InvalidArgument::new(field, "is required")));
    }
    uuid::Uuid::parse_str(text).map_err(|_| invalid_argument(&InvalidArgument::not_a_uuid(field, text)))
}

/// Checks a required identifier field of a request.
pub fn require_id(field: &str, value: &str) -> Result<(), Status> {
    qm_state_machine::request::check_id(field, value).map_err(|invalid| invalid_argument(&invalid))
}

#[cfg(test)]
mod tests {
    use tonic::Code;

    use super::*;

    fn leader_2() -> Option<Leader> {
        Some(Leader {
            id: 2,
            addr: "127.0.0.1:7102".to_owned(),
        })
    }

    fn wire_leader_2() -> Option<wire::Leader> {
        Some(wire::Leader {
            id: 2,
            addr: "127.0.0.1:7102".to_owned(),
        })
    }

    fn decoded(status: &Status) -> Option<WireError> {
        WireError::from_status(status)
    }

    #[test]
    fn a_refused_write_redirects_and_a_truncated_one_is_of_unknown_outcome() {
        let refused = Status::from(ProposeError::NotLeader {
            leader: leader_2(),
            operation_type: "allocate",
        });
        let truncated = Status::from(ProposeError::OutcomeUnknown {
            leader: leader_2(),
            operation_type: "allocate",
        });

        assert_eq!(Some(WireError::NotLeader { leader: wire_leader_2() }), decoded(&refused));
        match decoded(&truncated) {
            Some(WireError::OutcomeUnknown { leader, reason }) => {
                assert_eq!(wire_leader_2(), leader);
                assert!(reason.contains("same request_id"), "{reason}");
            }
            other => panic!("expected outcome-unknown, got {other:?}"),
        }
    }

    #[test]
    fn a_timed_out_write_says_its_outcome_is_unknown_and_carries_no_typed_error() {
        let status = Status::from(ProposeError::Timeout {
            timeout_ms: 5_000,
            operation_type: "allocate",
        });

        assert_eq!(Code::DeadlineExceeded, status.code());
        assert_eq!(
            "allocate was not committed within 5000 ms; its outcome is unknown (retry with the same request_id)",
            status.message()
        );
        assert_eq!(None, decoded(&status));
    }

    #[test]
    fn a_stopping_replica_and_an_unconfirmed_read_are_plain_unavailable() {
        let statuses = [
            Status::from(ProposeError::Stopping {
                operation_type: "release",
                reason: "the proposer stopped".to_owned(),
            }),
            Status::from(ReadError::QuorumUnconfirmed { timeout_ms: 5_000 }),
            Status::from(ReadError::Stopping {
                reason: "fatal".to_owned(),
            }),
        ];
        for status in statuses {
            assert_eq!(Code::Unavailable, status.code(), "{status:?}");
            assert_eq!(None, decoded(&status), "{status:?}");
        }
    }

    #[test]
    fn a_read_on_a_follower_redirects() {
        let status = Status::from(ReadError::NotLeader { leader: leader_2() });

        assert_eq!(Some(WireError::NotLeader { leader: wire_leader_2() }), decoded(&status));
    }

    #[test]
    fn a_refusal_of_the_table_keeps_its_wire_form() {
        let id = uuid::Uuid::from_u128(7);
        let status = Status::from(ProposeError::Rejected(CommandError::NotFound { id }));

        assert_eq!(Code::NotFound, status.code());
        assert_eq!(command_error(&CommandError::NotFound { id }).message(), status.message());
    }
}
