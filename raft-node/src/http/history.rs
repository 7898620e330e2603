//! `GET /v1/requests/{id}/history`: one request's way through the
//! protocol's states, read from the table's kept event history (the web
//! UI's request page).
//!
//! The table does not store a request's past states; its events do. Each
//! event about the request (by request id or allocation id) becomes one
//! step naming the protocol states the request passed through at it:
//! `request_processing` and `optimization` are passed inside one apply, and
//! a provider that does not confirm allocations takes a request from
//! `allocation` to `monitoring` (and from `deallocation` to `idle`) in the
//! same step. The history reaches back as far as the event history does
//! (`--event-history-max`); `complete` says whether it reaches the request's
//! first event.

use axum::extract::{Path, RawQuery, State};
use axum::http::Uri;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use qm_state_machine::{event_to_json, AllocationTable, Event, EventKind};
use serde_json::{json, Value};
use uuid::Uuid;

use super::access::PeerCertificate;
use super::error::HttpError;
use super::{requests, Shared};

/// Steps returned at most, the newest kept (a lease renewed every second
/// for a day would otherwise make a huge answer).
pub const HISTORY_STEPS_MAX: usize = 1_000;

/// The protocol states a request passed through at `event`, oldest first,
/// the last being where it rested; empty for an event that moved nothing
/// (a renewed lease). `confirms`: whether the provider named confirms
/// allocations (its agent acknowledges before `monitoring`).
pub fn states_at(kind: &EventKind, confirms: bool) -> Vec<&'static str> {
    let held = if confirms {
        vec!["allocation"]
    } else {
        vec!["allocation", "monitoring"]
    };
    let freed = if confirms {
        vec!["deallocation"]
    } else {
        vec!["deallocation", "idle"]
    };
    match kind {
        EventKind::RequestQueued { .. } => vec!["request_processing", "queued"],
        EventKind::AllocationGranted { .. } => [vec!["request_processing"], held].concat(),
        EventKind::AllocationMoved { .. } => [vec!["optimization"], held].concat(),
        EventKind::AllocationMoving { .. } => vec!["optimization"],
        EventKind::OptimizationFailed { .. } => vec!["monitoring"],
        EventKind::AllocationConfirmed { .. } => vec!["monitoring"],
        EventKind::AllocationReleased { .. } | EventKind::AllocationExpired { .. } => freed,
        EventKind::DeallocationConfirmed { .. } => vec!["idle"],
        EventKind::RequestCancelled { .. } => vec!["idle"],
        EventKind::RequestRejected { .. } => vec!["error"],
        _ => Vec::new(),
    }
}

/// Whether `event` is about the request with these ids.
fn is_about(event: &Event, request_id: Uuid, allocation_id: Uuid) -> bool {
    match &event.kind {
        EventKind::AllocationGranted { request_id: id, .. }
        | EventKind::RequestQueued { request_id: id, .. }
        | EventKind::RequestRejected { request_id: id, .. }
        | EventKind::RequestCancelled { request_id: id, .. }
        | EventKind::AllocationReleased { request_id: id, .. }
        | EventKind::AllocationExpired { request_id: id, .. }
        | EventKind::AllocationMoved { request_id: id, .. }
        | EventKind::AllocationMoving { request_id: id, .. }
        | EventKind::OptimizationFailed { request_id: id, .. }
        | EventKind::MoveTargetReady { request_id: id, .. } => *id == request_id,
        EventKind::AllocationConfirmed { allocation_id: id, .. }
        | EventKind::DeallocationConfirmed { allocation_id: id, .. }
        | EventKind::LeaseRenewed { allocation_id: id, .. } => *id == allocation_id,
        _ => false,
    }
}

/// The provider an event places the request on or takes it from.
fn provider_of(kind: &EventKind) -> Option<&str> {
    match kind {
        EventKind::AllocationGranted { provider_id, .. }
        | EventKind::AllocationReleased { provider_id, .. }
        | EventKind::AllocationExpired { provider_id, .. }
        | EventKind::AllocationConfirmed { provider_id, .. }
        | EventKind::DeallocationConfirmed { provider_id, .. } => Some(provider_id),
        EventKind::AllocationMoved { to_provider, .. } => Some(to_provider),
        _ => None,
    }
}

