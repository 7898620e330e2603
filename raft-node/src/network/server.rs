//! The receiving side of Raft traffic: admit (resource_manager certificates
//! only, when TLS is on), decode, hand to the local `Raft`, encode openraft's
//! whole `Result` back.

use crate::proto::raft_server::Raft as RaftService;
use crate::proto::RaftMessage;
use tonic::{Request, Response, Status};

use crate::codec;
use crate::security::{Call, Guard};
use crate::types::Raft;

/// Serves `quartermaster.raft.v1.Raft` for one replica.
pub struct RaftRpcServer {
    raft: Raft,
    /// Only replicas may append, vote or install snapshots: anyone else
    /// could rewrite the log.
    guard: Guard,
}

impl RaftRpcServer {
    pub fn new(raft: Raft, guard: Guard) -> Self {
        RaftRpcServer { raft, guard }
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
        reply(&result)
    }

    async fn vote(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        self.guard.admit(&request, Call::Vote)?;
        let result = self.raft.vote(decode_request(request)?).await;
        reply(&result)
    }

    async fn install_snapshot(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        self.guard.admit(&request, Call::InstallSnapshot)?;
        let result = self.raft.install_snapshot(decode_request(request)?).await;
        reply(&result)
    }
}
