//! Who makes an HTTP call: the identity in the client's certificate, checked
//! by the same [`Guard`](crate::security::Guard) and [`Call`] table as gRPC.

use std::future::Future;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use qm_api::tls::{Identity, Role};
use serde_json::json;
use tracing::warn;

use super::error::HttpError;
use super::{HttpApi, Shared};
use crate::api::audited::{self, AuditedReply, CallIds};
use crate::security::audit::{AuditCaller, AuditIds, Transport};
use crate::security::{Call, Caller};
use qm_api::wire::CORRELATION_ID_HEADER;

/// The DER leaf certificate the client presented on this connection (none
/// on a plain connection); put on every request by [`super::serve`].
#[derive(Clone, Debug, Default)]
pub struct PeerCertificate(pub Option<Arc<Vec<u8>>>);

/// The caller of `call`, if its certificate's role may make it: `401`
/// without a certificate stating an identity, `403` for another role.
pub fn admit(api: &HttpApi, peer: &PeerCertificate, call: Call) -> Result<Caller, HttpError> {
    if api.guard.is_open() {
        return Ok(Caller::Anyone);
    }
    let unauthenticated = |message: String| {
        warn!(operation_type = call.name(), status = "unauthenticated", reason = %message, "HTTP call refused");
        let refusal = tonic::Status::unauthenticated(message.clone());
        audited::record_refusal(
            &api.audit,
            Transport::Http,
            call,
            AuditCaller::unidentified(true),
            None,
            AuditIds::new(),
            &refusal,
        );
        HttpError {
            status: StatusCode::UNAUTHORIZED,
            body: json!({"error": "unauthenticated", "message": message}),
            location: None,
            retry_after: false,
        }
    };
    let leaf = peer
        .0
        .as_ref()
        .ok_or_else(|| unauthenticated("no client certificate: this cluster requires mutual TLS".to_owned()))?;
    let identity = Identity::from_certificate_der(leaf).map_err(|error| unauthenticated(format!("client certificate refused: {error}")))?;
    if api.guard.is_revoked(leaf) {
        return Err(unauthenticated(format!(
            "the certificate of {identity} is revoked (the cluster's CRL lists it)"
        )));
    }
    let caller = Caller::Authenticated(identity);
    api.guard.authorize(&caller, call).map_err(|status| {
        audited::record_refusal(
            &api.audit,
            Transport::Http,
            call,
            AuditCaller::of(&caller),
            None,
            AuditIds::new(),
            &status,
        );
        HttpError {
            status: StatusCode::FORBIDDEN,
            body: json!({"error": "permission_denied", "message": status.message()}),
            location: None,
            retry_after: false,
        }
    })?;
    Ok(caller)
}

/// Records an admitted HTTP call's outcome in the audit trail, as gRPC
/// records its own (`x-qm-correlation-id` from `headers`, when given).
pub fn audit<T: AuditedReply>(
    api: &HttpApi,
    call: Call,
    caller: &Caller,
    headers: Option<&HeaderMap>,
    ids: AuditIds,
    result: &Result<T, tonic::Status>,
) {
    let correlation_id = headers
        .and_then(|headers| headers.get(CORRELATION_ID_HEADER))
        .and_then(|value| value.to_str().ok());
    audited::record(&api.audit, Transport::Http, call, caller, correlation_id, ids, result);
}

/// Runs an admitted call's gRPC handler on `request` and records the
/// outcome in the audit trail; a refusal becomes the HTTP error of its
/// status (a follower's answer a redirect to the leader).
#[allow(clippy::too_many_arguments)]
pub async fn audited<Request, Reply, Answer>(
    api: &HttpApi,
    call: Call,
    caller: &Caller,
    headers: Option<&HeaderMap>,
    uri: &Uri,
    request: Request,
    handler: impl FnOnce(Request) -> Answer,
) -> Result<Reply, HttpError>
where
    Request: CallIds,
    Reply: AuditedReply,
    Answer: Future<Output = Result<Reply, tonic::Status>>,
{
    let ids = request.call_ids();
    let result = handler(request).await;
    audit(api, call, caller, headers, ids, &result);
    result.map_err(|status| HttpError::from_status(api, &status, uri))
}

/// `GET /v1/identity`: who this replica takes the caller to be, from its
/// certificate (any role may ask), and which of the operator's writes that
/// identity may make: the web UI shows the caller, and offers only the
/// actions the replica would allow.
pub async fn identity(State(api): State<Shared>, Extension(peer): Extension<PeerCertificate>) -> Result<Response, HttpError> {
    let caller = admit(&api, &peer, Call::ClusterStatus)?;
    let may = |call: Call| match &caller {
        Caller::Anyone => true,
        Caller::Authenticated(identity) => call.allows(identity.role),
    };
    let (role, name, namespace) = match &caller {
        Caller::Anyone => (None, None, None),
        Caller::Authenticated(identity) => (
            Some(identity.role.as_str()),
            Some(identity.name.as_str()),
            identity.namespace.as_deref().filter(|_| identity.role == Role::ResourceConsumer),
        ),
    };
    Ok(Json(json!({
        "tls": !api.guard.is_open(),
        "role": role,
        "name": name,
        "namespace": namespace,
        "may_release": may(Call::Release),
        "may_schedule_providers": may(Call::SetProviderScheduling),
        "may_allocate": may(Call::Allocate),
    }))
    .into_response())
}
