use qm_state_machine::{event_to_json, Event, EventKind};
use serde_json::Value;

use super::*;

const US: &str = "agent-a";
const OTHER: &str = "agent-b";

fn id(n: u128) -> Uuid {
    Uuid::from_u128(n)
}

fn cpu(n: u32) -> UnitGrant {
    UnitGrant {
        resource_id: format!("cpu_{n}").into(),
        kind: "cpu_cores".to_owned().into(),
        amount: 1,
    }
}

/// The event's JSON exactly as the server sends it.
fn json(kind: EventKind) -> Value {
    event_to_json(&Event::new(7, 1_000, kind))
}

fn granted(allocation: u128, provider: &str) -> Value {
    json(EventKind::AllocationGranted {
        request_id: id(allocation + 100),
        allocation_id: id(allocation),
        requester_id: "agent_123".to_owned(),
        namespace: "default".to_owned(),
        provider_id: provider.to_owned(),
        grants: vec![cpu(0)],
    })
}

fn moved(allocation: u128, from: &str, to: &str) -> Value {
    json(EventKind::AllocationMoved {
        request_id: id(allocation + 100),
        allocation_id: id(allocation),
        namespace: "default".to_owned(),
        from_provider: from.to_owned(),
        to_provider: to.to_owned(),
        grants: vec![cpu(1)],
        reason: "provider_failed".to_owned(),
    })
}

fn released(allocation: u128) -> Value {
    json(EventKind::AllocationReleased {
        request_id: id(allocation + 100),
        allocation_id: id(allocation),
        namespace: "default".to_owned(),
        provider_id: US.to_owned(),
    })
}

fn reply(allocation: u128, state: api::RequestState) -> api::AllocationReply {
    api::AllocationReply {
        request_id: id(allocation + 100).to_string(),
        allocation_id: id(allocation).to_string(),
        state: state as i32,
        provider_id: US.to_owned(),
        grants: vec![api::UnitGrant {
            resource_id: "cpu_0".to_owned(),
            kind: "cpu_cores".to_owned(),
            amount: 1,
        }],
        ..Default::default()
    }
}

#[test]
fn a_grant_on_our_units_is_held_and_owes_a_confirmation_until_confirmed() {
    let mut ledger = Ledger::new(US);

    let notices = ledger.apply_event(&granted(1, US));

    assert_eq!(
        vec![Notice::Placed {
            allocation_id: id(1),
            request_id: Some(id(101)),
            requester_id: Some("agent_123".to_owned()),
            namespace: "default".to_owned(),
            grants: vec![cpu(0)],
            moved_from: None,
        }],
        notices
    );
    assert_eq!(vec![(id(1), Confirmation::Allocation)], ledger.owed());
    assert_eq!(BTreeMap::from([("cpu_0".to_owned(), 1)]), ledger.held_units());

    // --- the confirm call answers, then the event of it arrives
    assert_eq!(
        Some(Notice::Confirmed { allocation_id: id(1) }),
        ledger.confirmed(id(1), Confirmation::Allocation)
    );
    let echo = ledger.apply_event(&json(EventKind::AllocationConfirmed {
        allocation_id: id(1),
        namespace: "default".to_owned(),
        provider_id: US.to_owned(),
    }));

    assert_eq!(Vec::<Notice>::new(), echo, "confirmed once, told once");
    assert!(ledger.owed().is_empty());
    assert!(ledger.holdings()[&id(1)].confirmed);
}

#[test]
fn the_same_grant_twice_and_other_providers_grants_change_nothing() {
    let mut ledger = Ledger::new(US);
    ledger.apply_event(&granted(1, US));

    assert!(ledger.apply_event(&granted(1, US)).is_empty());
    assert!(ledger.apply_event(&granted(2, OTHER)).is_empty());
    assert_eq!(1, ledger.holdings().len());
}

