//! The protocol's example documents, copied verbatim from
//! resource-management-protocol.md into `tests/fixtures/`, parse exactly as
//! written with the types in `src/protocol.rs`; the request validates, and a
//! registration in the issue's shape registers a provider that can hold it.

mod common;

use std::collections::BTreeMap;

use common::*;
use qm_state_machine::protocol::ConstraintsDocument;
use qm_state_machine::{
    AllocationRequest, AllocationResponse, AllocationStatus, Command, Constraints, PlacementPolicy, ProviderRegistration, RequestState,
    Requirement, ResourceRequest, ResourceState, ResourceStatusEvent, Sharing,
};
use serde_json::{json, Number, Value};
use uuid::Uuid;

const RESOURCE_REQUEST: &str = include_str!("fixtures/resource_request.json");
const ALLOCATION_RESPONSE: &str = include_str!("fixtures/allocation_response.json");
const RESOURCE_STATUS_EVENT: &str = include_str!("fixtures/resource_status_event.json");
const PROVIDER_REGISTRATION: &str = include_str!("fixtures/provider_registration.json");

/// Parsing then printing gives back the same JSON document: nothing was
/// dropped, renamed or defaulted on the way through.
fn assert_round_trips<T: serde::Serialize>(text: &str, parsed: &T) {
    let original: Value = serde_json::from_str(text).unwrap();
    assert_eq!(original, serde_json::to_value(parsed).unwrap());
}

#[test]
fn the_resource_request_example_parses_as_written() {
    let parsed = ResourceRequest::from_json(RESOURCE_REQUEST).unwrap();
    let requirements = BTreeMap::from([
        ("cpu_cores".to_owned(), Number::from(2)),
        ("memory_gb".into(), 4.into()),
        ("storage_gb".into(), 100.into()),
    ]);
    let expected = ResourceRequest {
        request_id: Some("550e8400-e29b-41d4-a716-446655440000".into()),
        requester_id: Some("agent_123".into()),
        resource_requirements: Some(requirements),
        priority: Some(1.into()),
        deadline: Some("2024-03-21T10:30:00Z".into()),
        ..ResourceRequest::default()
    };
    assert_eq!(expected, parsed);
    assert_round_trips(RESOURCE_REQUEST, &parsed);
}

#[test]
fn the_resource_request_example_validates() {
    let validated = ResourceRequest::from_json(RESOURCE_REQUEST).unwrap().validate().unwrap();
    let expected = AllocationRequest {
        request_id: Uuid::parse_str("550e8400-e29b-41d4-a716-446655440000").unwrap(),
        requester_id: "agent_123".into(),
        namespace: "default".into(),
        requirements: vec![
            Requirement {
                kind: "cpu_cores".into(),
                quantity: 2,
            },
            Requirement {
                kind: "memory_gb".into(),
                quantity: 4,
            },
            Requirement {
                kind: "storage_gb".into(),
                quantity: 100,
            },
        ]
        .into(),
        priority: 1,
        deadline_ms: Some(1_711_017_000_000).into(),
        lease_ttl_ms: None.into(),
        constraints: Constraints::default(),
        placement: PlacementPolicy::BestFit,
    };
    assert_eq!(expected, validated);

    // --- back to the protocol's shape: the same document
    let printed = ResourceRequest::from(&validated);
    assert_eq!(
        json!("2024-03-21T10:30:00.000Z"),
        json!(printed.deadline),
        "deadlines print with milliseconds"
    );
    assert_eq!(validated, printed.validate().unwrap());
}

#[test]
fn the_allocation_response_example_parses_as_written() {
    let parsed: AllocationResponse = serde_json::from_str(ALLOCATION_RESPONSE).unwrap();
    let expected = AllocationResponse {
        response_id: Uuid::parse_str("550e8400-e29b-41d4-a716-446655440001").unwrap(),
        request_id: Uuid::parse_str("550e8400-e29b-41d4-a716-446655440000").unwrap(),
        status: AllocationStatus::Allocated,
        allocated_resources: Some(BTreeMap::from([
            ("cpu_cores".to_owned(), json!([1, 2])),
            ("memory_blocks".into(), json!(["block_1", "block_2"])),
            ("storage_volume".into(), json!("vol_1")),
        ])),
        state: None,
        allocation_id: None,
        provider_id: None,
        grants: None,
        reason: None,
        lease_expires_at: None,
    };
    assert_eq!(expected, parsed);
    assert_round_trips(ALLOCATION_RESPONSE, &parsed);
}

