//! Providers joining, changing, leaving, failing and coming back, and what
//! happens to the allocations placed on them.

mod common;

use common::*;
use qm_state_machine::ResourceState::{Allocated, Available, Failed};
use qm_state_machine::{Command, CommandError, CommandResponse, EventKind, ProviderStatus, RequestState, Sharing};

#[test]
fn registering_a_provider_offers_its_units() {
    let mut t = Table::new();

    // --- register one provider with two cores and a memory unit
    let registration = provider(
        "node_1",
        vec![
            unit("mem_1", "memory_gb", 16),
            unit("cpu_2", "cpu_cores", 1),
            unit("cpu_1", "cpu_cores", 1),
        ],
    );
    let expected = t.expect(vec![
        EventKind::ProviderRegistered {
            provider_id: "node_1".into(),
            resources: 3,
        },
        core("node_1", "cpu_1", Available),
        core("node_1", "cpu_2", Available),
        status("node_1", "mem_1", "memory_gb", Available, 0, 16),
    ]);
    let applied = t.register(registration);

    // --- the answer, the events, and the units as the table keeps them
    assert_eq!(
        Ok(CommandResponse::Provider {
            provider_id: "node_1".into(),
            status: ProviderStatus::Active,
            resources: 3
        }),
        applied.result
    );
    assert_eq!(expected, applied.events);
    let node = t.table.provider("node_1").unwrap();
    let sharing: Vec<(&str, Sharing)> = node.resources.values().map(|r| (r.resource_id.as_str(), r.sharing)).collect();
    assert_eq!(
        vec![
            ("cpu_1", Sharing::Exclusive),
            ("cpu_2", Sharing::Exclusive),
            ("mem_1", Sharing::Divisible)
        ],
        sharing
    );
    assert_eq!(T0, node.registered_at_ms);
}

#[test]
fn registering_again_updates_labels_and_units() {
    let mut t = Table::with_providers(vec![provider("node_1", cores("", 1))]);
    t.now_ms += 1000;

    // --- register again with a label and a second core
    let mut update = provider("node_1", cores("", 2));
    update.labels = labels(&[("zone", "a")]);
    let expected = t.expect(vec![
        EventKind::ProviderUpdated {
            provider_id: "node_1".into(),
            resources: 2,
        },
        core("node_1", "cpu_1", Available),
        core("node_1", "cpu_2", Available),
    ]);
    assert_eq!(expected, t.register(update).events);

    // --- labels replaced, units added, registration time kept
    let node = t.table.provider("node_1").unwrap();
    assert_eq!(labels(&[("zone", "a")]), node.labels);
    assert_eq!(2, node.resources.len());
    assert_eq!(T0, node.registered_at_ms);
}

#[test]
fn an_update_keeps_held_units_and_may_drop_free_ones() {
    let mut t = Table::with_providers(vec![provider(
        "node_1",
        vec![
            unit("cpu_1", "cpu_cores", 1),
            unit("cpu_2", "cpu_cores", 1),
            unit("vol_1", "storage_gb", 100),
        ],
    )]);
    let held = request(1, &[("cpu_cores", 1), ("storage_gb", 60)]);
    t.allocate(&held);

    // --- dropping the free core is fine; the holders of the others stay
    t.register(provider(
        "node_1",
        vec![unit("cpu_1", "cpu_cores", 1), unit("vol_1", "storage_gb", 80)],
    ));
    let node = t.table.provider("node_1").unwrap();
    assert_eq!(vec!["cpu_1", "vol_1"], node.resources.keys().collect::<Vec<_>>());
    assert_eq!(60, node.resources["vol_1"].used());
    assert_eq!(RequestState::Monitoring, t.record(id(1)).state);

    // --- removing, re-kinding or shrinking a held unit is refused, naming it
    let in_use = |resource: &str, change: &str| {
        Err(CommandError::ResourceInUse {
            provider_id: "node_1".into(),
            resource_id: resource.into(),
            change: change.into(),
        })
    };
    let removed = provider("node_1", vec![unit("vol_1", "storage_gb", 100)]);
    assert_eq!(in_use("cpu_1", "removed"), t.apply(Command::RegisterProvider(removed)).result);
    let rekinded = provider("node_1", vec![unit("cpu_1", "gpu", 1), unit("vol_1", "storage_gb", 100)]);
    assert_eq!(
        in_use("cpu_1", "changed in kind or sharing"),
        t.apply(Command::RegisterProvider(rekinded)).result
    );
    let shrunk = provider("node_1", vec![unit("cpu_1", "cpu_cores", 1), unit("vol_1", "storage_gb", 59)]);
    assert_eq!(
        in_use("vol_1", "shrunk below what is held"),
        t.apply(Command::RegisterProvider(shrunk)).result
    );
}