/// The steps of one request in `table`'s kept history, and the oldest
/// revision kept.
pub fn request_history(table: &AllocationTable, request_id: Uuid, allocation_id: Uuid) -> (Vec<Value>, u64) {
    let events = match table.events_from(0) {
        Ok(events) => events.collect::<Vec<_>>(),
        Err(qm_state_machine::EventsError::Compacted { oldest, .. }) => {
            table.events_from(oldest).map(Iterator::collect).unwrap_or_default()
        }
    };
    let oldest = events.first().map_or(table.revision() + 1, |event| event.revision);
    let mut steps: Vec<Value> = events
        .into_iter()
        .filter(|event| is_about(event, request_id, allocation_id))
        .map(|event| {
            let confirms = provider_of(&event.kind)
                .and_then(|provider| table.provider(provider))
                .is_some_and(|provider| provider.confirms_allocations);
            json!({
                "revision": event.revision,
                "at_ms": event.at_ms,
                "type": event.type_name(),
                "states": states_at(&event.kind, confirms),
                "event": event_to_json(event),
            })
        })
        .collect();
    if steps.len() > HISTORY_STEPS_MAX {
        steps.drain(..steps.len() - HISTORY_STEPS_MAX);
    }
    (steps, oldest)
}

/// `GET /v1/requests/{id}/history[?stale]`: `{"request_id", "allocation_id",
/// "state", "steps": [{"revision", "at_ms", "type", "states", "event"}],
/// "oldest_revision", "complete"}`. The same visibility as `GET
/// /v1/requests/{id}`: another namespace's request is `404`.
pub async fn history(
    State(api): State<Shared>,
    Extension(peer): Extension<PeerCertificate>,
    uri: Uri,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, HttpError> {
    let reply = requests::get_record(&api, &peer, &uri, id, query.as_deref()).await?;
    let parse = |text: &str| Uuid::parse_str(text).map_err(|error| HttpError::internal(error.to_string()));
    let (request_id, allocation_id) = (parse(&reply.request_id)?, parse(&reply.allocation_id)?);
    let (steps, oldest) = api.node.with_table(|table| request_history(table, request_id, allocation_id)).await;
    let complete = steps
        .first()
        .is_some_and(|step| step["states"].get(0).and_then(Value::as_str) == Some("request_processing"));
    let state = qm_api::convert::response_from_reply(&reply)
        .map_err(|error| HttpError::internal(error.to_string()))?
        .state;
    Ok(Json(json!({
        "request_id": request_id,
        "allocation_id": allocation_id,
        "state": state,
        "steps": steps,
        "oldest_revision": oldest,
        "complete": complete,
    }))
    .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn granted() -> EventKind {
        EventKind::AllocationGranted {
            request_id: Uuid::nil(),
            allocation_id: Uuid::nil(),
            requester_id: "agent".into(),
            namespace: "default".into(),
            provider_id: "node_1".into(),
            grants: Vec::new(),
        }
    }

    fn released() -> EventKind {
        EventKind::AllocationReleased {
            request_id: Uuid::nil(),
            allocation_id: Uuid::nil(),
            namespace: "default".into(),
            provider_id: "node_1".into(),
        }
    }

    #[test]
    fn a_confirming_provider_adds_a_step_where_another_passes_through() {
        assert_eq!(vec!["request_processing", "allocation", "monitoring"], states_at(&granted(), false));
        assert_eq!(vec!["request_processing", "allocation"], states_at(&granted(), true));
        assert_eq!(vec!["deallocation", "idle"], states_at(&released(), false));
        assert_eq!(vec!["deallocation"], states_at(&released(), true));
    }

    #[test]
    fn queue_rejection_and_renewal() {
        let queued = EventKind::RequestQueued {
            request_id: Uuid::nil(),
            requester_id: "agent".into(),
            namespace: "default".into(),
            reason: "insufficient_resources".into(),
        };
        assert_eq!(vec!["request_processing", "queued"], states_at(&queued, false));
        let rejected = EventKind::RequestRejected {
            request_id: Uuid::nil(),
            requester_id: "agent".into(),
            namespace: "default".into(),
            reason: "deadline".into(),
        };
        assert_eq!(vec!["error"], states_at(&rejected, false));
        let renewed = EventKind::LeaseRenewed {
            allocation_id: Uuid::nil(),
            namespace: "default".into(),
            expires_at_ms: 1,
        };
        assert!(states_at(&renewed, true).is_empty());
    }
}
