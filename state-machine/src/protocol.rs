//! The protocol's messages in their JSON shape (resource-management-protocol.md).
//!
//! These types are lenient on purpose: every required field is an `Option`
//! and numbers are kept as JSON numbers, so that a missing or malformed field
//! is reported by [`ResourceRequest::validate`] as an [`InvalidArgument`]
//! naming it, instead of as a parser error about a line and column. Fields
//! beyond the protocol's (namespace, lease, constraints, placement, state)
//! are optional and omitted when empty, so the protocol's examples parse
//! exactly as written and our documents stay in its shape.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Number, Value};
use uuid::Uuid;

use crate::command::AllocateOptions;
use crate::error::InvalidArgument;
use crate::event::{Event, EventKind, ResourceState};
use crate::limits::REQUIREMENT_KINDS_MAX;
use crate::quota::OnPreemption;
use crate::record::{AllocationStatus, RequestRecord, RequestState, UnitGrant};
use crate::request::{
    check_key, check_quantity, AllocationRequest, ConstraintSet, Constraints, PlacementPolicy, Requirement, DEFAULT_NAMESPACE,
};
use crate::time::{format_rfc3339, parse_rfc3339};

/// The protocol's `resource_request`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceRequest {
    /// uuid; the idempotency key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requester_id: Option<String>,
    /// Kind → quantity, e.g. `{"cpu_cores": 2, "memory_gb": 4}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_requirements: Option<BTreeMap<String, Number>>,
    /// Higher is more urgent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<Number>,
    /// RFC 3339; a queued request still waiting then is rejected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<String>,
    /// Extension: the consumer namespace (`default` when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Extension: the allocation expires unless renewed within this many ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_ttl_ms: Option<u64>,
    /// Extension: where the allocation may go.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub constraints: Option<ConstraintsDocument>,
    /// Extension: `best_fit` (default) or `spread`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<PlacementPolicy>,
    /// Extension: `true` lets the allocation be moved to another provider
    /// make-before-break (optimization); absent or `false`: pinned where
    /// it is placed. Proposed as [`crate::Command::AllocateMovable`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub movable: Option<bool>,
    /// Extension: what happens to the allocation if a preemptor of higher
    /// priority takes its units: `requeue` (absent: back into the queue)
    /// or `release` (released for good).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_preemption: Option<OnPreemption>,
}

/// `constraints` of a [`ResourceRequest`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConstraintsDocument {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_id: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resource_ids: Vec<String>,
}

impl ResourceRequest {
    /// Parses the protocol's JSON; a syntax or shape error names what serde saw.
    /// The reason is cut to [`PARSE_ERROR_LEN_MAX`] bytes: serde quotes a
    /// mistyped string in full, and an error must not echo megabytes back.
    pub fn from_json(text: &str) -> Result<ResourceRequest, InvalidArgument> {
        serde_json::from_str(text).map_err(|error| InvalidArgument::new("resource_request", bounded(error.to_string())))
    }

    /// The options beyond the request itself, to propose with it
    /// ([`crate::Command::allocate`]).
    pub fn options(&self) -> AllocateOptions {
        AllocateOptions {
            movable: self.movable.unwrap_or(false),
            on_preemption: self.on_preemption.unwrap_or_default(),
        }
    }

    /// Checks every field; the error names the first bad one.
    pub fn validate(&self) -> Result<AllocationRequest, InvalidArgument> {
        let request_id = self
            .request_id
            .as_deref()
            .ok_or_else(|| InvalidArgument::new("request_id", "is required"))?;
        let request_id = Uuid::parse_str(request_id).map_err(|_| InvalidArgument::not_a_uuid("request_id", request_id))?;
        let requester_id = self
            .requester_id
            .clone()
            .ok_or_else(|| InvalidArgument::new("requester_id", "is required"))?;
        let requirements = self
            .resource_requirements
            .as_ref()
            .ok_or_else(|| InvalidArgument::new("resource_requirements", "is required"))?;
        // Checked before looking at any entry, so a huge map costs nothing more.
        if requirements.len() > REQUIREMENT_KINDS_MAX {
            return Err(InvalidArgument::new(
                "resource_requirements",
                format!("has {} kinds, at most {REQUIREMENT_KINDS_MAX} are allowed", requirements.len()),
            ));
        }
        let requirements = requirements
            .iter()
            .map(|(kind, quantity)| {
                let field = check_key("resource_requirements", kind)?;
                let whole = whole_number(&field, quantity)?;
                Ok(Requirement {
                    kind: kind.clone().into(),
                    quantity: check_quantity(&field, whole as i128)?,
                })
            })
            .collect::<Result<Vec<_>, InvalidArgument>>()?;
        let priority = self
            .priority
            .as_ref()
            .ok_or_else(|| InvalidArgument::new("priority", "is required"))?;
        let priority = whole_number("priority", priority)?;
        let deadline_ms =
            match &self.deadline {
                None => None,
                Some(text) => Some(parse_rfc3339(text).ok_or_else(|| {
                    InvalidArgument::new("deadline", format!("{} is not an RFC 3339 datetime", crate::error::quoted(text)))
                })?),
            };
        let constraints = self.constraints.clone().unwrap_or_default();
        let request = AllocationRequest {
            request_id,
            requester_id: requester_id.into(),
            namespace: self.namespace.clone().unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned()).into(),
            requirements: requirements.into(),
            priority,
            deadline_ms: deadline_ms.into(),
            lease_ttl_ms: self.lease_ttl_ms.into(),
            constraints: Constraints::new(ConstraintSet {
                provider_id: constraints.provider_id,
                labels: constraints.labels,
                resource_ids: constraints.resource_ids,
            }),
            placement: self.placement.unwrap_or_default(),
        };
        request.check()?;
        Ok(request)
    }
}

