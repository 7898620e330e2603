//! The openraft type configuration of a Quartermaster replica.

use std::io::Cursor;

use qm_state_machine::{ApplyResult, StampedCommand};
use serde::{Deserialize, Serialize};

openraft::declare_raft_types!(
    /// Log entries carry a [`CommandBatch`]; applying one answers an [`AppResponse`].
    pub TypeConfig:
        D = CommandBatch,
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

/// One log entry's commands: proposals that arrived together at the leader,
/// applied in order. Batching many commands into one entry is the leader's
/// group commit: one append and one fsync for the whole batch (openraft 0.9
/// appends each `client_write` on its own).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandBatch {
    pub commands: Vec<StampedCommand>,
}

impl From<StampedCommand> for CommandBatch {
    fn from(command: StampedCommand) -> Self {
        CommandBatch { commands: vec![command] }
    }
}

impl std::fmt::Display for CommandBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} commands", self.commands.len())
    }
}

/// What applying one log entry answers (openraft's `R`).
///
/// openraft asks the state machine for one response per applied entry, but
/// only entries carrying a [`StampedCommand`] have an answer from the table.
/// Blank entries (each new leader's first entry) and membership changes get
/// variants of their own rather than a made-up `CommandResponse`, so no caller
/// can mistake them for the outcome of a command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AppResponse {
    /// The table's answers to a batch's commands, in order: each a success
    /// or a refusal, as applied.
    Commands(Vec<ApplyResult>),
    /// A leader's blank entry; it changes nothing in the table.
    Blank,
    /// A membership change; the new configuration is in
    /// `ClientWriteResponse::membership`.
    Membership,
}

impl AppResponse {
    /// The commands' answers, or `None` for a blank or membership entry.
    /// `Raft::client_write` of a batch always answers `Some`.
    pub fn into_command_results(self) -> Option<Vec<ApplyResult>> {
        match self {
            AppResponse::Commands(results) => Some(results),
            AppResponse::Blank | AppResponse::Membership => None,
        }
    }
}
