//! The leader's proposer: turns concurrent commands into batched log entries.
//!
//! ```text
//!  API handlers ──(command, reply)──▶ queue ──▶ proposer loop
//!                                                  │ wait for the batch in flight, then drain the queue
//!                                                  ▼ (at most PROPOSAL_BATCH_COMMANDS_MAX)
//!                                    one CommandBatch entry ──▶ BatchWriter::write (Raft::client_write)
//!                                                  │ committed on a majority's disk, applied in order
//!  API handlers ◀──── each its own ApplyResult ────┘
//! ```
//!
//! While a batch replicates, the commands that arrive wait in the queue and
//! form the next one, so batches grow with load; an idle leader sends each
//! command alone and adds no delay. Each command is stamped with the
//! leader's clock when its batch is formed.
//!
//! The proposer only batches, times out and answers; writing one batch is a
//! [`BatchWriter`]'s job ([`RaftBatchWriter`](crate::consensus::raft_writer::RaftBatchWriter)
//! in a replica, a scripted one in `proposer_test.rs`).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use qm_state_machine::{ApplyResult, Command, StampedCommand};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::task::JoinHandle;

use crate::clock::now_ms;
use crate::consensus::error::{Leader, ProposeError};
use crate::types::CommandBatch;

/// Commands in one log entry at most.
pub const PROPOSAL_BATCH_COMMANDS_MAX: usize = 512;
/// Batches replicating at once; more commands wait in the queue and join the
/// next batch. One: openraft 0.9's core waits for each entry's flush before
/// it does anything else, so every extra batch in flight is one more flush
/// on the leader's critical path rather than more parallelism. Measured
/// against 4 (three interleaved rounds, 3 replicas on 2 cores): 17,000 vs
/// 14,600 calls/s at 256 in flight, 11,300 vs 8,500 at 64, p99 7 vs 10 ms at
/// 1,000 pairs/s (BENCHMARKS.md, finding 8). Two, after the Pipeline stream
/// made calls cheaper: no difference (finding 16).
pub const PROPOSALS_IN_FLIGHT_MAX: usize = 1;
/// Commands waiting for a batch at most; past this, callers wait to enqueue.
pub const PROPOSAL_QUEUE_COMMANDS_MAX: usize = 65_536;

/// [`ProposeError::Stopping`]'s reason when the proposer itself stopped.
pub const PROPOSER_STOPPED: &str = "the proposer stopped";

/// Why a whole batch got no answers from the table: every command of it is
/// answered with the same error.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BatchError {
    /// Refused before it was appended: nothing happened.
    NotLeader { leader: Option<Leader> },
    /// Appended here, then truncated by a newer leader: it may still commit.
    OutcomeUnknown { leader: Option<Leader> },
    /// Raft is shutting down, or stopped on a fatal error (a failed disk):
    /// `reason` says which.
    Stopping { reason: String },
    /// An answer a batch is never given (a bug).
    Internal { reason: String },
}

impl BatchError {
    /// This batch error as the answer to one of its commands.
    pub fn for_command(self, operation_type: &'static str) -> ProposeError {
        match self {
            BatchError::NotLeader { leader } => ProposeError::NotLeader { leader, operation_type },
            BatchError::OutcomeUnknown { leader } => ProposeError::OutcomeUnknown { leader, operation_type },
            BatchError::Stopping { reason } => ProposeError::Stopping { operation_type, reason },
            BatchError::Internal { reason } => ProposeError::Internal { operation_type, reason },
        }
    }
}

/// Writes one batch as one log entry and answers the table's result of each
/// of its commands, in order.
pub trait BatchWriter: Send + Sync + 'static {
    fn write(&self, batch: CommandBatch) -> impl Future<Output = Result<Vec<ApplyResult>, BatchError>> + Send;
}

struct Proposal {
    command: Command,
    reply: oneshot::Sender<Result<ApplyResult, BatchError>>,
}

