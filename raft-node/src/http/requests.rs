//! The requester's calls in the protocol's JSON: `POST /v1/allocate` (a
//! `resource_request` in, an `allocation_response` out), `POST /v1/release`,
//! `GET /v1/requests/{id}`, `GET /v1/requests` (paged).
//!
//! Each parses and validates its input here (a `400` naming the field, the
//! table untouched), then runs the gRPC handler of the same call.

use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use qm_api::convert;
use qm_api::proto::api::{self as wire, AllocateRequest, AllocationReply, GetRequest, ListRequest, ReleaseRequest};
use qm_api::wire::LIST_LIMIT_MAX;
use qm_state_machine::{AllocationResponse, InvalidArgument, RequestState, ResourceRequest};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::time::Instant;

use super::access::{admit, audited, PeerCertificate};
use super::error::HttpError;
use super::params::{json_document, read_body, utf8, Params};
use super::{HttpApi, Shared};
use crate::api::requests;
use crate::security::{Call, Caller};

/// Records per page of `GET /v1/requests` when `limit` is not given.
pub const PAGE_LIMIT_DEFAULT: usize = 100;

/// `POST /v1/allocate[?wait=30s]`: `201` for a request the table did not
/// know, `200` for a known one (a retry). With `wait`, a queued request is
/// answered when it leaves the queue or when the wait is over.
pub async fn allocate(
    State(api): State<Shared>,
    Extension(peer): Extension<PeerCertificate>,
    uri: Uri,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, HttpError> {
    let caller = admit(&api, &peer, Call::Allocate)?;
    let wait = Params::parse(query.as_deref()).duration("wait")?;
    let body = read_body(&headers, body, api.node.config.message_size_max_bytes).await?;
    let document = ResourceRequest::from_json(utf8("resource_request", &body)?).map_err(HttpError::from_invalid)?;
    let request = document.validate().map_err(HttpError::from_invalid)?;
    // Known or new is decided on the table as this replica has it; a
    // follower redirects below anyway, so this is the leader's answer.
    let known = api.node.with_table(|table| table.get(request.request_id).is_some()).await;
    let call = AllocateRequest {
        request: Some(convert::request_to_proto(&document)),
    };
    let status = |status| HttpError::from_status(&api, &status, &uri);
    let mut reply = audited(&api, Call::Allocate, &caller, Some(&headers), &uri, call, |call| {
        requests::allocate(&api.node, &caller, call)
    })
    .await?;
    if let Some(wait) = wait {
        reply = wait_while_queued(&api, &caller, reply, wait).await.map_err(status)?;
    }
    let code = if known { StatusCode::OK } else { StatusCode::CREATED };
    Ok((code, Json(response(&reply)?)).into_response())
}

/// The request's record once it has left the queue, or at the end of `wait`.
async fn wait_while_queued(
    api: &HttpApi,
    caller: &Caller,
    reply: AllocationReply,
    wait: Duration,
) -> Result<AllocationReply, tonic::Status> {
    let deadline = Instant::now() + wait;
    let mut changes = api.node.state.subscribe();
    let get = |stale| GetRequest {
        id: reply.request_id.clone(),
        stale,
    };
    let mut current = reply.clone();
    while current.state == wire::RequestState::Queued as i32 {
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { break },
            () = tokio::time::sleep_until(deadline) => break,
        }
        current = requests::get(&api.node, caller, get(true)).await?;
    }
    // The answer is a linearizable read, whatever this replica applied.
    requests::get(&api.node, caller, get(false)).await
}

/// `POST /v1/release` with `{"request_id": ...}` or `{"allocation_id": ...}`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReleaseDocument {
    #[serde(default)]
    request_id: Option<String>,
    #[serde(default)]
    allocation_id: Option<String>,
}

/// The `ReleaseRequest` a `POST /v1/release` body asks for; bad input is a
/// `400` naming the field.
pub fn release_call(body: &[u8]) -> Result<ReleaseRequest, HttpError> {
    let document: ReleaseDocument = json_document("release", body)?;
    let (id, field) = match (document.request_id, document.allocation_id) {
        (Some(id), None) => (id, "request_id"),
        (None, Some(id)) => (id, "allocation_id"),
        (Some(_), Some(_)) => return Err(HttpError::invalid("allocation_id", "give request_id or allocation_id, not both")),
        (None, None) => return Err(HttpError::invalid("request_id", "is required (or allocation_id)")),
    };
    if uuid::Uuid::parse_str(&id).is_err() {
        return Err(HttpError::from_invalid(InvalidArgument::not_a_uuid(field, &id)));
    }
    Ok(ReleaseRequest { id })
}

pub async fn release(
    State(api): State<Shared>,
    Extension(peer): Extension<PeerCertificate>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, HttpError> {
    let caller = admit(&api, &peer, Call::Release)?;
    let body = read_body(&headers, body, api.node.config.message_size_max_bytes).await?;
    let call = release_call(&body)?;
    let reply = audited(&api, Call::Release, &caller, Some(&headers), &uri, call, |call| {
        requests::release(&api.node, &caller, call)
    })
    .await?;
    Ok(Json(response(&reply)?).into_response())
}

/// `POST /v1/release/matching` with `{"namespace", "requester_id",
/// "provider_id", "after", "entries_max"}` (at least one filter field).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReleaseMatchingDocument {
    #[serde(default)]
    namespace: String,
    #[serde(default)]
    requester_id: String,
    #[serde(default)]
    provider_id: String,
    #[serde(default)]
    after: String,
    #[serde(default)]
    entries_max: u32,
}

