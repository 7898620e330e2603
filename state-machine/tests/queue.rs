//! The queue: priority then arrival, backfill, re-examination whenever
//! capacity frees, deadlines enforced by `Tick`, and its bound.

mod common;

use common::*;
use qm_state_machine::ResourceState::{Allocated, Available};
use qm_state_machine::{AllocationRequest, AllocationStatus, Command, CommandResponse, RequestState, TableConfig};

fn with_priority(priority: i64, request: AllocationRequest) -> AllocationRequest {
    AllocationRequest { priority, ..request }
}

#[test]
fn the_queue_is_ordered_by_priority_then_arrival() {
    let mut t = Table::with_providers(vec![provider("node_1", cores("", 1))]);
    let holder = request(1, &[("cpu_cores", 1)]);
    t.allocate(&holder);

    // --- four wait: priorities 0, 5, 5, 1 in that arrival order
    for (n, priority) in [(2, 0), (3, 5), (4, 5), (5, 1)] {
        let record = t.allocate_record(&with_priority(priority, request(n, &[("cpu_cores", 1)])));
        assert_eq!(
            (RequestState::Queued, AllocationStatus::Queued, Some(INSUFFICIENT)),
            (record.state, record.status, record.reason())
        );
    }
    assert_eq!(vec![id(3), id(4), id(5), id(2)], t.table.queue().collect::<Vec<_>>());
    assert_eq!(4, t.table.queue_len());

    // --- the holder releases: the head (priority 5, first to arrive) gets the core in the same command
    let head = with_priority(5, request(3, &[("cpu_cores", 1)]));
    let expected = t.expect(vec![
        core("node_1", "cpu_1", Available),
        released(&holder, "node_1"),
        core("node_1", "cpu_1", Allocated),
        granted(&head, "node_1", vec![grant("cpu_1", "cpu_cores", 1)]),
    ]);
    assert_eq!(expected, t.release(id(1)).events);
    assert_eq!(vec![id(4), id(5), id(2)], t.table.queue().collect::<Vec<_>>());
}

#[test]
fn a_smaller_request_backfills_past_a_larger_one_that_does_not_fit() {
    let mut t = Table::with_providers(vec![provider("node_1", cores("", 4))]);
    t.allocate(&request(1, &[("cpu_cores", 2)]));
    t.allocate(&request(2, &[("cpu_cores", 2)]));

    // --- a large urgent request and a small one wait
    let large = with_priority(9, request(3, &[("cpu_cores", 4)]));
    let small = request(4, &[("cpu_cores", 2)]);
    t.allocate(&large);
    t.allocate(&small);
    assert_eq!(vec![id(3), id(4)], t.table.queue().collect::<Vec<_>>());

    // --- two cores free: not enough for the head, so the small one goes first
    let expected = t.expect(vec![
        core("node_1", "cpu_1", Available),
        core("node_1", "cpu_2", Available),
        released(&request(1, &[("cpu_cores", 2)]), "node_1"),
        core("node_1", "cpu_1", Allocated),
        core("node_1", "cpu_2", Allocated),
        granted(
            &small,
            "node_1",
            vec![grant("cpu_1", "cpu_cores", 1), grant("cpu_2", "cpu_cores", 1)],
        ),
    ]);
    assert_eq!(expected, t.release(id(1)).events);
    assert_eq!(vec![id(3)], t.table.queue().collect::<Vec<_>>());

    // --- once all four are free, the large one is placed
    t.release(id(2));
    assert_eq!(RequestState::Queued, t.record(id(3)).state);
    t.release(id(4));
    assert_eq!(RequestState::Monitoring, t.record(id(3)).state);
    assert_eq!(0, t.table.queue_len());
}

#[test]
fn new_capacity_from_an_updated_provider_is_offered_to_the_queue() {
    let mut t = Table::with_providers(vec![provider("node_1", cores("", 1))]);
    t.allocate(&request(1, &[("cpu_cores", 1)]));
    let waiting = request(2, &[("cpu_cores", 1)]);
    t.allocate(&waiting);

    // --- node_1 re-registers with a second core: the waiter takes it
    let expected = t.expect(vec![
        qm_state_machine::EventKind::ProviderUpdated {
            provider_id: "node_1".into(),
            resources: 2,
        },
        core("node_1", "cpu_1", Allocated),
        core("node_1", "cpu_2", Available),
        core("node_1", "cpu_2", Allocated),
        granted(&waiting, "node_1", vec![grant("cpu_2", "cpu_cores", 1)]),
    ]);
    assert_eq!(expected, t.register(provider("node_1", cores("", 2))).events);
}

#[test]
fn a_lease_expiry_frees_capacity_for_the_queue() {
    let mut t = Table::with_providers(vec![provider("node_1", cores("", 1))]);
    let leased = AllocationRequest {
        lease_ttl_ms: Some(5_000).into(),
        ..request(1, &[("cpu_cores", 1)])
    };
    t.allocate(&leased);
    let waiting = request(2, &[("cpu_cores", 1)]);
    t.allocate(&waiting);

    // --- the lease runs out: expired, then the waiter is granted, in one tick
    t.now_ms = T0 + 5_000;
    let expected = t.expect(vec![
        core("node_1", "cpu_1", Available),
        expired(&leased, "node_1"),
        core("node_1", "cpu_1", Allocated),
        granted(&waiting, "node_1", vec![grant("cpu_1", "cpu_cores", 1)]),
    ]);
    let applied = t.apply(Command::Tick);
    assert_eq!(Ok(CommandResponse::Ticked { expired: 1, rejected: 0 }), applied.result);
    assert_eq!(expected, applied.events);
}