impl From<&AllocationRequest> for ResourceRequest {
    fn from(request: &AllocationRequest) -> Self {
        let constraints = &request.constraints;
        let has_constraints = constraints != &Constraints::default();
        ResourceRequest {
            request_id: Some(request.request_id.to_string()),
            requester_id: Some(request.requester_id.to_string()),
            resource_requirements: Some(
                request
                    .requirements
                    .iter()
                    .map(|r| (r.kind.to_string(), Number::from(r.quantity)))
                    .collect(),
            ),
            priority: Some(Number::from(request.priority)),
            deadline: request.deadline_ms.get().map(format_rfc3339),
            namespace: (request.namespace != DEFAULT_NAMESPACE).then(|| request.namespace.to_string()),
            lease_ttl_ms: request.lease_ttl_ms.get(),
            constraints: has_constraints.then(|| ConstraintsDocument {
                provider_id: constraints.provider_id.clone(),
                labels: constraints.labels.clone(),
                resource_ids: constraints.resource_ids.clone(),
            }),
            placement: (request.placement != PlacementPolicy::default()).then_some(request.placement),
            // Not part of the request the table keeps (the record's).
            movable: None,
            on_preemption: None,
        }
    }
}

/// Longest parse error reason returned by [`ResourceRequest::from_json`].
pub const PARSE_ERROR_LEN_MAX: usize = 512;

fn bounded(mut reason: String) -> String {
    if reason.len() > PARSE_ERROR_LEN_MAX {
        let mut cut = PARSE_ERROR_LEN_MAX;
        while !reason.is_char_boundary(cut) {
            cut -= 1;
        }
        reason.truncate(cut);
        reason.push_str("...");
    }
    reason
}

fn whole_number(field: &str, number: &Number) -> Result<i64, InvalidArgument> {
    number.as_i64().ok_or_else(|| match number.as_u64() {
        Some(_) => InvalidArgument::new(field, format!("{number} is too large")),
        None => InvalidArgument::new(field, format!("must be a whole number, got {number}")),
    })
}

/// The protocol's `allocation_response`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AllocationResponse {
    pub response_id: Uuid,
    pub request_id: Uuid,
    pub status: AllocationStatus,
    /// Kind → the units held, while the allocation is active. The protocol's
    /// example mixes lists and single names, so any JSON value parses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocated_resources: Option<BTreeMap<String, Value>>,
    /// Extension: the request's protocol state now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<RequestState>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocation_id: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_id: Option<String>,
    /// Extension: exactly how much of each unit is held.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grants: Option<Vec<UnitGrant>>,
    /// Extension: why queued, rejected or ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_expires_at: Option<String>,
}

impl From<&RequestRecord> for AllocationResponse {
    fn from(record: &RequestRecord) -> Self {
        let active = record.placement.as_ref().filter(|_| record.state.is_active());
        AllocationResponse {
            response_id: record.response_id(),
            request_id: record.request.request_id,
            status: record.status,
            allocated_resources: active.map(|placement| {
                let mut by_kind: BTreeMap<String, Value> = BTreeMap::new();
                for grant in &placement.grants {
                    let units = by_kind.entry(grant.kind.to_string()).or_insert_with(|| Value::Array(Vec::new()));
                    units
                        .as_array_mut()
                        .expect("built as arrays")
                        .push(Value::String(grant.resource_id.to_string()));
                }
                by_kind
            }),
            state: Some(record.state),
            allocation_id: Some(record.allocation_id()),
            provider_id: active.map(|placement| placement.provider_id.to_string()),
            grants: active.map(|placement| placement.grants.to_vec()),
            reason: record.reason().map(str::to_owned),
            lease_expires_at: record.lease_expires_at_ms.get().map(format_rfc3339),
        }
    }
}

/// The protocol's `resource_status` event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ResourceStatusEvent {
    pub event_id: Uuid,
    pub resource_id: String,
    pub status: ResourceState,
    /// `utilization` (0..1) and whatever else the reporter measured.
    pub metrics: Map<String, Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<u64>,
}

/// An event as one JSON object: `type`, `revision`, `event_id`, `timestamp`,
/// then the event's own fields. A `resource_status` event carries the
/// protocol's fields (`resource_id`, `status`, `metrics` with `utilization`).
pub fn event_to_json(event: &Event) -> Value {
    let mut object = Map::new();
    object.insert("type".into(), event.type_name().into());
    object.insert("revision".into(), event.revision.into());
    object.insert("event_id".into(), event.event_id.to_string().into());
    object.insert("timestamp".into(), format_rfc3339(event.at_ms).into());
    match &event.kind {
        EventKind::ResourceStatus {
            provider_id,
            resource_id,
            kind,
            status,
            used,
            capacity,
        } => {
            object.insert("resource_id".into(), resource_id.clone().into());
            object.insert("provider_id".into(), provider_id.clone().into());
            object.insert("kind".into(), kind.clone().into());
            object.insert("status".into(), status.as_str().into());
            let mut metrics = Map::new();
            // Reporting only; no decision is ever taken on this float.
            metrics.insert("utilization".into(), Value::from(*used as f64 / *capacity as f64));
            metrics.insert("used".into(), (*used).into());
            metrics.insert("capacity".into(), (*capacity).into());
            object.insert("metrics".into(), Value::Object(metrics));
        }
        other => {
            // Externally tagged: {"Variant": {fields}}; keep the fields.
            if let Ok(Value::Object(tagged)) = serde_json::to_value(other) {
                if let Some((_, Value::Object(fields))) = tagged.into_iter().next() {
                    object.extend(fields);
                }
            }
        }
    }
    Value::Object(object)
}