/// The `ReleaseMatchingRequest` a `POST /v1/release/matching` body asks
/// for; bad JSON is a `400` (the filter is checked by the call itself).
pub fn release_matching_call(body: &[u8]) -> Result<wire::ReleaseMatchingRequest, HttpError> {
    let document: ReleaseMatchingDocument = json_document("release_matching", body)?;
    Ok(wire::ReleaseMatchingRequest {
        namespace: document.namespace,
        requester_id: document.requester_id,
        provider_id: document.provider_id,
        after: document.after,
        entries_max: document.entries_max,
    })
}

/// Answers `{"released": N, "cancelled": N, "entries": N, "next": ID|null}`.
pub async fn release_matching(
    State(api): State<Shared>,
    Extension(peer): Extension<PeerCertificate>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, HttpError> {
    let caller = admit(&api, &peer, Call::ReleaseMatching)?;
    let body = read_body(&headers, body, api.node.config.message_size_max_bytes).await?;
    let call = release_matching_call(&body)?;
    let reply = audited(&api, Call::ReleaseMatching, &caller, Some(&headers), &uri, call, |call| {
        crate::api::bulk_release::release_matching(&api.node, &caller, call)
    })
    .await?;
    let next = (!reply.next.is_empty()).then_some(reply.next);
    Ok(Json(json!({"released": reply.released, "cancelled": reply.cancelled, "entries": reply.entries, "next": next})).into_response())
}

/// `GET /v1/requests/{id}[?stale]`: a request id or an allocation id.
pub async fn get(
    State(api): State<Shared>,
    Extension(peer): Extension<PeerCertificate>,
    uri: Uri,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, HttpError> {
    let reply = get_record(&api, &peer, &uri, id, query.as_deref()).await?;
    Ok(Json(record_json(&reply)?).into_response())
}

/// One request's record by request or allocation id, as `Get` answers it
/// to this caller (`?stale` read locally); shared with its history.
pub(super) async fn get_record(
    api: &HttpApi,
    peer: &PeerCertificate,
    uri: &Uri,
    id: String,
    query: Option<&str>,
) -> Result<AllocationReply, HttpError> {
    let caller = admit(api, peer, Call::Get)?;
    let stale = Params::parse(query).flag("stale");
    let call = GetRequest { id, stale };
    audited(api, Call::Get, &caller, None, uri, call, |call| {
        requests::get(&api.node, &caller, call)
    })
    .await
}

/// `GET /v1/requests?namespace=&requester=&provider=&state=&limit=&next=[&stale]`:
/// `{"requests": [...], "next": ID}`; `next` is set when the page is full,
/// and passing it back gives the page after.
pub async fn list(
    State(api): State<Shared>,
    Extension(peer): Extension<PeerCertificate>,
    uri: Uri,
    RawQuery(query): RawQuery,
) -> Result<Response, HttpError> {
    let caller = admit(&api, &peer, Call::List)?;
    let params = Params::parse(query.as_deref());
    let state = match params.non_empty("state") {
        None => wire::RequestState::Unspecified as i32,
        Some(name) => {
            let state: RequestState = serde_json::from_value(Value::String(name.to_owned())).map_err(|_| {
                HttpError::invalid(
                    "state",
                    format!(
                        "{} is not a state; use queued, allocation, monitoring, deallocation, idle or error",
                        qm_state_machine::error::quoted(name)
                    ),
                )
            })?;
            convert::state_to_wire(state) as i32
        }
    };
    let limit = params.number("limit")?.map_or(PAGE_LIMIT_DEFAULT, |limit| limit as usize);
    if limit == 0 || limit > LIST_LIMIT_MAX {
        return Err(HttpError::invalid("limit", format!("must be 1..={LIST_LIMIT_MAX}")));
    }
    let call = ListRequest {
        namespace: params.get("namespace").unwrap_or_default().to_owned(),
        requester_id: params.get("requester").unwrap_or_default().to_owned(),
        provider_id: params.get("provider").unwrap_or_default().to_owned(),
        state,
        after: params.get("next").unwrap_or_default().to_owned(),
        limit: limit as u32,
        stale: params.flag("stale"),
    };
    let records = audited(&api, Call::List, &caller, None, &uri, call, |call| {
        requests::list(&api.node, &caller, call)
    })
    .await?
    .records;
    let next = (records.len() == limit).then(|| records.last().map(|record| record.request_id.clone()));
    let requests = records.iter().map(record_json).collect::<Result<Vec<_>, _>>()?;
    Ok(Json(json!({"requests": requests, "next": next.flatten()})).into_response())
}

/// A reply in the protocol's `allocation_response` shape.
fn response(reply: &AllocationReply) -> Result<AllocationResponse, HttpError> {
    convert::response_from_reply(reply).map_err(|error| HttpError::internal(error.to_string()))
}

/// A record as `GET /v1/requests` answers it: the protocol's
/// `allocation_response`, plus who asked, in which namespace, for what, at
/// which priority and when (the web UI's allocation table shows them).
fn record_json(reply: &AllocationReply) -> Result<Value, HttpError> {
    let mut value = serde_json::to_value(response(reply)?).map_err(|error| HttpError::internal(error.to_string()))?;
    if let (Value::Object(object), Some(request)) = (&mut value, &reply.request) {
        let namespace = if request.namespace.is_empty() {
            "default"
        } else {
            &request.namespace
        };
        object.insert("requester_id".into(), request.requester_id.clone().into());
        object.insert("namespace".into(), namespace.into());
        object.insert("priority".into(), request.priority.into());
        let requirements: std::collections::BTreeMap<&String, &i64> = request.resource_requirements.iter().collect();
        object.insert("resource_requirements".into(), json!(requirements));
        object.insert("submitted_at_ms".into(), reply.submitted_at_ms.into());
        object.insert("updated_at_ms".into(), reply.updated_at_ms.into());
    }
    Ok(value)
}
