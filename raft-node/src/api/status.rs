//! Mapping the table's typed errors and Raft's errors to gRPC statuses. The
//! encodings themselves (codes, `x-qm-*` headers) are `qm_api::wire`'s, the
//! one place that client and replica share.

use qm_api::wire::{Leader, WireError};
use qm_state_machine::{CommandError, InvalidArgument};
use tonic::Status;

use crate::types::NodeId;

pub fn invalid_argument(invalid: &InvalidArgument) -> Status {
    WireError::from(invalid.clone()).to_status()
}

pub fn command_error(error: &CommandError) -> Status {
    WireError::from(error).to_status()
}

/// This replica cannot serve the call; the leader (if known) can.
pub fn not_leader(leader: Option<(NodeId, String)>) -> Status {
    WireError::NotLeader {
        leader: leader.map(|(id, addr)| Leader { id, addr }),
    }
    .to_status()
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
