//! A drain's end: a drained provider (holding nothing any more) is
//! cordoned at once; one whose deadline passes has what is left moved off
//! at most `evacuations_per_command_max` per command, as a failed
//! provider's allocations are, and the end is the table an unbounded
//! evacuation gives, byte-identical on two replicas.

mod common;

use common::*;
use qm_state_machine::{AllocationRequest, Command, EventKind, ListFilter, RequestState, ResourceState::Allocated, Scheduling};

const DRAIN_DEADLINE_MS: u64 = 60_000;

fn one_core(n: u128) -> AllocationRequest {
    request(n, &[("cpu_cores", 1)])
}

fn drain(provider_id: &str) -> Command {
    Command::DrainProvider {
        provider_id: provider_id.into(),
        deadline_after_ms: DRAIN_DEADLINE_MS,
    }
}

fn scheduling(t: &Table, provider_id: &str) -> Scheduling {
    t.table.provider(provider_id).expect("registered").scheduling
}

#[test]
fn past_its_deadline_a_drain_moves_a_bounded_number_per_command_and_ends_cordoned() {
    let mut t = node_a_full(4, 10);
    t.apply(drain("node_a"));

    // --- the deadline: cordoned at once, the 4 oldest move in this command, in arrival order
    let applied = t.tick_at(T0 + DRAIN_DEADLINE_MS);
    let mut expected = vec![EventKind::ProviderScheduling {
        provider_id: "node_a".into(),
        scheduling: Scheduling::Cordoned,
    }];
    // Best fit takes node_b's cores in resource-id order: bcpu_1, bcpu_10, bcpu_2, ...
    let mut cores_of_b: Vec<String> = (1..=10).map(|n| format!("bcpu_{n}")).collect();
    cores_of_b.sort();
    for n in 1..=4 {
        let resource_id = &cores_of_b[n as usize - 1];
        expected.push(core("node_b", resource_id, Allocated));
        expected.push(moved(
            &one_core(n),
            "node_a",
            "node_b",
            vec![grant(resource_id, "cpu_cores", 1)],
            "drain_deadline",
        ));
    }
    assert_eq!(expected, kinds(&applied.events));
    assert_eq!(6, placed_on(&t, "node_a"));
    assert_eq!(6, t.table.evacuations_pending());

    // --- the next commands carry on: 4, then the last 2
    t.tick_at(T0 + DRAIN_DEADLINE_MS + 1);
    assert_eq!(2, placed_on(&t, "node_a"));
    t.tick_at(T0 + DRAIN_DEADLINE_MS + 2);
    assert_eq!(0, placed_on(&t, "node_a"));
    assert_eq!(10, placed_on(&t, "node_b"));
    assert_eq!(0, t.table.evacuations_pending());
    assert_eq!(Scheduling::Cordoned, scheduling(&t, "node_a"));
}

#[test]
fn a_bounded_drain_deadline_ends_in_the_table_an_unbounded_one_gives_and_replicas_agree() {
    let mut unbounded = node_a_full(usize::MAX, 30);
    let mut replica_1 = node_a_full(7, 30);
    let mut replica_2 = node_a_full(7, 30);
    for t in [&mut unbounded, &mut replica_1, &mut replica_2] {
        t.apply(drain("node_a"));
        for _ in 0..6 {
            t.tick_at(T0 + DRAIN_DEADLINE_MS);
        }
    }

    assert_eq!(30, placed_on(&replica_1, "node_b"));
    let state_of = |t: &Table| {
        let records: Vec<_> = t.table.list(&ListFilter::default()).into_iter().cloned().collect();
        let providers: Vec<_> = t.table.providers().cloned().collect();
        format!("{records:?}\n{providers:?}")
    };
    assert_eq!(state_of(&unbounded), state_of(&replica_1));
    assert_eq!(replica_1.table.to_snapshot_bytes(), replica_2.table.to_snapshot_bytes());
}

#[test]
fn uncordoning_while_a_drain_deadline_evacuates_keeps_what_has_not_moved() {
    let mut t = node_a_full(4, 10);
    t.apply(drain("node_a"));
    t.tick_at(T0 + DRAIN_DEADLINE_MS);
    assert_eq!(6, placed_on(&t, "node_a"));

    t.apply(Command::CordonProvider {
        provider_id: "node_a".into(),
        cordon: false,
    });
    t.tick_at(T0 + DRAIN_DEADLINE_MS + 1);
    assert_eq!(6, placed_on(&t, "node_a"), "nothing moves off an open provider");
    assert_eq!(0, t.table.evacuations_pending());
    assert_eq!(Scheduling::Open, scheduling(&t, "node_a"));
}

#[test]
fn a_provider_emptied_by_releases_is_drained_before_its_deadline() {
    let mut t = node_a_full(4, 2);
    t.apply(drain("node_a"));
    assert_eq!(
        Scheduling::Draining {
            deadline_ms: T0 + DRAIN_DEADLINE_MS
        },
        scheduling(&t, "node_a")
    );
    t.release(one_core(1).request_id);
    t.release(one_core(2).request_id);

    // --- due at once: the next tick ends the drain, long before the deadline
    assert_eq!(Some(t.now_ms), t.table.next_due_ms());
    let applied = t.tick_at(T0 + 1);
    assert!(kinds(&applied.events).contains(&EventKind::ProviderScheduling {
        provider_id: "node_a".into(),
        scheduling: Scheduling::Cordoned,
    }));
    assert_eq!(Scheduling::Cordoned, scheduling(&t, "node_a"));
    assert_eq!(RequestState::Idle, t.record(one_core(1).request_id).state);
}
