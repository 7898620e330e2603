//! Conversions between the wire types ([`crate::proto::api`]) and the
//! allocation table's types ([`qm_state_machine`]).
//!
//! Pure functions, used by the server (raft-node) to answer and by the client
//! to print the protocol's JSON. The wire's proto3 strings cannot be absent,
//! so an empty string means "not given": it becomes `None` on the way in, so
//! that [`ResourceRequest::validate`] names the missing field, and `None`
//! becomes an empty string on the way out. Maps are sorted on the way in
//! (`HashMap` → `BTreeMap`) and lists are emitted in the table's order, so the
//! same table always converts to the same message.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use qm_state_machine::error::quoted;
use qm_state_machine::protocol::ConstraintsDocument;
use qm_state_machine::provider::Provider;
use qm_state_machine::time::format_rfc3339;
use qm_state_machine::{
    event_to_json, AllocationResponse, AllocationStatus, Event, InvalidArgument, KindUsage, OnPreemption, PlacementPolicy,
    ProviderRegistration, ProviderStatus, ProviderUsage, RequestRecord, RequestState, ResourceRequest, ResourceSpec, Sharing, UnitGrant,
    Usage,
};
use serde_json::{Number, Value};
use uuid::Uuid;

use crate::proto::api;

/// A reply from a replica that does not decode into the table's types: a
/// server bug or a version mismatch, never bad user input.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConvertError {
    #[error("reply field {field} is {value:?}, expected {expected}")]
    Malformed {
        field: String,
        value: String,
        expected: &'static str,
    },
}

impl ConvertError {
    fn malformed(field: impl Into<String>, value: &str, expected: &'static str) -> ConvertError {
        ConvertError::Malformed {
            field: field.into(),
            value: value.to_owned(),
            expected,
        }
    }
}

// --- requests

/// The protocol's `resource_request` as a wire message. Total: `None` becomes
/// the empty value. Quantities and the priority should be whole `i64`s (the
/// client validates before it sends); a number that is not is clamped
/// (`1e30` → `i64::MAX`) or truncated (`1.5` → `1`), so call
/// [`ResourceRequest::validate`] first when the input is untrusted.
pub fn request_to_proto(request: &ResourceRequest) -> api::ResourceRequest {
    api::ResourceRequest {
        request_id: request.request_id.clone().unwrap_or_default(),
        requester_id: request.requester_id.clone().unwrap_or_default(),
        resource_requirements: request
            .resource_requirements
            .iter()
            .flatten()
            .map(|(kind, quantity)| (kind.clone(), number_to_i64(quantity)))
            .collect(),
        priority: request.priority.as_ref().map_or(0, number_to_i64),
        deadline: request.deadline.clone(),
        namespace: request.namespace.clone().unwrap_or_default(),
        lease_ttl_ms: request.lease_ttl_ms,
        constraints: request.constraints.as_ref().map(|constraints| api::Constraints {
            provider_id: constraints.provider_id.clone().unwrap_or_default(),
            labels: to_hash_map(&constraints.labels),
            resource_ids: constraints.resource_ids.clone(),
        }),
        placement: request
            .placement
            .map_or_else(String::new, |placement| placement_name(placement).to_owned()),
        movable: request.movable.unwrap_or(false),
        on_preemption: request.on_preemption.map_or_else(String::new, |choice| choice.as_str().to_owned()),
    }
}

