//! Capability policies over HTTP: `GET /v1/policies`, `PUT`, `GET`,
//! `DELETE /v1/policies/{name}`, and `POST /v1/policies/{name}/bind` and
//! `/unbind` (one binding, atomically). Each runs the gRPC handler of the same
//! call ([`crate::api::policies`]), so the admin-only rule, the audit
//! record and the answers are the same.

use std::collections::{BTreeMap, BTreeSet};

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, Uri};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use qm_api::policy::{binding_to_proto, policy_from_proto, policy_to_proto};
use qm_api::proto::api as wire;
use qm_state_machine::policy::{Binding, Capability, CapabilityPolicy, ProviderScope};
use serde::Deserialize;

use super::access::{admit, audited, PeerCertificate};
use super::error::HttpError;
use super::params::{json_document, read_body, Params};
use super::Shared;
use crate::api::policies;
use crate::security::Call;

/// `PUT /v1/policies/{name}`'s body: every field optional, an absent one
/// allows everything (`may_preempt` defaults to true, as `qm policy set`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyDocument {
    #[serde(default)]
    kinds: Option<BTreeSet<String>>,
    #[serde(default)]
    providers: Option<BTreeSet<String>>,
    #[serde(default)]
    provider_labels: BTreeMap<String, String>,
    #[serde(default)]
    max_per_request: BTreeMap<String, u64>,
    #[serde(default)]
    max_held: BTreeMap<String, u64>,
    #[serde(default)]
    priority_max: Option<i64>,
    #[serde(default = "yes")]
    may_preempt: bool,
    /// `{"cert_name": "alice"}` or `{"role": {"role": "resource_consumer", "namespace": "team-a"}}`.
    #[serde(default)]
    bindings: BTreeSet<Binding>,
}

fn yes() -> bool {
    true
}

fn answer(policies: &[wire::CapabilityPolicy], uri: &Uri, api: &Shared) -> Result<Vec<CapabilityPolicy>, HttpError> {
    policies
        .iter()
        .map(policy_from_proto)
        .collect::<Result<_, _>>()
        .map_err(|invalid| HttpError::from_status(api, &tonic::Status::internal(invalid.to_string()), uri))
}

