//! The public API (`quartermaster.v1.Quartermaster`), served by every replica.
//!
//! * [`requests`]: allocate, release, renew, get, list — the requester's calls.
//! * [`providers`]: register, heartbeat, deregister, list, confirm, system state.
//! * [`cluster`]: cluster status and membership changes.
//! * [`backup`]: `SnapshotSave`, a backup of the table from the leader.
//! * [`cursors`]: named cursors into the event history (the broker bridge's).
//! * [`bulk_release`]: release by namespace, requester or provider, entry after entry.
//! * [`watch`]: the event stream from a revision.
//! * [`quotas`]: namespace quotas, preemption settings, the dry run of an allocate.
//! * [`pipeline`]: allocate, release and renew multiplexed on one stream.
//! * [`policies`]: capability policies: set, get, list, delete (admin).
//! * [`status`]: how typed errors (the table's, the consensus layer's)
//!   become gRPC statuses and leader redirects: the only place that does.
//! * [`access`]: what a scoped caller may see of the table's records.
//! * [`audited`]: the ids and outcome of each call for the audit trail.
//!
//! Every call is first admitted by the [`Guard`] (its certificate's role may
//! make it), then scoped by its [`Caller`] (a consumer's namespace, a
//! provider's own id). Writes are validated next: bad input gets
//! `INVALID_ARGUMENT` naming the field. A refused or invalid call never
//! reaches the log. Each call's outcome then goes to the audit trail
//! ([`crate::security::audit`]), which keeps what its policy wants.

pub mod access;
pub mod audited;
pub mod backup;
pub mod bulk_release;
pub mod cluster;
pub mod cursors;
pub mod pipeline;
pub mod policies;
pub mod providers;
pub mod quotas;
pub mod requests;
pub mod status;
pub mod watch;

use std::future::Future;
use std::sync::Arc;

use qm_api::proto::api::quartermaster_server::Quartermaster;
use qm_api::proto::api::*;
use qm_api::wire::CORRELATION_ID_HEADER;
use tonic::{Request, Response, Status, Streaming};

use crate::consensus::Node;
use crate::security::audit::{AuditCaller, AuditIds, AuditLog, Transport};
use crate::security::{Call, Caller, Guard};
use audited::{AuditedReply, CallIds};

/// The service; one per replica, sharing the [`Node`].
pub struct ApiService {
    node: Arc<Node>,
    guard: Guard,
    audit: Arc<AuditLog>,
}

/// What a call carries into its audit record before it runs.
struct Admitted {
    caller: Caller,
    ids: AuditIds,
    correlation_id: Option<String>,
}

impl ApiService {
    pub fn new(node: Arc<Node>, guard: Guard, audit: Arc<AuditLog>) -> Self {
        ApiService { node, guard, audit }
    }

    /// Admits `request` for `call` (a refusal goes to the audit trail) and
    /// notes the ids and correlation id its record will carry.
    fn admit<T: CallIds>(&self, request: &Request<T>, call: Call) -> Result<Admitted, Status> {
        let correlation_id = request
            .metadata()
            .get(CORRELATION_ID_HEADER)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned);
        let ids = if self.audit.is_on() {
            request.get_ref().call_ids()
        } else {
            AuditIds::new()
        };
        match self.guard.admit(request, call) {
            Ok(caller) => Ok(Admitted {
                caller,
                ids,
                correlation_id,
            }),
            Err(refusal) => {
                let caller = match crate::security::guard::identify(request) {
                    Ok(identity) => AuditCaller::of_identity(&identity),
                    Err(_) => AuditCaller::unidentified(!self.guard.is_open()),
                };
                audited::record_refusal(&self.audit, Transport::Grpc, call, caller, correlation_id.as_deref(), ids, &refusal);
                Err(refusal)
            }
        }
    }

    /// Runs an admitted call and records its outcome.
    async fn audited<T: AuditedReply>(&self, call: Call, admitted: Admitted, run: impl Future<Output = Result<T, Status>>) -> Reply<T> {
        let result = run.await;
        audited::record(
            &self.audit,
            Transport::Grpc,
            call,
            &admitted.caller,
            admitted.correlation_id.as_deref(),
            admitted.ids,
            &result,
        );
        result.map(Response::new)
    }
}

