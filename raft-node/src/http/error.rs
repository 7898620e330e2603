//! [`HttpError`]: the HTTP edge's one mapping of failures to answers, each
//! with a JSON body `{"error": NAME, ...}`.
//!
//! ```text
//!  WireError::NotLeader { leader }  ─▶ 307 Location: <leader's HTTP address><same path>   (leader's HTTP address known)
//!                                  ─▶ 503 Retry-After, error no_leader                    (no leader, or its HTTP address unknown)
//!  WireError::InvalidArgument      ─▶ 400 error invalid_argument, field, reason            (nothing changed)
//!  WireError::NotFound             ─▶ 404 error not_found
//!  WireError::Conflict             ─▶ 409 error already_exists | failed_precondition
//!  WireError::OutcomeUnknown, DEADLINE_EXCEEDED ─▶ 504 error outcome_unknown (retry with the same request_id)
//!  UNAVAILABLE (no quorum, stopping)            ─▶ 503 Retry-After, error unavailable
//!  UNAUTHENTICATED ─▶ 401, PERMISSION_DENIED ─▶ 403, anything else ─▶ 500
//! ```

use axum::http::header::{LOCATION, RETRY_AFTER};
use axum::http::{HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use qm_api::wire::{ConflictKind, WireError};
use qm_state_machine::InvalidArgument;
use serde_json::{json, Value};
use tonic::{Code, Status};

use super::HttpApi;

/// Seconds a caller is told to wait (`Retry-After`) when no leader is known
/// or a quorum did not answer: about one election.
pub const RETRY_AFTER_S: u64 = 1;

/// A failed HTTP call: its status, JSON body and extra headers.
#[derive(Debug)]
pub struct HttpError {
    pub status: StatusCode,
    pub body: Value,
    pub location: Option<String>,
    pub retry_after: bool,
}

impl HttpError {
    fn new(status: StatusCode, body: Value) -> HttpError {
        HttpError {
            status,
            body,
            location: None,
            retry_after: false,
        }
    }

    /// Bad input in `field`; nothing changed.
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> HttpError {
        let (field, reason) = (field.into(), reason.into());
        HttpError::new(
            StatusCode::BAD_REQUEST,
            json!({"error": "invalid_argument", "field": field, "reason": reason, "message": format!("invalid {field}: {reason}")}),
        )
    }

    pub fn from_invalid(invalid: InvalidArgument) -> HttpError {
        HttpError::invalid(invalid.field, invalid.reason)
    }

    /// A body past the limit, refused before it was read whole.
    pub fn too_large(limit_bytes: usize) -> HttpError {
        HttpError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            json!({"error": "payload_too_large", "limit_bytes": limit_bytes, "message": format!("the body is larger than {limit_bytes} bytes (--message-size-max-bytes)")}),
        )
    }

    pub fn internal(message: impl Into<String>) -> HttpError {
        HttpError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            json!({"error": "internal", "message": message.into()}),
        )
    }

    /// No leader to send the caller to: try again in a moment.
    pub fn no_leader(message: impl Into<String>) -> HttpError {
        HttpError {
            retry_after: true,
            ..HttpError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"error": "no_leader", "message": message.into()}),
            )
        }
    }

    /// The answer for a status of the gRPC handlers; `uri` is the path a
    /// redirect to the leader keeps.
    pub fn from_status(api: &HttpApi, status: &Status, uri: &Uri) -> HttpError {
        match WireError::from_status(status) {
            Some(WireError::NotLeader { leader }) => {
                let Some(leader) = leader else {
                    return HttpError::no_leader(status.message());
                };
                let Some(http) = api.node.config.http_peers.get(&leader.id) else {
                    return HttpError::no_leader(format!(
                        "replica {} at {} leads, but its HTTP address is not in --http-peers",
                        leader.id, leader.addr
                    ));
                };
                let path = uri.path_and_query().map_or("/", |path| path.as_str());
                let location = format!("{}://{http}{path}", api.scheme);
                HttpError {
                    location: Some(location.clone()),
                    ..HttpError::new(
                        StatusCode::TEMPORARY_REDIRECT,
                        json!({"error": "not_leader", "leader_id": leader.id, "leader_url": location, "message": status.message()}),
                    )
                }
            }
            Some(WireError::OutcomeUnknown { reason, .. }) => outcome_unknown(&reason),
            Some(WireError::InvalidArgument { field, reason }) => HttpError::invalid(field, reason),
            Some(WireError::NotFound { message }) => {
                HttpError::new(StatusCode::NOT_FOUND, json!({"error": "not_found", "message": message}))
            }
            Some(WireError::Conflict { kind, message }) => {
                let name = match kind {
                    ConflictKind::AlreadyExists => "already_exists",
                    ConflictKind::FailedPrecondition => "failed_precondition",
                };
                HttpError::new(StatusCode::CONFLICT, json!({"error": name, "message": message}))
            }
            None => match status.code() {
                Code::DeadlineExceeded => outcome_unknown(status.message()),
                Code::Unavailable => HttpError {
                    retry_after: true,
                    ..HttpError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        json!({"error": "unavailable", "message": status.message()}),
                    )
                },
                Code::Unauthenticated => HttpError::new(
                    StatusCode::UNAUTHORIZED,
                    json!({"error": "unauthenticated", "message": status.message()}),
                ),
                Code::PermissionDenied => HttpError::new(
                    StatusCode::FORBIDDEN,
                    json!({"error": "permission_denied", "message": status.message()}),
                ),
                _ => HttpError::internal(status.message()),
            },
        }
    }
}

/// The write may or may not have taken effect.
fn outcome_unknown(reason: &str) -> HttpError {
    HttpError::new(StatusCode::GATEWAY_TIMEOUT, json!({"error": "outcome_unknown", "message": reason}))
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.body)).into_response();
        let headers = response.headers_mut();
        if let Some(location) = self.location.and_then(|location| HeaderValue::try_from(location).ok()) {
            headers.insert(LOCATION, location);
        }
        if self.retry_after {
            headers.insert(RETRY_AFTER, HeaderValue::from(RETRY_AFTER_S));
        }
        response
    }
}

/// A path no route has.
pub async fn no_route(uri: Uri) -> HttpError {
    HttpError::new(
        StatusCode::NOT_FOUND,
        json!({"error": "no_route", "message": format!("no route for {}; see /v1/openapi.json", uri.path())}),
    )
}
