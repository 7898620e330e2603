//! What the bridge reads off and writes onto the broker, as pure functions:
//! routing keys, request and release bodies, rejection replies, and the
//! body and id of an event message. Nothing here touches a socket, so every
//! case of bad input is tested without a broker.

use qm_client::proto::api;
use qm_state_machine::{InvalidArgument, ResourceRequest};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use uuid::Uuid;

/// Routing key prefix of allocation requests: `resource_request.<namespace>`.
pub const REQUEST_KEY: &str = "resource_request";
/// Routing key prefix of releases: `resource_release.<namespace>`.
pub const RELEASE_KEY: &str = "resource_release";
/// Largest message body the bridge reads; a larger one is rejected unread.
pub const BODY_BYTES_MAX: usize = 1 << 20;
/// uuid v5 namespace of event message ids (a fixed random uuid, so ids are
/// Quartermaster's own and never collide with another system's v5 ids).
const EVENT_MESSAGE_ID_NAMESPACE: Uuid = Uuid::from_u128(0x6f0c_5b4e_3a52_4d7e_9a1f_2c8e_71b0_d4a3);
/// uuid v5 namespace of the response ids of rejections the table never saw.
const REJECTION_ID_NAMESPACE: Uuid = Uuid::from_u128(0x1d93_a0c7_58e2_4b61_8f0e_6a4d_c2b9_07f5);

/// What a message on `resource_management` asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Allocate (the body is a `resource_request`).
    Request,
    /// Release or cancel (the body names a `request_id` or an `allocation_id`).
    Release,
}

/// A routing key taken apart: the action, and the namespace after the first
/// dot (`None` when the key has none: the cluster's default namespace, or a
/// TLS consumer's own).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoutingKey {
    pub action: Action,
    pub namespace: Option<String>,
}

impl RoutingKey {
    pub fn parse(key: &str) -> Result<RoutingKey, InvalidArgument> {
        let (head, namespace) = match key.split_once('.') {
            Some((head, rest)) => (head, Some(rest)),
            None => (key, None),
        };
        let action = match head {
            REQUEST_KEY => Action::Request,
            RELEASE_KEY => Action::Release,
            _ => {
                return Err(InvalidArgument::new(
                    "routing_key",
                    format!("{key:?} is neither {REQUEST_KEY}.<namespace> nor {RELEASE_KEY}.<namespace>"),
                ))
            }
        };
        let namespace = match namespace {
            None => None,
            Some("") => return Err(InvalidArgument::new("routing_key", format!("{key:?} has an empty namespace"))),
            Some(namespace) => Some(namespace.to_owned()),
        };
        Ok(RoutingKey { action, namespace })
    }
}

/// A request's body, parsed and checked, with the routing key's namespace
/// filled in. The same checks the cluster makes run here first, so a bad
/// message is dead-lettered without a call; the cluster checks again.
pub fn parse_request(body: &[u8], namespace: Option<&str>) -> Result<ResourceRequest, InvalidArgument> {
    let text = body_text(body)?;
    let mut request = ResourceRequest::from_json(text)?;
    match (&request.namespace, namespace) {
        (Some(in_body), Some(in_key)) if in_body != in_key => {
            return Err(InvalidArgument::new(
                "namespace",
                format!("{in_body:?} in the body differs from {in_key:?} in the routing key"),
            ))
        }
        (None, Some(in_key)) => request.namespace = Some(in_key.to_owned()),
        _ => {}
    }
    request.validate()?;
    Ok(request)
}

/// The id a release names: `request_id` or `allocation_id`, one of them.
pub fn parse_release(body: &[u8]) -> Result<Uuid, InvalidArgument> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Release {
        request_id: Option<String>,
        allocation_id: Option<String>,
    }
    let text = body_text(body)?;
    let release: Release =
        serde_json::from_str(text).map_err(|error| InvalidArgument::new("resource_release", bounded(error.to_string())))?;
    let (field, id) = match (release.request_id, release.allocation_id) {
        (Some(id), None) => ("request_id", id),
        (None, Some(id)) => ("allocation_id", id),
        (None, None) => return Err(InvalidArgument::new("request_id", "is required (or allocation_id)")),
        (Some(_), Some(_)) => return Err(InvalidArgument::new("allocation_id", "give request_id or allocation_id, not both")),
    };
    Uuid::parse_str(&id).map_err(|_| InvalidArgument::new(field, format!("{id:?} is not a uuid")))
}

