//! Events: revisions that only grow, resuming from a revision, compaction,
//! and the JSON shape watchers receive.

mod common;

use std::collections::BTreeSet;

use common::*;
use qm_state_machine::{event_to_json, AllocationRequest, Command, Event, EventKind, EventsError, ResourceState, TableConfig};
use serde_json::json;

/// A little of everything: registrations, grants, a queue, a failure, a lease, a tick.
fn busy_table(config: TableConfig) -> Table {
    let mut t = Table::with_config(config);
    t.register(provider("node_1", cores("a", 2)));
    t.register(provider("node_2", cores("b", 1)));
    t.allocate(&request(1, &[("cpu_cores", 2)]));
    t.allocate(&AllocationRequest {
        lease_ttl_ms: Some(1_000).into(),
        ..request(2, &[("cpu_cores", 1)])
    });
    t.allocate(&request(3, &[("cpu_cores", 1)]));
    t.apply(Command::ProviderFailed {
        provider_id: "node_1".into(),
    });
    t.tick_at(T0 + 1_000);
    t.apply(Command::ProviderRecovered {
        provider_id: "node_1".into(),
    });
    t
}

#[test]
fn revisions_grow_by_one_and_event_ids_are_derived_from_them() {
    let t = busy_table(TableConfig::default());

    // --- every event since the start, numbered 1, 2, 3, ... with distinct, reproducible ids
    let events: Vec<&Event> = t.table.events_from(0).unwrap().collect();
    assert_eq!(t.table.revision() as usize, events.len());
    let revisions: Vec<u64> = events.iter().map(|event| event.revision).collect();
    assert_eq!((1..=t.table.revision()).collect::<Vec<_>>(), revisions);
    let ids: BTreeSet<_> = events.iter().map(|event| event.event_id).collect();
    assert_eq!(events.len(), ids.len());
    for event in events {
        assert_eq!(Event::new(event.revision, event.at_ms, event.kind.clone()), *event);
    }
    // --- the id is a version 8 uuid that keeps the whole revision below 2^62
    // (the top two bits of its second half are the uuid's variant)
    let variant_bits = 0b11 << 62;
    for revision in [1, 2, 255, 256, u32::MAX as u64 + 1, (1 << 62) - 1] {
        let id = qm_state_machine::event::event_id_for(revision);
        assert_eq!(8, id.get_version_num());
        let second_half = u64::from_be_bytes(id.as_bytes()[8..].try_into().unwrap());
        assert_eq!(revision, second_half & !variant_bits);
    }
}

#[test]
fn a_watcher_resumes_from_any_kept_revision() {
    let t = busy_table(TableConfig::default());
    let newest = t.table.revision();

    // --- 0 and 1 both mean "from the start"
    assert_eq!(newest as usize, t.table.events_from(0).unwrap().count());
    assert_eq!(newest as usize, t.table.events_from(1).unwrap().count());

    // --- from the middle, from the newest, from the future
    let tail: Vec<u64> = t.table.events_from(newest - 2).unwrap().map(|event| event.revision).collect();
    assert_eq!(vec![newest - 2, newest - 1, newest], tail);
    assert_eq!(0, t.table.events_from(newest + 1).unwrap().count());
    assert_eq!(0, t.table.events_from(newest + 100).unwrap().count());
}

#[test]
fn compacted_revisions_are_refused_with_the_oldest_kept() {
    let t = busy_table(TableConfig {
        event_history_max: 5,
        ..Default::default()
    });
    let newest = t.table.revision();
    let oldest = newest - 4;

    // --- only the last five are kept
    let kept: Vec<u64> = t.table.events_from(oldest).unwrap().map(|event| event.revision).collect();
    assert_eq!((oldest..=newest).collect::<Vec<_>>(), kept);

    // --- anything older is refused, naming where history starts now
    for requested in [0, 1, oldest - 1] {
        assert_eq!(
            Some(EventsError::Compacted { requested, oldest }),
            t.table.events_from(requested).err()
        );
    }
}

#[test]
fn a_table_that_keeps_no_history_refuses_every_past_revision() {
    let t = busy_table(TableConfig {
        event_history_max: 0,
        ..Default::default()
    });
    let newest = t.table.revision();

    // --- nothing is kept (the bound holds even at zero), the future is still fine
    assert_eq!(
        Some(EventsError::Compacted {
            requested: newest,
            oldest: newest + 1
        }),
        t.table.events_from(newest).err()
    );
    assert_eq!(0, t.table.events_from(newest + 1).unwrap().count());
}

#[test]
fn a_new_table_has_revision_zero_and_no_events() {
    let mut t = Table::new();
    assert_eq!((0, 0), (t.table.revision(), t.table.events_from(0).unwrap().count()));

    // --- the first event is revision 1
    t.register(provider("node_1", cores("", 1)));
    assert_eq!(1, t.table.events_from(1).unwrap().next().unwrap().revision);
}

#[test]
fn a_resource_status_event_carries_the_protocol_fields() {
    let event = Event::new(7, T0, status("node_1", "cpu_1", "cpu_cores", ResourceState::Allocated, 3, 4));

    // --- the protocol's resource_id, status and metrics.utilization, plus our revision and provider
    let expected = json!({
        "type": "resource_status",
        "revision": 7,
        "event_id": event.event_id.to_string(),
        "timestamp": "2024-03-15T05:46:40.000Z",
        "resource_id": "cpu_1",
        "provider_id": "node_1",
        "kind": "cpu_cores",
        "status": "allocated",
        "metrics": { "utilization": 0.75, "used": 3, "capacity": 4 },
    });
    assert_eq!(expected, event_to_json(&event));
    let parsed: qm_state_machine::ResourceStatusEvent = serde_json::from_value(event_to_json(&event)).unwrap();
    assert_eq!((ResourceState::Allocated, Some(7)), (parsed.status, parsed.revision));
}

#[test]
fn other_events_carry_their_fields_flat() {
    let event = Event::new(
        2,
        T0,
        EventKind::RequestCancelled {
            request_id: id(1),
            namespace: "team_a".into(),
        },
    );
    let expected = json!({
        "type": "request_cancelled",
        "revision": 2,
        "event_id": event.event_id.to_string(),
        "timestamp": "2024-03-15T05:46:40.000Z",
        "request_id": "00000000-0000-0000-0000-000000000001",
        "namespace": "team_a",
    });
    assert_eq!(expected, event_to_json(&event));
    assert_eq!(Some("team_a"), event.namespace());
    assert_eq!(
        None,
        Event::new(
            3,
            T0,
            EventKind::ProviderFailed {
                provider_id: "node_1".into()
            }
        )
        .namespace()
    );
}
