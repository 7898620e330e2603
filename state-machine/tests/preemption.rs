//! Priority preemption: off by default; a request allowed to preempt takes
//! the fewest allocations of strictly lower priority it needs on one
//! provider (lowest priority, then fewest units, then newest), never from a
//! protected namespace, never past its own quota; victims are requeued or
//! released as they asked, and the preemptor's grant is confirmed only once
//! the victims' agent confirmed letting go.

mod common;

use std::collections::BTreeMap;

use common::*;
use qm_state_machine::record::allocation_id_for;
use qm_state_machine::ResourceState::{Allocated, Available};
use qm_state_machine::{
    AllocateOptions, AllocationRequest, Command, CommandError, EventKind, OnPreemption, PreemptionSetting, Preview, PreviewOutcome,
    ProviderRegistration, RequestState, Victim,
};

fn at(priority: i64, namespace: &str, request: AllocationRequest) -> AllocationRequest {
    AllocationRequest {
        priority,
        namespace: namespace.to_owned().into(),
        ..request
    }
}

fn cluster_preemption(t: &mut Table, setting: PreemptionSetting) {
    let applied = t.apply(Command::SetPreemption {
        namespace: None,
        setting: Some(setting),
        preemptible: true,
    });
    assert!(applied.result.is_ok(), "{:?}", applied.result);
}

fn preempted(victim: &AllocationRequest, preemptor: &AllocationRequest, provider_id: &str, requeued: bool) -> EventKind {
    EventKind::AllocationPreempted {
        request_id: victim.request_id,
        allocation_id: allocation_id_for(victim.request_id),
        namespace: victim.namespace.to_string(),
        provider_id: provider_id.to_owned(),
        priority: victim.priority,
        preemptor_request_id: preemptor.request_id,
        preemptor_namespace: preemptor.namespace.to_string(),
        preemptor_priority: preemptor.priority,
        requeued,
    }
}

/// A full node_1 of 4 cores: `a` (priority 0, cpu_1), `b` (priority 1,
/// cpu_2 and cpu_3), `c` (priority 0, cpu_4, newer than `a`).
fn full_node(registration: ProviderRegistration) -> (Table, [AllocationRequest; 3]) {
    let mut t = Table::with_providers(vec![registration]);
    let a = at(0, "batch", request(1, &[("cpu_cores", 1)]));
    let b = at(1, "batch", request(2, &[("cpu_cores", 2)]));
    let c = at(0, "batch", request(3, &[("cpu_cores", 1)]));
    for victim in [&a, &b, &c] {
        assert!(t.allocate_record(victim).state.is_active());
    }
    (t, [a, b, c])
}

#[test]
fn preemption_is_off_by_default() {
    let (mut t, _) = full_node(provider("node_1", cores("", 4)));
    let urgent = at(100, "ops", request(9, &[("cpu_cores", 1)]));
    let expected = t.expect(vec![queued(&urgent, INSUFFICIENT)]);
    assert_eq!(expected, t.allocate(&urgent).events);
}

#[test]
fn a_preemption_that_needs_two_victims_takes_exactly_those_in_order() {
    let (mut t, [a, _b, c]) = full_node(provider("node_1", cores("", 4)));
    cluster_preemption(&mut t, PreemptionSetting::FromPriority(10));

    // --- two cores wanted: c (priority 0, newest) then a (priority 0); b (priority 1) is spared
    let urgent = at(10, "ops", request(9, &[("cpu_cores", 2)]));
    let reason = format!("preempted: by request {}", urgent.request_id);
    let expected = t.expect(vec![
        core("node_1", "cpu_4", Available),
        preempted(&c, &urgent, "node_1", true),
        queued(&c, &reason),
        core("node_1", "cpu_1", Available),
        preempted(&a, &urgent, "node_1", true),
        queued(&a, &reason),
        core("node_1", "cpu_1", Allocated),
        core("node_1", "cpu_4", Allocated),
        granted(
            &urgent,
            "node_1",
            vec![grant("cpu_1", "cpu_cores", 1), grant("cpu_4", "cpu_cores", 1)],
        ),
    ]);
    assert_eq!(expected, t.allocate(&urgent).events);
    assert_eq!(RequestState::Monitoring, t.record(id(2)).state);
    // Requeued in their old order: a arrived before c.
    assert_eq!(vec![id(1), id(3)], t.table.queue().collect::<Vec<_>>());

    // --- the preemptor lets go: the victims come back
    t.release(urgent.request_id);
    assert_eq!(RequestState::Monitoring, t.record(id(1)).state);
    assert_eq!(RequestState::Monitoring, t.record(id(3)).state);
}

