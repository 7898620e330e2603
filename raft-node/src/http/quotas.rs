//! Quotas and preemption over HTTP: `GET /v1/quotas`, `PUT` and `DELETE
//! /v1/quotas/{namespace}`, `POST /v1/preemption` and `POST
//! /v1/allocate/preview` (the dry run). Each runs the gRPC handler of the
//! same call ([`crate::api::quotas`]), so the admin-only rule, the
//! namespace scoping and the answers are the same.

use std::collections::BTreeMap;

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, Uri};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use qm_api::proto::api::{self as wire, AllocateRequest};
use qm_api::{convert, quota};
use qm_state_machine::{NamespaceUsage, PreemptionSetting, ResourceRequest};
use serde::{Deserialize, Serialize};

use super::access::{admit, audited, PeerCertificate};
use super::error::HttpError;
use super::params::{read_body, utf8, Params};
use super::requests::bounded;
use super::Shared;
use crate::api::quotas;
use crate::security::Call;

/// The answer of every quota call: the namespaces concerned and the cluster's setting.
#[derive(Serialize)]
struct QuotasDocument {
    namespaces: Vec<NamespaceUsage>,
    cluster_preemption: PreemptionSetting,
}

fn document(namespaces: &[wire::NamespaceQuota], cluster: Option<&wire::PreemptionSetting>) -> Response {
    Json(QuotasDocument {
        namespaces: namespaces.iter().map(quota::usage_from_proto).collect(),
        cluster_preemption: cluster.map(quota::setting_from_proto).unwrap_or_default(),
    })
    .into_response()
}

/// `GET /v1/quotas[?namespace=&stale]`: use against quota per namespace.
pub async fn list(
    State(api): State<Shared>,
    Extension(peer): Extension<PeerCertificate>,
    uri: Uri,
    RawQuery(query): RawQuery,
) -> Result<Response, HttpError> {
    let caller = admit(&api, &peer, Call::ListQuotas)?;
    let params = Params::parse(query.as_deref());
    let call = wire::ListQuotasRequest {
        namespace: params.non_empty("namespace").unwrap_or_default().to_owned(),
        stale: params.flag("stale"),
    };
    let reply = quotas::list_quotas(&api.node, &caller, call)
        .await
        .map_err(|status| HttpError::from_status(&api, &status, &uri))?;
    Ok(document(&reply.namespaces, reply.cluster_preemption.as_ref()))
}

/// `PUT /v1/quotas/{namespace}` with `{"cpu_cores": 64, "gpu": 4}`: sets
/// the namespace's whole quota.
pub async fn set(
    State(api): State<Shared>,
    Extension(peer): Extension<PeerCertificate>,
    uri: Uri,
    Path(namespace): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, HttpError> {
    let caller = admit(&api, &peer, Call::SetQuota)?;
    let body = read_body(&headers, body, api.node.config.message_size_max_bytes).await?;
    let limits: BTreeMap<String, u64> =
        serde_json::from_str(utf8("limits", &body)?).map_err(|error| HttpError::invalid("limits", bounded(error.to_string())))?;
    let call = wire::SetQuotaRequest {
        namespace,
        limits: limits.into_iter().collect(),
    };
    let reply = audited(&api, Call::SetQuota, &caller, Some(&headers), &uri, call, |call| {
        quotas::set_quota(&api.node, &caller, call)
    })
    .await?;
    Ok(document(reply.namespace.as_slice(), reply.cluster_preemption.as_ref()))
}

/// `DELETE /v1/quotas/{namespace}`: lifts every limit.
pub async fn delete(
    State(api): State<Shared>,
    Extension(peer): Extension<PeerCertificate>,
    uri: Uri,
    Path(namespace): Path<String>,
    headers: HeaderMap,
) -> Result<Response, HttpError> {
    let caller = admit(&api, &peer, Call::DeleteQuota)?;
    let call = wire::DeleteQuotaRequest { namespace };
    let reply = audited(&api, Call::DeleteQuota, &caller, Some(&headers), &uri, call, |call| {
        quotas::delete_quota(&api.node, &caller, call)
    })
    .await?;
    Ok(document(reply.namespace.as_slice(), reply.cluster_preemption.as_ref()))
}

/// `POST /v1/preemption`'s body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PreemptionDocument {
    /// Absent: the cluster's setting.
    #[serde(default)]
    namespace: Option<String>,
    /// `"off"`, `{"from_priority": N}`; absent for a namespace: follow the cluster's.
    #[serde(default)]
    setting: Option<PreemptionSetting>,
    #[serde(default)]
    never_preempted: bool,
}

