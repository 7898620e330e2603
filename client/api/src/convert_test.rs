use std::collections::{BTreeMap, HashMap};

use qm_state_machine::{AllocationTable, Command, StampedCommand};
use serde_json::json;

use super::*;

/// The protocol's `resource_request` example, verbatim.
const PROTOCOL_EXAMPLE: &str = include_str!("../../../state-machine/tests/fixtures/resource_request.json");

const NOW_MS: u64 = 1_711_000_000_000;

fn registration() -> ProviderRegistration {
    serde_json::from_value(json!({
        "provider_id": "node_1",
        "labels": {"zone": "a"},
        "resources": [
            {"resource_id": "cpu_1", "kind": "cpu_cores", "capacity": 1},
            {"resource_id": "cpu_2", "kind": "cpu_cores", "capacity": 1},
            {"resource_id": "block_1", "kind": "memory_gb", "capacity": 4, "labels": {"speed": "fast"}},
            {"resource_id": "vol_1", "kind": "storage_gb", "capacity": 500, "sharing": "divisible"}
        ]
    }))
    .unwrap()
}

/// A table with `node_1` registered and the protocol example allocated on it.
fn table_with_allocation() -> (AllocationTable, RequestRecord) {
    let mut table = AllocationTable::default();
    let registration = registration().validate().unwrap();
    table
        .apply(&StampedCommand::new(NOW_MS, Command::RegisterProvider(registration)))
        .result
        .unwrap();
    let request = ResourceRequest::from_json(PROTOCOL_EXAMPLE).unwrap().validate().unwrap();
    let applied = table.apply(&StampedCommand::new(NOW_MS + 1, Command::Allocate(request)));
    let record = applied.result.unwrap().request().unwrap().clone();
    (table, record)
}

// --- requests

#[test]
fn protocol_example_goes_to_the_wire_and_back_unchanged() {
    let request = ResourceRequest::from_json(PROTOCOL_EXAMPLE).unwrap();

    let wire = request_to_proto(&request);

    let expected = api::ResourceRequest {
        request_id: "550e8400-e29b-41d4-a716-446655440000".into(),
        requester_id: "agent_123".into(),
        resource_requirements: HashMap::from([("cpu_cores".into(), 2), ("memory_gb".into(), 4), ("storage_gb".into(), 100)]),
        priority: 1,
        deadline: Some("2024-03-21T10:30:00Z".into()),
        namespace: String::new(),
        lease_ttl_ms: None,
        constraints: None,
        placement: String::new(),
        movable: false,
        on_preemption: String::new(),
    };
    assert_eq!(expected, wire);
    assert_eq!(Ok(request), request_from_proto(&wire));
}

#[test]
fn extensions_go_to_the_wire_and_back_unchanged() {
    let request = ResourceRequest {
        request_id: Some("550e8400-e29b-41d4-a716-446655440000".into()),
        requester_id: Some("agent_123".into()),
        resource_requirements: Some(BTreeMap::from([("gpu".into(), Number::from(1))])),
        priority: Some(Number::from(-3)),
        deadline: None,
        namespace: Some("team_a".into()),
        lease_ttl_ms: Some(30_000),
        constraints: Some(ConstraintsDocument {
            provider_id: Some("node_1".into()),
            labels: BTreeMap::from([("zone".into(), "a".into())]),
            resource_ids: vec!["gpu_0".into()],
        }),
        placement: Some(PlacementPolicy::Spread),
        movable: Some(true),
        on_preemption: Some(OnPreemption::Release),
    };

    let wire = request_to_proto(&request);

    assert!(wire.movable);
    assert_eq!("release", wire.on_preemption);
    assert_eq!("spread", wire.placement);
    assert_eq!("team_a", wire.namespace);
    assert_eq!(Ok(request), request_from_proto(&wire));
}

#[test]
fn an_unknown_on_preemption_is_refused_naming_the_field() {
    let wire = api::ResourceRequest {
        on_preemption: "evict".into(),
        ..Default::default()
    };

    let refused = request_from_proto(&wire).unwrap_err();

    assert_eq!("on_preemption", refused.field);
}

#[test]
fn empty_wire_strings_become_absent_so_validate_names_the_field() {
    let wire = api::ResourceRequest {
        request_id: String::new(),
        requester_id: "agent_123".into(),
        resource_requirements: HashMap::from([("cpu_cores".into(), 1)]),
        deadline: Some(String::new()),
        constraints: Some(api::Constraints::default()),
        ..Default::default()
    };

    let request = request_from_proto(&wire).unwrap();

    assert_eq!(None, request.request_id);
    assert_eq!(None, request.deadline);
    assert_eq!(None, request.namespace);
    assert_eq!(None, request.constraints, "empty constraints are no constraints");
    assert_eq!(None, request.placement);
    assert_eq!(Err(InvalidArgument::new("request_id", "is required")), request.validate());
}

#[test]
fn an_empty_wire_requester_is_reported_missing() {
    let wire = api::ResourceRequest {
        request_id: "550e8400-e29b-41d4-a716-446655440000".into(),
        ..Default::default()
    };

    let error = request_from_proto(&wire).unwrap().validate().unwrap_err();

    assert_eq!(InvalidArgument::new("requester_id", "is required"), error);
}