#[test]
fn no_more_victims_than_needed() {
    // a (1 core) would be first in order but is not enough for 2 cores
    // alone; b (2 cores) is: only b goes, not a as well.
    let mut t = Table::with_providers(vec![provider("node_1", cores("", 3))]);
    let a = at(0, "batch", request(1, &[("cpu_cores", 1)]));
    let b = at(1, "batch", request(2, &[("cpu_cores", 2)]));
    t.allocate(&a);
    t.allocate(&b);
    cluster_preemption(&mut t, PreemptionSetting::FromPriority(5));
    let urgent = at(5, "ops", request(9, &[("cpu_cores", 2)]));
    assert!(t.allocate_record(&urgent).state.is_active());
    assert_eq!(RequestState::Monitoring, t.record(id(1)).state);
    assert_eq!(RequestState::Queued, t.record(id(2)).state);
}

#[test]
fn equal_priorities_never_preempt() {
    let (mut t, _) = full_node(provider("node_1", cores("", 4)));
    cluster_preemption(&mut t, PreemptionSetting::FromPriority(0));
    // Priority 1 may preempt only the priority-0 allocations: 2 cores, not 3.
    let peer = at(1, "ops", request(9, &[("cpu_cores", 3)]));
    let expected = t.expect(vec![queued(&peer, INSUFFICIENT)]);
    assert_eq!(expected, t.allocate(&peer).events);
}

#[test]
fn a_protected_namespace_is_never_preempted() {
    let (mut t, _) = full_node(provider("node_1", cores("", 4)));
    cluster_preemption(&mut t, PreemptionSetting::FromPriority(10));
    let expected = t.expect(vec![EventKind::PreemptionSet {
        namespace: Some("batch".to_owned()),
        setting: None,
        preemptible: false,
    }]);
    let applied = t.apply(Command::SetPreemption {
        namespace: Some("batch".to_owned()),
        setting: None,
        preemptible: false,
    });
    assert_eq!(expected, applied.events);

    let urgent = at(10, "ops", request(9, &[("cpu_cores", 1)]));
    let expected = t.expect(vec![queued(&urgent, INSUFFICIENT)]);
    assert_eq!(expected, t.allocate(&urgent).events);
}

#[test]
fn a_namespace_override_turns_preemption_on_for_its_requests_only() {
    let (mut t, [_a, _b, c]) = full_node(provider("node_1", cores("", 4)));
    t.apply(Command::SetPreemption {
        namespace: Some("ops".to_owned()),
        setting: Some(PreemptionSetting::FromPriority(5)),
        preemptible: true,
    });

    // --- a request of another namespace, however urgent, does not preempt
    let other = at(50, "research", request(8, &[("cpu_cores", 1)]));
    assert_eq!(RequestState::Queued, t.allocate_record(&other).state);

    // --- one of ops at priority 5 does
    let urgent = at(5, "ops", request(9, &[("cpu_cores", 1)]));
    assert!(t.allocate_record(&urgent).state.is_active());
    assert_eq!(RequestState::Queued, t.record(c.request_id).state);
}

#[test]
fn a_preemptor_never_exceeds_its_quota() {
    let (mut t, _) = full_node(provider("node_1", cores("", 4)));
    cluster_preemption(&mut t, PreemptionSetting::FromPriority(10));
    t.apply(Command::SetQuota {
        namespace: "ops".to_owned(),
        limits: BTreeMap::from([("cpu_cores".to_owned(), 1)]),
    });
    let first = at(10, "ops", request(8, &[("cpu_cores", 1)]));
    assert!(t.allocate_record(&first).state.is_active());

    // --- its second core would pass the quota: it waits, and preempts nobody
    let second = at(10, "ops", request(9, &[("cpu_cores", 1)]));
    let reason = "quota_exceeded: namespace ops holds 1 of its 1 cpu_cores and asks for 1 more";
    let expected = t.expect(vec![queued(&second, reason)]);
    assert_eq!(expected, t.allocate(&second).events);
}

