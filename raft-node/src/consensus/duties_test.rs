//! Exact outputs of the leader's decisions: who is declared failed or
//! recovered, when a tick is due, how a round begins.

use qm_state_machine::{
    AllocationRequest, Command, Constraints, PlacementPolicy, ProviderRegistration, Requirement, ResourceSpec, StampedCommand, TableConfig,
};
use uuid::Uuid;

use super::*;

const T0: u64 = 1_700_000_000_000;
const WINDOW_MS: u64 = 10_000;
const LEASE_TTL_MS: u64 = 5_000;

fn registration(provider_id: &str) -> ProviderRegistration {
    ProviderRegistration {
        provider_id: provider_id.to_owned(),
        labels: Default::default(),
        resources: vec![ResourceSpec {
            resource_id: "cpu_1".to_owned(),
            kind: "cpu_cores".to_owned(),
            capacity: 1,
            labels: Default::default(),
            sharing: None,
        }],
        confirms_allocations: false,
        address: None,
        port: None,
    }
    .validate()
    .expect("a valid registration")
}

fn leased_request() -> AllocationRequest {
    AllocationRequest {
        request_id: Uuid::from_u128(1),
        requester_id: "agent_1".to_owned().into(),
        namespace: "default".to_owned().into(),
        requirements: vec![Requirement {
            kind: "cpu_cores".to_owned().into(),
            quantity: 1,
        }]
        .into(),
        priority: 0,
        deadline_ms: None.into(),
        lease_ttl_ms: Some(LEASE_TTL_MS).into(),
        constraints: Constraints::default(),
        placement: PlacementPolicy::BestFit,
    }
}

/// A table with `active` and `failed` providers, all registered at `T0`.
fn table(active: &[&str], failed: &[&str]) -> AllocationTable {
    let mut table = AllocationTable::new(TableConfig::default());
    let registrations = active.iter().chain(failed).map(|id| Command::RegisterProvider(registration(id)));
    let failures = failed.iter().map(|id| Command::ProviderFailed {
        provider_id: id.to_string(),
    });
    for command in registrations.chain(failures) {
        table.apply(&StampedCommand::new(T0, command)).result.expect("applied");
    }
    table
}

fn ids(ids: &[&str]) -> Vec<String> {
    ids.iter().map(|id| id.to_string()).collect()
}

#[test]
fn a_new_leader_counts_silence_from_its_take_over_not_from_registration() {
    let table = table(&["node_1", "node_2"], &[]);
    let took_over = T0 + 60_000;
    let book = HeartbeatBook::taken_over(2, took_over);

    // --- exactly the window after the take-over: still within it
    assert_eq!(DueWork::default(), due_work(&table, &book, took_over + WINDOW_MS, WINDOW_MS));

    // --- one millisecond more: both silent
    let expected = DueWork {
        failed_providers: ids(&["node_1", "node_2"]),
        ..DueWork::default()
    };
    assert_eq!(expected, due_work(&table, &book, took_over + WINDOW_MS + 1, WINDOW_MS));
}

#[test]
fn a_provider_is_failed_when_its_last_heartbeat_is_older_than_the_window() {
    let table = table(&["node_1", "node_2", "node_3"], &[]);
    let mut book = HeartbeatBook::taken_over(2, T0);
    book.record("node_1", T0 + 5_000, Default::default());
    book.record("node_2", T0 + 20_000, Default::default());
    // A heartbeat stamped before the take-over counts from the take-over.
    book.record("node_3", T0 - 1_000, Default::default());

    let expected = DueWork {
        failed_providers: ids(&["node_1", "node_3"]),
        ..DueWork::default()
    };
    assert_eq!(expected, due_work(&table, &book, T0 + 20_001, WINDOW_MS));
}

#[test]
fn a_failed_provider_heard_within_the_window_is_recovered() {
    let table = table(&[], &["node_1", "node_2", "node_3"]);
    let now = T0 + 100_000;
    let mut book = HeartbeatBook::taken_over(2, T0);
    book.record("node_1", now - WINDOW_MS, Default::default());
    book.record("node_2", now - WINDOW_MS - 1, Default::default());

    let expected = DueWork {
        recovered_providers: ids(&["node_1"]),
        ..DueWork::default()
    };
    assert_eq!(expected, due_work(&table, &book, now, WINDOW_MS));
}