/// `POST /v1/preemption`: who may preempt, cluster-wide or per namespace.
pub async fn set_preemption(
    State(api): State<Shared>,
    Extension(peer): Extension<PeerCertificate>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, HttpError> {
    let caller = admit(&api, &peer, Call::SetPreemption)?;
    let body = read_body(&headers, body, api.node.config.message_size_max_bytes).await?;
    let document_in: PreemptionDocument =
        serde_json::from_str(utf8("preemption", &body)?).map_err(|error| HttpError::invalid("preemption", bounded(error.to_string())))?;
    let call = wire::SetPreemptionRequest {
        namespace: document_in.namespace.unwrap_or_default(),
        setting: document_in.setting.map(quota::setting_to_proto),
        never_preempted: document_in.never_preempted,
    };
    let reply = audited(&api, Call::SetPreemption, &caller, Some(&headers), &uri, call, |call| {
        quotas::set_preemption(&api.node, &caller, call)
    })
    .await?;
    Ok(document(reply.namespace.as_slice(), reply.cluster_preemption.as_ref()))
}

/// `POST /v1/allocate/preview` with a `resource_request`: what allocating
/// it would do now (`status`, `reason`, `provider_id`, `grants`,
/// `would_preempt`), nothing allocated.
pub async fn preview(
    State(api): State<Shared>,
    Extension(peer): Extension<PeerCertificate>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, HttpError> {
    let caller = admit(&api, &peer, Call::PreviewAllocate)?;
    let body = read_body(&headers, body, api.node.config.message_size_max_bytes).await?;
    let document_in = ResourceRequest::from_json(utf8("resource_request", &body)?).map_err(HttpError::from_invalid)?;
    document_in.clone().validate().map_err(HttpError::from_invalid)?;
    let call = AllocateRequest {
        request: Some(convert::request_to_proto(&document_in)),
    };
    let reply = quotas::preview_allocate(&api.node, &caller, call)
        .await
        .map_err(|status| HttpError::from_status(&api, &status, &uri))?;
    let status = wire::AllocationStatus::try_from(reply.status)
        .map(|status| status.as_str_name().trim_start_matches("ALLOCATION_STATUS_").to_lowercase())
        .unwrap_or_default();
    let grants: Vec<serde_json::Value> = reply
        .grants
        .iter()
        .map(|grant| serde_json::json!({"resource_id": grant.resource_id, "kind": grant.kind, "amount": grant.amount}))
        .collect();
    let victims: Vec<serde_json::Value> = reply
        .victims
        .iter()
        .map(|victim| {
            serde_json::json!({
                "request_id": victim.request_id, "allocation_id": victim.allocation_id, "namespace": victim.namespace,
                "priority": victim.priority, "provider_id": victim.provider_id, "units": victim.units,
            })
        })
        .collect();
    let reason = (!reply.reason.is_empty()).then_some(reply.reason);
    let provider_id = (!reply.provider_id.is_empty()).then_some(reply.provider_id);
    Ok(Json(serde_json::json!({
        "status": status, "reason": reason, "provider_id": provider_id, "grants": grants, "would_preempt": victims,
    }))
    .into_response())
}