/// A wire request in the protocol's lenient shape; the caller then calls
/// [`ResourceRequest::validate`], which names any missing or bad field. Empty
/// strings become `None`. Only `placement` is checked here, because the
/// lenient type cannot hold an unknown policy.
pub fn request_from_proto(request: &api::ResourceRequest) -> Result<ResourceRequest, InvalidArgument> {
    let constraints = request.constraints.as_ref().map(|constraints| ConstraintsDocument {
        provider_id: non_empty(&constraints.provider_id),
        labels: to_btree_map(&constraints.labels),
        resource_ids: constraints.resource_ids.clone(),
    });
    Ok(ResourceRequest {
        request_id: non_empty(&request.request_id),
        requester_id: non_empty(&request.requester_id),
        resource_requirements: Some(
            request
                .resource_requirements
                .iter()
                .map(|(kind, quantity)| (kind.clone(), Number::from(*quantity)))
                .collect(),
        ),
        priority: Some(Number::from(request.priority)),
        deadline: request.deadline.as_deref().and_then(non_empty),
        namespace: non_empty(&request.namespace),
        lease_ttl_ms: request.lease_ttl_ms,
        constraints: constraints.filter(|constraints| constraints != &ConstraintsDocument::default()),
        placement: placement_from_name(&request.placement)?,
        movable: request.movable.then_some(true),
        on_preemption: on_preemption_from_name(&request.on_preemption)?,
    })
}

/// `on_preemption` from its wire name; "" is the default (requeue).
pub fn on_preemption_from_name(name: &str) -> Result<Option<OnPreemption>, InvalidArgument> {
    match name {
        "" => Ok(None),
        "requeue" => Ok(Some(OnPreemption::Requeue)),
        "release" => Ok(Some(OnPreemption::Release)),
        other => Err(InvalidArgument::new(
            "on_preemption",
            format!("{} is not \"requeue\" or \"release\"", quoted(other)),
        )),
    }
}

/// The wire name of a placement policy.
pub fn placement_name(placement: PlacementPolicy) -> &'static str {
    match placement {
        PlacementPolicy::BestFit => "best_fit",
        PlacementPolicy::Spread => "spread",
    }
}

/// `""` → `None` (the default policy); an unknown name is bad input.
pub fn placement_from_name(name: &str) -> Result<Option<PlacementPolicy>, InvalidArgument> {
    match name {
        "" => Ok(None),
        "best_fit" => Ok(Some(PlacementPolicy::BestFit)),
        "spread" => Ok(Some(PlacementPolicy::Spread)),
        other => Err(InvalidArgument::new(
            "placement",
            format!("{} is not a placement policy; use best_fit or spread", quoted(other)),
        )),
    }
}

fn number_to_i64(number: &Number) -> i64 {
    match (number.as_i64(), number.as_u64(), number.as_f64()) {
        (Some(whole), _, _) => whole,
        (None, Some(_), _) => i64::MAX,
        // `as` saturates at the i64 bounds and truncates the fraction.
        (None, None, Some(float)) => float as i64,
        (None, None, None) => 0,
    }
}

// --- allocation replies

/// A request's record as the wire's `AllocationReply`. Like
/// [`AllocationResponse::from`], the provider and the grants are filled only
/// while the allocation is active (holds units).
pub fn reply_from_record(record: &RequestRecord) -> api::AllocationReply {
    let active = record.placement.as_ref().filter(|_| record.state.is_active());
    // Until its agent confirms the release, the provider is still named: the
    // agent finds the releases it has to confirm by it.
    let provider = record
        .placement
        .as_ref()
        .filter(|_| record.state.is_active() || record.state == RequestState::Deallocation);
    api::AllocationReply {
        response_id: record.response_id().to_string(),
        request_id: record.request.request_id.to_string(),
        status: status_to_wire(record.status) as i32,
        state: state_to_wire(record.state) as i32,
        allocation_id: record.allocation_id().to_string(),
        provider_id: provider
            .map(|placement| placement.provider_id.clone())
            .unwrap_or_default()
            .to_string(),
        grants: active
            .map(|placement| placement.grants.iter().map(grant_to_proto).collect())
            .unwrap_or_default(),
        reason: record.reason().unwrap_or_default().to_owned(),
        lease_expires_at_ms: record.lease_expires_at_ms.get(),
        request: Some(request_to_proto(&ResourceRequest::from(&record.request))),
        submitted_at_ms: record.submitted_at_ms,
        updated_at_ms: record.updated_at_ms,
    }
}

