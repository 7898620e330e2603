//! A request's life after placement: leases, renewal, the new leader's
//! refresh, release by either id, and the provider's confirmations.

mod common;

use common::*;
use qm_state_machine::record::allocation_id_for;
use qm_state_machine::ResourceState::Available;
use qm_state_machine::{AllocationRequest, AllocationStatus, Command, CommandError, CommandResponse, EventKind, RequestState};

fn leased(n: u128, ttl_ms: u64) -> AllocationRequest {
    AllocationRequest {
        lease_ttl_ms: Some(ttl_ms).into(),
        ..request(n, &[("cpu_cores", 1)])
    }
}

#[test]
fn a_lease_expires_on_the_first_tick_at_or_past_it() {
    let mut t = Table::with_providers(vec![provider("node_1", cores("", 1))]);
    let held = leased(1, 5_000);
    assert_eq!(Some(T0 + 5_000), t.allocate_record(&held).lease_expires_at_ms.get());
    assert_eq!(Some(T0 + 5_000), t.table.next_due_ms());

    // --- one millisecond early: nothing
    assert_eq!(Vec::<qm_state_machine::Event>::new(), t.tick_at(T0 + 4_999).events);

    // --- on time: freed and expired
    t.now_ms = T0 + 5_000;
    let expected = t.expect(vec![core("node_1", "cpu_1", Available), expired(&held, "node_1")]);
    let applied = t.apply(Command::Tick);
    assert_eq!(
        (Ok(CommandResponse::Ticked { expired: 1, rejected: 0 }), expected),
        (applied.result, applied.events)
    );
    let record = t.record(id(1));
    assert_eq!(
        (RequestState::Idle, Some("lease_expired"), None),
        (record.state, record.reason(), record.lease_expires_at_ms.get())
    );
    assert_eq!(
        Some("node_1"),
        record.placement.as_ref().map(|p| p.provider_id.as_str()),
        "the last placement stays as history"
    );
}

#[test]
fn renewing_extends_a_lease_by_its_ttl_from_now() {
    let mut t = Table::with_providers(vec![provider("node_1", cores("", 1))]);
    t.allocate(&leased(1, 5_000));

    // --- renew by request id at +4s: expires at +9s
    t.now_ms = T0 + 4_000;
    let expected = t.expect(vec![EventKind::LeaseRenewed {
        allocation_id: allocation_id_for(id(1)),
        namespace: "default".into(),
        expires_at_ms: T0 + 9_000,
    }]);
    let applied = t.apply(Command::RenewLease { id: id(1) });
    assert_eq!(expected, applied.events);
    assert_eq!(Some(T0 + 9_000), record_of(applied).lease_expires_at_ms.get());

    // --- the old expiry passes harmlessly
    assert_eq!(
        Ok(CommandResponse::Ticked { expired: 0, rejected: 0 }),
        t.tick_at(T0 + 5_000).result
    );

    // --- renew by allocation id at +8s: expires at +13s
    t.now_ms = T0 + 8_000;
    assert_eq!(
        Some(T0 + 13_000),
        record_of(t.apply(Command::RenewLease {
            id: allocation_id_for(id(1))
        }))
        .lease_expires_at_ms
        .get()
    );
    assert_eq!(
        Ok(CommandResponse::Ticked { expired: 1, rejected: 0 }),
        t.tick_at(T0 + 13_000).result
    );
}

#[test]
fn renewing_is_refused_without_an_active_lease() {
    let mut t = Table::with_providers(vec![provider("node_1", cores("", 1))]);
    t.allocate(&request(1, &[("cpu_cores", 1)]));
    t.allocate(&leased(2, 5_000)); // queued
    let (allocation_1, allocation_2) = (allocation_id_for(id(1)), allocation_id_for(id(2)));

    // --- no lease, queued, unknown: each refused with its own error, nothing changed
    assert_eq!(
        Err(CommandError::NoLease {
            allocation_id: allocation_1
        }),
        t.apply(Command::RenewLease { id: id(1) }).result
    );
    let not_active = CommandError::NotActive {
        allocation_id: allocation_2,
        state: "queued".into(),
    };
    assert_eq!(Err(not_active), t.apply(Command::RenewLease { id: id(2) }).result);
    assert_eq!(
        Err(CommandError::NotFound { id: id(99) }),
        t.apply(Command::RenewLease { id: id(99) }).result
    );
}

