//! The leader's proposer: turns concurrent commands into batched log entries.
//!
//! ```text
//!  API handlers ──(command, reply)──▶ queue ──▶ proposer loop
//!                                                  │ wait for the batch in flight, then drain the queue
//!                                                  ▼ (at most PROPOSAL_BATCH_COMMANDS_MAX)
//!                                    one CommandBatch entry ──▶ Raft::client_write
//!                                                  │ committed on a majority's disk, applied in order
//!  API handlers ◀──── each its own ApplyResult ────┘
//! ```
//!
//! While a batch replicates, the commands that arrive wait in the queue and
//! form the next one, so batches grow with load; an idle leader sends each
//! command alone and adds no delay. Each command is stamped with the
//! leader's clock when its batch is formed.

use std::sync::Arc;
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use qm_state_machine::{ApplyResult, Command, StampedCommand};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tonic::Status;

use crate::api::status;
use crate::node::now_ms;
use crate::types::{CommandBatch, Raft};

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

struct Proposal {
    command: Command,
    reply: oneshot::Sender<Result<ApplyResult, Status>>,
}

/// A handle to the proposer loop. Cheap to clone.
#[derive(Clone)]
pub struct Proposer {
    queue: mpsc::Sender<Proposal>,
    request_timeout: Duration,
}

impl Proposer {
    /// Starts the loop; it ends when every handle is dropped.
    pub fn start(raft: Raft, request_timeout: Duration) -> Proposer {
        let (queue, waiting) = mpsc::channel(PROPOSAL_QUEUE_COMMANDS_MAX);
        tokio::spawn(run(raft, waiting, request_timeout));
        Proposer { queue, request_timeout }
    }

    /// Replicates `command` in the next batch and returns the table's answer.
    /// A command not committed within the request timeout is answered
    /// `DEADLINE_EXCEEDED`: its outcome is unknown.
    pub async fn propose(&self, command: Command) -> Result<ApplyResult, Status> {
        let operation_type = command.operation_type();
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Proposal { command, reply })
            .await
            .map_err(|_| Status::unavailable("this replica is stopping"))?;
        match tokio::time::timeout(self.request_timeout, answer).await {
            Err(_) => Err(Status::deadline_exceeded(format!(
                "{operation_type} was not committed within {} ms; its outcome is unknown (retry with the same request_id)",
                self.request_timeout.as_millis()
            ))),
            Ok(Err(_)) => Err(Status::unavailable(format!(
                "{operation_type}: the proposer stopped; its outcome is unknown"
            ))),
            Ok(Ok(answer)) => answer,
        }
    }
}

async fn run(raft: Raft, mut waiting: mpsc::Receiver<Proposal>, request_timeout: Duration) {
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
        let raft = raft.clone();
        tokio::spawn(async move {
            write_batch(&raft, batch, request_timeout).await;
            drop(slot);
        });
    }
}

/// Writes one batch and answers each of its callers.
async fn write_batch(raft: &Raft, batch: Vec<Proposal>, request_timeout: Duration) {
    let now = now_ms();
    // The commands move into the entry; only the reply channels stay here.
    let (commands, replies): (Vec<StampedCommand>, Vec<_>) = batch
        .into_iter()
        .map(|proposal| (StampedCommand::new(now, proposal.command), proposal.reply))
        .unzip();
    let written = tokio::time::timeout(request_timeout, raft.client_write(CommandBatch { commands })).await;
    let results: Result<Vec<ApplyResult>, Status> = match written {
        // The callers' own timeouts answer them; the batch may still commit.
        Err(_) => return,
        Ok(Ok(written)) => match written.data.into_command_results() {
            Some(results) if results.len() == replies.len() => Ok(results),
            other => Err(Status::internal(format!(
                "a batch of {} commands was answered with {other:?}",
                replies.len()
            ))),
        },
        Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(forward)))) => {
            Err(status::not_leader(forward.leader_id.zip(forward.leader_node.map(|node| node.addr))))
        }
        Ok(Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(error)))) => Err(Status::failed_precondition(error.to_string())),
        Ok(Err(RaftError::Fatal(fatal))) => Err(Status::unavailable(format!("this replica is stopping: {fatal}"))),
    };
    match results {
        Ok(results) => {
            for (reply, result) in replies.into_iter().zip(results) {
                let _ = reply.send(Ok(result));
            }
        }
        Err(status) => {
            for reply in replies {
                let _ = reply.send(Err(status.clone()));
            }
        }
    }
}
