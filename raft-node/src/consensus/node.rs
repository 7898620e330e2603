//! [`Node`]: the handle every part of a replica shares: its Raft, its applied
//! table, the clock it stamps commands with, and the leader's heartbeat book.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use openraft::ServerState;
use qm_state_machine::{AllocationTable, Command, CommandResponse};
use tonic::Status;

use crate::api::status;
use crate::config::NodeConfig;
use crate::leader::HeartbeatBook;
use crate::metrics::Metrics;
use crate::proposer::Proposer;
use crate::storage::StateReader;
use crate::types::{NodeId, Raft};

/// The wall clock in milliseconds since the epoch: the leader's stamp on
/// commands. Only the leader's API and duties read it; the table never does.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
}

pub struct Node {
    pub id: NodeId,
    pub config: NodeConfig,
    pub raft: Raft,
    pub proposer: Proposer,
    pub state: StateReader,
    pub heartbeats: Arc<Mutex<HeartbeatBook>>,
    pub metrics: Metrics,
}

impl Node {
    /// Reads the applied table. Keep `read` short: applying entries waits for it.
    pub async fn with_table<R>(&self, read: impl FnOnce(&AllocationTable) -> R) -> R {
        read(self.state.read().await.table())
    }

    /// Replicates `command` to a majority's disk (batched with whatever else
    /// is being proposed), applies it and returns the table's answer. A
    /// follower answers with the leader's address instead; a write not
    /// committed within `request_timeout_ms` is reported as of unknown outcome.
    pub async fn propose(&self, command: Command) -> Result<CommandResponse, Status> {
        let started = std::time::Instant::now();
        let operation_type = command.operation_type();
        let answered = self.proposer.propose(command).await;
        tracing::debug!(
            operation_type,
            commit_us = started.elapsed().as_micros() as u64,
            "proposal answered"
        );
        answered?.map_err(|error| status::command_error(&error))
    }

    /// Makes the next local read linearizable: confirms leadership with a
    /// quorum and waits until the table has applied everything committed
    /// before the read. `stale` skips that and reads whatever is applied here.
    pub async fn read_barrier(&self, stale: bool) -> Result<(), Status> {
        if stale || self.config.unsafe_stale_reads {
            return Ok(());
        }
        let timeout = Duration::from_millis(self.config.request_timeout_ms);
        match tokio::time::timeout(timeout, self.raft.ensure_linearizable()).await {
            Err(_) => Err(Status::unavailable("could not confirm leadership with a quorum in time")),
            Ok(Ok(_)) => Ok(()),
            Ok(Err(error)) => match error.forward_to_leader::<openraft::BasicNode>() {
                Some(forward) => Err(status::not_leader(
                    forward.leader_id.zip(forward.leader_node.clone().map(|node| node.addr)),
                )),
                None if error.fatal().is_some() => Err(Status::unavailable(format!("this replica is stopping: {error}"))),
                None => Err(status::not_leader(self.leader())),
            },
        }
    }

    /// Writes are only accepted by the leader; others redirect.
    pub fn require_leader(&self) -> Result<(), Status> {
        match self.leading_term() {
            Some(_) => Ok(()),
            None => Err(status::not_leader(self.leader())),
        }
    }

    /// The leader this replica knows of, with its address.
    pub fn leader(&self) -> Option<(NodeId, String)> {
        let metrics = self.raft.metrics().borrow().clone();
        let leader = metrics.current_leader?;
        let addr = metrics
            .membership_config
            .membership()
            .get_node(&leader)
            .map(|node| node.addr.clone())?;
        Some((leader, addr))
    }

    /// The highest log index this replica knows to be committed.
    pub async fn commit_index(&self) -> u64 {
        self.raft
            .with_raft_state(|state| state.committed.map_or(0, |log_id| log_id.index))
            .await
            .unwrap_or(0)
    }

    /// The current term, if this replica is its leader.
    pub fn leading_term(&self) -> Option<u64> {
        let metrics = self.raft.metrics().borrow().clone();
        (metrics.state == ServerState::Leader && metrics.current_leader == Some(self.id)).then_some(metrics.current_term)
    }
}
