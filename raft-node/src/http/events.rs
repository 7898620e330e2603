//! `GET /v1/events?from=REV[&namespace=]` as Server-Sent Events: each event
//! is one SSE message with `id:` its revision, `event:` its type and `data:`
//! its JSON (`qm_state_machine::event_to_json`, as `qm watch` prints it).
//! A client that reconnects with `Last-Event-ID` resumes after that
//! revision, on any replica. Without `from` only new events come.
//!
//! The stream is the gRPC `Watch` stream itself ([`crate::api::watch`]), so
//! a consumer sees its namespace only and a provider the allocations placed
//! on it. A revision older than the history kept ends the stream with an
//! `event: error` whose data is `{"error": "compacted", ...}`.

use std::convert::Infallible;

use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, Uri};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use futures::StreamExt;
use qm_api::proto::api::WatchRequest;
use serde_json::json;

use super::access::{admit, audit, PeerCertificate};
use super::error::HttpError;
use super::params::Params;
use super::Shared;
use crate::api::audited::CallIds;
use crate::api::watch;
use crate::security::Call;

/// The header an SSE client resends on reconnecting.
pub const LAST_EVENT_ID: &str = "last-event-id";

pub async fn events(
    State(api): State<Shared>,
    Extension(peer): Extension<PeerCertificate>,
    uri: Uri,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, HttpError> {
    let caller = admit(&api, &peer, Call::Watch)?;
    let params = Params::parse(query.as_deref());
    let from_revision = match headers.get(LAST_EVENT_ID) {
        Some(value) => {
            let last: u64 = value
                .to_str()
                .ok()
                .and_then(|text| text.trim().parse().ok())
                .ok_or_else(|| HttpError::invalid("Last-Event-ID", "must be the revision of the last event received"))?;
            last + 1
        }
        None => params.number("from")?.unwrap_or(0),
    };
    let call = WatchRequest {
        from_revision,
        namespace: params.get("namespace").unwrap_or_default().to_owned(),
    };
    let ids = call.call_ids();
    let result = watch::watch(api.node.clone(), caller.clone(), call);
    audit(&api, Call::Watch, &caller, Some(&headers), ids, &result);
    let stream = result.map_err(|status| HttpError::from_status(&api, &status, &uri))?;
    let messages = stream.map(|item| {
        Ok::<_, Infallible>(match item {
            Ok(message) => Event::default()
                .id(message.revision.to_string())
                .event(message.r#type)
                .data(message.json),
            Err(status) => {
                let name = match status.code() {
                    tonic::Code::OutOfRange => "compacted",
                    _ => "stream_failed",
                };
                Event::default()
                    .event("error")
                    .data(json!({"error": name, "message": status.message()}).to_string())
            }
        })
    });
    Ok(Sse::new(messages).keep_alive(KeepAlive::default()).into_response())
}
