//! [`RaftBatchWriter`]: the proposer's [`BatchWriter`] in a replica: one
//! `Raft::client_write` per batch, and what its `ForwardToLeader` means.
//!
//! # "Not the leader" after a proposal is not always "nothing happened"
//!
//! openraft 0.9.25 answers `client_write` with `ForwardToLeader` on two
//! paths, and only the first one means the write had no effect:
//!
//! 1. `Engine::get_leader_handler_or_reject` (`engine/engine_impl.rs`),
//!    called by `RaftCore::write_entry` (`core/raft_core.rs`) before
//!    `leader_append_entries`: this replica does not lead (or its vote is
//!    not committed yet). The entry was never appended anywhere: nothing
//!    happened, [`BatchError::NotLeader`].
//! 2. `Command::DeleteConflictLog` in `RaftCore::run_command`
//!    (`core/raft_core.rs`): the entry *was* appended here as leader, then a
//!    newer leader's AppendEntries (or snapshot) made this replica truncate
//!    it, and every writer waiting on an entry at or past the truncation
//!    point gets `ForwardToLeader`. Other replicas may still hold the entry,
//!    and a later leader may commit it (5 voters: the entry reaches the old
//!    leader and one follower; a third replica wins the election and
//!    truncates the old leader, then crashes; the follower holding the entry
//!    wins next and commits it). So it may or may not take effect:
//!    [`BatchError::OutcomeUnknown`].
//!
//! The two are told apart by what this replica knows, not by timing: the
//! log store counts truncations that removed entries
//! ([`TruncationCount`]), incrementing before `truncate` returns, so before
//! openraft sends path 2's errors (it sends them after `truncate` returns).
//! The count is read before `client_write` (before the entry can be
//! appended) and again on `ForwardToLeader`. Path 2 needs a truncation of
//! our entry after its append, so an unchanged count proves path 1; a
//! changed count may be anyone's truncation, and is answered
//! conservatively as unknown ([`forward_outcome`]).
//!
//! Other ways a write ends without an answer are unknown already: a leader
//! that steps down without truncating keeps the writer waiting until the
//! entry is applied (a later leader committed it) or the proposer's timeout
//! answers `Timeout`; a core that stops answers `Fatal`, which becomes
//! `Stopping`.

use std::path::PathBuf;

use openraft::error::{ClientWriteError, RaftError};
use qm_state_machine::ApplyResult;

use crate::consensus::error::Leader;
use crate::consensus::proposer::{BatchError, BatchWriter};
use crate::storage::fault::describe_fatal;
use crate::storage::TruncationCount;
use crate::types::{CommandBatch, Raft};

/// Writes batches through this replica's Raft.
pub struct RaftBatchWriter {
    raft: Raft,
    /// The log store's count of truncations, to classify `ForwardToLeader`.
    truncations: TruncationCount,
    /// Named when a failed disk stopped Raft (`crate::storage::fault`).
    data_dir: PathBuf,
}

impl RaftBatchWriter {
    pub fn new(raft: Raft, truncations: TruncationCount, data_dir: PathBuf) -> RaftBatchWriter {
        RaftBatchWriter {
            raft,
            truncations,
            data_dir,
        }
    }
}

impl BatchWriter for RaftBatchWriter {
    async fn write(&self, batch: CommandBatch) -> Result<Vec<ApplyResult>, BatchError> {
        let truncations_before = self.truncations.get();
        match self.raft.client_write(batch).await {
            Ok(written) => written.data.into_command_results().ok_or_else(|| BatchError::Internal {
                reason: "a command batch was answered as a blank or membership entry".to_owned(),
            }),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(forward))) => {
                let leader = forward
                    .leader_id
                    .zip(forward.leader_node)
                    .map(|(id, node)| Leader { id, addr: node.addr });
                let outcome = forward_outcome(truncations_before, self.truncations.get(), leader);
                if matches!(outcome, BatchError::OutcomeUnknown { .. }) {
                    tracing::warn!(
                        operation_type = "propose",
                        "a batch lost its leader after it may have been appended here; its outcome is unknown"
                    );
                }
                Err(outcome)
            }
            Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(error))) => Err(BatchError::Internal {
                reason: format!("a command batch was answered with a membership error: {error}"),
            }),
            Err(RaftError::Fatal(fatal)) => {
                tracing::warn!(%fatal, "a batch was not written: Raft is stopping");
                // A storage error names the data dir and the disk's error
                // (see storage::fault): the caller learns why.
                Err(BatchError::Stopping {
                    reason: describe_fatal(&fatal, &self.data_dir),
                })
            }
        }
    }
}

/// What `ForwardToLeader` means for a write, from the truncation count read
/// before the write and after its answer (see the module docs).
pub fn forward_outcome(truncations_before: u64, truncations_after: u64, leader: Option<Leader>) -> BatchError {
    match truncations_after == truncations_before {
        true => BatchError::NotLeader { leader },
        false => BatchError::OutcomeUnknown { leader },
    }
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
    fn no_truncation_since_the_write_means_it_was_refused() {
        assert_eq!(BatchError::NotLeader { leader: leader_2() }, forward_outcome(0, 0, leader_2()));
        assert_eq!(BatchError::NotLeader { leader: None }, forward_outcome(7, 7, None));
    }

    #[test]
    fn any_truncation_since_the_write_makes_its_outcome_unknown() {
        assert_eq!(BatchError::OutcomeUnknown { leader: leader_2() }, forward_outcome(0, 1, leader_2()));
        assert_eq!(BatchError::OutcomeUnknown { leader: None }, forward_outcome(7, 9, None));
    }
}
