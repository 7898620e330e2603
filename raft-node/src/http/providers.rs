//! The provider's and the monitor's calls in JSON: `GET /v1/providers`
//! (paged), `POST /v1/providers` (the registration document), `GET /v1/state`
//! (the monitor's SystemState), and `GET /v1/cluster` (with every replica's
//! term and indexes as it last told them).

use std::collections::BTreeMap;

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, Uri};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use qm_api::convert;
use qm_api::proto::api::{ListProvidersRequest, OptimizeRequest, ProviderInfo, SetProviderSchedulingRequest};
use qm_state_machine::ProviderRegistration;
use serde_json::{json, Value};

use super::access::{admit, audited, PeerCertificate};
use super::error::HttpError;
use super::params::{json_document, read_body, Params};
use super::replica_health::ReplicaView;
use super::Shared;
use crate::api::{cluster, providers};
use crate::security::Call;

/// Providers per page of `GET /v1/providers` when `limit` is not given.
pub const PAGE_LIMIT_DEFAULT: usize = 100;
/// Providers per page at most.
pub const PAGE_LIMIT_MAX: usize = 10_000;

/// `GET /v1/providers?limit=&next=[&stale]`: `{"providers": [...], "next": ID}`,
/// by provider id; `next` is the last id of a full page.
pub async fn list(
    State(api): State<Shared>,
    Extension(peer): Extension<PeerCertificate>,
    uri: Uri,
    RawQuery(query): RawQuery,
) -> Result<Response, HttpError> {
    admit(&api, &peer, Call::ListProviders)?;
    let params = Params::parse(query.as_deref());
    let limit = params.number("limit")?.map_or(PAGE_LIMIT_DEFAULT, |limit| limit as usize);
    if limit == 0 || limit > PAGE_LIMIT_MAX {
        return Err(HttpError::invalid("limit", format!("must be 1..={PAGE_LIMIT_MAX}")));
    }
    let after = params.non_empty("next").map(str::to_owned);
    let call = ListProvidersRequest {
        stale: params.flag("stale"),
        after: after.clone().unwrap_or_default(),
        limit: limit as u32,
    };
    let mut all = providers::list(&api.node, call)
        .await
        .map_err(|status| HttpError::from_status(&api, &status, &uri))?
        .providers;
    all.sort_by(|a, b| a.provider_id.cmp(&b.provider_id));
    let page: Vec<&ProviderInfo> = all
        .iter()
        .filter(|provider| after.as_ref().is_none_or(|after| provider.provider_id.as_str() > after.as_str()))
        .take(limit)
        .collect();
    let next = (page.len() == limit).then(|| page.last().map(|provider| provider.provider_id.clone()));
    let now_ms = crate::clock::now_ms();
    let providers: Vec<Value> = page.into_iter().map(|provider| provider_json(provider, now_ms)).collect();
    Ok(Json(json!({"providers": providers, "next": next.flatten()})).into_response())
}

/// One provider as JSON, maps sorted by key. `heartbeat_age_ms` is this
/// replica's clock minus the last heartbeat it saw: heartbeats reach the
/// leader only, so a follower has none to show (`null`).
fn provider_json(provider: &ProviderInfo, now_ms: u64) -> Value {
    fn sorted(map: &std::collections::HashMap<String, String>) -> BTreeMap<&String, &String> {
        map.iter().collect()
    }
    let resources: Vec<Value> = provider
        .resources
        .iter()
        .map(|resource| {
            json!({
                "resource_id": resource.resource_id,
                "kind": resource.kind,
                "capacity": resource.capacity,
                "used": resource.used,
                "sharing": resource.sharing,
                "labels": sorted(&resource.labels),
                "metrics": resource.metrics.iter().collect::<BTreeMap<_, _>>(),
            })
        })
        .collect();
    json!({
        "provider_id": provider.provider_id,
        "status": provider.status,
        "scheduling": provider.scheduling,
        "leaving": provider.leaving,
        "labels": sorted(&provider.labels),
        "resources": resources,
        "confirms_allocations": provider.confirms_allocations,
        "allocations": provider.allocations,
        "last_heartbeat_ms": provider.last_heartbeat_ms,
        "address": Some(&provider.address).filter(|address| !address.is_empty()),
        "port": Some(provider.port).filter(|port| *port != 0),
        "heartbeat_age_ms": provider.last_heartbeat_ms.map(|at| now_ms.saturating_sub(at)),
    })
}

