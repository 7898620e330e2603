//! Bounded evacuation: a failed provider's allocations move at most
//! `evacuations_per_command_max` per command, the rest in the commands after
//! it; the end is the table an unbounded evacuation gives, and two replicas
//! applying the same commands are byte-identical.

mod common;

use common::*;
use qm_state_machine::{Command, CommandResponse, EventKind, ListFilter, ProviderStatus, RequestState, TableConfig};

fn config(evacuations_per_command_max: usize) -> TableConfig {
    TableConfig {
        evacuations_per_command_max,
        ..TableConfig::default()
    }
}

/// `node_a` holds `held` one-core allocations (ids 1..=held); `node_b` and
/// `node_c` have room for all of them.
fn loaded(evacuations_per_command_max: usize, held: usize) -> Table {
    let mut t = Table::with_config(config(evacuations_per_command_max));
    t.register(provider("node_a", cores("a", held)));
    // Alone at first, so that it takes them all.
    for n in 1..=held as u128 {
        t.allocate(&request(n, &[("cpu_cores", 1)]));
    }
    t.register(provider("node_b", cores("b", held / 2)));
    t.register(provider("node_c", cores("c", held)));
    t
}

fn moved_count(events: &[qm_state_machine::Event]) -> usize {
    events
        .iter()
        .filter(|event| matches!(event.kind, EventKind::AllocationMoved { .. }))
        .count()
}

/// Everything but the config, which differs on purpose.
fn state_of(t: &Table) -> String {
    let all = ListFilter::default();
    let records: Vec<_> = t.table.list(&all).into_iter().cloned().collect();
    let providers: Vec<_> = t.table.providers().cloned().collect();
    let events: Vec<_> = t.table.events_from(1).expect("kept").cloned().collect();
    format!("{records:?}\n{providers:?}\n{events:?}\n{}", t.table.revision())
}

#[test]
fn a_failure_moves_a_bounded_number_per_command_and_the_rest_after() {
    let mut t = loaded(4, 10);

    // --- the failure moves 4 of 10 (oldest first) and says more is due now
    let applied = t.apply(Command::ProviderFailed {
        provider_id: "node_a".into(),
    });
    assert_eq!(
        Ok(CommandResponse::Provider {
            provider_id: "node_a".into(),
            status: ProviderStatus::Failed,
            resources: 10
        }),
        applied.result
    );
    assert_eq!(4, moved_count(&applied.events));
    let moved: Vec<u128> = (1..=10)
        .filter(|n| t.record(id(*n)).placement.unwrap().provider_id != "node_a")
        .collect();
    assert_eq!(vec![1, 2, 3, 4], moved, "oldest first");
    assert_eq!(
        (6, Some(t.table.clock_ms())),
        (t.table.evacuations_pending(), t.table.next_due_ms())
    );

    // --- two ticks move the other six; then nothing is due
    assert_eq!(4, moved_count(&t.apply(Command::Tick).events));
    assert_eq!(2, moved_count(&t.apply(Command::Tick).events));
    assert_eq!((0, None), (t.table.evacuations_pending(), t.table.next_due_ms()));
    assert_eq!(0, moved_count(&t.apply(Command::Tick).events));
}

#[test]
fn bounded_evacuation_ends_in_the_table_an_unbounded_one_gives_and_replicas_agree() {
    // --- 30 allocations to move: unbounded, and 7 per command on two replicas
    let mut unbounded = loaded(usize::MAX, 30);
    let mut replica_1 = loaded(7, 30);
    let mut replica_2 = loaded(7, 30);
    let commands = || {
        let failed = Command::ProviderFailed {
            provider_id: "node_a".into(),
        };
        std::iter::once(failed).chain(std::iter::repeat_n(Command::Tick, 5))
    };
    for table in [&mut unbounded, &mut replica_1, &mut replica_2] {
        for command in commands() {
            table.apply(command);
        }
    }

    // --- all moved (15 to node_b, 15 to node_c: best fit), the same table, the same bytes
    assert_eq!(0, replica_1.table.evacuations_pending());
    let on = |t: &Table, provider_id: &str| {
        t.table
            .list(&ListFilter {
                provider_id: Some(provider_id.into()),
                ..Default::default()
            })
            .len()
    };
    assert_eq!(
        (0, 15, 15),
        (on(&replica_1, "node_a"), on(&replica_1, "node_b"), on(&replica_1, "node_c"))
    );
    assert_eq!(state_of(&unbounded), state_of(&replica_1));
    assert_eq!(replica_1.table.to_snapshot_bytes(), replica_2.table.to_snapshot_bytes());
}

