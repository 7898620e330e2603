//! Bounded deregistration: a deregistered provider's allocations move at
//! most `evacuations_per_command_max` per command, as a failed provider's
//! do; the provider stays (failed, placing nothing, not coming back on a
//! heartbeat) until it holds nothing, then it is forgotten with
//! `ProviderDeregistered`. The end is the table an unbounded deregistration
//! gives, and two replicas applying the same commands are byte-identical.

mod common;

use common::*;
use qm_state_machine::{
    AllocationRequest, AllocationTable, Command, CommandResponse, EventKind, ListFilter, ProviderStatus, RequestState,
    ResourceState::Allocated,
};

const LEAVING: &str = "provider_deregistered";

fn one_core(n: u128) -> AllocationRequest {
    request(n, &[("cpu_cores", 1)])
}

fn deregister(provider_id: &str) -> Command {
    Command::DeregisterProvider {
        provider_id: provider_id.into(),
    }
}

/// Request `n` moved off `node_a` onto `node_b`'s core `core`: its status, then the move.
fn moved_to_b(n: u128, core_n: usize) -> Vec<EventKind> {
    let resource_id = format!("bcpu_{core_n}");
    vec![
        core("node_b", &resource_id, Allocated),
        moved(&one_core(n), "node_a", "node_b", vec![grant(&resource_id, "cpu_cores", 1)], LEAVING),
    ]
}

#[test]
fn a_deregistration_moves_a_bounded_number_per_command_and_the_provider_goes_at_the_end() {
    let mut t = node_a_full(2, 5);

    // --- the deregistration moves 2 of 5 (oldest first); node_a stays, leaving
    let expected = t.expect([moved_to_b(1, 1), moved_to_b(2, 2)].concat());
    let applied = t.apply(deregister("node_a"));
    assert_eq!(
        Ok(CommandResponse::ProviderRemoved {
            provider_id: "node_a".into()
        }),
        applied.result
    );
    assert_eq!(expected, applied.events);
    assert_eq!(ProviderStatus::Failed, t.provider_status("node_a"));
    assert!(t.table.deregistering("node_a"));
    assert_eq!(
        (3, Some(t.table.clock_ms())),
        (t.table.evacuations_pending(), t.table.next_due_ms())
    );

    // --- a tick moves two more; the third moves the last and forgets node_a
    let expected = t.expect([moved_to_b(3, 3), moved_to_b(4, 4)].concat());
    assert_eq!(expected, t.apply(Command::Tick).events);
    assert!(t.table.provider("node_a").is_some());
    let expected = t.expect(
        [
            moved_to_b(5, 5),
            vec![EventKind::ProviderDeregistered {
                provider_id: "node_a".into(),
            }],
        ]
        .concat(),
    );
    assert_eq!(expected, t.apply(Command::Tick).events);

    // --- node_a is gone, node_b is exactly full, every allocation still active
    assert!(t.table.provider("node_a").is_none());
    assert!(!t.table.deregistering("node_a"));
    assert_eq!((0, None), (t.table.evacuations_pending(), t.table.next_due_ms()));
    let node_b = t.table.provider("node_b").expect("registered");
    assert!(node_b.resources.values().all(|unit| unit.used() == unit.capacity));
    assert_eq!(5, placed_on(&t, "node_b"));
    assert!((1..=5).all(|n| t.record(id(n)).state == RequestState::Monitoring));
    assert_eq!(Vec::<EventKind>::new(), kinds(&t.apply(Command::Tick).events));
}

#[test]
fn a_provider_holding_nothing_is_forgotten_by_its_deregistration() {
    let mut t = Table::with_providers(vec![provider("node_a", cores("a", 2))]);
    let expected = t.expect(vec![EventKind::ProviderDeregistered {
        provider_id: "node_a".into(),
    }]);
    assert_eq!(expected, t.apply(deregister("node_a")).events);
    assert!(t.table.provider("node_a").is_none());
}

#[test]
fn a_bounded_deregistration_ends_in_the_table_an_unbounded_one_gives_and_replicas_agree() {
    // --- 30 allocations to move: unbounded, and 7 per command on two replicas
    let mut unbounded = node_a_full(usize::MAX, 30);
    let mut replica_1 = node_a_full(7, 30);
    let mut replica_2 = node_a_full(7, 30);
    for table in [&mut unbounded, &mut replica_1, &mut replica_2] {
        table.apply(deregister("node_a"));
        for _ in 0..5 {
            table.apply(Command::Tick);
        }
    }

    // --- all moved, node_a gone, the same table, the same bytes
    assert!(replica_1.table.provider("node_a").is_none());
    assert_eq!(30, placed_on(&replica_1, "node_b"));
    let state_of = |t: &Table| {
        let records: Vec<_> = t.table.list(&ListFilter::default()).into_iter().cloned().collect();
        let providers: Vec<_> = t.table.providers().cloned().collect();
        let events: Vec<_> = t.table.events_from(1).expect("kept").cloned().collect();
        format!("{records:?}\n{providers:?}\n{events:?}\n{}", t.table.revision())
    };
    assert_eq!(state_of(&unbounded), state_of(&replica_1));
    assert_eq!(replica_1.table.to_snapshot_bytes(), replica_2.table.to_snapshot_bytes());
}