type Reply<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl Quartermaster for ApiService {
    async fn allocate(&self, request: Request<AllocateRequest>) -> Reply<AllocationReply> {
        let admitted = self.admit(&request, Call::Allocate)?;
        let caller = admitted.caller.clone();
        self.audited(
            Call::Allocate,
            admitted,
            requests::allocate(&self.node, &caller, request.into_inner()),
        )
        .await
    }

    async fn release(&self, request: Request<ReleaseRequest>) -> Reply<AllocationReply> {
        let admitted = self.admit(&request, Call::Release)?;
        let caller = admitted.caller.clone();
        self.audited(
            Call::Release,
            admitted,
            requests::release(&self.node, &caller, request.into_inner()),
        )
        .await
    }

    async fn renew_lease(&self, request: Request<RenewLeaseRequest>) -> Reply<AllocationReply> {
        let admitted = self.admit(&request, Call::RenewLease)?;
        let caller = admitted.caller.clone();
        self.audited(
            Call::RenewLease,
            admitted,
            requests::renew_lease(&self.node, &caller, request.into_inner()),
        )
        .await
    }

    async fn get(&self, request: Request<GetRequest>) -> Reply<AllocationReply> {
        let admitted = self.admit(&request, Call::Get)?;
        let caller = admitted.caller.clone();
        self.audited(Call::Get, admitted, requests::get(&self.node, &caller, request.into_inner()))
            .await
    }

    async fn list(&self, request: Request<ListRequest>) -> Reply<ListReply> {
        let admitted = self.admit(&request, Call::List)?;
        let caller = admitted.caller.clone();
        self.audited(Call::List, admitted, requests::list(&self.node, &caller, request.into_inner()))
            .await
    }

    type PipelineStream = pipeline::PipelineStream;

    async fn pipeline(&self, request: Request<Streaming<PipelinedCall>>) -> Reply<Self::PipelineStream> {
        let caller = self.guard.admit(&request, Call::Pipeline).inspect_err(|refusal| {
            let caller = match crate::security::guard::identify(&request) {
                Ok(identity) => AuditCaller::of_identity(&identity),
                Err(_) => AuditCaller::unidentified(!self.guard.is_open()),
            };
            audited::record_refusal(&self.audit, Transport::Grpc, Call::Pipeline, caller, None, AuditIds::new(), refusal);
        })?;
        Ok(Response::new(pipeline::serve(
            self.node.clone(),
            self.guard.clone(),
            self.audit.clone(),
            caller,
            request.into_inner(),
        )))
    }

    type WatchStream = watch::WatchStream;

    async fn watch(&self, request: Request<WatchRequest>) -> Reply<Self::WatchStream> {
        let admitted = self.admit(&request, Call::Watch)?;
        let caller = admitted.caller.clone();
        self.audited(Call::Watch, admitted, async {
            watch::watch(self.node.clone(), caller, request.into_inner())
        })
        .await
    }

    async fn register_provider(&self, request: Request<RegisterProviderRequest>) -> Reply<ProviderReply> {
        let admitted = self.admit(&request, Call::RegisterProvider)?;
        let caller = admitted.caller.clone();
        self.audited(
            Call::RegisterProvider,
            admitted,
            providers::register(&self.node, &caller, request.into_inner()),
        )
        .await
    }

    async fn heartbeat(&self, request: Request<HeartbeatRequest>) -> Reply<HeartbeatReply> {
        let admitted = self.admit(&request, Call::Heartbeat)?;
        let caller = admitted.caller.clone();
        self.audited(
            Call::Heartbeat,
            admitted,
            providers::heartbeat(&self.node, &caller, request.into_inner()),
        )
        .await
    }

    async fn deregister_provider(&self, request: Request<DeregisterProviderRequest>) -> Reply<ProviderReply> {
        let admitted = self.admit(&request, Call::DeregisterProvider)?;
        let caller = admitted.caller.clone();
        self.audited(
            Call::DeregisterProvider,
            admitted,
            providers::deregister(&self.node, &caller, request.into_inner()),
        )
        .await
    }

    async fn set_provider_scheduling(&self, request: Request<SetProviderSchedulingRequest>) -> Reply<ProviderSchedulingReply> {
        let admitted = self.admit(&request, Call::SetProviderScheduling)?;
        self.audited(
            Call::SetProviderScheduling,
            admitted,
            providers::set_scheduling(&self.node, request.into_inner()),
        )
        .await
    }

    async fn optimize(&self, request: Request<OptimizeRequest>) -> Reply<OptimizeReply> {
        let admitted = self.admit(&request, Call::Optimize)?;
        self.audited(Call::Optimize, admitted, providers::optimize(&self.node, request.into_inner()))
            .await
    }

    async fn list_providers(&self, request: Request<ListProvidersRequest>) -> Reply<ListProvidersReply> {
        self.admit(&request, Call::ListProviders)?;
        providers::list(&self.node, request.into_inner()).await.map(Response::new)
    }

    async fn confirm(&self, request: Request<ConfirmRequest>) -> Reply<AllocationReply> {
        let admitted = self.admit(&request, Call::Confirm)?;
        let caller = admitted.caller.clone();
        self.audited(
            Call::Confirm,
            admitted,
            providers::confirm(&self.node, &caller, request.into_inner()),
        )
        .await
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
        let admitted = self.admit(&request, Call::AddReplica)?;
        self.audited(Call::AddReplica, admitted, cluster::add_replica(&self.node, request.into_inner()))
            .await
    }

    async fn remove_replica(&self, request: Request<RemoveReplicaRequest>) -> Reply<ClusterStatusReply> {
        let admitted = self.admit(&request, Call::RemoveReplica)?;
        self.audited(
            Call::RemoveReplica,
            admitted,
            cluster::remove_replica(&self.node, request.into_inner()),
        )
        .await
    }

    type SnapshotSaveStream = backup::SnapshotSaveStream;

    async fn snapshot_save(&self, request: Request<SnapshotSaveRequest>) -> Reply<Self::SnapshotSaveStream> {
        let admitted = self.admit(&request, Call::SnapshotSave)?;
        self.audited(Call::SnapshotSave, admitted, backup::save(&self.node)).await
    }

    async fn advance_cursor(&self, request: Request<AdvanceCursorRequest>) -> Reply<CursorReply> {
        let admitted = self.admit(&request, Call::AdvanceCursor)?;
        let caller = admitted.caller.clone();
        self.audited(
            Call::AdvanceCursor,
            admitted,
            cursors::advance(&self.node, &caller, request.into_inner()),
        )
        .await
    }

    async fn release_matching(&self, request: Request<ReleaseMatchingRequest>) -> Reply<ReleaseMatchingReply> {
        let admitted = self.admit(&request, Call::ReleaseMatching)?;
        let caller = admitted.caller.clone();
        self.audited(
            Call::ReleaseMatching,
            admitted,
            bulk_release::release_matching(&self.node, &caller, request.into_inner()),
        )
        .await
    }

    async fn set_quota(&self, request: Request<SetQuotaRequest>) -> Reply<NamespacePolicyReply> {
        let admitted = self.admit(&request, Call::SetQuota)?;
        let caller = admitted.caller.clone();
        self.audited(
            Call::SetQuota,
            admitted,
            quotas::set_quota(&self.node, &caller, request.into_inner()),
        )
        .await
    }

    async fn delete_quota(&self, request: Request<DeleteQuotaRequest>) -> Reply<NamespacePolicyReply> {
        let admitted = self.admit(&request, Call::DeleteQuota)?;
        let caller = admitted.caller.clone();
        self.audited(
            Call::DeleteQuota,
            admitted,
            quotas::delete_quota(&self.node, &caller, request.into_inner()),
        )
        .await
    }

    async fn list_quotas(&self, request: Request<ListQuotasRequest>) -> Reply<ListQuotasReply> {
        let admitted = self.admit(&request, Call::ListQuotas)?;
        let caller = admitted.caller.clone();
        self.audited(
            Call::ListQuotas,
            admitted,
            quotas::list_quotas(&self.node, &caller, request.into_inner()),
        )
        .await
    }

    async fn set_preemption(&self, request: Request<SetPreemptionRequest>) -> Reply<NamespacePolicyReply> {
        let admitted = self.admit(&request, Call::SetPreemption)?;
        let caller = admitted.caller.clone();
        self.audited(
            Call::SetPreemption,
            admitted,
            quotas::set_preemption(&self.node, &caller, request.into_inner()),
        )
        .await
    }

    async fn preview_allocate(&self, request: Request<AllocateRequest>) -> Reply<PreviewReply> {
        let admitted = self.admit(&request, Call::PreviewAllocate)?;
        let caller = admitted.caller.clone();
        self.audited(
            Call::PreviewAllocate,
            admitted,
            quotas::preview_allocate(&self.node, &caller, request.into_inner()),
        )
        .await
    }

    async fn set_policy(&self, request: Request<SetPolicyRequest>) -> Reply<PolicyReply> {
        let admitted = self.admit(&request, Call::SetPolicy)?;
        let caller = admitted.caller.clone();
        self.audited(
            Call::SetPolicy,
            admitted,
            policies::set_policy(&self.node, &caller, request.into_inner()),
        )
        .await
    }

    async fn get_policy(&self, request: Request<GetPolicyRequest>) -> Reply<PolicyReply> {
        let admitted = self.admit(&request, Call::GetPolicy)?;
        self.audited(Call::GetPolicy, admitted, policies::get_policy(&self.node, request.into_inner()))
            .await
    }

    async fn list_policies(&self, request: Request<ListPoliciesRequest>) -> Reply<ListPoliciesReply> {
        let admitted = self.admit(&request, Call::ListPolicies)?;
        self.audited(
            Call::ListPolicies,
            admitted,
            policies::list_policies(&self.node, request.into_inner()),
        )
        .await
    }

    async fn delete_policy(&self, request: Request<DeletePolicyRequest>) -> Reply<DeletePolicyReply> {
        let admitted = self.admit(&request, Call::DeletePolicy)?;
        let caller = admitted.caller.clone();
        self.audited(
            Call::DeletePolicy,
            admitted,
            policies::delete_policy(&self.node, &caller, request.into_inner()),
        )
        .await
    }

    async fn bind_policy(&self, request: Request<PolicyBindingRequest>) -> Reply<PolicyReply> {
        let admitted = self.admit(&request, Call::BindPolicy)?;
        let caller = admitted.caller.clone();
        self.audited(
            Call::BindPolicy,
            admitted,
            policies::change_binding(&self.node, &caller, request.into_inner(), true),
        )
        .await
    }

    async fn unbind_policy(&self, request: Request<PolicyBindingRequest>) -> Reply<PolicyReply> {
        let admitted = self.admit(&request, Call::UnbindPolicy)?;
        let caller = admitted.caller.clone();
        self.audited(
            Call::UnbindPolicy,
            admitted,
            policies::change_binding(&self.node, &caller, request.into_inner(), false),
        )
        .await
    }
}