#[test]
fn deregistering_moves_allocations_to_another_provider() {
    // node_1 is the tighter fit, so the request lands there first.
    let mut t = Table::with_providers(vec![provider("node_1", cores("a", 2)), provider("node_2", cores("b", 4))]);
    let held = request(1, &[("cpu_cores", 2)]);
    assert_eq!(
        Some("node_1"),
        t.allocate_record(&held).placement.as_ref().map(|p| p.provider_id.as_str())
    );

    // --- deregister node_1: the allocation moves to node_2, then node_1 is gone
    let grants = vec![grant("bcpu_1", "cpu_cores", 1), grant("bcpu_2", "cpu_cores", 1)];
    let expected = t.expect(vec![
        core("node_2", "bcpu_1", Allocated),
        core("node_2", "bcpu_2", Allocated),
        moved(&held, "node_1", "node_2", grants.clone(), "provider_deregistered"),
        EventKind::ProviderDeregistered {
            provider_id: "node_1".into(),
        },
    ]);
    let applied = t.apply(Command::DeregisterProvider {
        provider_id: "node_1".into(),
    });
    assert_eq!(
        Ok(CommandResponse::ProviderRemoved {
            provider_id: "node_1".into()
        }),
        applied.result
    );
    assert_eq!(expected, applied.events);

    // --- the record follows, still active, still the same allocation
    let record = t.record(id(1));
    assert_eq!(RequestState::Monitoring, record.state);
    assert_eq!(
        ("node_2", grants.as_slice()),
        record.placement.as_ref().map(|p| (p.provider_id.as_str(), &*p.grants)).unwrap()
    );
    assert!(t.table.provider("node_1").is_none());
    assert_eq!(1, t.table.active_allocations());
}

#[test]
fn unknown_providers_are_refused() {
    let mut t = Table::new();
    for command in [
        Command::DeregisterProvider {
            provider_id: "ghost".into(),
        },
        Command::ProviderFailed {
            provider_id: "ghost".into(),
        },
        Command::ProviderRecovered {
            provider_id: "ghost".into(),
        },
    ] {
        assert_eq!(
            Err(CommandError::UnknownProvider {
                provider_id: "ghost".into()
            }),
            t.apply(command).result
        );
    }
}

#[test]
fn a_failed_provider_has_its_allocations_moved_or_queued() {
    let mut t = Table::with_providers(vec![provider("node_1", cores("a", 2)), provider("node_2", cores("b", 2))]);
    let first = request(1, &[("cpu_cores", 2)]);
    let second = request(2, &[("cpu_cores", 1)]);
    t.allocate(&first); // node_1: equal fit, lower id
    t.allocate(&second); // node_2: the only one with room

    // --- node_1 fails: its units show failed, the allocation cannot move (node_2 has 1 free) and queues
    let reason = "provider_failed: node_1 failed and no other provider fits";
    let expected = t.expect(vec![
        EventKind::ProviderFailed {
            provider_id: "node_1".into(),
        },
        core("node_1", "acpu_1", Failed).with_used(1),
        core("node_1", "acpu_2", Failed).with_used(1),
        queued(&first, reason),
    ]);
    let applied = t.apply(Command::ProviderFailed {
        provider_id: "node_1".into(),
    });
    assert_eq!(
        Ok(CommandResponse::Provider {
            provider_id: "node_1".into(),
            status: ProviderStatus::Failed,
            resources: 2
        }),
        applied.result
    );
    assert_eq!(expected, applied.events);
    let record = t.record(id(1));
    assert_eq!(
        (RequestState::Queued, None, Some(reason)),
        (record.state, record.placement.as_ref(), record.reason())
    );
    assert_eq!(ProviderStatus::Failed, t.provider_status("node_1"));

    // --- failing it again changes nothing
    let applied = t.apply(Command::ProviderFailed {
        provider_id: "node_1".into(),
    });
    assert!(applied.result.is_ok());
    assert_eq!(Vec::<qm_state_machine::Event>::new(), applied.events);

    // --- a new provider with room takes the queued allocation at once
    let expected = t.expect(vec![
        EventKind::ProviderRegistered {
            provider_id: "node_3".into(),
            resources: 2,
        },
        core("node_3", "ccpu_1", Available),
        core("node_3", "ccpu_2", Available),
        core("node_3", "ccpu_1", Allocated),
        core("node_3", "ccpu_2", Allocated),
        granted(
            &first,
            "node_3",
            vec![grant("ccpu_1", "cpu_cores", 1), grant("ccpu_2", "cpu_cores", 1)],
        ),
    ]);
    assert_eq!(expected, t.register(provider("node_3", cores("c", 2))).events);
}