/// `GET /v1/policies[?stale]`: every policy.
pub async fn list(
    State(api): State<Shared>,
    Extension(peer): Extension<PeerCertificate>,
    uri: Uri,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, HttpError> {
    let caller = admit(&api, &peer, Call::ListPolicies)?;
    let call = wire::ListPoliciesRequest {
        stale: Params::parse(query.as_deref()).flag("stale"),
    };
    let reply = audited(&api, Call::ListPolicies, &caller, Some(&headers), &uri, call, |call| {
        policies::list_policies(&api.node, call)
    })
    .await?;
    Ok(Json(answer(&reply.policies, &uri, &api)?).into_response())
}

/// `GET /v1/policies/{name}[?stale]`: one policy (404 if none).
pub async fn get(
    State(api): State<Shared>,
    Extension(peer): Extension<PeerCertificate>,
    uri: Uri,
    Path(name): Path<String>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, HttpError> {
    let caller = admit(&api, &peer, Call::GetPolicy)?;
    let call = wire::GetPolicyRequest {
        name,
        stale: Params::parse(query.as_deref()).flag("stale"),
    };
    let reply = audited(&api, Call::GetPolicy, &caller, Some(&headers), &uri, call, |call| {
        policies::get_policy(&api.node, call)
    })
    .await?;
    let mut policies = answer(reply.policy.as_slice(), &uri, &api)?;
    Ok(Json(policies.pop()).into_response())
}

/// `PUT /v1/policies/{name}`: sets the whole policy (a new revision).
pub async fn set(
    State(api): State<Shared>,
    Extension(peer): Extension<PeerCertificate>,
    uri: Uri,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, HttpError> {
    let caller = admit(&api, &peer, Call::SetPolicy)?;
    let body = read_body(&headers, body, api.node.config.message_size_max_bytes).await?;
    let call = set_policy_call(name, &body)?;
    let reply = audited(&api, Call::SetPolicy, &caller, Some(&headers), &uri, call, |call| {
        policies::set_policy(&api.node, &caller, call)
    })
    .await?;
    let mut policies = answer(reply.policy.as_slice(), &uri, &api)?;
    Ok(Json(policies.pop()).into_response())
}

/// The `SetPolicyRequest` a `PUT /v1/policies/{name}` body asks for; bad
/// JSON is a `400` naming `policy` (the policy is checked by the call).
pub fn set_policy_call(name: String, body: &[u8]) -> Result<wire::SetPolicyRequest, HttpError> {
    let document: PolicyDocument = json_document("policy", body)?;
    let policy = CapabilityPolicy {
        name,
        revision: 0,
        capability: Capability {
            kinds: document.kinds,
            providers: ProviderScope {
                ids: document.providers,
                labels: document.provider_labels,
            },
            max_per_request: document.max_per_request,
            max_held: document.max_held,
            priority_max: document.priority_max,
            may_preempt: document.may_preempt,
        },
        bindings: document.bindings,
    };
    Ok(wire::SetPolicyRequest {
        policy: Some(policy_to_proto(&policy)),
    })
}

/// `DELETE /v1/policies/{name}`: `{"name": ..., "existed": bool}`.
pub async fn delete(
    State(api): State<Shared>,
    Extension(peer): Extension<PeerCertificate>,
    uri: Uri,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<Response, HttpError> {
    let caller = admit(&api, &peer, Call::DeletePolicy)?;
    let call = wire::DeletePolicyRequest { name };
    let reply = audited(&api, Call::DeletePolicy, &caller, Some(&headers), &uri, call, |call| {
        policies::delete_policy(&api.node, &caller, call)
    })
    .await?;
    Ok(Json(serde_json::json!({"name": reply.name, "existed": reply.existed})).into_response())
}

/// `POST /v1/policies/{name}/bind`: adds the binding in the body, in one log entry.
pub async fn bind(
    State(api): State<Shared>,
    Extension(peer): Extension<PeerCertificate>,
    uri: Uri,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, HttpError> {
    change_binding(api, peer, uri, name, headers, body, true).await
}

/// `POST /v1/policies/{name}/unbind`: takes the binding in the body, in one log entry.
pub async fn unbind(
    State(api): State<Shared>,
    Extension(peer): Extension<PeerCertificate>,
    uri: Uri,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, HttpError> {
    change_binding(api, peer, uri, name, headers, body, false).await
}

async fn change_binding(
    api: Shared,
    peer: PeerCertificate,
    uri: Uri,
    name: String,
    headers: HeaderMap,
    body: Body,
    bound: bool,
) -> Result<Response, HttpError> {
    let call_kind = if bound { Call::BindPolicy } else { Call::UnbindPolicy };
    let caller = admit(&api, &peer, call_kind)?;
    let body = read_body(&headers, body, api.node.config.message_size_max_bytes).await?;
    let call = binding_call(name, &body)?;
    let reply = audited(&api, call_kind, &caller, Some(&headers), &uri, call, |call| {
        policies::change_binding(&api.node, &caller, call, bound)
    })
    .await?;
    let mut policies = answer(reply.policy.as_slice(), &uri, &api)?;
    Ok(Json(policies.pop()).into_response())
}

/// The `PolicyBindingRequest` a bind or unbind body asks for (a binding as
/// in a policy's `bindings`); bad JSON is a `400` naming `binding`.
pub fn binding_call(name: String, body: &[u8]) -> Result<wire::PolicyBindingRequest, HttpError> {
    let binding: Binding = json_document("binding", body)?;
    Ok(wire::PolicyBindingRequest {
        name,
        binding: Some(binding_to_proto(&binding)),
    })
}