#[test]
fn a_queued_request_is_rejected_by_the_first_tick_past_its_deadline() {
    let mut t = Table::with_providers(vec![provider("node_1", cores("", 1))]);
    t.allocate(&request(1, &[("cpu_cores", 1)]));
    let hurried = AllocationRequest {
        deadline_ms: Some(T0 + 1_000).into(),
        ..request(2, &[("cpu_cores", 1)])
    };
    t.allocate(&hurried);
    assert_eq!(Some(T0 + 1_000), t.table.next_due_ms());

    // --- a tick before the deadline does nothing
    let applied = t.tick_at(T0 + 999);
    assert_eq!(
        (Ok(CommandResponse::Ticked { expired: 0, rejected: 0 }), vec![]),
        (applied.result, applied.events)
    );

    // --- a tick at the deadline rejects it, with the reason
    let reason = "deadline_exceeded: still queued when the deadline passed";
    t.now_ms = T0 + 1_000;
    let expected = t.expect(vec![rejected(&hurried, reason)]);
    let applied = t.apply(Command::Tick);
    assert_eq!(
        (Ok(CommandResponse::Ticked { expired: 0, rejected: 1 }), expected),
        (applied.result, applied.events)
    );
    let record = t.record(id(2));
    assert_eq!(
        (RequestState::Error, AllocationStatus::Rejected, Some(reason)),
        (record.state, record.status, record.reason())
    );
    assert_eq!((0, None), (t.table.queue_len(), t.table.next_due_ms()));
}

#[test]
fn a_request_whose_deadline_has_passed_is_not_granted_before_the_tick_rejects_it() {
    let mut t = Table::with_providers(vec![provider("node_1", cores("", 1))]);
    t.allocate(&request(1, &[("cpu_cores", 1)]));
    let hurried = with_priority(
        9,
        AllocationRequest {
            deadline_ms: Some(T0 + 1_000).into(),
            ..request(2, &[("cpu_cores", 1)])
        },
    );
    let patient = request(3, &[("cpu_cores", 1)]);
    t.allocate(&hurried);
    t.allocate(&patient);

    // --- the core frees after the deadline but before a tick: it goes to the one still waiting in time
    t.now_ms = T0 + 2_000;
    let expected = t.expect(vec![
        core("node_1", "cpu_1", Available),
        released(&request(1, &[("cpu_cores", 1)]), "node_1"),
        core("node_1", "cpu_1", Allocated),
        granted(&patient, "node_1", vec![grant("cpu_1", "cpu_cores", 1)]),
    ]);
    assert_eq!(expected, t.release(id(1)).events);

    // --- the tick rejects the late one
    let applied = t.apply(Command::Tick);
    assert_eq!(Ok(CommandResponse::Ticked { expired: 0, rejected: 1 }), applied.result);
    assert_eq!(RequestState::Error, t.record(id(2)).state);
}

#[test]
fn a_request_arriving_past_its_deadline_is_rejected_at_once() {
    let mut t = Table::with_providers(vec![provider("node_1", cores("", 1))]);
    let late = AllocationRequest {
        deadline_ms: Some(T0).into(),
        ..request(1, &[("cpu_cores", 1)])
    };

    // --- even with a free core
    let expected = t.expect(vec![rejected(
        &late,
        "deadline_exceeded: the deadline 2024-03-15T05:46:40.000Z has already passed",
    )]);
    assert_eq!(expected, t.allocate(&late).events);
}

#[test]
fn one_tick_handles_a_bounded_number_of_expirations() {
    let config = TableConfig {
        expirations_per_tick_max: 2,
        ..Default::default()
    };
    let mut t = Table::with_config(config);
    t.register(provider("node_1", cores("", 3)));
    for n in 1..=3 {
        t.allocate(&AllocationRequest {
            lease_ttl_ms: Some(1_000).into(),
            ..request(n, &[("cpu_cores", 1)])
        });
    }

    // --- three leases are due; the first tick expires two, the next the last
    assert_eq!(
        Ok(CommandResponse::Ticked { expired: 2, rejected: 0 }),
        t.tick_at(T0 + 1_000).result
    );
    assert_eq!(
        Ok(CommandResponse::Ticked { expired: 1, rejected: 0 }),
        t.tick_at(T0 + 1_000).result
    );
    assert_eq!(0, t.table.active_allocations());
}

#[test]
fn a_full_queue_rejects_new_requests() {
    let mut t = Table::with_config(TableConfig {
        queue_len_max: 1,
        ..Default::default()
    });
    t.register(provider("node_1", cores("", 1)));
    t.allocate(&request(1, &[("cpu_cores", 1)]));
    t.allocate(&request(2, &[("cpu_cores", 1)]));

    // --- one is waiting already, so the next is turned away
    let third = request(3, &[("cpu_cores", 1)]);
    assert_eq!(
        t.expect(vec![rejected(&third, "queue_full: 1 requests are already waiting")]),
        t.allocate(&third).events
    );
}

#[test]
fn releasing_a_queued_request_cancels_it() {
    let mut t = Table::with_providers(vec![provider("node_1", cores("", 1))]);
    t.allocate(&request(1, &[("cpu_cores", 1)]));
    t.allocate(&request(2, &[("cpu_cores", 1)]));

    // --- cancel it: it leaves the queue, idle, holding nothing
    let expected = t.expect(vec![qm_state_machine::EventKind::RequestCancelled {
        request_id: id(2),
        namespace: "default".into(),
    }]);
    let applied = t.release(id(2));
    assert_eq!(expected, applied.events);
    let record = record_of(applied);
    assert_eq!(
        (RequestState::Idle, None, Some("cancelled")),
        (record.state, record.placement.as_ref(), record.reason())
    );
    assert_eq!(0, t.table.queue_len());
}