fn body_text(body: &[u8]) -> Result<&str, InvalidArgument> {
    if body.len() > BODY_BYTES_MAX {
        return Err(InvalidArgument::new(
            "body",
            format!("is {} bytes, at most {BODY_BYTES_MAX} are read", body.len()),
        ));
    }
    std::str::from_utf8(body).map_err(|error| InvalidArgument::new("body", format!("is not UTF-8: {error}")))
}

/// serde quotes what it could not parse; an error must not echo megabytes.
fn bounded(mut reason: String) -> String {
    const REASON_LEN_MAX: usize = 512;
    if reason.len() > REASON_LEN_MAX {
        let mut cut = REASON_LEN_MAX;
        while !reason.is_char_boundary(cut) {
            cut -= 1;
        }
        reason.truncate(cut);
        reason.push_str("...");
    }
    reason
}

/// The `request_id` of a body if it has a readable one, for the rejection
/// reply of a request that is otherwise bad.
pub fn request_id_of(body: &[u8]) -> Option<Uuid> {
    let value: Value = serde_json::from_slice(body).ok()?;
    Uuid::parse_str(value.get("request_id")?.as_str()?).ok()
}

/// The protocol's `allocation_response` with status `rejected` for a message
/// the cluster never took: `reason` names the field. Its `response_id` is
/// derived from the body, so a redelivered bad message gets the same one.
pub fn rejection(body: &[u8], invalid: &InvalidArgument) -> Value {
    json!({
        "response_id": Uuid::new_v5(&REJECTION_ID_NAMESPACE, body).to_string(),
        "request_id": request_id_of(body).map(|id| id.to_string()),
        "status": "rejected",
        "reason": invalid.to_string(),
        "field": invalid.field,
    })
}

/// A refusal by the cluster (permission, a reused request id, an unknown
/// id) as a rejected `allocation_response`.
pub fn refusal(body: &[u8], field: Option<&str>, reason: &str) -> Value {
    let mut reply = json!({
        "response_id": Uuid::new_v5(&REJECTION_ID_NAMESPACE, body).to_string(),
        "request_id": request_id_of(body).map(|id| id.to_string()),
        "status": "rejected",
        "reason": reason,
    });
    if let Some(field) = field {
        reply["field"] = field.into();
    }
    reply
}

/// The stable message id of the event at `revision` of the cluster named
/// `cluster`: the same on every publication, by any bridge, so a consumer
/// dedupes by it.
pub fn event_message_id(cluster: &str, revision: u64) -> Uuid {
    let cluster_namespace = Uuid::new_v5(&EVENT_MESSAGE_ID_NAMESPACE, cluster.as_bytes());
    Uuid::new_v5(&cluster_namespace, &revision.to_be_bytes())
}

/// The body of an event message: the event's own JSON (the protocol's
/// `resource_status` fields for a unit's status change) with `event_type`
/// added, the event's kind, as every message on `resource_events` has.
pub fn event_body(event: &api::EventMessage) -> Vec<u8> {
    let mut object = match serde_json::from_str::<Value>(&event.json) {
        Ok(Value::Object(object)) => object,
        // Replicas always fill `json`; the envelope if one did not.
        _ => {
            let mut object = Map::new();
            object.insert("type".into(), event.r#type.clone().into());
            object.insert("revision".into(), event.revision.into());
            object.insert("event_id".into(), event.event_id.clone().into());
            object
        }
    };
    object.insert("event_type".into(), event.r#type.clone().into());
    serde_json::to_vec(&Value::Object(object)).expect("a JSON value always encodes")
}

/// The body of a `resync_required` message: the bridge could not resume
/// from `cursor` because the cluster no longer keeps those events; `state`
/// is the system state at `revision`, from which it goes on.
pub fn resync_body(cluster: &str, cursor: u64, revision: u64, state: Value) -> Vec<u8> {
    let body = json!({
        "type": "resync_required",
        "event_type": "resync_required",
        "cluster": cluster,
        "missed_from_revision": cursor + 1,
        "revision": revision,
        "system_state": state,
    });
    serde_json::to_vec(&body).expect("a JSON value always encodes")
}

#[cfg(test)]
#[path = "messages_test.rs"]
mod tests;
