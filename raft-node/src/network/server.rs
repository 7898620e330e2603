//! The receiving side of Raft traffic: admit (resource_manager certificates
//! only, when TLS is on), decode, hand to the local `Raft`, encode openraft's
//! whole `Result` back.

use crate::proto::raft_server::Raft as RaftService;
use crate::proto::RaftMessage;
use tonic::{Request, Response, Status};

use std::sync::Arc;

use openraft::raft::AppendEntriesResponse;

use crate::codec;
use crate::consensus::LeaderContact;
use crate::security::{Call, Guard};
use crate::types::Raft;

/// Serves `quartermaster.raft.v1.Raft` for one replica.
pub struct RaftRpcServer {
    raft: Raft,
    /// Only replicas may append, vote or install snapshots: anyone else
    /// could rewrite the log.
    guard: Guard,
    /// Told of every AppendEntries and InstallSnapshot accepted from a
    /// leader (a sender whose vote this replica did not refuse).
    leader_contact: Arc<LeaderContact>,
}

impl RaftRpcServer {
    pub fn new(raft: Raft, guard: Guard, leader_contact: Arc<LeaderContact>) -> Self {
        RaftRpcServer {
            raft,
            guard,
            leader_contact,
        }
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
        let result = self.raft.append_entries(decode_request(request)?).await;
        if matches!(
            result,
            Ok(AppendEntriesResponse::Success | AppendEntriesResponse::PartialSuccess(_) | AppendEntriesResponse::Conflict)
        ) {
            self.leader_contact.heard();
        }
        reply(&result)
    }

    async fn vote(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        self.guard.admit(&request, Call::Vote)?;
        let result = self.raft.vote(decode_request(request)?).await;
        reply(&result)
    }

    async fn install_snapshot(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        self.guard.admit(&request, Call::InstallSnapshot)?;
        let snapshot: openraft::raft::InstallSnapshotRequest<crate::types::TypeConfig> = decode_request(request)?;
        let leader_vote = snapshot.vote;
        let result = self.raft.install_snapshot(snapshot).await;
        // Accepted: this replica's vote is now the sender's.
        if result.as_ref().is_ok_and(|response| response.vote == leader_vote) {
            self.leader_contact.heard();
        }
        reply(&result)
    }
}