#[test]
fn a_victim_asking_to_be_released_is_released_and_the_preemptor_waits_for_its_agent() {
    let mut registration = provider("node_1", cores("", 1));
    registration.confirms_allocations = true;
    let mut t = Table::with_providers(vec![registration]);
    cluster_preemption(&mut t, PreemptionSetting::FromPriority(1));
    let victim = at(0, "batch", request(1, &[("cpu_cores", 1)]));
    t.apply(Command::AllocateWith {
        request: victim.clone(),
        on_preemption: OnPreemption::Release,
    });
    let victim_allocation = allocation_id_for(victim.request_id);
    t.apply(Command::ConfirmAllocation {
        allocation_id: victim_allocation,
        provider_id: "node_1".to_owned(),
    });

    // --- preempted: released, waiting for its agent; the preemptor is granted, unconfirmed
    let urgent = at(1, "ops", request(9, &[("cpu_cores", 1)]));
    let expected = t.expect(vec![
        core("node_1", "cpu_1", Available),
        preempted(&victim, &urgent, "node_1", false),
        core("node_1", "cpu_1", Allocated),
        granted(&urgent, "node_1", vec![grant("cpu_1", "cpu_cores", 1)]),
    ]);
    assert_eq!(expected, t.allocate(&urgent).events);
    let victim_record = t.record(victim.request_id);
    assert_eq!(
        (
            RequestState::Deallocation,
            Some(format!("preempted: by request {}", urgent.request_id))
        ),
        (victim_record.state, victim_record.reason().map(String::from))
    );
    assert_eq!(RequestState::Allocation, t.record(urgent.request_id).state);

    // --- the preemptor's confirmation comes first: refused, nothing changes
    let urgent_allocation = allocation_id_for(urgent.request_id);
    let confirm_urgent = Command::ConfirmAllocation {
        allocation_id: urgent_allocation,
        provider_id: "node_1".to_owned(),
    };
    assert_eq!(
        Err(CommandError::PreemptionUnconfirmed {
            allocation_id: urgent_allocation,
            waiting_for: vec![victim_allocation],
        }),
        t.apply(confirm_urgent.clone()).result
    );

    // --- the victim's release is confirmed, then the preemptor's grant
    t.apply(Command::ConfirmDeallocation {
        allocation_id: victim_allocation,
        provider_id: "node_1".to_owned(),
    });
    assert_eq!(RequestState::Idle, t.record(victim.request_id).state);
    assert!(t.apply(confirm_urgent).result.is_ok());
    assert_eq!(RequestState::Monitoring, t.record(urgent.request_id).state);
}

#[test]
fn a_requeued_victims_release_is_confirmed_by_its_old_provider() {
    let mut registration = provider("node_1", cores("", 1));
    registration.confirms_allocations = true;
    let mut t = Table::with_providers(vec![registration]);
    cluster_preemption(&mut t, PreemptionSetting::FromPriority(1));
    let victim = at(0, "batch", request(1, &[("cpu_cores", 1)]));
    t.allocate(&victim);
    let urgent = at(1, "ops", request(9, &[("cpu_cores", 1)]));
    t.allocate(&urgent);
    assert_eq!(RequestState::Queued, t.record(victim.request_id).state);

    // --- the old provider confirms the release of a request now queued
    let victim_allocation = allocation_id_for(victim.request_id);
    let expected = t.expect(vec![EventKind::DeallocationConfirmed {
        allocation_id: victim_allocation,
        namespace: "batch".to_owned(),
        provider_id: "node_1".to_owned(),
    }]);
    let applied = t.apply(Command::ConfirmDeallocation {
        allocation_id: victim_allocation,
        provider_id: "node_1".to_owned(),
    });
    assert_eq!(expected, applied.events);
    assert_eq!(RequestState::Queued, t.record(victim.request_id).state);
    assert!(t
        .apply(Command::ConfirmAllocation {
            allocation_id: allocation_id_for(urgent.request_id),
            provider_id: "node_1".to_owned(),
        })
        .result
        .is_ok());
}

#[test]
fn a_dry_run_shows_the_victims_and_changes_nothing() {
    let (mut t, [a, _b, c]) = full_node(provider("node_1", cores("", 4)));
    cluster_preemption(&mut t, PreemptionSetting::FromPriority(10));
    let urgent = at(10, "ops", request(9, &[("cpu_cores", 2)]));
    let before = t.table.to_snapshot_bytes();
    // c frees cpu_4, a frees cpu_1.
    let victim = |request: &AllocationRequest| Victim {
        request_id: request.request_id,
        allocation_id: allocation_id_for(request.request_id),
        namespace: "batch".to_owned(),
        priority: 0,
        provider_id: "node_1".to_owned(),
        units: 1,
    };
    let preview = t.table.preview(&urgent).expect("a valid request");
    assert_eq!(PreviewOutcome::Allocated, preview.outcome);
    assert_eq!(vec![victim(&c), victim(&a)], preview.victims);
    assert_eq!(
        vec![grant("cpu_1", "cpu_cores", 1), grant("cpu_4", "cpu_cores", 1)],
        preview.placement.expect("placed").grants.to_vec()
    );
    assert_eq!(before, t.table.to_snapshot_bytes());

    // --- without preemption the same request would wait
    cluster_preemption(&mut t, PreemptionSetting::Off);
    assert_eq!(
        Preview {
            outcome: PreviewOutcome::Queued,
            reason: Some(INSUFFICIENT.to_owned()),
            placement: None,
            victims: Vec::new(),
        },
        t.table.preview(&urgent).expect("a valid request")
    );
}

