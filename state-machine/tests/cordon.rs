//! Cordon and uncordon: an operator keeps new allocations off a provider
//! without touching what it already holds.

mod common;

use common::*;
use qm_state_machine::ResourceState::Allocated;
use qm_state_machine::{Command, CommandError, CommandResponse, EventKind, RequestState, Scheduling};

fn cordon(provider_id: &str, cordon: bool) -> Command {
    Command::CordonProvider {
        provider_id: provider_id.to_owned(),
        cordon,
    }
}

fn scheduling(provider_id: &str, scheduling: Scheduling) -> EventKind {
    EventKind::ProviderScheduling {
        provider_id: provider_id.to_owned(),
        scheduling,
    }
}

#[test]
fn a_cordoned_provider_gets_no_new_allocations_and_keeps_its_own() {
    let mut t = Table::with_providers(vec![provider("node_1", cores("", 2)), provider("node_2", cores("", 2))]);
    let held = request(1, &[("cpu_cores", 1)]);
    t.allocate(&held);
    assert_eq!("node_1", t.record(held.request_id).placement.unwrap().provider_id);

    // --- cordon node_1: one event, the answer names the new scheduling
    let expected = t.expect(vec![scheduling("node_1", Scheduling::Cordoned)]);
    let applied = t.apply(cordon("node_1", true));
    assert_eq!(
        Ok(CommandResponse::Scheduling {
            provider_id: "node_1".into(),
            scheduling: Scheduling::Cordoned
        }),
        applied.result
    );
    assert_eq!(expected, applied.events);
    assert_eq!(RequestState::Monitoring, t.record(held.request_id).state);

    // --- best fit would pick node_1 (one core free); the cordon sends it to node_2
    let next = request(2, &[("cpu_cores", 1)]);
    let expected = t.expect(vec![
        core("node_2", "cpu_1", Allocated),
        granted(&next, "node_2", vec![grant("cpu_1", "cpu_cores", 1)]),
    ]);
    assert_eq!(expected, t.allocate(&next).events);

    // --- cordoning again changes nothing and says nothing
    let applied = t.apply(cordon("node_1", true));
    assert!(applied.result.is_ok());
    assert_eq!(Vec::<qm_state_machine::Event>::new(), applied.events);
}

#[test]
fn uncordoning_places_what_waited_for_the_provider() {
    let mut t = Table::with_providers(vec![provider("node_1", cores("", 2))]);
    t.apply(cordon("node_1", true));

    // --- nothing is open: the request waits
    let waiting = request(1, &[("cpu_cores", 2)]);
    assert_eq!(RequestState::Queued, t.allocate_record(&waiting).state);

    // --- uncordon: the event, then the queue is examined and the request placed
    let expected = t.expect(vec![
        scheduling("node_1", Scheduling::Open),
        core("node_1", "cpu_1", Allocated),
        core("node_1", "cpu_2", Allocated),
        granted(
            &waiting,
            "node_1",
            vec![grant("cpu_1", "cpu_cores", 1), grant("cpu_2", "cpu_cores", 1)],
        ),
    ]);
    assert_eq!(expected, t.apply(cordon("node_1", false)).events);
    assert_eq!(RequestState::Monitoring, t.record(waiting.request_id).state);
}

#[test]
fn a_cordon_survives_reregistration_failure_and_recovery_and_snapshots() {
    let mut t = Table::with_providers(vec![provider("node_1", cores("", 2))]);
    t.apply(cordon("node_1", true));

    // --- registering again (an agent restarting) keeps the operator's cordon
    t.register(provider("node_1", cores("", 3)));
    t.apply(Command::ProviderFailed {
        provider_id: "node_1".into(),
    });
    t.apply(Command::ProviderRecovered {
        provider_id: "node_1".into(),
    });
    assert_eq!(Scheduling::Cordoned, t.table.provider("node_1").unwrap().scheduling);
    assert_eq!(RequestState::Queued, t.allocate_record(&request(1, &[("cpu_cores", 1)])).state);

    // --- and a snapshot restores it
    let restored = qm_state_machine::AllocationTable::from_snapshot_bytes(&t.table.to_snapshot_bytes()).unwrap();
    assert_eq!(t.table, restored);
    assert_eq!(Scheduling::Cordoned, restored.provider("node_1").unwrap().scheduling);
}

#[test]
fn cordoning_an_unknown_provider_is_refused_and_changes_nothing() {
    let mut t = Table::with_providers(vec![provider("node_1", cores("", 1))]);
    let applied = t.apply(cordon("node_9", true));
    assert_eq!(
        Err(CommandError::UnknownProvider {
            provider_id: "node_9".into()
        }),
        applied.result
    );
}
