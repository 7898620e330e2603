//! Bad input gets a typed error naming the field (`InvalidArgument.field`),
//! and changes nothing: the table compares equal, down to its snapshot bytes.

mod common;

use std::fmt::Write;

use common::*;
use qm_state_machine::limits::{ID_LEN_MAX, QUANTITY_MAX, REQUIREMENT_KINDS_MAX};
use qm_state_machine::{
    AllocationRequest, Command, CommandError, ConstraintSet, Constraints, InvalidArgument, ProviderRegistration, Requirement,
    ResourceRequest,
};
use serde_json::{json, Value};

/// A table with some state, so "unchanged" means something.
fn busy_table() -> Table {
    let mut t = Table::with_providers(vec![
        provider("node_1", cores("", 2)),
        provider("node_2", vec![unit("vol_1", "storage_gb", 100)]),
    ]);
    t.allocate(&request(1, &[("cpu_cores", 1)]));
    t.allocate(&request(2, &[("cpu_cores", 2)]));
    t
}

/// Applies a command that must fail with `InvalidArgument` on `field`, and
/// checks the table did not change (the harness checks events and equality;
/// this repeats it here so the test reads on its own).
fn assert_refused(t: &mut Table, command: Command, field: &str) -> InvalidArgument {
    let (before, bytes_before) = (t.table.clone(), t.table.to_snapshot_bytes());
    let applied = t.apply(command);
    let error = applied.result.expect_err("bad input must be refused");
    assert_eq!(Some(field), error.field(), "{error}");
    assert!(applied.events.is_empty());
    assert_eq!(before, t.table);
    assert_eq!(bytes_before, t.table.to_snapshot_bytes());
    match error {
        CommandError::InvalidArgument(invalid) => invalid,
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
}

/// Validates a protocol document that must be refused on `field`.
fn refused_document(document: Value, field: &str) -> InvalidArgument {
    let parsed = ResourceRequest::from_json(&document.to_string()).expect("the document parses; validation refuses it");
    let invalid = parsed.validate().expect_err("validation must refuse it");
    assert_eq!(field, invalid.field, "{invalid}");
    invalid
}

fn example() -> Value {
    json!({
        "request_id": "550e8400-e29b-41d4-a716-446655440000",
        "requester_id": "agent_123",
        "resource_requirements": { "cpu_cores": 2, "memory_gb": 4 },
        "priority": 1
    })
}

fn example_with(key: &str, value: Value) -> Value {
    let mut document = example();
    document[key] = value;
    document
}

#[test]
fn a_request_without_requester_id_is_refused_naming_it() {
    // --- the protocol document
    let mut document = example();
    document.as_object_mut().unwrap().remove("requester_id");
    assert_eq!("is required", refused_document(document, "requester_id").reason);

    // --- the same in a log entry (empty, as the wire's proto3 would carry it)
    let mut t = busy_table();
    let command = Command::Allocate(AllocationRequest {
        requester_id: String::new().into(),
        ..request(9, &[("cpu_cores", 1)])
    });
    assert_refused(&mut t, command, "requester_id");
}

#[test]
fn every_required_field_is_named_when_missing() {
    for field in ["request_id", "requester_id", "resource_requirements", "priority"] {
        let mut document = example();
        document.as_object_mut().unwrap().remove(field);
        refused_document(document, field);
    }
}

#[test]
fn negative_and_zero_quantities_are_refused_naming_the_kind() {
    let invalid = refused_document(
        example_with("resource_requirements", json!({ "cpu_cores": -2 })),
        "resource_requirements.cpu_cores",
    );
    assert_eq!("must be positive, got -2", invalid.reason);
    refused_document(
        example_with("resource_requirements", json!({ "cpu_cores": 0 })),
        "resource_requirements.cpu_cores",
    );

    // --- zero in a log entry (a u64 cannot be negative there)
    let mut t = busy_table();
    assert_refused(
        &mut t,
        Command::Allocate(request(9, &[("cpu_cores", 0)])),
        "resource_requirements.cpu_cores",
    );
}

#[test]
fn fractional_quantities_and_priorities_are_refused() {
    let invalid = refused_document(
        example_with("resource_requirements", json!({ "cpu_cores": 1.5 })),
        "resource_requirements.cpu_cores",
    );
    assert_eq!("must be a whole number, got 1.5", invalid.reason);
    refused_document(example_with("priority", json!(0.5)), "priority");
    refused_document(example_with("priority", json!(1e30)), "priority");
}

#[test]
fn quantities_past_the_limit_are_refused() {
    refused_document(
        example_with("resource_requirements", json!({ "cpu_cores": QUANTITY_MAX + 1 })),
        "resource_requirements.cpu_cores",
    );
    refused_document(
        example_with("resource_requirements", json!({ "cpu_cores": u64::MAX })),
        "resource_requirements.cpu_cores",
    );
    let mut t = busy_table();
    assert_refused(
        &mut t,
        Command::Allocate(request(9, &[("cpu_cores", QUANTITY_MAX + 1)])),
        "resource_requirements.cpu_cores",
    );
}

#[test]
fn a_ten_megabyte_requirements_map_is_refused_without_echoing_it() {
    // --- a ~10 MB document with hundreds of thousands of kinds
    let mut document = String::from(
        r#"{"request_id": "550e8400-e29b-41d4-a716-446655440000", "requester_id": "agent_123", "priority": 1, "resource_requirements": {"#,
    );
    let mut kinds = 0;
    while document.len() < 10 * 1024 * 1024 {
        write!(document, r#""kind_{kinds:07}": 1,"#).unwrap();
        kinds += 1;
    }
    document.pop();
    document.push_str("}}");
    assert!(document.len() >= 10 * 1024 * 1024);

    let invalid = ResourceRequest::from_json(&document).unwrap().validate().unwrap_err();
    assert_eq!("resource_requirements", invalid.field);
    assert_eq!(
        format!("has {kinds} kinds, at most {REQUIREMENT_KINDS_MAX} are allowed"),
        invalid.reason
    );

    // --- the same number of kinds in a log entry
    let mut t = busy_table();
    let requirements = (0..kinds)
        .map(|n| Requirement {
            kind: format!("kind_{n:07}").into(),
            quantity: 1,
        })
        .collect();
    assert_refused(
        &mut t,
        Command::Allocate(AllocationRequest {
            requirements,
            ..request(9, &[])
        }),
        "resource_requirements",
    );
}

#[test]
fn a_huge_kind_name_is_refused_without_echoing_it() {
    let kind = "k".repeat(10 * 1024 * 1024);
    let invalid = refused_document(
        example_with("resource_requirements", json!({ kind.clone(): 1 })),
        "resource_requirements",
    );
    assert!(invalid.reason.len() < 200, "{}", invalid.reason);
    let mut t = busy_table();
    let invalid = assert_refused(
        &mut t,
        Command::Allocate(request(9, &[(kind.as_str(), 1)])),
        "resource_requirements",
    );
    assert_eq!(
        format!("has a key {} bytes long, at most {ID_LEN_MAX} are allowed", kind.len()),
        invalid.reason
    );
}

#[test]
fn a_parse_error_names_the_document_and_stays_short() {
    let huge = "x".repeat(1024 * 1024);
    let invalid = ResourceRequest::from_json(&example_with("lease_ttl_ms", json!(huge)).to_string()).unwrap_err();
    assert_eq!("resource_request", invalid.field);
    assert!(invalid.reason.len() <= 600, "{} bytes", invalid.reason.len());

    // --- unknown fields are refused too, by name
    let invalid = ResourceRequest::from_json(&example_with("colour", json!("blue")).to_string()).unwrap_err();
    assert!(invalid.reason.contains("colour"), "{}", invalid.reason);
}

#[test]
fn other_malformed_fields_are_named() {
    refused_document(example_with("request_id", json!("not-a-uuid")), "request_id");
    refused_document(example_with("deadline", json!("tomorrow")), "deadline");
    refused_document(example_with("namespace", json!("has space")), "namespace");
    refused_document(example_with("lease_ttl_ms", json!(10)), "lease_ttl_ms");
    refused_document(example_with("resource_requirements", json!({})), "resource_requirements");
    refused_document(
        example_with("constraints", json!({ "resource_ids": ["cpu_1"] })),
        "constraints.resource_ids",
    );
    refused_document(
        example_with(
            "constraints",
            json!({ "provider_id": "node_1", "resource_ids": ["cpu_1", "cpu_1"] }),
        ),
        "constraints.resource_ids",
    );
    refused_document(
        example_with("constraints", json!({ "labels": { "zone": "x".repeat(300) } })),
        "constraints.labels.zone",
    );
}

#[test]
fn an_unknown_provider_or_unit_in_a_constraint_is_refused() {
    let mut t = busy_table();

    // --- a provider nobody registered
    let ghost = AllocationRequest {
        constraints: on_provider("ghost"),
        ..request(9, &[("cpu_cores", 1)])
    };
    let invalid = assert_refused(&mut t, Command::Allocate(ghost), "constraints.provider_id");
    assert_eq!("unknown provider ghost", invalid.reason);

    // --- a unit the named provider does not have
    let constraints = Constraints::new(ConstraintSet {
        resource_ids: vec!["cpu_9".into()],
        ..ConstraintSet::clone(&on_provider("node_1"))
    });
    let missing = AllocationRequest {
        constraints,
        ..request(9, &[("cpu_cores", 1)])
    };
    assert_refused(&mut t, Command::Allocate(missing), "constraints.resource_ids");
}

#[test]
fn requirements_out_of_order_in_a_log_entry_are_refused() {
    let mut t = busy_table();
    let unsorted = request(9, &[("memory_gb", 1), ("cpu_cores", 1)]);
    assert_refused(&mut t, Command::Allocate(unsorted), "resource_requirements");
    let duplicated = request(9, &[("cpu_cores", 1), ("cpu_cores", 1)]);
    assert_refused(&mut t, Command::Allocate(duplicated), "resource_requirements");
}

#[test]
fn bad_registrations_are_refused_naming_the_field() {
    let mut t = busy_table();
    let with = |resources| provider("node_3", resources);
    let cases: Vec<(ProviderRegistration, &str)> = vec![
        (with(vec![unit("cpu_1", "cpu_cores", -1)]), "resources[0].capacity"),
        (
            with(vec![unit("cpu_1", "cpu_cores", 1), unit("cpu_2", "cpu_cores", 0)]),
            "resources[1].capacity",
        ),
        (
            with(vec![unit("cpu_1", "cpu_cores", 1), unit("cpu_1", "cpu_cores", 1)]),
            "resources",
        ),
        (with(vec![]), "resources"),
        (with(vec![unit("", "cpu_cores", 1)]), "resources[0].resource_id"),
        (with(vec![unit("cpu_1", "", 1)]), "resources[0].kind"),
        (provider("", cores("", 1)), "provider_id"),
        (
            ProviderRegistration {
                labels: labels(&[("bad key", "x")]),
                ..with(cores("", 1))
            },
            "labels",
        ),
    ];
    for (registration, field) in cases {
        assert_refused(&mut t, Command::RegisterProvider(registration), field);
    }

    // --- the issue's JSON shape with a fractional capacity does not even parse
    let fractional = r#"{"provider_id": "node_3", "resources": [{"resource_id": "cpu_1", "kind": "cpu_cores", "capacity": 1.5}]}"#;
    assert!(serde_json::from_str::<ProviderRegistration>(fractional).is_err());
}