/// `POST /v1/providers`: the registration document
/// `{"provider_id", "labels", "resources": [...], "confirms_allocations",
/// "address", "port"}`.
pub async fn register(
    State(api): State<Shared>,
    Extension(peer): Extension<PeerCertificate>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, HttpError> {
    let caller = admit(&api, &peer, Call::RegisterProvider)?;
    let body = read_body(&headers, body, api.node.config.message_size_max_bytes).await?;
    let document: ProviderRegistration = json_document("registration", &body)?;
    // Validated here too, so that bad input is a 400 naming the field before
    // any leader check.
    document.clone().validate().map_err(HttpError::from_invalid)?;
    let call = convert::registration_to_proto(&document);
    let reply = audited(&api, Call::RegisterProvider, &caller, Some(&headers), &uri, call, |call| {
        providers::register(&api.node, &caller, call)
    })
    .await?;
    Ok(Json(json!({"provider_id": reply.provider_id, "status": reply.status, "resources": reply.resources})).into_response())
}

/// `POST /v1/providers/{id}/cordon`: no new placements on the provider
/// (what it holds stays); answers `{"provider_id", "scheduling"}`. Admin
/// only under TLS. The body, if any, is not read.
pub async fn cordon(
    State(api): State<Shared>,
    Extension(peer): Extension<PeerCertificate>,
    uri: Uri,
    Path(id): Path<String>,
) -> Result<Response, HttpError> {
    set_scheduling(&api, &peer, &uri, id, "cordoned").await
}

/// `POST /v1/providers/{id}/uncordon`: open to new placements again (also
/// ends a drain).
pub async fn uncordon(
    State(api): State<Shared>,
    Extension(peer): Extension<PeerCertificate>,
    uri: Uri,
    Path(id): Path<String>,
) -> Result<Response, HttpError> {
    set_scheduling(&api, &peer, &uri, id, "open").await
}

/// `POST /v1/providers/{id}/drain?deadline_ms=N`: no new placements, its
/// movable allocations move elsewhere make-before-break, after `deadline_ms`
/// (default 10 minutes) the rest move as if it left. Answers
/// `{"provider_id", "scheduling", "moving": [...], "cannot_move": [...]}`.
pub async fn drain(
    State(api): State<Shared>,
    Extension(peer): Extension<PeerCertificate>,
    uri: Uri,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, HttpError> {
    let deadline_ms = Params::parse(query.as_deref())
        .number("deadline_ms")?
        .unwrap_or(DRAIN_DEADLINE_MS_DEFAULT);
    set_scheduling_to(&api, &peer, &uri, id, "draining", deadline_ms).await
}

/// A drain's deadline when `deadline_ms` is not given: 10 minutes.
pub const DRAIN_DEADLINE_MS_DEFAULT: u64 = 10 * 60 * 1000;

async fn set_scheduling(
    api: &Shared,
    peer: &PeerCertificate,
    uri: &Uri,
    provider_id: String,
    scheduling: &str,
) -> Result<Response, HttpError> {
    set_scheduling_to(api, peer, uri, provider_id, scheduling, 0).await
}

async fn set_scheduling_to(
    api: &Shared,
    peer: &PeerCertificate,
    uri: &Uri,
    provider_id: String,
    scheduling: &str,
    drain_deadline_ms: u64,
) -> Result<Response, HttpError> {
    let caller = admit(api, peer, Call::SetProviderScheduling)?;
    let call = SetProviderSchedulingRequest {
        provider_id,
        scheduling: scheduling.to_owned(),
        drain_deadline_ms,
    };
    let reply = audited(api, Call::SetProviderScheduling, &caller, None, uri, call, |call| {
        providers::set_scheduling(&api.node, call)
    })
    .await?;
    let moving: Vec<Value> = reply
        .moving
        .iter()
        .map(|planned| json!({"allocation_id": planned.allocation_id, "to_provider": planned.to_provider}))
        .collect();
    Ok(Json(json!({
        "provider_id": reply.provider_id,
        "scheduling": reply.scheduling,
        "moving": moving,
        "cannot_move": reply.cannot_move,
    }))
    .into_response())
}

/// `POST /v1/optimize[?dry_run][&stale]`: an optimization plan, begun (through
/// the log) or, with `dry_run`, only computed; answers `{"dry_run", "moves":
/// [{"request_id", "allocation_id", "namespace", "from_provider",
/// "to_provider", "resource_ids"}]}`. Admin only under TLS.
pub async fn optimize(
    State(api): State<Shared>,
    Extension(peer): Extension<PeerCertificate>,
    uri: Uri,
    RawQuery(query): RawQuery,
) -> Result<Response, HttpError> {
    let caller = admit(&api, &peer, Call::Optimize)?;
    let params = Params::parse(query.as_deref());
    let call = OptimizeRequest {
        dry_run: params.flag("dry_run"),
        stale: params.flag("stale"),
    };
    let reply = audited(&api, Call::Optimize, &caller, None, &uri, call, |call| {
        providers::optimize(&api.node, call)
    })
    .await?;
    let moves: Vec<Value> = reply
        .moves
        .iter()
        .map(|planned| {
            json!({
                "request_id": planned.request_id,
                "allocation_id": planned.allocation_id,
                "namespace": planned.namespace,
                "from_provider": planned.from_provider,
                "to_provider": planned.to_provider,
                "resource_ids": planned.grants.iter().map(|grant| grant.resource_id.clone()).collect::<Vec<_>>(),
            })
        })
        .collect();
    Ok(Json(json!({"dry_run": reply.dry_run, "moves": moves})).into_response())
}

/// `GET /v1/state[?stale]`: capacity, use and free amount per kind and
/// provider, the queue, failed providers, the revision.
pub async fn system_state(
    State(api): State<Shared>,
    Extension(peer): Extension<PeerCertificate>,
    uri: Uri,
    RawQuery(query): RawQuery,
) -> Result<Response, HttpError> {
    admit(&api, &peer, Call::SystemState)?;
    let stale = Params::parse(query.as_deref()).flag("stale");
    // The HTTP view stays whole (one JSON document, as the UI reads it):
    // every page, taken together under one read barrier.
    let reply = providers::system_state_whole(&api.node, stale)
        .await
        .map_err(|status| HttpError::from_status(&api, &status, &uri))?;
    let usage = convert::usage_from_proto(&reply).map_err(|error| HttpError::internal(error.to_string()))?;
    Ok(Json(usage).into_response())
}

/// `GET /v1/cluster`: this replica's view: members (with their HTTP
/// addresses), leader, term, commit, applied, last log and snapshot indexes,
/// and `replicas`: each member's own term, indexes and whether it knows a
/// leader, as it answered this replica's last probe (at most a second old;
/// `reachable: false` if it did not answer).
pub async fn cluster(State(api): State<Shared>, Extension(peer): Extension<PeerCertificate>, uri: Uri) -> Result<Response, HttpError> {
    admit(&api, &peer, Call::ClusterStatus)?;
    let status = cluster::status(&api.node)
        .await
        .map_err(|status| HttpError::from_status(&api, &status, &uri))?;
    let http = |id: u64| api.node.config.http_peers.get(&id).cloned();
    let members: Vec<Value> = status
        .members
        .iter()
        .map(|member| json!({"id": member.id, "addr": member.addr, "role": member.role, "http_addr": http(member.id)}))
        .collect();
    let replicas: Vec<Value> = status
        .members
        .iter()
        .map(|member| {
            let view = match member.id == status.node_id {
                true => Some(ReplicaView {
                    leader_id: status.leader_id,
                    term: status.term,
                    commit_index: status.commit_index,
                    applied_index: status.applied_index,
                }),
                false => api.replica_health.view(member.id),
            };
            json!({
                "id": member.id,
                "role": member.role,
                "http_addr": http(member.id),
                "reachable": view.is_some(),
                "knows_leader": view.is_some_and(|view| view.leader_id.is_some()),
                "leader_id": view.and_then(|view| view.leader_id),
                "term": view.map(|view| view.term),
                "commit_index": view.map(|view| view.commit_index),
                "applied_index": view.map(|view| view.applied_index),
            })
        })
        .collect();
    Ok(Json(json!({
        "node_id": status.node_id,
        "leader_id": status.leader_id,
        "leader_addr": (!status.leader_addr.is_empty()).then_some(&status.leader_addr),
        "leader_http_addr": status.leader_id.and_then(http),
        "term": status.term,
        "commit_index": status.commit_index,
        "applied_index": status.applied_index,
        "last_log_index": status.last_log_index,
        "snapshot_index": status.snapshot_index,
        "members": members,
        "replicas": replicas,
    }))
    .into_response())
}
