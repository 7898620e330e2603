//! [`Node`]: the handle every part of a replica shares: its Raft, its applied
//! table, its proposer, and the leader's heartbeat book.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::ServerState;
use qm_state_machine::{AllocationTable, Command, CommandResponse};

use crate::config::NodeConfig;
use crate::consensus::error::{Leader, NotLeader, ProposeError, ReadError};
use crate::consensus::heartbeats::HeartbeatBook;
use crate::consensus::leader_contact::LeaderContact;
use crate::consensus::proposer::Proposer;
use crate::metrics::Metrics;
use crate::storage::StateReader;
use crate::types::{NodeId, Raft};

pub struct Node {
    pub id: NodeId,
    pub config: NodeConfig,
    pub raft: Raft,
    pub proposer: Proposer,
    pub state: StateReader,
    pub heartbeats: Arc<Mutex<HeartbeatBook>>,
    pub metrics: Metrics,
    /// Recorded by the Raft RPC server; see [`Node::leader`].
    pub leader_contact: Arc<LeaderContact>,
    /// The cluster this replica belongs to (`consensus::announce`).
    pub identity: crate::storage::ClusterIdentity,
    /// The format versions this replica announces: its build's, unless a
    /// test makes it claim others.
    pub formats: super::announce::FormatVersions,
    /// What peers announced, and refusals; shown by `ClusterStatus`.
    pub peers: Arc<super::announce::PeerBook>,
    /// With mutual TLS: this replica's certificate as last (re)loaded, for
    /// calls it makes to another replica's API (a joiner's status).
    pub tls: Option<Arc<crate::security::reload::ReloadableTls>>,
}

impl Node {
    /// Reads the applied table. Keep `read` short: applying entries waits for it.
    pub async fn with_table<R>(&self, read: impl FnOnce(&AllocationTable) -> R) -> R {
        read(self.state.read().await.table())
    }

    /// Replicates `command` to a majority's disk (batched with whatever else
    /// is being proposed), applies it and returns the table's answer; a
    /// refusal of the table is [`ProposeError::Rejected`]. See
    /// [`ProposeError`] for which failures leave the outcome unknown.
    pub async fn propose(&self, command: Command) -> Result<CommandResponse, ProposeError> {
        let started = Instant::now();
        let operation_type = command.operation_type();
        let answered = self.proposer.propose(command).await;
        tracing::debug!(
            operation_type,
            commit_us = started.elapsed().as_micros() as u64,
            "proposal answered"
        );
        match answered {
            Err(ProposeError::NotLeader { leader, operation_type }) => Err(ProposeError::NotLeader {
                leader: self.live(leader),
                operation_type,
            }),
            Err(ProposeError::OutcomeUnknown { leader, operation_type }) => Err(ProposeError::OutcomeUnknown {
                leader: self.live(leader),
                operation_type,
            }),
            answered => answered?.map_err(ProposeError::Rejected),
        }
    }

    /// Makes the next local read linearizable: confirms leadership with a
    /// quorum and waits until the table has applied everything committed
    /// before the read. `stale` skips that and reads whatever is applied here.
    pub async fn read_barrier(&self, stale: bool) -> Result<(), ReadError> {
        if stale || self.config.unsafe_stale_reads {
            return Ok(());
        }
        let timeout_ms = self.config.request_timeout_ms;
        let confirmed = tokio::time::timeout(Duration::from_millis(timeout_ms), self.raft.ensure_linearizable()).await;
        let Ok(confirmed) = confirmed else {
            return Err(ReadError::QuorumUnconfirmed { timeout_ms });
        };
        let Err(error) = confirmed else {
            return Ok(());
        };
        if let Some(forward) = error.forward_to_leader::<openraft::BasicNode>() {
            let leader = forward
                .leader_id
                .zip(forward.leader_node.clone())
                .map(|(id, node)| Leader { id, addr: node.addr });
            return Err(ReadError::NotLeader { leader: self.live(leader) });
        }
        if let Some(fatal) = error.fatal() {
            return Err(ReadError::Stopping {
                reason: crate::storage::fault::describe_fatal(fatal, &self.config.data_dir),
            });
        }
        // Too few voters confirmed this leadership (QuorumNotEnough): send
        // the caller to whichever leader this replica knows now.
        Err(ReadError::NotLeader { leader: self.leader() })
    }

    /// Writes are only accepted by the leader; others redirect.
    pub fn require_leader(&self) -> Result<(), NotLeader> {
        if let Some(fault) = self.storage_fault() {
            // Its last metrics may still say it leads, or name a leader:
            // neither holds for a core that stopped.
            return Err(NotLeader {
                leader: None,
                storage_fault: Some(fault.to_string()),
            });
        }
        match self.leading_term() {
            Some(_) => Ok(()),
            None => Err(NotLeader {
                leader: self.leader(),
                storage_fault: None,
            }),
        }
    }

    /// Why this replica's Raft core stopped, when it stopped on a storage
    /// error (a full or failing disk); `None` while it runs.
    pub fn storage_fault(&self) -> Option<crate::storage::fault::StorageFault> {
        match &self.raft.metrics().borrow().running_state {
            Err(fatal) => crate::storage::fault::StorageFault::from_fatal(fatal, &self.config.data_dir),
            Ok(()) => None,
        }
    }

    /// The leader this replica knows of, with its address: itself, or one
    /// it has heard from within the longest election timeout
    /// ([`LeaderContact`]), never one that may be gone.
    pub fn leader(&self) -> Option<Leader> {
        let metrics = self.raft.metrics().borrow().clone();
        // A core that stopped (a failed disk) knows no leader any more,
        // whatever its last metrics said, itself included.
        if metrics.running_state.is_err() {
            return None;
        }
        let id = metrics.current_leader?;
        let addr = metrics.membership_config.membership().get_node(&id).map(|node| node.addr.clone())?;
        self.live(Some(Leader { id, addr }))
    }

    /// `leader` if it is this replica or was heard from recently enough;
    /// every hint a client gets passes through here.
    fn live(&self, leader: Option<Leader>) -> Option<Leader> {
        let window = Duration::from_millis(self.config.election_timeout_max_ms);
        leader.filter(|leader| leader.id == self.id || self.leader_contact.heard_within(window, Instant::now()))
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
