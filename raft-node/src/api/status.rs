//! Mapping the table's typed errors and Raft's errors to gRPC statuses.
//!
//! Conventions the client library relies on:
//! * bad input: `INVALID_ARGUMENT`, message `invalid <field>: <reason>`,
//!   metadata `x-qm-field`;
//! * not the leader: `UNAVAILABLE` with `x-qm-leader-id` / `x-qm-leader-addr`
//!   when the leader is known;
//! * a write whose outcome is unknown (timed out waiting for commit):
//!   `DEADLINE_EXCEEDED` — it may still take effect.

use qm_state_machine::{CommandError, InvalidArgument};
use tonic::metadata::MetadataValue;
use tonic::Status;

use crate::types::NodeId;

pub const FIELD_HEADER: &str = "x-qm-field";
pub const LEADER_ID_HEADER: &str = "x-qm-leader-id";
pub const LEADER_ADDR_HEADER: &str = "x-qm-leader-addr";

pub fn invalid_argument(invalid: &InvalidArgument) -> Status {
    let mut status = Status::invalid_argument(invalid.to_string());
    if let Ok(value) = MetadataValue::try_from(invalid.field.as_str()) {
        status.metadata_mut().insert(FIELD_HEADER, value);
    }
    status
}

pub fn command_error(error: &CommandError) -> Status {
    match error {
        CommandError::InvalidArgument(invalid) => invalid_argument(invalid),
        CommandError::NotFound { .. } | CommandError::UnknownProvider { .. } => Status::not_found(error.to_string()),
        CommandError::RequestIdReused { .. } => Status::already_exists(error.to_string()),
        CommandError::ResourceInUse { .. }
        | CommandError::NotActive { .. }
        | CommandError::NoLease { .. }
        | CommandError::WrongProvider { .. } => Status::failed_precondition(error.to_string()),
    }
}

/// This replica cannot serve the call; the leader (if known) can.
pub fn not_leader(leader: Option<(NodeId, String)>) -> Status {
    match leader {
        Some((id, addr)) => {
            let mut status = Status::unavailable(format!("not the leader; the leader is replica {id} at {addr}"));
            if let Ok(value) = MetadataValue::try_from(id.to_string()) {
                status.metadata_mut().insert(LEADER_ID_HEADER, value);
            }
            if let Ok(value) = MetadataValue::try_from(addr.as_str()) {
                status.metadata_mut().insert(LEADER_ADDR_HEADER, value);
            }
            status
        }
        None => Status::unavailable("no leader is known right now (election in progress or no quorum); retry shortly"),
    }
}

/// Parses a uuid field of a request.
pub fn parse_uuid(field: &str, text: &str) -> Result<uuid::Uuid, Status> {
    if text.is_empty() {
        return Err(invalid_argument(&InvalidArgument::new(field, "is required")));
    }
    uuid::Uuid::parse_str(text).map_err(|_| invalid_argument(&InvalidArgument::new(field, format!("{text:?} is not a uuid"))))
}

/// Checks a required identifier field of a request.
pub fn require_id(field: &str, value: &str) -> Result<(), Status> {
    qm_state_machine::request::check_id(field, value).map_err(|invalid| invalid_argument(&invalid))
}