#[test]
fn the_provider_with_the_cheapest_victims_is_chosen_not_the_first() {
    let mut t = Table::with_providers(vec![provider("node_1", cores("", 2)), provider("node_2", cores("", 2))]);
    cluster_preemption(&mut t, PreemptionSetting::FromPriority(10));
    // node_1 (first in id order) holds priority 5 work, node_2 priority 0 and 1.
    for (n, priority, node) in [(1, 5, "node_1"), (2, 5, "node_1"), (3, 0, "node_2"), (4, 1, "node_2")] {
        let request = AllocationRequest {
            constraints: on_provider(node),
            ..at(priority, "batch", request(n, &[("cpu_cores", 1)]))
        };
        assert!(t.allocate_record(&request).state.is_active());
    }
    let urgent = at(10, "ops", request(9, &[("cpu_cores", 1)]));
    assert_eq!("node_2", t.allocate_record(&urgent).placement.expect("placed").provider_id);
    assert_eq!(RequestState::Queued, t.record(id(3)).state);
    for spared in [1, 2, 4] {
        assert_eq!(RequestState::Monitoring, t.record(id(spared)).state);
    }
}

#[test]
fn allocate_options_go_in_the_oldest_command_that_carries_them_and_reach_the_record() {
    let request = || request(1, &[("cpu_cores", 1)]);
    let options = |movable, on_preemption| AllocateOptions { movable, on_preemption };
    assert!(matches!(
        Command::allocate(request(), options(false, OnPreemption::Requeue)),
        Command::Allocate(_)
    ));
    assert!(matches!(
        Command::allocate(request(), options(true, OnPreemption::Requeue)),
        Command::AllocateMovable(_)
    ));
    assert!(matches!(
        Command::allocate(request(), options(false, OnPreemption::Release)),
        Command::AllocateWith {
            on_preemption: OnPreemption::Release,
            ..
        }
    ));
    let both = Command::allocate(request(), options(true, OnPreemption::Release));
    assert!(matches!(both, Command::AllocateWithOptions { .. }), "{both:?}");

    // --- both options on one record; the same request with other options is another request
    let mut t = Table::with_providers(vec![provider("node_1", cores("", 2))]);
    let record = record_of(t.apply(both));
    assert_eq!((true, OnPreemption::Release), (record.movable, record.on_preemption));
    assert_eq!(
        Err(CommandError::RequestIdReused {
            request_id: request().request_id
        }),
        t.apply(Command::allocate(request(), options(true, OnPreemption::Requeue))).result
    );
}

#[test]
fn a_preempted_namespace_places_what_its_quota_held_back_in_the_same_command() {
    let mut t = Table::with_providers(vec![provider("node_1", cores("", 2)), provider("node_2", cores("", 1))]);
    cluster_preemption(&mut t, PreemptionSetting::FromPriority(10));
    t.apply(Command::SetQuota {
        namespace: "batch".to_owned(),
        limits: BTreeMap::from([("cpu_cores".to_owned(), 2)]),
    });
    let victim = at(0, "batch", request(1, &[("cpu_cores", 2)]));
    t.apply(Command::AllocateWith {
        request: victim.clone(),
        on_preemption: OnPreemption::Release,
    });
    assert_eq!(
        Some("node_1".to_owned()),
        t.record(victim.request_id).placement.map(|p| p.provider_id.to_string())
    );
    // node_2's core is free, but batch holds all of its quota.
    let waiting = at(0, "batch", request(2, &[("cpu_cores", 1)]));
    assert_eq!(RequestState::Queued, t.allocate_record(&waiting).state);

    // --- the preemption gives batch its quota back: its waiting request takes node_2's core at once
    let urgent = at(10, "ops", request(9, &[("cpu_cores", 2)]));
    let events = kinds(&t.allocate(&urgent).events);
    assert!(events.contains(&preempted(&victim, &urgent, "node_1", false)), "{events:?}");
    assert!(
        events.contains(&granted(&waiting, "node_2", vec![grant("cpu_1", "cpu_cores", 1)])),
        "{events:?}"
    );
    assert_eq!(RequestState::Idle, t.record(victim.request_id).state);
    assert!(t.record(waiting.request_id).state.is_active());
}