/// A wire reply in the protocol's `allocation_response` JSON shape:
/// `allocated_resources` maps each kind to the ids of the units held.
pub fn response_from_reply(reply: &api::AllocationReply) -> Result<AllocationResponse, ConvertError> {
    let grants: Vec<UnitGrant> = reply.grants.iter().map(grant_from_proto).collect();
    let allocated_resources = (!grants.is_empty()).then(|| {
        let mut by_kind: BTreeMap<String, Value> = BTreeMap::new();
        for grant in &grants {
            if let Value::Array(units) = by_kind.entry(grant.kind.to_string()).or_insert_with(|| Value::Array(Vec::new())) {
                units.push(Value::String(grant.resource_id.to_string()));
            }
        }
        by_kind
    });
    Ok(AllocationResponse {
        response_id: parse_uuid("response_id", &reply.response_id)?,
        request_id: parse_uuid("request_id", &reply.request_id)?,
        status: status_from_wire(reply.status)?,
        allocated_resources,
        state: state_from_wire("state", reply.state)?,
        allocation_id: match reply.allocation_id.as_str() {
            "" => None,
            id => Some(parse_uuid("allocation_id", id)?),
        },
        provider_id: non_empty(&reply.provider_id),
        grants: (!grants.is_empty()).then_some(grants),
        reason: non_empty(&reply.reason),
        lease_expires_at: reply.lease_expires_at_ms.map(format_rfc3339),
    })
}

/// The wire's enum of an allocation status.
pub fn status_to_wire(status: AllocationStatus) -> api::AllocationStatus {
    match status {
        AllocationStatus::Allocated => api::AllocationStatus::Allocated,
        AllocationStatus::Queued => api::AllocationStatus::Queued,
        AllocationStatus::Rejected => api::AllocationStatus::Rejected,
    }
}

/// An allocation status from the wire; unspecified or unknown numbers are malformed.
pub fn status_from_wire(number: i32) -> Result<AllocationStatus, ConvertError> {
    match api::AllocationStatus::try_from(number) {
        Ok(api::AllocationStatus::Allocated) => Ok(AllocationStatus::Allocated),
        Ok(api::AllocationStatus::Queued) => Ok(AllocationStatus::Queued),
        Ok(api::AllocationStatus::Rejected) => Ok(AllocationStatus::Rejected),
        Ok(api::AllocationStatus::Unspecified) | Err(_) => Err(ConvertError::malformed(
            "status",
            &number.to_string(),
            "allocated, queued or rejected",
        )),
    }
}

/// The wire's enum of a request state.
pub fn state_to_wire(state: RequestState) -> api::RequestState {
    match state {
        RequestState::Queued => api::RequestState::Queued,
        RequestState::Allocation => api::RequestState::Allocation,
        RequestState::Monitoring => api::RequestState::Monitoring,
        RequestState::Deallocation => api::RequestState::Deallocation,
        RequestState::Idle => api::RequestState::Idle,
        RequestState::Error => api::RequestState::Error,
        RequestState::Optimization => api::RequestState::Optimization,
    }
}

/// A request state from the wire `field`: `None` when unspecified (a list
/// filter that takes any state); unknown numbers are malformed.
pub fn state_from_wire(field: &str, number: i32) -> Result<Option<RequestState>, ConvertError> {
    match api::RequestState::try_from(number) {
        Ok(api::RequestState::Unspecified) => Ok(None),
        Ok(api::RequestState::Queued) => Ok(Some(RequestState::Queued)),
        Ok(api::RequestState::Allocation) => Ok(Some(RequestState::Allocation)),
        Ok(api::RequestState::Monitoring) => Ok(Some(RequestState::Monitoring)),
        Ok(api::RequestState::Deallocation) => Ok(Some(RequestState::Deallocation)),
        Ok(api::RequestState::Idle) => Ok(Some(RequestState::Idle)),
        Ok(api::RequestState::Error) => Ok(Some(RequestState::Error)),
        Ok(api::RequestState::Optimization) => Ok(Some(RequestState::Optimization)),
        Err(_) => Err(ConvertError::malformed(field, &number.to_string(), "a protocol state")),
    }
}