#[test]
fn a_release_owes_a_release_confirmation_and_drops_the_holding() {
    let mut ledger = Ledger::new(US);
    ledger.apply_event(&granted(1, US));

    let notices = ledger.apply_event(&released(1));

    assert_eq!(vec![Notice::Released { allocation_id: id(1) }], notices);
    assert_eq!(
        vec![(id(1), Confirmation::Deallocation)],
        ledger.owed(),
        "replaces the allocation confirmation"
    );
    assert!(ledger.held_units().is_empty());

    let event = json(EventKind::DeallocationConfirmed {
        allocation_id: id(1),
        namespace: "default".to_owned(),
        provider_id: US.to_owned(),
    });
    assert_eq!(vec![Notice::ReleaseConfirmed { allocation_id: id(1) }], ledger.apply_event(&event));
    assert!(ledger.apply_event(&event).is_empty());
    assert_eq!(None, ledger.confirmed(id(1), Confirmation::Deallocation));
}

#[test]
fn moves_follow_the_allocation_between_providers() {
    let mut ours = Ledger::new(US);
    let mut theirs = Ledger::new(OTHER);
    ours.apply_event(&granted(1, US));

    let away = ours.apply_event(&moved(1, US, OTHER));
    let here = theirs.apply_event(&moved(1, US, OTHER));

    assert_eq!(
        vec![Notice::MovedAway {
            allocation_id: id(1),
            to_provider: OTHER.to_owned(),
        }],
        away
    );
    assert!(ours.owed().is_empty() && ours.holdings().is_empty());
    assert!(matches!(&here[..], [Notice::Placed { moved_from: Some(from), .. }] if from == US));
    assert_eq!(vec![(id(1), Confirmation::Allocation)], theirs.owed());
}

#[test]
fn our_provider_failing_and_recovering_is_told() {
    let mut ledger = Ledger::new(US);

    let failed = ledger.apply_event(&json(EventKind::ProviderFailed {
        provider_id: US.to_owned(),
    }));
    let recovered = ledger.apply_event(&json(EventKind::ProviderRecovered {
        provider_id: US.to_owned(),
    }));
    let other = ledger.apply_event(&json(EventKind::ProviderFailed {
        provider_id: OTHER.to_owned(),
    }));

    assert_eq!(
        vec![Notice::ProviderFailed {
            provider_id: US.to_owned()
        }],
        failed
    );
    assert_eq!(
        vec![Notice::ProviderRecovered {
            provider_id: US.to_owned()
        }],
        recovered
    );
    assert!(other.is_empty());
}

#[test]
fn a_refusal_stops_the_confirmation_and_a_refused_probe_is_silent() {
    let mut ledger = Ledger::new(US);
    ledger.apply_event(&granted(1, US));
    ledger.adopt(&[reply(1, api::RequestState::Allocation)], &[id(9)]);

    let refused = ledger.refused(id(1), Confirmation::Allocation, "placed on agent-b".to_owned());
    let probe = ledger.refused(id(9), Confirmation::Deallocation, "placed on agent-b".to_owned());

    assert!(matches!(refused, Some(Notice::Refused { allocation_id, .. }) if allocation_id == id(1)));
    assert_eq!(None, probe);
    assert!(ledger.owed().is_empty());
}

#[test]
fn adopting_the_tables_view_adds_what_is_new_and_forgets_what_ended() {
    let mut ledger = Ledger::new(US);
    ledger.apply_event(&granted(1, US));

    let notices = ledger.adopt(
        &[reply(2, api::RequestState::Monitoring), reply(3, api::RequestState::Allocation)],
        &[id(4)],
    );

    assert!(matches!(&notices[0], Notice::Placed { allocation_id, .. } if *allocation_id == id(2)));
    assert!(matches!(&notices[1], Notice::Placed { allocation_id, .. } if *allocation_id == id(3)));
    assert_eq!(Notice::Gone { allocation_id: id(1) }, notices[2]);
    // Releases first (a preemptor's grant waits for them), then grants.
    assert_eq!(
        vec![(id(4), Confirmation::Deallocation), (id(3), Confirmation::Allocation)],
        ledger.owed()
    );
    assert!(ledger.holdings()[&id(2)].confirmed);
    assert!(
        ledger
            .adopt(
                &[reply(2, api::RequestState::Monitoring), reply(3, api::RequestState::Allocation)],
                &[id(4)]
            )
            .is_empty(),
        "the same view twice is no news"
    );
}

