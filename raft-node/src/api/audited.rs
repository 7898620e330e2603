//! What the audit trail ([`crate::security::audit`]) records of each call:
//! the ids a call names ([`CallIds`]) and those its answer adds
//! ([`AuditedReply`]), and [`record`], which both the gRPC service and the
//! HTTP handlers call once a call has its outcome.
//!
//! Only ids and names are taken, bounded in length: never a request's
//! labels, resources or any other body, so a caller cannot write arbitrary
//! text into the trail beyond an id's length.

use qm_api::proto::api::{
    AddReplicaRequest, AdvanceCursorRequest, AllocateRequest, AllocationReply, ClusterStatusReply, ClusterStatusRequest, ConfirmRequest,
    CursorReply, DeleteQuotaRequest, DeregisterProviderRequest, GetRequest, HeartbeatReply, HeartbeatRequest, ListProvidersReply,
    ListProvidersRequest, ListQuotasReply, ListQuotasRequest, ListReply, ListRequest, NamespacePolicyReply, OptimizeReply, OptimizeRequest,
    PreviewReply, ProviderReply, ProviderSchedulingReply, RegisterProviderRequest, ReleaseMatchingReply, ReleaseMatchingRequest,
    ReleaseRequest, RemoveReplicaRequest, RenewLeaseRequest, SetPreemptionRequest, SetProviderSchedulingRequest, SetQuotaRequest,
    SnapshotSaveRequest, SystemStateReply, SystemStateRequest, WatchRequest,
};
use qm_api::proto::api::{
    DeletePolicyReply, DeletePolicyRequest, GetPolicyRequest, ListPoliciesReply, ListPoliciesRequest, PolicyBindingRequest, PolicyReply,
    SetPolicyRequest,
};
use tonic::Status;

use crate::security::audit::{bounded, AuditCaller, AuditIds, AuditLog, AuditRecord, Transport, AUDIT_ID_CHARS_MAX};
use crate::security::{Call, Caller};

/// The ids `request` names, for its audit record.
pub trait CallIds {
    fn call_ids(&self) -> AuditIds;
}

/// The ids an answer adds to its call's record (the allocation made, the
/// provider chosen, how many requests a bulk release ended).
pub trait AuditedReply {
    fn add_ids(&self, _ids: &mut AuditIds) {}
}

/// `ids` with `value` under `name` when it is not empty (bounded).
fn put(ids: &mut AuditIds, name: &'static str, value: &str) {
    if !value.is_empty() {
        ids.insert(name, bounded(value, AUDIT_ID_CHARS_MAX));
    }
}