/// A reply's status by its protocol name (`allocated`, `queued`,
/// `rejected`), for printing and histories; `unspecified` for a number
/// this build does not know.
pub fn status_name(reply: &api::AllocationReply) -> &'static str {
    status_from_wire(reply.status).map_or("unspecified", AllocationStatus::as_str)
}

/// A reply's state by its protocol name (`queued`, `allocation`,
/// `monitoring`, ...); `unspecified` when it has none this build knows.
pub fn state_name(reply: &api::AllocationReply) -> &'static str {
    match state_from_wire("state", reply.state) {
        Ok(Some(state)) => state.as_str(),
        _ => "unspecified",
    }
}

fn grant_to_proto(grant: &UnitGrant) -> api::UnitGrant {
    api::UnitGrant {
        resource_id: grant.resource_id.to_string(),
        kind: grant.kind.to_string(),
        amount: grant.amount,
    }
}

fn grant_from_proto(grant: &api::UnitGrant) -> UnitGrant {
    UnitGrant {
        resource_id: grant.resource_id.clone().into(),
        kind: grant.kind.clone().into(),
        amount: grant.amount,
    }
}

fn parse_uuid(field: &str, text: &str) -> Result<Uuid, ConvertError> {
    Uuid::parse_str(text).map_err(|_| ConvertError::malformed(field, text, "a uuid"))
}

// --- providers

/// A wire registration as the table's document; the caller then calls
/// [`ProviderRegistration::validate`]. Only `sharing` is checked here: an
/// empty string means "decide by capacity", an unknown name is bad input.
pub fn registration_from_proto(registration: &api::RegisterProviderRequest) -> Result<ProviderRegistration, InvalidArgument> {
    let resources = registration
        .resources
        .iter()
        .enumerate()
        .map(|(position, resource)| {
            Ok(ResourceSpec {
                resource_id: resource.resource_id.clone(),
                kind: resource.kind.clone(),
                capacity: resource.capacity,
                labels: to_btree_map(&resource.labels),
                sharing: sharing_from_name(&format!("resources[{position}].sharing"), &resource.sharing)?,
            })
        })
        .collect::<Result<Vec<_>, InvalidArgument>>()?;
    let port = match registration.port {
        0 => None,
        port => Some(u16::try_from(port).map_err(|_| InvalidArgument::new("port", format!("is {port}, at most 65535")))?),
    };
    Ok(ProviderRegistration {
        provider_id: registration.provider_id.clone(),
        labels: to_btree_map(&registration.labels),
        resources,
        confirms_allocations: registration.confirms_allocations,
        address: Some(registration.address.clone()).filter(|address| !address.is_empty()),
        port,
    })
}

/// The table's registration document as a wire request.
pub fn registration_to_proto(registration: &ProviderRegistration) -> api::RegisterProviderRequest {
    api::RegisterProviderRequest {
        provider_id: registration.provider_id.clone(),
        labels: to_hash_map(&registration.labels),
        resources: registration
            .resources
            .iter()
            .map(|resource| api::ResourceSpec {
                resource_id: resource.resource_id.clone(),
                kind: resource.kind.clone(),
                capacity: resource.capacity,
                labels: to_hash_map(&resource.labels),
                sharing: resource
                    .sharing
                    .map_or_else(String::new, |sharing| sharing_name(sharing).to_owned()),
            })
            .collect(),
        confirms_allocations: registration.confirms_allocations,
        address: registration.address.clone().unwrap_or_default(),
        port: registration.port.map_or(0, u32::from),
    }
}