#[test]
fn a_deregistered_provider_still_being_evacuated_is_not_recovered_by_a_heartbeat() {
    // --- node_1 holds two allocations, leaves, and one is left to move (one a command)
    let mut table = AllocationTable::new(TableConfig {
        evacuations_per_command_max: 1,
        ..TableConfig::default()
    });
    let mut two_units = registration("node_1");
    two_units.resources.push(ResourceSpec {
        resource_id: "cpu_2".to_owned(),
        ..two_units.resources[0].clone()
    });
    let allocations = (1..=2).map(|n| {
        Command::Allocate(AllocationRequest {
            request_id: Uuid::from_u128(n),
            lease_ttl_ms: None.into(),
            ..leased_request()
        })
    });
    let deregister = Command::DeregisterProvider {
        provider_id: "node_1".to_owned(),
    };
    for command in std::iter::once(Command::RegisterProvider(two_units))
        .chain(allocations)
        .chain([deregister])
    {
        table.apply(&StampedCommand::new(T0, command)).result.expect("applied");
    }
    assert!(table.deregistering("node_1"));

    // --- its agent heartbeats on: only the evacuation's ticks are due
    let mut book = HeartbeatBook::taken_over(2, T0);
    book.record("node_1", T0 + 1_000, Default::default());
    let expected = DueWork {
        tick: true,
        evacuation_ticks: 1,
        ..DueWork::default()
    };
    assert_eq!(expected, due_work(&table, &book, T0 + 1_000, WINDOW_MS));
}

#[test]
fn without_a_leadership_no_provider_is_silent() {
    let table = table(&["node_1"], &[]);
    let mut book = HeartbeatBook::taken_over(2, T0);
    book.end_leadership();

    assert_eq!(DueWork::default(), due_work(&table, &book, T0 + 100 * WINDOW_MS, WINDOW_MS));
}

#[test]
fn a_tick_is_due_once_the_clock_reaches_the_first_lease_expiry() {
    let mut table = table(&["node_1"], &[]);
    table
        .apply(&StampedCommand::new(T0, Command::Allocate(leased_request())))
        .result
        .expect("allocated");
    let mut book = HeartbeatBook::taken_over(2, T0);
    book.record("node_1", T0 + LEASE_TTL_MS, Default::default());

    // --- one millisecond early: nothing
    assert_eq!(DueWork::default(), due_work(&table, &book, T0 + LEASE_TTL_MS - 1, WINDOW_MS));

    // --- on time: a tick
    let expected = DueWork {
        tick: true,
        ..DueWork::default()
    };
    assert_eq!(expected, due_work(&table, &book, T0 + LEASE_TTL_MS, WINDOW_MS));
}

#[test]
fn due_work_is_proposed_tick_first_then_failures_then_recoveries() {
    let work = DueWork {
        tick: true,
        failed_providers: ids(&["node_1", "node_2"]),
        recovered_providers: ids(&["node_3"]),
        ..DueWork::default()
    };

    let expected = vec![
        Command::Tick,
        Command::ProviderFailed {
            provider_id: "node_1".to_owned(),
        },
        Command::ProviderFailed {
            provider_id: "node_2".to_owned(),
        },
        Command::ProviderRecovered {
            provider_id: "node_3".to_owned(),
        },
    ];
    assert_eq!(expected, work.into_commands());
    assert_eq!(Vec::<Command>::new(), DueWork::default().into_commands());
}

#[test]
fn a_round_takes_over_each_new_term_once() {
    assert_eq!(Round::NotLeading, round(None, None));
    assert_eq!(Round::NotLeading, round(None, Some(3)));
    assert_eq!(Round::TakeOver { term: 3 }, round(Some(3), None));
    assert_eq!(Round::TakeOver { term: 4 }, round(Some(4), Some(3)));
    assert_eq!(Round::Lead, round(Some(3), Some(3)));
}

#[test]
fn a_new_leader_refreshes_leases_only_when_something_is_due_some_day() {
    let mut table = table(&["node_1"], &[]);
    assert_eq!(TakeOverWork { refresh_leases: false }, take_over_work(&table));

    table
        .apply(&StampedCommand::new(T0, Command::Allocate(leased_request())))
        .result
        .expect("allocated");
    assert_eq!(TakeOverWork { refresh_leases: true }, take_over_work(&table));
}

#[test]
fn an_evacuation_left_over_is_carried_on_by_up_to_sixteen_ticks_a_round() {
    assert_eq!(
        (0, 1, 1, 2, 16),
        (
            evacuation_ticks(0, 1024),
            evacuation_ticks(1, 1024),
            evacuation_ticks(1024, 1024),
            evacuation_ticks(1025, 1024),
            evacuation_ticks(1_000_000, 1024)
        )
    );
    let work = DueWork {
        tick: true,
        evacuation_ticks: 3,
        ..DueWork::default()
    };
    assert_eq!(vec![Command::Tick; 3], work.into_commands());
}