#[test]
fn the_resource_status_example_parses_as_written() {
    let parsed: ResourceStatusEvent = serde_json::from_str(RESOURCE_STATUS_EVENT).unwrap();
    let metrics = json!({ "utilization": 0.75, "temperature": 65, "power_usage": 45 });
    let expected = ResourceStatusEvent {
        event_id: Uuid::parse_str("550e8400-e29b-41d4-a716-446655440002").unwrap(),
        resource_id: "cpu_1".into(),
        status: ResourceState::Allocated,
        metrics: metrics.as_object().unwrap().clone(),
        provider_id: None,
        kind: None,
        revision: None,
    };
    assert_eq!(expected, parsed);
    assert_round_trips(RESOURCE_STATUS_EVENT, &parsed);
}

#[test]
fn a_registration_in_the_issue_shape_registers_a_provider() {
    let registration: ProviderRegistration = serde_json::from_str(PROVIDER_REGISTRATION).unwrap();
    assert_eq!(
        ("node_1", 5, false),
        (
            registration.provider_id.as_str(),
            registration.resources.len(),
            registration.confirms_allocations
        )
    );
    assert_eq!(labels(&[("rack", "r12"), ("zone", "eu-west-1a")]), registration.labels);
    assert_eq!(labels(&[("model", "epyc-7763")]), registration.resources[0].labels);

    // --- validation sorts the units and resolves sharing from capacity
    let normalised = registration.clone().validate().unwrap();
    let units: Vec<(&str, Option<Sharing>)> = normalised.resources.iter().map(|r| (r.resource_id.as_str(), r.sharing)).collect();
    let (exclusive, divisible) = (Some(Sharing::Exclusive), Some(Sharing::Divisible));
    assert_eq!(
        vec![
            ("block_1", divisible),
            ("block_2", divisible),
            ("cpu_1", exclusive),
            ("cpu_2", exclusive),
            ("vol_1", divisible)
        ],
        units
    );

    // --- registered, it holds the protocol's example request
    let mut t = Table::new();
    t.register(registration);
    let request = ResourceRequest::from_json(RESOURCE_REQUEST).unwrap().validate().unwrap();
    let record = record_of(t.apply(Command::Allocate(request)));
    assert_eq!(RequestState::Monitoring, record.state);

    // --- and the answer is an allocation_response in the protocol's shape
    let response = serde_json::to_value(AllocationResponse::from(&record)).unwrap();
    let expected_resources = json!({ "cpu_cores": ["cpu_1", "cpu_2"], "memory_gb": ["block_1", "block_2"], "storage_gb": ["vol_1"] });
    assert_eq!(
        (
            &json!(record.response_id().to_string()),
            &json!("550e8400-e29b-41d4-a716-446655440000"),
            &json!("allocated"),
            &expected_resources
        ),
        (
            &response["response_id"],
            &response["request_id"],
            &response["status"],
            &response["allocated_resources"]
        )
    );
    assert_eq!(json!("monitoring"), response["state"]);
}

#[test]
fn extensions_round_trip_through_the_protocol_shape() {
    let text = r#"{
        "request_id": "550e8400-e29b-41d4-a716-446655440009",
        "requester_id": "agent_7",
        "resource_requirements": {"gpu": 1},
        "priority": -3,
        "namespace": "team_a",
        "lease_ttl_ms": 30000,
        "constraints": {"provider_id": "node_1", "labels": {"zone": "eu"}, "resource_ids": ["gpu_0"]},
        "placement": "spread"
    }"#;
    let parsed = ResourceRequest::from_json(text).unwrap();
    let validated = parsed.validate().unwrap();
    assert_eq!(
        (-3, "team_a", Some(30_000), PlacementPolicy::Spread),
        (
            validated.priority,
            validated.namespace.as_str(),
            validated.lease_ttl_ms.get(),
            validated.placement
        )
    );
    let constraints = ConstraintsDocument {
        provider_id: Some("node_1".into()),
        labels: labels(&[("zone", "eu")]),
        resource_ids: vec!["gpu_0".into()],
    };
    assert_eq!(Some(constraints), parsed.constraints);
    assert_eq!(parsed, ResourceRequest::from(&validated));
}