/// A provider as the wire's `ProviderInfo`. `used` comes from the units;
/// metrics and `last_heartbeat_ms` live in the leader's memory, not in the
/// table, so they are left empty for the server to fill.
pub fn provider_to_proto(provider: &Provider) -> api::ProviderInfo {
    let allocations: BTreeSet<Uuid> = provider
        .resources
        .values()
        .flat_map(|resource| resource.holders.keys().copied())
        .collect();
    api::ProviderInfo {
        provider_id: provider.provider_id.to_string(),
        status: provider_status_name(provider.status).to_owned(),
        labels: to_hash_map(&provider.labels),
        resources: provider
            .resources
            .values()
            .map(|resource| api::ResourceInfo {
                resource_id: resource.resource_id.to_string(),
                kind: resource.kind.to_string(),
                capacity: resource.capacity,
                used: resource.used(),
                sharing: sharing_name(resource.sharing).to_owned(),
                labels: to_hash_map(&resource.labels),
                metrics: HashMap::new(),
            })
            .collect(),
        confirms_allocations: provider.confirms_allocations,
        allocations: allocations.len() as u64,
        last_heartbeat_ms: None,
        address: provider.address.clone().unwrap_or_default(),
        port: provider.port.map_or(0, u32::from),
        scheduling: provider.scheduling.as_str().to_owned(),
        // Known to the table, not the provider: the server fills it.
        leaving: false,
    }
}

/// One move of an optimization plan on the wire.
pub fn planned_move_to_proto(planned: &qm_state_machine::command::PlannedMove) -> api::PlannedMove {
    api::PlannedMove {
        request_id: planned.request_id.to_string(),
        allocation_id: planned.allocation_id.to_string(),
        namespace: planned.namespace.clone(),
        from_provider: planned.from_provider.clone(),
        to_provider: planned.to_provider.clone(),
        grants: planned
            .grants
            .iter()
            .map(|grant| api::UnitGrant {
                resource_id: grant.resource_id.to_string(),
                kind: grant.kind.to_string(),
                amount: grant.amount,
            })
            .collect(),
    }
}

/// The wire name of a sharing mode.
pub fn sharing_name(sharing: Sharing) -> &'static str {
    match sharing {
        Sharing::Exclusive => "exclusive",
        Sharing::Divisible => "divisible",
    }
}

fn sharing_from_name(field: &str, name: &str) -> Result<Option<Sharing>, InvalidArgument> {
    match name {
        "" => Ok(None),
        "exclusive" => Ok(Some(Sharing::Exclusive)),
        "divisible" => Ok(Some(Sharing::Divisible)),
        other => Err(InvalidArgument::new(
            field,
            format!("{} is not a sharing mode; use exclusive or divisible", quoted(other)),
        )),
    }
}

/// The wire name of a provider status.
pub fn provider_status_name(status: ProviderStatus) -> &'static str {
    match status {
        ProviderStatus::Active => "active",
        ProviderStatus::Failed => "failed",
    }
}

fn provider_status_from_name(field: &str, name: &str) -> Result<ProviderStatus, ConvertError> {
    match name {
        "active" => Ok(ProviderStatus::Active),
        "failed" => Ok(ProviderStatus::Failed),
        other => Err(ConvertError::malformed(field, other, "active or failed")),
    }
}

// --- the monitor's view and events