#[test]
fn a_provider_back_during_its_evacuation_keeps_what_has_not_moved() {
    let mut t = loaded(4, 10);
    t.apply(Command::ProviderFailed {
        provider_id: "node_a".into(),
    });
    t.apply(Command::ProviderRecovered {
        provider_id: "node_a".into(),
    });
    assert_eq!((0, None), (t.table.evacuations_pending(), t.table.next_due_ms()));
    let stayed = (1..=10)
        .filter(|n| t.record(id(*n)).placement.unwrap().provider_id == "node_a")
        .count();
    assert_eq!(6, stayed);
    assert!((1..=10).all(|n| t.record(id(n)).state == RequestState::Monitoring));
}

#[test]
fn a_snapshot_taken_mid_evacuation_carries_on_identically() {
    let mut t = loaded(4, 10);
    t.apply(Command::ProviderFailed {
        provider_id: "node_a".into(),
    });
    let mut restored = Table {
        table: qm_state_machine::AllocationTable::from_snapshot_bytes(&t.table.to_snapshot_bytes()).expect("restores"),
        now_ms: t.now_ms,
    };
    assert_eq!(6, restored.table.evacuations_pending());
    for table in [&mut t, &mut restored] {
        table.apply(Command::Tick);
        table.apply(Command::Tick);
    }
    assert_eq!(t.table.to_snapshot_bytes(), restored.table.to_snapshot_bytes());
    assert_eq!(0, restored.table.evacuations_pending());
}

#[test]
fn a_lease_refresh_goes_on_across_commands_and_nothing_expires_meanwhile() {
    // --- five leases of 5 s taken at T0, two refreshed per command
    let mut t = Table::with_config(TableConfig {
        lease_refreshes_per_command_max: 2,
        ..TableConfig::default()
    });
    t.register(provider("node_a", cores("a", 5)));
    for n in 1..=5 {
        t.allocate(&qm_state_machine::AllocationRequest {
            lease_ttl_ms: Some(5_000).into(),
            ..request(n, &[("cpu_cores", 1)])
        });
    }

    // --- a new leader refreshes at +4 s: two now, the rest after
    t.now_ms = T0 + 4_000;
    let applied = t.apply(Command::RefreshLeases);
    assert_eq!(Ok(CommandResponse::LeasesRefreshed { leases: 5 }), applied.result);
    assert!(t.table.lease_refresh_pending());
    assert_eq!(Some(T0 + 4_000), t.table.next_due_ms());

    // --- a tick past the old expiry expires nothing while the refresh goes on
    t.now_ms = T0 + 6_000;
    assert_eq!(
        Ok(CommandResponse::Ticked { expired: 0, rejected: 0 }),
        t.apply(Command::Tick).result
    );
    // Refreshed leases move later in the lease index and are met again,
    // unchanged: the walk is at most twice the leases, plus one command.
    let mut ticks = 1;
    while t.table.lease_refresh_pending() {
        assert_eq!(
            Ok(CommandResponse::Ticked { expired: 0, rejected: 0 }),
            t.apply(Command::Tick).result
        );
        ticks += 1;
    }
    assert_eq!(5, ticks, "each lease met at most twice, two a command");
    let expiries: Vec<Option<u64>> = (1..=5).map(|n| t.record(id(n)).lease_expires_at_ms.get()).collect();
    assert_eq!(vec![Some(T0 + 9_000); 5], expiries, "every lease a full TTL from the refresh");
    assert!((1..=5).all(|n| t.record(id(n)).state == RequestState::Monitoring));
}