#[test]
fn an_unknown_placement_is_invalid_and_named() {
    let wire = api::ResourceRequest {
        placement: "first_fit".into(),
        ..Default::default()
    };

    let error = request_from_proto(&wire).unwrap_err();

    assert_eq!("placement", error.field);
    assert_eq!("\"first_fit\" is not a placement policy; use best_fit or spread", error.reason);
}

#[test]
fn numbers_that_are_not_whole_i64_are_clamped_or_truncated() {
    let request = ResourceRequest {
        resource_requirements: Some(BTreeMap::from([
            ("big".into(), Number::from(u64::MAX)),
            ("fraction".into(), Number::from_f64(1.5).unwrap()),
            ("negative".into(), Number::from(-1)),
        ])),
        priority: Some(Number::from_f64(-1e30).unwrap()),
        ..Default::default()
    };

    let wire = request_to_proto(&request);

    let expected = HashMap::from([("big".into(), i64::MAX), ("fraction".into(), 1), ("negative".into(), -1)]);
    assert_eq!(expected, wire.resource_requirements);
    assert_eq!(i64::MIN, wire.priority);
}

// --- allocation replies

#[test]
fn an_active_record_replies_with_its_provider_and_grants() {
    let (_, record) = table_with_allocation();
    assert_eq!(RequestState::Monitoring, record.state);

    let reply = reply_from_record(&record);

    let expected = api::AllocationReply {
        response_id: record.response_id().to_string(),
        request_id: "550e8400-e29b-41d4-a716-446655440000".into(),
        status: api::AllocationStatus::Allocated as i32,
        state: api::RequestState::Monitoring as i32,
        allocation_id: record.allocation_id().to_string(),
        provider_id: "node_1".into(),
        grants: vec![
            api::UnitGrant {
                resource_id: "block_1".into(),
                kind: "memory_gb".into(),
                amount: 4,
            },
            api::UnitGrant {
                resource_id: "cpu_1".into(),
                kind: "cpu_cores".into(),
                amount: 1,
            },
            api::UnitGrant {
                resource_id: "cpu_2".into(),
                kind: "cpu_cores".into(),
                amount: 1,
            },
            api::UnitGrant {
                resource_id: "vol_1".into(),
                kind: "storage_gb".into(),
                amount: 100,
            },
        ],
        reason: String::new(),
        lease_expires_at_ms: None,
        // The table keeps the deadline in ms and formats it back with millis.
        request: Some(api::ResourceRequest {
            deadline: Some("2024-03-21T10:30:00.000Z".into()),
            ..request_to_proto(&ResourceRequest::from_json(PROTOCOL_EXAMPLE).unwrap())
        }),
        submitted_at_ms: NOW_MS + 1,
        updated_at_ms: NOW_MS + 1,
    };
    assert_eq!(expected, reply);
}

#[test]
fn a_reply_converts_to_the_protocols_allocation_response() {
    let (_, record) = table_with_allocation();

    let response = response_from_reply(&reply_from_record(&record)).unwrap();

    assert_eq!(AllocationResponse::from(&record), response);
    let json = serde_json::to_value(&response).unwrap();
    assert_eq!(
        json!({"cpu_cores": ["cpu_1", "cpu_2"], "memory_gb": ["block_1"], "storage_gb": ["vol_1"]}),
        json["allocated_resources"]
    );
    assert_eq!(json!("allocated"), json["status"]);
    assert_eq!(json!("550e8400-e29b-41d4-a716-446655440000"), json["request_id"]);
}

#[test]
fn a_released_record_replies_without_provider_or_grants() {
    let (mut table, record) = table_with_allocation();
    let applied = table.apply(&StampedCommand::new(
        NOW_MS + 2,
        Command::Release {
            id: record.allocation_id(),
        },
    ));
    let released = applied.result.unwrap().request().unwrap().clone();

    let reply = reply_from_record(&released);

    assert_eq!(
        ("allocated", "idle", "released"),
        (status_name(&reply), state_name(&reply), reply.reason.as_str())
    );
    assert_eq!(("", 0), (reply.provider_id.as_str(), reply.grants.len()));
    let response = response_from_reply(&reply).unwrap();
    assert_eq!(AllocationResponse::from(&released), response);
    assert_eq!(None, response.allocated_resources);
}

#[test]
fn a_queued_record_converts_both_ways() {
    let (mut table, _) = table_with_allocation();
    let mut request = ResourceRequest::from_json(PROTOCOL_EXAMPLE).unwrap();
    request.request_id = Some("550e8400-e29b-41d4-a716-446655440009".into());
    request.deadline = None;
    let applied = table.apply(&StampedCommand::new(NOW_MS + 2, Command::Allocate(request.validate().unwrap())));
    let queued = applied.result.unwrap().request().unwrap().clone();

    let reply = reply_from_record(&queued);

    assert_eq!(("queued", "queued"), (status_name(&reply), state_name(&reply)));
    assert_eq!(AllocationResponse::from(&queued), response_from_reply(&reply).unwrap());
}