/// The table's usage as the wire's `SystemStateReply`, kinds sorted by name.
pub fn usage_to_proto(usage: &Usage) -> api::SystemStateReply {
    api::SystemStateReply {
        by_kind: kinds_to_proto(&usage.by_kind),
        providers: usage
            .providers
            .iter()
            .map(|provider| api::ProviderUsage {
                provider_id: provider.provider_id.clone(),
                status: provider_status_name(provider.status).to_owned(),
                allocations: provider.allocations,
                kinds: kinds_to_proto(&provider.kinds),
            })
            .collect(),
        queue_len: usage.queue_len,
        active_allocations: usage.active_allocations,
        failed_providers: usage.failed_providers.clone(),
        revision: usage.revision,
        evacuations_pending: usage.evacuations_pending,
        cordoned_providers: usage.cordoned_providers.clone(),
        fragmentation_permille: usage
            .fragmentation_permille
            .iter()
            .map(|(kind, permille)| (kind.clone(), *permille))
            .collect(),
        emptiable_providers: usage.emptiable_providers.clone(),
        moves_started: usage.moves_started,
        moves_completed: usage.moves_completed,
        moves_rolled_back: usage.moves_rolled_back,
        providers_next_after: String::new(),
    }
}

/// The inverse of [`usage_to_proto`], for printing the table's JSON shape.
pub fn usage_from_proto(reply: &api::SystemStateReply) -> Result<Usage, ConvertError> {
    let providers = reply
        .providers
        .iter()
        .enumerate()
        .map(|(position, provider)| {
            Ok(ProviderUsage {
                provider_id: provider.provider_id.clone(),
                status: provider_status_from_name(&format!("providers[{position}].status"), &provider.status)?,
                allocations: provider.allocations,
                kinds: kinds_from_proto(&provider.kinds),
            })
        })
        .collect::<Result<Vec<_>, ConvertError>>()?;
    Ok(Usage {
        by_kind: kinds_from_proto(&reply.by_kind),
        providers,
        queue_len: reply.queue_len,
        active_allocations: reply.active_allocations,
        failed_providers: reply.failed_providers.clone(),
        revision: reply.revision,
        evacuations_pending: reply.evacuations_pending,
        cordoned_providers: reply.cordoned_providers.clone(),
        fragmentation_permille: reply
            .fragmentation_permille
            .iter()
            .map(|(kind, permille)| (kind.clone(), *permille))
            .collect(),
        emptiable_providers: reply.emptiable_providers.clone(),
        moves_started: reply.moves_started,
        moves_completed: reply.moves_completed,
        moves_rolled_back: reply.moves_rolled_back,
    })
}

fn kinds_to_proto(kinds: &BTreeMap<String, KindUsage>) -> Vec<api::KindUsage> {
    kinds
        .iter()
        .map(|(kind, usage)| api::KindUsage {
            kind: kind.clone(),
            capacity: usage.capacity,
            used: usage.used,
            free: usage.free,
            failed_capacity: usage.failed_capacity,
        })
        .collect()
}

fn kinds_from_proto(kinds: &[api::KindUsage]) -> BTreeMap<String, KindUsage> {
    kinds
        .iter()
        .map(|usage| {
            let kind_usage = KindUsage {
                capacity: usage.capacity,
                used: usage.used,
                free: usage.free,
                failed_capacity: usage.failed_capacity,
            };
            (usage.kind.clone(), kind_usage)
        })
        .collect()
}

/// An event as the wire's `EventMessage`; `json` is [`event_to_json`].
pub fn event_to_proto(event: &Event) -> api::EventMessage {
    api::EventMessage {
        revision: event.revision,
        event_id: event.event_id.to_string(),
        r#type: event.type_name().to_owned(),
        at_ms: event.at_ms,
        json: event_to_json(event).to_string(),
    }
}

// --- small helpers

fn non_empty(text: &str) -> Option<String> {
    (!text.is_empty()).then(|| text.to_owned())
}

fn to_btree_map(map: &HashMap<String, String>) -> BTreeMap<String, String> {
    map.iter().map(|(key, value)| (key.clone(), value.clone())).collect()
}

fn to_hash_map(map: &BTreeMap<String, String>) -> HashMap<String, String> {
    map.iter().map(|(key, value)| (key.clone(), value.clone())).collect()
}

#[cfg(test)]
#[path = "convert_test.rs"]
mod tests;