#[test]
fn holds_sums_the_grants_per_kind() {
    let mut ledger = Ledger::new(US);
    ledger.apply_event(&granted(1, US));
    ledger.apply_event(&moved(2, OTHER, US));
    ledger.confirmed(id(1), Confirmation::Allocation);
    let capacity = BTreeMap::from([("cpu_cores".to_owned(), 4)]);

    assert_eq!(
        Notice::Holds {
            allocations: 2,
            unconfirmed: 1,
            used: BTreeMap::from([("cpu_cores".to_owned(), 2)]),
            capacity,
        },
        ledger.holds(&BTreeMap::from([("cpu_cores".to_owned(), 4)]))
    );
}

#[test]
fn a_preempted_allocation_is_let_go_and_its_release_is_confirmed_before_the_preemptors_grant() {
    let mut ledger = Ledger::new(US);
    ledger.apply_event(&granted(9, US));
    ledger.confirmed(id(9), Confirmation::Allocation);

    // --- the table preempts 9 for 1 (a lower allocation id): the release is owed first
    let preempted = json(EventKind::AllocationPreempted {
        request_id: id(109),
        allocation_id: id(9),
        namespace: "default".to_owned(),
        provider_id: US.to_owned(),
        priority: 0,
        preemptor_request_id: id(101),
        preemptor_namespace: "default".to_owned(),
        preemptor_priority: 10,
        requeued: true,
    });
    assert_eq!(vec![Notice::Released { allocation_id: id(9) }], ledger.apply_event(&preempted));
    ledger.apply_event(&granted(1, US));
    assert_eq!(
        vec![(id(9), Confirmation::Deallocation), (id(1), Confirmation::Allocation)],
        ledger.owed()
    );
    assert!(!ledger.holdings().contains_key(&id(9)));
}

#[test]
fn a_live_move_is_confirmed_by_the_target_then_released_by_the_source() {
    let mut source = Ledger::new(US);
    let mut target = Ledger::new(OTHER);
    source.apply_event(&granted(1, US));
    source.confirmed(id(1), Confirmation::Allocation);
    let moving = json(EventKind::AllocationMoving {
        request_id: id(101),
        allocation_id: id(1),
        namespace: "default".to_owned(),
        from_provider: US.to_owned(),
        to_provider: OTHER.to_owned(),
        grants: vec![cpu(2)],
        reason: "optimization".to_owned(),
    });

    // --- the target holds it and owes its confirmation; the source keeps it meanwhile
    assert!(source.apply_event(&moving).is_empty());
    assert!(matches!(&target.apply_event(&moving)[..], [Notice::Placed { moved_from: Some(from), .. }] if from == US));
    assert_eq!(vec![(id(1), Confirmation::Allocation)], target.owed());
    assert_eq!(1, source.holdings().len());

    // --- the target holding it tells the source to let go and confirm the release
    let ready = json(EventKind::MoveTargetReady {
        request_id: id(101),
        allocation_id: id(1),
        namespace: "default".to_owned(),
        from_provider: US.to_owned(),
        to_provider: OTHER.to_owned(),
    });
    assert!(target.apply_event(&ready).is_empty());
    assert_eq!(vec![Notice::Released { allocation_id: id(1) }], source.apply_event(&ready));
    assert_eq!(vec![(id(1), Confirmation::Deallocation)], source.owed());
    assert!(source.holdings().is_empty());

    // --- a rolled-back move leaves the target with nothing held or owed
    let mut rolled_back = Ledger::new(OTHER);
    rolled_back.apply_event(&moving);
    rolled_back.apply_event(&json(EventKind::OptimizationFailed {
        request_id: id(101),
        allocation_id: id(1),
        namespace: "default".to_owned(),
        from_provider: US.to_owned(),
        to_provider: OTHER.to_owned(),
        reason: "target_unconfirmed".to_owned(),
    }));
    assert!(rolled_back.owed().is_empty() && rolled_back.holdings().is_empty());
}