#[test]
fn a_new_leader_gives_every_lease_a_fresh_window() {
    let mut t = Table::with_providers(vec![provider("node_1", cores("", 2))]);
    t.allocate(&leased(1, 5_000)); // expires T0+5s
    t.now_ms = T0 + 3_000;
    t.allocate(&leased(2, 60_000)); // expires T0+63s

    // --- at +4s (renewals lost in the election): each lease gets at least its ttl from now
    t.now_ms = T0 + 4_000;
    let expected = t.expect(vec![EventKind::LeasesRefreshed { leases: 2 }]);
    let applied = t.apply(Command::RefreshLeases);
    assert_eq!(
        (Ok(CommandResponse::LeasesRefreshed { leases: 2 }), expected),
        (applied.result, applied.events)
    );
    assert_eq!(Some(T0 + 9_000), t.record(id(1)).lease_expires_at_ms.get());
    assert_eq!(Some(T0 + 64_000), t.record(id(2)).lease_expires_at_ms.get());
    assert_eq!(
        Ok(CommandResponse::Ticked { expired: 0, rejected: 0 }),
        t.tick_at(T0 + 5_000).result
    );
}

#[test]
fn the_table_clock_never_goes_backwards() {
    let mut t = Table::with_providers(vec![provider("node_1", cores("", 1))]);
    t.allocate(&leased(1, 5_000));
    t.tick_at(T0 + 4_000);

    // --- a new leader with a slower clock cannot un-expire or shorten anything
    t.now_ms = T0 + 1_000;
    let applied = t.apply(Command::RenewLease { id: id(1) });
    assert_eq!(Some(T0 + 9_000), record_of(applied).lease_expires_at_ms.get());
    assert_eq!(T0 + 4_000, t.table.clock_ms());
}

#[test]
fn release_by_either_id_is_idempotent() {
    let mut t = Table::with_providers(vec![provider("node_1", cores("", 2))]);
    let by_request = request(1, &[("cpu_cores", 1)]);
    t.allocate(&by_request);
    t.allocate(&request(2, &[("cpu_cores", 1)]));

    // --- release the first by its request id
    let expected = t.expect(vec![core("node_1", "cpu_1", Available), released(&by_request, "node_1")]);
    let applied = t.release(id(1));
    assert_eq!(expected, applied.events);
    let record = record_of(applied);
    assert_eq!(
        (RequestState::Idle, AllocationStatus::Allocated, Some("released")),
        (record.state, record.status, record.reason())
    );

    // --- again, by either id: the same record, no events
    for again in [id(1), allocation_id_for(id(1))] {
        let applied = t.release(again);
        assert_eq!(
            (Ok(CommandResponse::Request(std::sync::Arc::new(record.clone()))), vec![]),
            (applied.result, applied.events)
        );
    }

    // --- the second by its allocation id
    assert_eq!(RequestState::Idle, record_of(t.release(allocation_id_for(id(2)))).state);
    assert_eq!(0, t.table.active_allocations());

    // --- an id nobody knows
    assert_eq!(Err(CommandError::NotFound { id: id(3) }), t.release(id(3)).result);
}