/// A handle to the proposer loop. Cheap to clone.
#[derive(Clone)]
pub struct Proposer {
    queue: mpsc::Sender<Proposal>,
    request_timeout: Duration,
}

impl Proposer {
    /// Starts the loop; it ends when every handle is dropped.
    pub fn start(writer: impl BatchWriter, request_timeout: Duration) -> Proposer {
        Proposer::spawn(writer, request_timeout).0
    }

    /// Starts the loop and returns its task too (tests stop it).
    fn spawn(writer: impl BatchWriter, request_timeout: Duration) -> (Proposer, JoinHandle<()>) {
        let (queue, waiting) = mpsc::channel(PROPOSAL_QUEUE_COMMANDS_MAX);
        let task = tokio::spawn(run(Arc::new(writer), waiting, request_timeout));
        (Proposer { queue, request_timeout }, task)
    }

    /// Replicates `command` in the next batch and returns the table's answer.
    /// A command not committed within the request timeout is answered
    /// [`ProposeError::Timeout`]: its outcome is unknown.
    pub async fn propose(&self, command: Command) -> Result<ApplyResult, ProposeError> {
        let operation_type = command.operation_type();
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Proposal { command, reply })
            .await
            .map_err(|_| ProposeError::Stopping {
                operation_type,
                reason: PROPOSER_STOPPED.to_owned(),
            })?;
        match tokio::time::timeout(self.request_timeout, answer).await {
            Err(_) => Err(ProposeError::Timeout {
                timeout_ms: self.request_timeout.as_millis() as u64,
                operation_type,
            }),
            // The batch's task ended without answering: Raft or the runtime stopped.
            Ok(Err(_)) => Err(ProposeError::Stopping {
                operation_type,
                reason: PROPOSER_STOPPED.to_owned(),
            }),
            Ok(Ok(answer)) => answer.map_err(|error| error.for_command(operation_type)),
        }
    }
}

async fn run<W: BatchWriter>(writer: Arc<W>, mut waiting: mpsc::Receiver<Proposal>, request_timeout: Duration) {
    let in_flight = Arc::new(Semaphore::new(PROPOSALS_IN_FLIGHT_MAX));
    while let Some(first) = waiting.recv().await {
        let Ok(slot) = in_flight.clone().acquire_owned().await else {
            return;
        };
        let mut batch = vec![first];
        while batch.len() < PROPOSAL_BATCH_COMMANDS_MAX {
            match waiting.try_recv() {
                Ok(proposal) => batch.push(proposal),
                Err(_) => break,
            }
        }
        let writer = writer.clone();
        tokio::spawn(async move {
            write_batch(&*writer, batch, request_timeout).await;
            drop(slot);
        });
    }
}

/// Writes one batch and answers each of its callers.
async fn write_batch(writer: &impl BatchWriter, batch: Vec<Proposal>, request_timeout: Duration) {
    let now = now_ms();
    // The commands move into the entry; only the reply channels stay here.
    let (commands, replies): (Vec<StampedCommand>, Vec<_>) = batch
        .into_iter()
        .map(|proposal| (StampedCommand::new(now, proposal.command), proposal.reply))
        .unzip();
    let written = tokio::time::timeout(request_timeout, writer.write(CommandBatch { commands })).await;
    let results = match written {
        // The callers' own timeouts answer them; the batch may still commit.
        Err(_) => return,
        Ok(Ok(results)) if results.len() == replies.len() => Ok(results),
        Ok(Ok(results)) => Err(BatchError::Internal {
            reason: format!("a batch of {} commands was answered with {} results", replies.len(), results.len()),
        }),
        Ok(Err(error)) => Err(error),
    };
    match results {
        Ok(results) => {
            for (reply, result) in replies.into_iter().zip(results) {
                let _ = reply.send(Ok(result));
            }
        }
        Err(error) => {
            for reply in replies {
                let _ = reply.send(Err(error.clone()));
            }
        }
    }
}

#[cfg(test)]
#[path = "proposer_test.rs"]
mod tests;