#[test]
fn a_leaving_provider_does_not_come_back_on_a_heartbeat_but_does_on_a_registration() {
    let mut t = node_a_full(2, 5);
    t.apply(deregister("node_a"));

    // --- the leader's ProviderRecovered leaves it failed and leaving (the
    // command still carries the evacuation on)
    let applied = t.apply(Command::ProviderRecovered {
        provider_id: "node_a".into(),
    });
    assert_eq!(
        Ok(CommandResponse::Provider {
            provider_id: "node_a".into(),
            status: ProviderStatus::Failed,
            resources: 5
        }),
        applied.result
    );
    assert!(!kinds(&applied.events)
        .iter()
        .any(|kind| matches!(kind, EventKind::ProviderRecovered { .. })));
    assert!(t.table.deregistering("node_a"));
    assert_eq!(1, placed_on(&t, "node_a"));

    // --- deregistering again changes nothing but carries on
    assert_eq!(
        Ok(CommandResponse::ProviderRemoved {
            provider_id: "node_a".into()
        }),
        t.apply(deregister("node_a")).result
    );
    assert!(t.table.provider("node_a").is_none());

    // --- registered again while leaving: it is back, keeping what has not moved
    let mut t = node_a_full(2, 5);
    t.apply(deregister("node_a"));
    let applied = t.register(provider("node_a", cores("a", 5)));
    assert!(kinds(&applied.events).contains(&EventKind::ProviderRecovered {
        provider_id: "node_a".into()
    }));
    assert!(!t.table.deregistering("node_a"));
    assert_eq!((ProviderStatus::Active, 3), (t.provider_status("node_a"), placed_on(&t, "node_a")));
    assert_eq!(0, t.table.evacuations_pending());
}

#[test]
fn a_leaving_provider_emptied_by_a_release_goes_even_when_the_budget_is_spent_elsewhere() {
    // --- node_a (failed) has 7 to move at 2 per command; node_d, after it in
    // id order, leaves holding one pinned allocation the budget never reaches
    let mut t = node_a_full(2, 7);
    t.register(provider("node_d", cores("d", 1)));
    let pinned = AllocationRequest {
        constraints: on_provider("node_d"),
        ..one_core(8)
    };
    t.allocate(&pinned);
    t.apply(Command::ProviderFailed {
        provider_id: "node_a".into(),
    });
    t.apply(deregister("node_d"));
    assert!(t.table.deregistering("node_d"));
    assert_eq!((3, 1), (placed_on(&t, "node_a"), placed_on(&t, "node_d")));

    // --- its release: node_a's share of 2 moves, spending the budget, then
    // node_d, now empty, is forgotten all the same
    let failed_move = |n: u128, core_n: usize| {
        let resource_id = format!("bcpu_{core_n}");
        vec![
            core("node_b", &resource_id, Allocated),
            moved(
                &one_core(n),
                "node_a",
                "node_b",
                vec![grant(&resource_id, "cpu_cores", 1)],
                "provider_failed",
            ),
        ]
    };
    let expected = t.expect(
        [
            vec![
                core("node_d", "dcpu_1", qm_state_machine::ResourceState::Available),
                released(&pinned, "node_d"),
            ],
            failed_move(5, 5),
            failed_move(6, 6),
            vec![EventKind::ProviderDeregistered {
                provider_id: "node_d".into(),
            }],
        ]
        .concat(),
    );
    assert_eq!(expected, t.release(id(8)).events);
    assert!(t.table.provider("node_d").is_none());
    assert_eq!(1, t.table.evacuations_pending(), "node_a's last one, next command");
}

#[test]
fn a_snapshot_taken_mid_deregistration_carries_on_identically() {
    let mut t = node_a_full(2, 5);
    t.apply(deregister("node_a"));
    let mut restored = Table {
        table: AllocationTable::from_snapshot_bytes(&t.table.to_snapshot_bytes()).expect("restores"),
        now_ms: t.now_ms,
    };
    assert!(restored.table.deregistering("node_a"));
    for table in [&mut t, &mut restored] {
        table.apply(Command::Tick);
        table.apply(Command::Tick);
    }
    assert_eq!(t.table.to_snapshot_bytes(), restored.table.to_snapshot_bytes());
    assert!(restored.table.provider("node_a").is_none());
}
