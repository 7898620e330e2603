//! The public API (`quartermaster.v1.Quartermaster`), served by every replica.
//!
//! * [`requests`]: allocate, release, renew, get, list — the requester's calls.
//! * [`providers`]: register, heartbeat, deregister, list, confirm, system state.
//! * [`cluster`]: cluster status and membership changes.
//! * [`watch`]: the event stream from a revision.
//! * [`status`]: how errors become gRPC statuses (and leader redirects).
//!
//! Writes are validated here first: bad input gets `INVALID_ARGUMENT` naming
//! the field and never reaches the log.

pub mod cluster;
pub mod providers;
pub mod requests;
pub mod status;
pub mod watch;

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use qm_client::proto::api::quartermaster_server::Quartermaster;
use qm_client::proto::api::*;
use tonic::{Request, Response, Status};

use crate::node::Node;

/// The service; one per replica, sharing the [`Node`].
pub struct ApiService {
    node: Arc<Node>,
}

impl ApiService {
    pub fn new(node: Arc<Node>) -> Self {
        ApiService { node }
    }
}

type Reply<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl Quartermaster for ApiService {
    async fn allocate(&self, request: Request<AllocateRequest>) -> Reply<AllocationReply> {
        requests::allocate(&self.node, request.into_inner()).await.map(Response::new)
    }

    async fn release(&self, request: Request<ReleaseRequest>) -> Reply<AllocationReply> {
        requests::release(&self.node, request.into_inner()).await.map(Response::new)
    }

    async fn renew_lease(&self, request: Request<RenewLeaseRequest>) -> Reply<AllocationReply> {
        requests::renew_lease(&self.node, request.into_inner()).await.map(Response::new)
    }

    async fn get(&self, request: Request<GetRequest>) -> Reply<AllocationReply> {
        requests::get(&self.node, request.into_inner()).await.map(Response::new)
    }

    async fn list(&self, request: Request<ListRequest>) -> Reply<ListReply> {
        requests::list(&self.node, request.into_inner()).await.map(Response::new)
    }

    type WatchStream = Pin<Box<dyn Stream<Item = Result<EventMessage, Status>> + Send + 'static>>;

    async fn watch(&self, request: Request<WatchRequest>) -> Reply<Self::WatchStream> {
        watch::watch(self.node.clone(), request.into_inner()).map(Response::new)
    }

    async fn register_provider(&self, request: Request<RegisterProviderRequest>) -> Reply<ProviderReply> {
        providers::register(&self.node, request.into_inner()).await.map(Response::new)
    }

    async fn heartbeat(&self, request: Request<HeartbeatRequest>) -> Reply<HeartbeatReply> {
        providers::heartbeat(&self.node, request.into_inner()).await.map(Response::new)
    }

    async fn deregister_provider(&self, request: Request<DeregisterProviderRequest>) -> Reply<ProviderReply> {
        providers::deregister(&self.node, request.into_inner()).await.map(Response::new)
    }

    async fn list_providers(&self, request: Request<ListProvidersRequest>) -> Reply<ListProvidersReply> {
        providers::list(&self.node, request.into_inner()).await.map(Response::new)
    }

    async fn confirm(&self, request: Request<ConfirmRequest>) -> Reply<AllocationReply> {
        providers::confirm(&self.node, request.into_inner()).await.map(Response::new)
    }

    async fn system_state(&self, request: Request<SystemStateRequest>) -> Reply<SystemStateReply> {
        providers::system_state(&self.node, request.into_inner()).await.map(Response::new)
    }

    async fn cluster_status(&self, _request: Request<ClusterStatusRequest>) -> Reply<ClusterStatusReply> {
        cluster::status(&self.node).await.map(Response::new)
    }

    async fn add_replica(&self, request: Request<AddReplicaRequest>) -> Reply<ClusterStatusReply> {
        cluster::add_replica(&self.node, request.into_inner()).await.map(Response::new)
    }

    async fn remove_replica(&self, request: Request<RemoveReplicaRequest>) -> Reply<ClusterStatusReply> {
        cluster::remove_replica(&self.node, request.into_inner()).await.map(Response::new)
    }
}