fn ids_of(pairs: &[(&'static str, &str)]) -> AuditIds {
    let mut ids = AuditIds::new();
    for (name, value) in pairs {
        put(&mut ids, name, value);
    }
    ids
}

impl CallIds for AllocateRequest {
    fn call_ids(&self) -> AuditIds {
        let Some(request) = &self.request else { return AuditIds::new() };
        ids_of(&[
            ("request_id", &request.request_id),
            ("requester_id", &request.requester_id),
            ("namespace", &request.namespace),
        ])
    }
}

impl CallIds for ReleaseRequest {
    fn call_ids(&self) -> AuditIds {
        ids_of(&[("id", &self.id)])
    }
}

impl CallIds for RenewLeaseRequest {
    fn call_ids(&self) -> AuditIds {
        ids_of(&[("id", &self.id)])
    }
}

impl CallIds for GetRequest {
    fn call_ids(&self) -> AuditIds {
        ids_of(&[("id", &self.id)])
    }
}

impl CallIds for ListRequest {
    fn call_ids(&self) -> AuditIds {
        ids_of(&[
            ("namespace", &self.namespace),
            ("requester_id", &self.requester_id),
            ("provider_id", &self.provider_id),
        ])
    }
}

impl CallIds for WatchRequest {
    fn call_ids(&self) -> AuditIds {
        ids_of(&[("from_revision", &self.from_revision.to_string())])
    }
}

impl CallIds for RegisterProviderRequest {
    fn call_ids(&self) -> AuditIds {
        ids_of(&[("provider_id", &self.provider_id)])
    }
}

impl CallIds for HeartbeatRequest {
    fn call_ids(&self) -> AuditIds {
        ids_of(&[("provider_id", &self.provider_id)])
    }
}

impl CallIds for DeregisterProviderRequest {
    fn call_ids(&self) -> AuditIds {
        ids_of(&[("provider_id", &self.provider_id)])
    }
}

impl CallIds for ConfirmRequest {
    fn call_ids(&self) -> AuditIds {
        ids_of(&[
            ("allocation_id", &self.allocation_id),
            ("provider_id", &self.provider_id),
            ("deallocation", if self.deallocation { "true" } else { "" }),
        ])
    }
}

impl CallIds for AddReplicaRequest {
    fn call_ids(&self) -> AuditIds {
        ids_of(&[("replica_id", &self.id.to_string()), ("addr", &self.addr)])
    }
}

impl CallIds for RemoveReplicaRequest {
    fn call_ids(&self) -> AuditIds {
        ids_of(&[("replica_id", &self.id.to_string())])
    }
}

impl CallIds for AdvanceCursorRequest {
    fn call_ids(&self) -> AuditIds {
        ids_of(&[("cursor", &self.name), ("holder", &self.holder)])
    }
}

impl CallIds for ReleaseMatchingRequest {
    fn call_ids(&self) -> AuditIds {
        ids_of(&[
            ("namespace", &self.namespace),
            ("requester_id", &self.requester_id),
            ("provider_id", &self.provider_id),
            ("after", &self.after),
        ])
    }
}

impl CallIds for SetQuotaRequest {
    fn call_ids(&self) -> AuditIds {
        ids_of(&[("namespace", &self.namespace)])
    }
}

impl CallIds for DeleteQuotaRequest {
    fn call_ids(&self) -> AuditIds {
        ids_of(&[("namespace", &self.namespace)])
    }
}

impl CallIds for ListQuotasRequest {
    fn call_ids(&self) -> AuditIds {
        ids_of(&[("namespace", &self.namespace)])
    }
}

impl CallIds for SetPreemptionRequest {
    fn call_ids(&self) -> AuditIds {
        // "" is the cluster's setting.
        ids_of(&[("namespace", &self.namespace)])
    }
}

impl CallIds for SetProviderSchedulingRequest {
    fn call_ids(&self) -> AuditIds {
        ids_of(&[("provider_id", &self.provider_id), ("scheduling", &self.scheduling)])
    }
}

impl CallIds for OptimizeRequest {
    fn call_ids(&self) -> AuditIds {
        ids_of(&[("dry_run", if self.dry_run { "true" } else { "false" })])
    }
}

impl AuditedReply for ProviderSchedulingReply {
    fn add_ids(&self, ids: &mut AuditIds) {
        put(ids, "moving", &self.moving.len().to_string());
        put(ids, "cannot_move", &self.cannot_move.len().to_string());
    }
}

impl AuditedReply for OptimizeReply {
    fn add_ids(&self, ids: &mut AuditIds) {
        put(ids, "moves", &self.moves.len().to_string());
    }
}

impl AuditedReply for NamespacePolicyReply {}
impl AuditedReply for ListQuotasReply {}
impl AuditedReply for PreviewReply {}

impl AuditedReply for AllocationReply {
    fn add_ids(&self, ids: &mut AuditIds) {
        put(ids, "request_id", &self.request_id);
        put(ids, "allocation_id", &self.allocation_id);
        put(ids, "provider_id", &self.provider_id);
    }
}

impl AuditedReply for ProviderReply {
    fn add_ids(&self, ids: &mut AuditIds) {
        put(ids, "provider_status", &self.status);
    }
}

impl AuditedReply for ReleaseMatchingReply {
    fn add_ids(&self, ids: &mut AuditIds) {
        put(ids, "released", &self.released.to_string());
        put(ids, "cancelled", &self.cancelled.to_string());
        put(ids, "next", &self.next);
    }
}

impl AuditedReply for CursorReply {
    fn add_ids(&self, ids: &mut AuditIds) {
        put(ids, "cursor", &self.name);
        put(ids, "revision", &self.revision.to_string());
    }
}

impl AuditedReply for ListReply {
    fn add_ids(&self, ids: &mut AuditIds) {
        put(ids, "records", &self.records.len().to_string());
    }
}

impl AuditedReply for ClusterStatusReply {}

/// A record for the trail: the call's ids, those of its answer, its outcome.
/// `correlation_id`: what the caller sent in `x-qm-correlation-id`, if anything.
pub fn record<T: AuditedReply>(
    log: &AuditLog,
    transport: Transport,
    call: Call,
    caller: &Caller,
    correlation_id: Option<&str>,
    mut ids: AuditIds,
    result: &Result<T, Status>,
) {
    if !log.is_on() {
        return;
    }
    if let Ok(reply) = result {
        reply.add_ids(&mut ids);
    }
    let record = AuditRecord::new(transport, call, AuditCaller::of(caller), ids, result.as_ref().err()).with_correlation_id(correlation_id);
    log.record(call, record);
}

/// A record of a call refused before it had a caller (no identity, or a role
/// not allowed the call).
pub fn record_refusal(
    log: &AuditLog,
    transport: Transport,
    call: Call,
    caller: AuditCaller,
    correlation_id: Option<&str>,
    ids: AuditIds,
    refusal: &Status,
) {
    if !log.is_on() {
        return;
    }
    let record = AuditRecord::new(transport, call, caller, ids, Some(refusal)).with_correlation_id(correlation_id);
    log.record(call, record);
}

/// Streams (Watch, SnapshotSave): the answer adds no ids.
impl<S: ?Sized> AuditedReply for std::pin::Pin<Box<S>> {}

/// Requests that name no ids.
macro_rules! no_call_ids {
    ($($request:ty),*) => {$(
        impl CallIds for $request {
            fn call_ids(&self) -> AuditIds {
                AuditIds::new()
            }
        }
    )*};
}

no_call_ids!(SnapshotSaveRequest, ClusterStatusRequest, SystemStateRequest, ListProvidersRequest);

impl AuditedReply for ListProvidersReply {}
impl AuditedReply for SystemStateReply {}
impl AuditedReply for HeartbeatReply {}

impl CallIds for SetPolicyRequest {
    fn call_ids(&self) -> AuditIds {
        let Some(policy) = &self.policy else { return AuditIds::new() };
        ids_of(&[("policy", &policy.name)])
    }
}

impl CallIds for GetPolicyRequest {
    fn call_ids(&self) -> AuditIds {
        ids_of(&[("policy", &self.name)])
    }
}

impl CallIds for ListPoliciesRequest {
    fn call_ids(&self) -> AuditIds {
        AuditIds::new()
    }
}

impl CallIds for DeletePolicyRequest {
    fn call_ids(&self) -> AuditIds {
        ids_of(&[("policy", &self.name)])
    }
}

/// The policy and the binding (a certificate name, or a role and namespace: no secret).
impl CallIds for PolicyBindingRequest {
    fn call_ids(&self) -> AuditIds {
        let Some(binding) = &self.binding else {
            return ids_of(&[("policy", &self.name)]);
        };
        ids_of(&[
            ("policy", &self.name),
            ("cert_name", &binding.cert_name),
            ("role", &binding.role),
            ("namespace", &binding.namespace),
        ])
    }
}

/// The revision a set made: which version of the policy the record is about.
impl AuditedReply for PolicyReply {
    fn add_ids(&self, ids: &mut AuditIds) {
        if let Some(policy) = &self.policy {
            put(ids, "revision", &policy.revision.to_string());
        }
    }
}

impl AuditedReply for ListPoliciesReply {}

impl AuditedReply for DeletePolicyReply {
    fn add_ids(&self, ids: &mut AuditIds) {
        put(ids, "existed", if self.existed { "true" } else { "false" });
    }
}