#[test]
fn a_malformed_reply_names_the_field() {
    let (_, record) = table_with_allocation();
    let good = reply_from_record(&record);

    let bad_status = api::AllocationReply { status: 9, ..good.clone() };
    let bad_id = api::AllocationReply {
        request_id: "nope".into(),
        ..good.clone()
    };
    let bad_state = api::AllocationReply { state: 9, ..good };

    assert_eq!(
        Err(ConvertError::Malformed {
            field: "status".into(),
            value: "9".into(),
            expected: "allocated, queued or rejected"
        }),
        response_from_reply(&bad_status)
    );
    assert_eq!(
        Err(ConvertError::Malformed {
            field: "request_id".into(),
            value: "nope".into(),
            expected: "a uuid"
        }),
        response_from_reply(&bad_id)
    );
    assert!(matches!(response_from_reply(&bad_state), Err(ConvertError::Malformed { field, .. }) if field == "state"));
}

// --- providers

#[test]
fn a_registration_goes_to_the_wire_and_back_unchanged() {
    let registration = registration();

    let wire = registration_to_proto(&registration);

    assert_eq!("divisible", wire.resources[3].sharing);
    assert_eq!("", wire.resources[0].sharing, "absent sharing stays absent");
    assert_eq!(Ok(registration.clone()), registration_from_proto(&wire));
    let mut reached = ProviderRegistration {
        address: Some("10.0.0.7".into()),
        port: Some(9100),
        ..registration.clone()
    };
    assert_eq!(Ok(reached.clone()), registration_from_proto(&registration_to_proto(&reached)));
    reached.port = None;
    assert_eq!(Ok(reached.clone()), registration_from_proto(&registration_to_proto(&reached)));
}

#[test]
fn a_port_past_65535_is_invalid_and_named() {
    let mut wire = registration_to_proto(&registration());
    wire.address = "10.0.0.7".into();
    wire.port = 70_000;

    assert_eq!("port", registration_from_proto(&wire).unwrap_err().field);
}

#[test]
fn an_unknown_sharing_is_invalid_and_named_with_its_position() {
    let mut wire = registration_to_proto(&registration());
    wire.resources[2].sharing = "shared".into();

    let error = registration_from_proto(&wire).unwrap_err();

    assert_eq!("resources[2].sharing", error.field);
}

#[test]
fn a_provider_reports_use_per_unit_and_its_allocations() {
    let (table, _) = table_with_allocation();

    let info = provider_to_proto(table.provider("node_1").unwrap());

    assert_eq!(
        ("node_1", "active", 1, false),
        (
            info.provider_id.as_str(),
            info.status.as_str(),
            info.allocations,
            info.confirms_allocations
        )
    );
    let units: Vec<(&str, &str, u64, u64, &str)> = info
        .resources
        .iter()
        .map(|r| (r.resource_id.as_str(), r.kind.as_str(), r.capacity, r.used, r.sharing.as_str()))
        .collect();
    let expected = vec![
        ("block_1", "memory_gb", 4, 4, "divisible"),
        ("cpu_1", "cpu_cores", 1, 1, "exclusive"),
        ("cpu_2", "cpu_cores", 1, 1, "exclusive"),
        ("vol_1", "storage_gb", 500, 100, "divisible"),
    ];
    assert_eq!(expected, units);
    assert_eq!(HashMap::from([("speed".to_owned(), "fast".to_owned())]), info.resources[0].labels);
    assert!(info.resources.iter().all(|r| r.metrics.is_empty()));
    assert_eq!(None, info.last_heartbeat_ms, "the server fills it");
}

// --- usage and events

#[test]
fn usage_goes_to_the_wire_and_back_unchanged() {
    let (table, _) = table_with_allocation();
    let usage = table.usage();

    let wire = usage_to_proto(&usage);

    let kinds: Vec<(&str, u64, u64, u64)> = wire.by_kind.iter().map(|k| (k.kind.as_str(), k.capacity, k.used, k.free)).collect();
    assert_eq!(
        vec![("cpu_cores", 2, 2, 0), ("memory_gb", 4, 4, 0), ("storage_gb", 500, 100, 400)],
        kinds
    );
    assert_eq!((1, 0, usage.revision), (wire.active_allocations, wire.queue_len, wire.revision));
    assert_eq!("active", wire.providers[0].status);
    assert_eq!(Ok(usage), usage_from_proto(&wire));
}

#[test]
fn an_event_carries_its_type_revision_and_protocol_json() {
    let (table, _) = table_with_allocation();
    let event = table
        .events_from(1)
        .unwrap()
        .find(|event| event.type_name() == "allocation_granted")
        .unwrap()
        .clone();

    let message = event_to_proto(&event);

    assert_eq!(
        (event.revision, event.event_id.to_string(), "allocation_granted", NOW_MS + 1),
        (message.revision, message.event_id.clone(), message.r#type.as_str(), message.at_ms)
    );
    let json: Value = serde_json::from_str(&message.json).unwrap();
    assert_eq!(event_to_json(&event), json);
    assert_eq!(json!("node_1"), json["provider_id"]);
}
