//! The public API (`quartermaster.v1.Quartermaster`), served by every replica.
//!
//! * [`requests`]: allocate, release, renew, get, list — the requester's calls.
//! * [`providers`]: register, heartbeat, deregister, list, confirm, system state.
//! * [`cluster`]: cluster status and membership changes.
//! * [`backup`]: `SnapshotSave`, a backup of the table from the leader.
//! * [`cursors`]: named cursors into the event history (the broker bridge's).
//! * [`bulk_release`]: release by namespace, requester or provider, entry after entry.
//! * [`watch`]: the event stream from a revision.
//! * [`pipeline`]: allocate, release and renew multiplexed on one stream.
//! * [`status`]: how typed errors (the table's, the consensus layer's)
//!   become gRPC statuses and leader redirects: the only place that does.
//! * [`access`]: what a scoped caller may see of the table's records.
//!
//! Every call is first admitted by the [`Guard`] (its certificate's role may
//! make it), then scoped by its [`Caller`] (a consumer's namespace, a
//! provider's own id). Writes are validated next: bad input gets
//! `INVALID_ARGUMENT` naming the field. A refused or invalid call never
//! reaches the log.

pub mod access;
pub mod backup;
pub mod bulk_release;
pub mod cluster;
pub mod cursors;
pub mod pipeline;
pub mod providers;
pub mod requests;
pub mod status;
pub mod watch;

use std::sync::Arc;

use qm_api::proto::api::quartermaster_server::Quartermaster;
use qm_api::proto::api::*;
use tonic::{Request, Response, Status, Streaming};

use crate::consensus::Node;
use crate::security::{Call, Caller, Guard};

/// The service; one per replica, sharing the [`Node`].
pub struct ApiService {
    node: Arc<Node>,
    guard: Guard,
}

impl ApiService {
    pub fn new(node: Arc<Node>, guard: Guard) -> Self {
        ApiService { node, guard }
    }

    fn admit<T>(&self, request: &Request<T>, call: Call) -> Result<Caller, Status> {
        self.guard.admit(request, call)
    }
}

type Reply<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl Quartermaster for ApiService {
    async fn allocate(&self, request: Request<AllocateRequest>) -> Reply<AllocationReply> {
        let caller = self.admit(&request, Call::Allocate)?;
        requests::allocate(&self.node, &caller, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn release(&self, request: Request<ReleaseRequest>) -> Reply<AllocationReply> {
        let caller = self.admit(&request, Call::Release)?;
        requests::release(&self.node, &caller, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn renew_lease(&self, request: Request<RenewLeaseRequest>) -> Reply<AllocationReply> {
        let caller = self.admit(&request, Call::RenewLease)?;
        requests::renew_lease(&self.node, &caller, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn get(&self, request: Request<GetRequest>) -> Reply<AllocationReply> {
        let caller = self.admit(&request, Call::Get)?;
        requests::get(&self.node, &caller, request.into_inner()).await.map(Response::new)
    }

    async fn list(&self, request: Request<ListRequest>) -> Reply<ListReply> {
        let caller = self.admit(&request, Call::List)?;
        requests::list(&self.node, &caller, request.into_inner()).await.map(Response::new)
    }

    type PipelineStream = pipeline::PipelineStream;

    async fn pipeline(&self, request: Request<Streaming<PipelinedCall>>) -> Reply<Self::PipelineStream> {
        let caller = self.admit(&request, Call::Pipeline)?;
        Ok(Response::new(pipeline::serve(
            self.node.clone(),
            self.guard,
            caller,
            request.into_inner(),
        )))
    }

    type WatchStream = watch::WatchStream;

    async fn watch(&self, request: Request<WatchRequest>) -> Reply<Self::WatchStream> {
        let caller = self.admit(&request, Call::Watch)?;
        watch::watch(self.node.clone(), caller, request.into_inner()).map(Response::new)
    }

    async fn register_provider(&self, request: Request<RegisterProviderRequest>) -> Reply<ProviderReply> {
        let caller = self.admit(&request, Call::RegisterProvider)?;
        providers::register(&self.node, &caller, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn heartbeat(&self, request: Request<HeartbeatRequest>) -> Reply<HeartbeatReply> {
        let caller = self.admit(&request, Call::Heartbeat)?;
        providers::heartbeat(&self.node, &caller, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn deregister_provider(&self, request: Request<DeregisterProviderRequest>) -> Reply<ProviderReply> {
        let caller = self.admit(&request, Call::DeregisterProvider)?;
        providers::deregister(&self.node, &caller, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn set_provider_scheduling(&self, request: Request<SetProviderSchedulingRequest>) -> Reply<ProviderSchedulingReply> {
        self.admit(&request, Call::SetProviderScheduling)?;
        providers::set_scheduling(&self.node, request.into_inner()).await.map(Response::new)
    }

    async fn optimize(&self, request: Request<OptimizeRequest>) -> Reply<OptimizeReply> {
        self.admit(&request, Call::Optimize)?;
        providers::optimize(&self.node, request.into_inner()).await.map(Response::new)
    }

    async fn list_providers(&self, request: Request<ListProvidersRequest>) -> Reply<ListProvidersReply> {
        self.admit(&request, Call::ListProviders)?;
        providers::list(&self.node, request.into_inner()).await.map(Response::new)
    }

    async fn confirm(&self, request: Request<ConfirmRequest>) -> Reply<AllocationReply> {
        let caller = self.admit(&request, Call::Confirm)?;
        providers::confirm(&self.node, &caller, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn system_state(&self, request: Request<SystemStateRequest>) -> Reply<SystemStateReply> {
        self.admit(&request, Call::SystemState)?;
        providers::system_state(&self.node, request.into_inner()).await.map(Response::new)
    }

    async fn cluster_status(&self, request: Request<ClusterStatusRequest>) -> Reply<ClusterStatusReply> {
        self.admit(&request, Call::ClusterStatus)?;
        cluster::status(&self.node).await.map(Response::new)
    }

    async fn add_replica(&self, request: Request<AddReplicaRequest>) -> Reply<ClusterStatusReply> {
        self.admit(&request, Call::AddReplica)?;
        cluster::add_replica(&self.node, request.into_inner()).await.map(Response::new)
    }

    async fn remove_replica(&self, request: Request<RemoveReplicaRequest>) -> Reply<ClusterStatusReply> {
        self.admit(&request, Call::RemoveReplica)?;
        cluster::remove_replica(&self.node, request.into_inner()).await.map(Response::new)
    }

    type SnapshotSaveStream = backup::SnapshotSaveStream;

    async fn snapshot_save(&self, request: Request<SnapshotSaveRequest>) -> Reply<Self::SnapshotSaveStream> {
        self.admit(&request, Call::SnapshotSave)?;
        backup::save(&self.node).await.map(Response::new)
    }

    async fn advance_cursor(&self, request: Request<AdvanceCursorRequest>) -> Reply<CursorReply> {
        let caller = self.admit(&request, Call::AdvanceCursor)?;
        cursors::advance(&self.node, &caller, request.into_inner()).await.map(Response::new)
    }

    async fn release_matching(&self, request: Request<ReleaseMatchingRequest>) -> Reply<ReleaseMatchingReply> {
        let caller = self.admit(&request, Call::ReleaseMatching)?;
        bulk_release::release_matching(&self.node, &caller, request.into_inner())
            .await
            .map(Response::new)
    }
}
