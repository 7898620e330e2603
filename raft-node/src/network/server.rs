//! The receiving side of Raft traffic: admit (resource_manager certificates
//! only, when TLS is on), judge the sender's announcement (its cluster id and
//! format versions, `consensus::announce`), decode, hand to the local `Raft`,
//! encode openraft's whole `Result` back with this replica's announcement.

use crate::proto::raft_server::Raft as RaftService;
use crate::proto::RaftMessage;
use tonic::{Request, Response, Status};

use std::sync::Arc;

use openraft::raft::AppendEntriesResponse;

use crate::codec;
use crate::consensus::announce::{judge, Announcement, Verdict, HEADER_REFUSED};
use crate::consensus::{LeaderContact, Node};
use crate::security::{Call, Guard};
use crate::types::Raft;
use tonic::metadata::MetadataMap;
use tracing::{info, warn};

/// Serves `quartermaster.raft.v1.Raft` for one replica.
pub struct RaftRpcServer {
    raft: Raft,
    /// Only replicas may append, vote or install snapshots: anyone else
    /// could rewrite the log.
    guard: Guard,
    /// Told of every AppendEntries and InstallSnapshot accepted from a
    /// leader (a sender whose vote this replica did not refuse).
    leader_contact: Arc<LeaderContact>,
    /// The replica whose cluster id and formats judge each sender
    /// (`consensus::announce`); `None`: every sender accepted.
    node: Option<Arc<Node>>,
}

impl RaftRpcServer {
    pub fn new(raft: Raft, guard: Guard, leader_contact: Arc<LeaderContact>) -> Self {
        RaftRpcServer {
            raft,
            guard,
            leader_contact,
            node: None,
        }
    }

    /// Judges every sender's announcement against `node`'s, and answers with
    /// `node`'s own.
    pub fn announcing(mut self, node: Arc<Node>) -> Self {
        self.node = Some(node);
        self
    }

    /// Accepts the sender (adopting its cluster id if this replica has none
    /// and the sender leads), or refuses it with a one-line reason.
    async fn admit_peer(&self, metadata: &MetadataMap, from_leader: bool) -> Result<(), Status> {
        let Some(node) = &self.node else { return Ok(()) };
        let said = Announcement::from_metadata(metadata);
        match judge(node.identity.get().as_deref(), &node.formats, &said, from_leader) {
            Verdict::Accept => {}
            Verdict::Adopt(cluster_id) => {
                node.identity
                    .set(&cluster_id)
                    .await
                    .map_err(|error| Status::unavailable(format!("cannot store the cluster id: {error}")))?;
                info!(%cluster_id, leader = ?said.replica_id, "joined the cluster: took the leader's cluster id");
            }
            Verdict::Refuse(refusal) => {
                if let Some(peer) = said.replica_id {
                    if node.peers.refused(peer, &said, format!("refused by this replica: {refusal}")) {
                        warn!(peer, reason = %refusal, "refusing a peer's Raft traffic");
                    }
                }
                let mut status = Status::failed_precondition(refusal.to_string());
                own_announcement(node).to_metadata(status.metadata_mut());
                if let Ok(kind) = refusal.kind().parse() {
                    status.metadata_mut().insert(HEADER_REFUSED, kind);
                }
                return Err(status);
            }
        }
        if let Some(peer) = said.replica_id {
            node.peers.accepted(peer, &said);
        }
        Ok(())
    }

    /// The reply, with this replica's announcement.
    fn answer<T: serde::Serialize>(&self, result: &T) -> Result<Response<RaftMessage>, Status> {
        let mut response = reply(result)?;
        if let Some(node) = &self.node {
            own_announcement(node).to_metadata(response.metadata_mut());
        }
        Ok(response)
    }
}

fn own_announcement(node: &Node) -> Announcement {
    Announcement {
        replica_id: Some(node.id),
        cluster_id: node.identity.get(),
        formats: Some(node.formats),
    }
}

fn decode_request<T: serde::de::DeserializeOwned>(request: Request<RaftMessage>) -> Result<T, Status> {
    codec::decode(&request.into_inner().payload).map_err(|e| Status::invalid_argument(format!("raft payload: {e}")))
}

fn reply<T: serde::Serialize>(result: &T) -> Result<Response<RaftMessage>, Status> {
    Ok(Response::new(RaftMessage {
        payload: codec::encode(result),
    }))
}

#[tonic::async_trait]
impl RaftService for RaftRpcServer {
    async fn append_entries(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        self.guard.admit(&request, Call::AppendEntries)?;
        self.admit_peer(request.metadata(), true).await?;
        let append: openraft::raft::AppendEntriesRequest<crate::types::TypeConfig> = decode_request(request)?;
        let term = append.vote.leader_id().term;
        let result = self.raft.append_entries(append).await;
        if matches!(
            result,
            Ok(AppendEntriesResponse::Success | AppendEntriesResponse::PartialSuccess(_) | AppendEntriesResponse::Conflict)
        ) {
            self.leader_contact.heard(term);
        }
        self.answer(&result)
    }

    async fn vote(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        self.guard.admit(&request, Call::Vote)?;
        self.admit_peer(request.metadata(), false).await?;
        let result = self.raft.vote(decode_request(request)?).await;
        self.answer(&result)
    }

    async fn install_snapshot(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        self.guard.admit(&request, Call::InstallSnapshot)?;
        self.admit_peer(request.metadata(), true).await?;
        let snapshot: openraft::raft::InstallSnapshotRequest<crate::types::TypeConfig> = decode_request(request)?;
        let leader_vote = snapshot.vote;
        let result = self.raft.install_snapshot(snapshot).await;
        // Accepted: this replica's vote is now the sender's.
        if result.as_ref().is_ok_and(|response| response.vote == leader_vote) {
            self.leader_contact.heard(leader_vote.leader_id().term);
        }
        self.answer(&result)
    }
}