#[test]
fn a_confirming_provider_moves_allocations_through_every_protocol_state() {
    let mut confirming = provider("node_1", cores("", 1));
    confirming.confirms_allocations = true;
    let mut t = Table::with_providers(vec![confirming]);
    let allocation_id = allocation_id_for(id(1));

    // --- granted: `allocation` until the provider confirms
    assert_eq!(RequestState::Allocation, t.allocate_record(&request(1, &[("cpu_cores", 1)])).state);

    // --- another provider cannot confirm it
    let wrong = CommandError::WrongProvider {
        allocation_id,
        claimed: "node_2".into(),
        actual: "node_1".into(),
    };
    assert_eq!(
        Err(wrong),
        t.apply(Command::ConfirmAllocation {
            allocation_id,
            provider_id: "node_2".into()
        })
        .result
    );

    // --- confirmed: `monitoring`; confirming again is a no-op
    let confirm = Command::ConfirmAllocation {
        allocation_id,
        provider_id: "node_1".into(),
    };
    let expected = t.expect(vec![EventKind::AllocationConfirmed {
        allocation_id,
        namespace: "default".into(),
        provider_id: "node_1".into(),
    }]);
    let applied = t.apply(confirm.clone());
    assert_eq!(
        (RequestState::Monitoring, expected),
        (record_of(applied.clone()).state, applied.events)
    );
    assert_eq!(Vec::<qm_state_machine::Event>::new(), t.apply(confirm.clone()).events);

    // --- a deallocation cannot be confirmed before the release
    let confirm_release = Command::ConfirmDeallocation {
        allocation_id,
        provider_id: "node_1".into(),
    };
    let not_released = CommandError::NotActive {
        allocation_id,
        state: "monitoring".into(),
    };
    assert_eq!(Err(not_released), t.apply(confirm_release.clone()).result);

    // --- released: `deallocation` (units already free) until confirmed, then `idle`
    assert_eq!(RequestState::Deallocation, record_of(t.release(id(1))).state);
    assert_eq!(1, t.table.usage().by_kind["cpu_cores"].free);
    let expected = t.expect(vec![EventKind::DeallocationConfirmed {
        allocation_id,
        namespace: "default".into(),
        provider_id: "node_1".into(),
    }]);
    let applied = t.apply(confirm_release.clone());
    assert_eq!((RequestState::Idle, expected), (record_of(applied.clone()).state, applied.events));
    assert_eq!(Vec::<qm_state_machine::Event>::new(), t.apply(confirm_release).events);

    // --- confirming an allocation that is over is refused
    assert_eq!(
        Err(CommandError::NotActive {
            allocation_id,
            state: "idle".into()
        }),
        t.apply(confirm).result
    );
}

#[test]
fn without_a_confirming_agent_grants_go_straight_to_monitoring_and_releases_to_idle() {
    let mut t = Table::with_providers(vec![provider("node_1", cores("", 1))]);
    let allocation_id = allocation_id_for(id(1));
    assert_eq!(RequestState::Monitoring, t.allocate_record(&request(1, &[("cpu_cores", 1)])).state);

    // --- late confirmations are harmless no-ops
    assert_eq!(
        Vec::<qm_state_machine::Event>::new(),
        t.apply(Command::ConfirmAllocation {
            allocation_id,
            provider_id: "node_1".into()
        })
        .events
    );
    assert_eq!(RequestState::Idle, record_of(t.release(id(1))).state);
    assert_eq!(
        Vec::<qm_state_machine::Event>::new(),
        t.apply(Command::ConfirmDeallocation {
            allocation_id,
            provider_id: "node_1".into()
        })
        .events
    );
}

#[test]
fn protocol_state_names_read_back() {
    use qm_state_machine::{ResourceState, ResourceState as R};
    let states = [
        (RequestState::Queued, "queued"),
        (RequestState::Allocation, "allocation"),
        (RequestState::Monitoring, "monitoring"),
        (RequestState::Deallocation, "deallocation"),
        (RequestState::Idle, "idle"),
        (RequestState::Error, "error"),
    ];
    for (state, name) in states {
        assert_eq!(name, state.as_str());
        assert_eq!(serde_json::json!(name), serde_json::to_value(state).unwrap());
        assert_eq!(state, serde_json::from_value::<RequestState>(serde_json::json!(name)).unwrap());
    }
    for (status, name) in [
        (AllocationStatus::Allocated, "allocated"),
        (AllocationStatus::Queued, "queued"),
        (AllocationStatus::Rejected, "rejected"),
    ] {
        assert_eq!(name, status.as_str());
        assert_eq!(status, serde_json::from_value::<AllocationStatus>(serde_json::json!(name)).unwrap());
    }
    for (state, name) in [(R::Available, "available"), (R::Allocated, "allocated"), (R::Failed, "failed")] {
        assert_eq!(name, state.as_str());
        assert_eq!(state, serde_json::from_value::<ResourceState>(serde_json::json!(name)).unwrap());
    }
}