#[test]
fn a_failed_provider_has_its_allocations_moved_where_they_fit() {
    let mut t = Table::with_providers(vec![provider("node_1", cores("a", 1)), provider("node_2", cores("b", 3))]);
    let (first, second) = (request(1, &[("cpu_cores", 1)]), request(2, &[("cpu_cores", 1)]));
    t.allocate(&first); // node_1, the tighter fit
    t.allocate(&second); // node_2

    // --- node_2 fails: node_1 is full, so its allocation queues
    t.apply(Command::ProviderFailed {
        provider_id: "node_2".into(),
    });
    assert_eq!(RequestState::Queued, t.record(id(2)).state);

    // --- node_2 recovers and takes it back from the queue
    t.apply(Command::ProviderRecovered {
        provider_id: "node_2".into(),
    });
    assert_eq!(RequestState::Monitoring, t.record(id(2)).state);

    // --- node_1 fails: its allocation moves to node_2's next free core
    let expected = t.expect(vec![
        EventKind::ProviderFailed {
            provider_id: "node_1".into(),
        },
        core("node_1", "acpu_1", Failed).with_used(1),
        core("node_2", "bcpu_2", Allocated),
        moved(&first, "node_1", "node_2", vec![grant("bcpu_2", "cpu_cores", 1)], "provider_failed"),
    ]);
    assert_eq!(
        expected,
        t.apply(Command::ProviderFailed {
            provider_id: "node_1".into()
        })
        .events
    );
    assert_eq!(
        2,
        t.table
            .list(&qm_state_machine::ListFilter {
                provider_id: Some("node_2".into()),
                ..Default::default()
            })
            .len()
    );
}

#[test]
fn a_recovered_provider_offers_its_units_again() {
    let mut t = Table::with_providers(vec![provider("node_1", cores("", 1))]);
    t.apply(Command::ProviderFailed {
        provider_id: "node_1".into(),
    });

    // --- while failed, its units are offered to nobody
    let waiting = request(1, &[("cpu_cores", 1)]);
    assert_eq!(t.expect(vec![queued(&waiting, INSUFFICIENT)]), t.allocate(&waiting).events);

    // --- it recovers: units available, then the queue is examined
    let expected = t.expect(vec![
        EventKind::ProviderRecovered {
            provider_id: "node_1".into(),
        },
        core("node_1", "cpu_1", Available),
        core("node_1", "cpu_1", Allocated),
        granted(&waiting, "node_1", vec![grant("cpu_1", "cpu_cores", 1)]),
    ]);
    let applied = t.apply(Command::ProviderRecovered {
        provider_id: "node_1".into(),
    });
    assert_eq!(
        Ok(CommandResponse::Provider {
            provider_id: "node_1".into(),
            status: ProviderStatus::Active,
            resources: 1
        }),
        applied.result
    );
    assert_eq!(expected, applied.events);

    // --- recovering an active provider changes nothing
    assert_eq!(
        Vec::<qm_state_machine::Event>::new(),
        t.apply(Command::ProviderRecovered {
            provider_id: "node_1".into()
        })
        .events
    );
}

#[test]
fn a_failed_provider_that_registers_again_is_back() {
    let mut t = Table::with_providers(vec![provider("node_1", cores("", 1))]);
    t.apply(Command::ProviderFailed {
        provider_id: "node_1".into(),
    });
    let waiting = request(1, &[("cpu_cores", 1)]);
    t.allocate(&waiting);

    // --- re-registration: updated, recovered, units available, queue examined
    let expected = t.expect(vec![
        EventKind::ProviderUpdated {
            provider_id: "node_1".into(),
            resources: 1,
        },
        EventKind::ProviderRecovered {
            provider_id: "node_1".into(),
        },
        core("node_1", "cpu_1", Available),
        core("node_1", "cpu_1", Allocated),
        granted(&waiting, "node_1", vec![grant("cpu_1", "cpu_cores", 1)]),
    ]);
    assert_eq!(expected, t.register(provider("node_1", cores("", 1))).events);
    assert_eq!(ProviderStatus::Active, t.provider_status("node_1"));
}

/// Small helper: the same `resource_status` with another `used`.
trait WithUsed {
    fn with_used(self, used: u64) -> Self;
}

impl WithUsed for EventKind {
    fn with_used(self, new_used: u64) -> Self {
        match self {
            EventKind::ResourceStatus {
                provider_id,
                resource_id,
                kind,
                status,
                capacity,
                ..
            } => EventKind::ResourceStatus {
                provider_id,
                resource_id,
                kind,
                status,
                used: new_used,
                capacity,
            },
            other => other,
        }
    }
}

#[test]
fn an_allocation_queued_by_a_failure_is_not_held_to_its_deadline_again() {
    let mut t = Table::with_providers(vec![provider("node_1", cores("a", 1))]);
    let timed = qm_state_machine::AllocationRequest {
        deadline_ms: Some(T0 + 1_000).into(),
        ..request(1, &[("cpu_cores", 1)])
    };
    assert_eq!(Some(T0), t.allocate_record(&timed).first_granted_at_ms.get());

    // --- long after the deadline, node_1 fails: the allocation waits in the queue
    t.now_ms = T0 + 5_000;
    t.apply(Command::ProviderFailed {
        provider_id: "node_1".into(),
    });
    assert_eq!((RequestState::Queued, None), (t.record(id(1)).state, t.table.next_due_ms()));

    // --- a tick does not reject it: it met its deadline when it was first granted
    assert_eq!(
        Ok(CommandResponse::Ticked { expired: 0, rejected: 0 }),
        t.tick_at(T0 + 6_000).result
    );

    // --- a new provider takes it
    t.register(provider("node_2", cores("b", 1)));
    let record = t.record(id(1));
    assert_eq!(
        (RequestState::Monitoring, Some(T0)),
        (record.state, record.first_granted_at_ms.get())
    );
}
