//! The openraft type configuration of a Quartermaster replica.

use std::io::Cursor;

use qm_state_machine::{ApplyResult, StampedCommand};
use serde::{Deserialize, Serialize};

openraft::declare_raft_types!(
    /// Log entries carry a [`StampedCommand`]; applying one answers an [`AppResponse`].
    pub TypeConfig:
        D = StampedCommand,
        R = AppResponse,
        NodeId = u64,
        Node = openraft::BasicNode,
        SnapshotData = Cursor<Vec<u8>>,
);

pub type NodeId = u64;
pub type Raft = openraft::Raft<TypeConfig>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type Vote = openraft::Vote<NodeId>;
pub type StoredMembership = openraft::StoredMembership<NodeId, openraft::BasicNode>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, openraft::BasicNode>;

/// What applying one log entry answers (openraft's `R`).
///
/// openraft asks the state machine for one response per applied entry, but
/// only entries carrying a [`StampedCommand`] have an answer from the table.
/// Blank entries (each new leader's first entry) and membership changes get
/// variants of their own rather than a made-up `CommandResponse`, so no caller
/// can mistake them for the outcome of a command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AppResponse {
    /// The table's answer to a command, a success or a refusal, as applied.
    Command(ApplyResult),
    /// A leader's blank entry; it changes nothing in the table.
    Blank,
    /// A membership change; the new configuration is in
    /// `ClientWriteResponse::membership`.
    Membership,
}

impl AppResponse {
    /// The command's answer, or `None` for a blank or membership entry.
    /// `Raft::client_write` of a command always answers `Some`.
    pub fn into_command_result(self) -> Option<ApplyResult> {
        match self {
            AppResponse::Command(result) => Some(result),
            AppResponse::Blank | AppResponse::Membership => None,
        }
    }
}
