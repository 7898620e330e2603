//! What a proposal or a linearizable read answers when it did not succeed:
//! plain typed errors, carrying what a caller needs to decide (the leader to
//! follow, whether the write may still take effect, the timeout that
//! passed). Only the API edge (`crate::api::status`) turns them into gRPC
//! statuses.

use qm_state_machine::CommandError;

use crate::types::NodeId;

/// A replica that leads the cluster, as this replica knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Leader {
    pub id: NodeId,
    /// Where clients reach it: `host:port`, from the membership config.
    pub addr: String,
}

/// This replica does not lead and refused before doing anything.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("this replica is not the leader (leader: {leader:?})")]
pub struct NotLeader {
    /// The leader this replica knows of, if any.
    pub leader: Option<Leader>,
    /// Set when this replica's Raft core stopped on a full or failing disk
    /// ([`crate::storage::fault`]): it leads nothing until the disk takes
    /// writes again, and every caller is told why.
    pub storage_fault: Option<String>,
}

/// Why a proposed command has no answer from the table.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProposeError {
    /// This replica does not lead; the command was never appended to any
    /// log: nothing happened.
    #[error("{operation_type}: this replica is not the leader (leader: {leader:?})")]
    NotLeader {
        leader: Option<Leader>,
        operation_type: &'static str,
    },
    /// The command was in this replica's log when a newer leader's entries
    /// truncated it here. Another replica may hold the entry and a later
    /// leader may commit it: it may or may not take effect.
    #[error("{operation_type}: outcome unknown: the write was in this replica's log when it lost its leadership; another replica may still commit it (retry with the same request_id to learn whether it took effect)")]
    OutcomeUnknown {
        leader: Option<Leader>,
        operation_type: &'static str,
    },
    /// Not committed within the request timeout; it may still commit.
    #[error("{operation_type} was not committed within {timeout_ms} ms; its outcome is unknown (retry with the same request_id)")]
    Timeout { timeout_ms: u64, operation_type: &'static str },
    /// This replica's proposer or Raft is shutting down; a command already
    /// queued or appended may or may not take effect.
    #[error("this replica is stopping ({reason}); the outcome of {operation_type} is unknown")]
    Stopping { operation_type: &'static str, reason: String },
    /// Committed and applied: the table refused it and changed nothing.
    #[error(transparent)]
    Rejected(CommandError),
    /// openraft answered something a command batch is never answered with:
    /// a bug, reported rather than hidden.
    #[error("{operation_type}: {reason}")]
    Internal { operation_type: &'static str, reason: String },
}

/// Why a linearizable read could not be served here.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    /// This replica does not lead (or could not show that it still does).
    #[error("this replica is not the leader (leader: {leader:?})")]
    NotLeader { leader: Option<Leader> },
    /// A quorum did not confirm this replica's leadership in time.
    #[error("could not confirm leadership with a quorum within {timeout_ms} ms")]
    QuorumUnconfirmed { timeout_ms: u64 },
    /// Raft is shutting down.
    #[error("this replica is stopping: {reason}")]
    Stopping { reason: String },
}

impl From<NotLeader> for ReadError {
    fn from(not_leader: NotLeader) -> ReadError {
        if let Some(reason) = not_leader.storage_fault {
            return ReadError::Stopping { reason };
        }
        ReadError::NotLeader { leader: not_leader.leader }
    }
}
