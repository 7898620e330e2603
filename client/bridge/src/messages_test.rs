use super::*;

const EXAMPLE: &str = r#"{
  "request_id": "550e8400-e29b-41d4-a716-446655440000",
  "requester_id": "agent_123",
  "resource_requirements": {"cpu_cores": 2, "memory_gb": 4, "storage_gb": 100},
  "priority": 1,
  "deadline": "2024-03-21T10:30:00Z"
}"#;

#[test]
fn routing_keys_name_the_action_and_the_namespace() {
    let parse = |key: &str| RoutingKey::parse(key);
    assert_eq!(
        parse("resource_request").unwrap(),
        RoutingKey {
            action: Action::Request,
            namespace: None
        }
    );
    assert_eq!(parse("resource_request.team-a").unwrap().namespace.as_deref(), Some("team-a"));
    assert_eq!(
        parse("resource_release.team-a.sub").unwrap().namespace.as_deref(),
        Some("team-a.sub")
    );
    assert_eq!(parse("resource_release.x").unwrap().action, Action::Release);
    assert_eq!(parse("resource_status.x").unwrap_err().field, "routing_key");
    assert_eq!(parse("resource_request.").unwrap_err().field, "routing_key");
}

#[test]
fn the_protocols_example_parses_and_takes_the_routing_keys_namespace() {
    let request = parse_request(EXAMPLE.as_bytes(), Some("team-a")).unwrap();
    assert_eq!(request.namespace.as_deref(), Some("team-a"));
    assert_eq!(request.requester_id.as_deref(), Some("agent_123"));
    assert_eq!(parse_request(EXAMPLE.as_bytes(), None).unwrap().namespace, None);
}

#[test]
fn bad_requests_name_the_field() {
    let field = |body: &str, namespace: Option<&str>| parse_request(body.as_bytes(), namespace).unwrap_err().field;
    assert_eq!(field("{not json", None), "resource_request");
    assert_eq!(
        field(&EXAMPLE.replace("\"requester_id\": \"agent_123\",", ""), None),
        "requester_id"
    );
    assert_eq!(
        field(&EXAMPLE.replace("\"cpu_cores\": 2", "\"cpu_cores\": -2"), None),
        "resource_requirements.cpu_cores"
    );
    assert_eq!(
        field(
            &EXAMPLE.replace("\"priority\": 1", "\"priority\": 1, \"namespace\": \"b\""),
            Some("a")
        ),
        "namespace"
    );
    assert_eq!(parse_request(&[0xff, 0xfe], None).unwrap_err().field, "body");
    let huge = vec![b' '; BODY_BYTES_MAX + 1];
    assert_eq!(parse_request(&huge, None).unwrap_err().field, "body");
}

#[test]
fn releases_name_one_id() {
    let id = "550e8400-e29b-41d4-a716-446655440000";
    assert_eq!(
        parse_release(format!(r#"{{"request_id": "{id}"}}"#).as_bytes())
            .unwrap()
            .to_string(),
        id
    );
    assert_eq!(
        parse_release(format!(r#"{{"allocation_id": "{id}"}}"#).as_bytes())
            .unwrap()
            .to_string(),
        id
    );
    assert_eq!(parse_release(b"{}").unwrap_err().field, "request_id");
    assert_eq!(parse_release(br#"{"request_id": "nope"}"#).unwrap_err().field, "request_id");
    assert_eq!(
        parse_release(format!(r#"{{"request_id": "{id}", "allocation_id": "{id}"}}"#).as_bytes())
            .unwrap_err()
            .field,
        "allocation_id"
    );
    assert_eq!(parse_release(b"[1]").unwrap_err().field, "resource_release");
}

#[test]
fn a_rejection_is_an_allocation_response_naming_the_field_and_stable_across_redeliveries() {
    let body = EXAMPLE.replace("\"cpu_cores\": 2", "\"cpu_cores\": -2");
    let invalid = parse_request(body.as_bytes(), None).unwrap_err();
    let reply = rejection(body.as_bytes(), &invalid);
    assert_eq!(reply["status"], "rejected");
    assert_eq!(reply["field"], "resource_requirements.cpu_cores");
    assert_eq!(reply["request_id"], "550e8400-e29b-41d4-a716-446655440000");
    assert!(reply["reason"].as_str().unwrap().contains("resource_requirements.cpu_cores"));
    assert_eq!(reply, rejection(body.as_bytes(), &invalid), "the same body, the same response_id");
    assert_eq!(rejection(b"{bad", &invalid)["request_id"], Value::Null);
}

#[test]
fn event_message_ids_depend_on_the_cluster_and_the_revision_only() {
    assert_eq!(event_message_id("qm", 7), event_message_id("qm", 7));
    assert_ne!(event_message_id("qm", 7), event_message_id("qm", 8));
    assert_ne!(event_message_id("qm", 7), event_message_id("other", 7));
}

#[test]
fn event_bodies_keep_the_events_json_and_add_event_type() {
    let event = api::EventMessage {
        revision: 3,
        event_id: "e".into(),
        r#type: "resource_status".into(),
        at_ms: 1,
        json: r#"{"type":"resource_status","revision":3,"resource_id":"cpu_1","status":"allocated","metrics":{"utilization":1.0}}"#.into(),
    };
    let body: Value = serde_json::from_slice(&event_body(&event)).unwrap();
    assert_eq!(body["event_type"], "resource_status");
    assert_eq!(body["resource_id"], "cpu_1");
    assert_eq!(body["revision"], 3);
    let bare: Value = serde_json::from_slice(&event_body(&api::EventMessage {
        json: String::new(),
        ..event
    }))
    .unwrap();
    assert_eq!(
        (bare["revision"].as_u64(), bare["event_type"].as_str()),
        (Some(3), Some("resource_status"))
    );
}
