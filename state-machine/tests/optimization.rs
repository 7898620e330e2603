//! Optimization: live moves make-before-break, the plan and its rules, the
//! triggers, and every way a move ends.

mod common;

use common::*;
use qm_state_machine::command::PlannedMove;
use qm_state_machine::record::allocation_id_for;
use qm_state_machine::ResourceState::{Allocated, Available};
use qm_state_machine::{AllocationRequest, Command, CommandResponse, EventKind, PlacementPolicy, RequestState, TableConfig};

fn movable(n: u128, cores: u64) -> AllocationRequest {
    AllocationRequest {
        placement: PlacementPolicy::Spread,
        ..request(n, &[("cpu_cores", cores)])
    }
}

fn agent(registration: qm_state_machine::ProviderRegistration) -> qm_state_machine::ProviderRegistration {
    qm_state_machine::ProviderRegistration {
        confirms_allocations: true,
        ..registration
    }
}

fn moving(request: &AllocationRequest, from: &str, to: &str, grants: Vec<qm_state_machine::UnitGrant>) -> EventKind {
    EventKind::AllocationMoving {
        request_id: request.request_id,
        allocation_id: allocation_id_for(request.request_id),
        namespace: request.namespace.to_string(),
        from_provider: from.into(),
        to_provider: to.into(),
        grants,
        reason: "optimization".into(),
    }
}

fn target_ready(request: &AllocationRequest, from: &str, to: &str) -> EventKind {
    EventKind::MoveTargetReady {
        request_id: request.request_id,
        allocation_id: allocation_id_for(request.request_id),
        namespace: request.namespace.to_string(),
        from_provider: from.into(),
        to_provider: to.into(),
    }
}

fn planned(request: &AllocationRequest, from: &str, to: &str, grants: Vec<qm_state_machine::UnitGrant>) -> PlannedMove {
    PlannedMove {
        request_id: request.request_id,
        allocation_id: allocation_id_for(request.request_id),
        namespace: request.namespace.to_string(),
        from_provider: from.into(),
        to_provider: to.into(),
        grants,
    }
}

fn needed(trigger: &str, moves: u64) -> EventKind {
    EventKind::OptimizationNeeded {
        trigger: trigger.into(),
        moves,
    }
}

/// The protocol's `optimization_complete`: no move is under way any more.
fn complete(completed_total: u64, rolled_back_total: u64) -> EventKind {
    EventKind::OptimizationComplete {
        completed_total,
        rolled_back_total,
    }
}

/// Two providers of two cores, one movable 1-core allocation on each (spread).
fn two_halves(with_agents: bool) -> (Table, AllocationRequest, AllocationRequest) {
    let wrap = |registration| if with_agents { agent(registration) } else { registration };
    let mut t = Table::with_providers(vec![
        wrap(provider("node_1", cores("a", 2))),
        wrap(provider("node_2", cores("b", 2))),
    ]);
    let (first, second) = (movable(1, 1), movable(2, 1));
    for (request, on) in [(&first, "node_1"), (&second, "node_2")] {
        let record = record_of(t.apply(Command::AllocateMovable(request.clone())));
        assert_eq!(on, record.placement.clone().unwrap().provider_id);
        if with_agents {
            t.apply(Command::ConfirmAllocation {
                allocation_id: record.allocation_id(),
                provider_id: on.into(),
            });
        }
    }
    (t, first, second)
}

#[test]
fn a_plan_packs_the_less_loaded_provider_onto_the_more_loaded_one() {
    let (mut t, first, _) = two_halves(false);

    // --- no agents: reserve the target, release the source, done, in one apply
    let expected = t.expect(vec![
        core("node_2", "bcpu_2", Allocated),
        moving(&first, "node_1", "node_2", vec![grant("bcpu_2", "cpu_cores", 1)]),
        target_ready(&first, "node_1", "node_2"),
        core("node_1", "acpu_1", Available),
        moved(&first, "node_1", "node_2", vec![grant("bcpu_2", "cpu_cores", 1)], "optimization"),
        needed("operator", 1),
        complete(1, 0),
    ]);
    let applied = t.apply(Command::Optimize);
    assert_eq!(expected, applied.events);
    assert_eq!(
        Ok(CommandResponse::Plan(vec![planned(
            &first,
            "node_1",
            "node_2",
            vec![grant("bcpu_2", "cpu_cores", 1)]
        )])),
        applied.result
    );
    let record = t.record(first.request_id);
    assert_eq!(
        (RequestState::Monitoring, "node_2"),
        (record.state, record.placement.unwrap().provider_id.as_str())
    );
    assert_eq!(1, t.table.move_counts().completed);

    // --- packed: nothing strictly improves the measure any more (node_2 to
    // an empty node_1 would undo it), so the next plan is empty
    let applied = t.apply(Command::Optimize);
    assert_eq!(Ok(CommandResponse::Plan(vec![])), applied.result);
    assert_eq!(
        t.expect(vec![needed("operator", 0)]).last().map(|e| &e.kind),
        applied.events.last().map(|e| &e.kind)
    );
}

#[test]
fn a_move_waits_for_the_target_then_the_source_agent() {
    let (mut t, first, _) = two_halves(true);
    let allocation_id = allocation_id_for(first.request_id);

    // --- the plan reserves node_2's core as well: both held, state optimization
    t.apply(Command::Optimize);
    let record = t.record(first.request_id);
    assert_eq!(RequestState::Optimization, record.state);
    assert_eq!("node_1", record.placement.as_ref().unwrap().provider_id);
    assert_eq!(0, t.table.provider("node_2").unwrap().free_of("cpu_cores"));
    assert_eq!(1, t.table.provider("node_1").unwrap().free_of("cpu_cores"));

    // --- node_2's agent confirms: node_1's core is let go, the record points at node_2
    let expected = t.expect(vec![
        EventKind::AllocationConfirmed {
            allocation_id,
            namespace: first.namespace.to_string(),
            provider_id: "node_2".into(),
        },
        target_ready(&first, "node_1", "node_2"),
        core("node_1", "acpu_1", Available),
    ]);
    let applied = t.apply(Command::ConfirmAllocation {
        allocation_id,
        provider_id: "node_2".into(),
    });
    assert_eq!(expected, applied.events);
    let record = t.record(first.request_id);
    assert_eq!(
        (RequestState::Optimization, "node_2"),
        (record.state, record.placement.unwrap().provider_id.as_str())
    );

    // --- node_1's agent confirms the release: allocation_moved, monitoring
    let expected = t.expect(vec![
        EventKind::DeallocationConfirmed {
            allocation_id,
            namespace: first.namespace.to_string(),
            provider_id: "node_1".into(),
        },
        moved(&first, "node_1", "node_2", vec![grant("bcpu_2", "cpu_cores", 1)], "optimization"),
        complete(1, 0),
    ]);
    let applied = t.apply(Command::ConfirmDeallocation {
        allocation_id,
        provider_id: "node_1".into(),
    });
    assert_eq!(expected, applied.events);
    assert_eq!(RequestState::Monitoring, t.record(first.request_id).state);
}

#[test]
fn a_target_that_does_not_confirm_in_time_is_rolled_back() {
    let (mut t, first, _) = two_halves(true);
    t.apply(Command::Optimize);
    let timeout = TableConfig::default().move_confirm_timeout_ms;

    // --- a tick before the deadline changes nothing
    let applied = t.tick_at(T0 + timeout - 1);
    assert!(applied
        .events
        .iter()
        .all(|event| !matches!(event.kind, EventKind::OptimizationFailed { .. })));

    // --- at the deadline: the target's core is let go, the allocation stays on node_1
    t.now_ms = T0 + timeout;
    let expected = t.expect(vec![
        core("node_2", "bcpu_2", Available),
        EventKind::OptimizationFailed {
            request_id: first.request_id,
            allocation_id: allocation_id_for(first.request_id),
            namespace: first.namespace.to_string(),
            from_provider: "node_1".into(),
            to_provider: "node_2".into(),
            reason: format!("target_unconfirmed: node_2 did not confirm within {timeout} ms"),
        },
        complete(0, 1),
    ]);
    assert_eq!(expected, t.apply(Command::Tick).events);
    let record = t.record(first.request_id);
    assert_eq!(
        (RequestState::Monitoring, "node_1"),
        (record.state, record.placement.unwrap().provider_id.as_str())
    );
    assert_eq!(1, t.table.move_counts().rolled_back);

    // --- the cooldown keeps it where it is: the next plan moves the other
    // allocation to node_1 instead of trying node_2 again
    let (_, second) = (first.clone(), movable(2, 1));
    assert_eq!(
        Ok(CommandResponse::Plan(vec![planned(
            &second,
            "node_2",
            "node_1",
            vec![grant("acpu_2", "cpu_cores", 1)]
        )])),
        t.apply(Command::Optimize).result
    );
}

#[test]
fn a_target_failing_mid_move_rolls_the_move_back_through_the_failure_path() {
    let (mut t, first, _) = two_halves(true);
    t.apply(Command::Optimize);

    let applied = t.apply(Command::ProviderFailed {
        provider_id: "node_2".into(),
    });
    let failed: Vec<&EventKind> = applied
        .events
        .iter()
        .map(|event| &event.kind)
        .filter(|kind| matches!(kind, EventKind::OptimizationFailed { .. }))
        .collect();
    assert_eq!(1, failed.len());
    assert!(matches!(failed[0], EventKind::OptimizationFailed { reason, .. } if reason == "provider_failed: node_2"));
    let record = t.record(first.request_id);
    assert_eq!(
        (RequestState::Monitoring, "node_1"),
        (record.state, record.placement.unwrap().provider_id.as_str())
    );
    assert_eq!(0, t.table.moves_in_flight());
}

#[test]
fn pinned_allocations_never_move() {
    let mut t = Table::with_providers(vec![provider("node_1", cores("a", 2)), provider("node_2", cores("b", 2))]);
    for n in 1..=2 {
        t.allocate(&movable(n, 1));
    }
    assert_eq!(Ok(CommandResponse::Plan(vec![])), t.apply(Command::Optimize).result);
}

#[test]
fn a_stranded_request_triggers_a_plan_on_a_tick_and_is_placed() {
    let (mut t, first, _) = two_halves(false);

    // --- two cores free in all, but one per provider: the 2-core request waits
    let big = request(3, &[("cpu_cores", 2)]);
    assert_eq!(RequestState::Queued, t.allocate_record(&big).state);
    assert_eq!(Some(t.table.clock_ms()), t.table.next_due_ms());

    // --- the tick sees it stranded, moves one allocation, and places it
    let applied = t.tick_at(T0 + 1);
    let kinds = kinds(&applied.events);
    assert!(kinds.contains(&needed("stranded_request", 1)), "{kinds:?}");
    assert!(kinds.contains(&moved(
        &first,
        "node_1",
        "node_2",
        vec![grant("bcpu_2", "cpu_cores", 1)],
        "optimization"
    )));
    let placed = t.record(big.request_id);
    assert_eq!(
        (RequestState::Monitoring, "node_1"),
        (placed.state, placed.placement.unwrap().provider_id.as_str())
    );

    // --- the plan cooldown: no plan on the next tick even with a stranded request
    assert!(t
        .table
        .next_due_ms()
        .is_none_or(|due| due >= T0 + 1 + TableConfig::default().plan_cooldown_ms));
}

#[test]
fn the_dry_run_shows_the_plan_the_command_begins_and_changes_nothing() {
    let (mut t, first, _) = two_halves(true);
    let before = t.table.to_snapshot_bytes();
    let preview = t.table.optimization_plan_preview();
    assert_eq!(before, t.table.to_snapshot_bytes());
    assert_eq!(
        vec![planned(&first, "node_1", "node_2", vec![grant("bcpu_2", "cpu_cores", 1)])],
        preview
    );
    assert_eq!(Ok(CommandResponse::Plan(preview)), t.apply(Command::Optimize).result);
}

#[test]
fn a_cordoned_provider_is_never_a_target() {
    let (mut t, _, _) = two_halves(false);
    t.apply(Command::CordonProvider {
        provider_id: "node_2".into(),
        cordon: true,
    });
    // node_1's allocation cannot go to node_2; node_2's could go to node_1
    // only if that raised the measure, and with equal loads it does.
    let applied = t.apply(Command::Optimize);
    let Ok(CommandResponse::Plan(plan)) = applied.result else {
        panic!("{:?}", applied.result)
    };
    assert!(plan.iter().all(|planned| planned.to_provider != "node_2"), "{plan:?}");
    assert_eq!(1, plan.len());
}

#[test]
fn fragmentation_is_one_minus_the_largest_free_share() {
    let (t, _, _) = two_halves(false);
    // One free core on each provider: 1 − 1/2.
    assert_eq!(Some(&500), t.table.fragmentation_permille().get("cpu_cores"));
}

#[test]
fn a_drain_moves_movable_allocations_away_and_says_what_cannot_move() {
    let mut t = Table::with_providers(vec![provider("node_1", cores("a", 2)), provider("node_2", cores("b", 2))]);
    let mover = movable(1, 1);
    let pinned = AllocationRequest {
        placement: PlacementPolicy::Spread,
        ..request(2, &[("cpu_cores", 1)])
    };
    record_of(t.apply(Command::AllocateMovable(mover.clone())));
    t.allocate(&pinned);
    // Spread: the movable one on node_1, the pinned one (not movable) on node_2.
    assert_eq!("node_1", t.record(mover.request_id).placement.unwrap().provider_id);
    let on_node_1_pinned = t.record(pinned.request_id).placement.unwrap().provider_id == "node_1";

    // --- drain node_1: the movable allocation moves to node_2 at once (no agents)
    let applied = t.apply(Command::DrainProvider {
        provider_id: "node_1".into(),
        deadline_after_ms: 600_000,
    });
    let Ok(CommandResponse::Drain {
        cannot_move, deadline_ms, ..
    }) = &applied.result
    else {
        panic!("{:?}", applied.result)
    };
    assert_eq!(T0 + 600_000, *deadline_ms);
    assert!(kinds(&applied.events).contains(&moved(&mover, "node_1", "node_2", vec![grant("bcpu_2", "cpu_cores", 1)], "drain")));
    assert_eq!("node_2", t.record(mover.request_id).placement.unwrap().provider_id);
    assert_eq!(usize::from(on_node_1_pinned), cannot_move.len(), "{cannot_move:?}");
    assert_eq!(
        Some(qm_state_machine::Scheduling::Draining { deadline_ms: T0 + 600_000 }),
        t.table.provider("node_1").map(|p| p.scheduling)
    );
}

#[test]
fn a_drain_on_a_full_cluster_answers_what_cannot_move_and_the_deadline_moves_the_rest() {
    let mut t = Table::with_providers(vec![
        agent(provider("node_1", cores("a", 1))),
        agent(provider("node_2", cores("b", 1))),
    ]);
    let (first, second) = (movable(1, 1), movable(2, 1));
    for request in [&first, &second] {
        let record = record_of(t.apply(Command::AllocateMovable(request.clone())));
        let provider_id = record.placement.clone().unwrap().provider_id;
        t.apply(Command::ConfirmAllocation {
            allocation_id: record.allocation_id(),
            provider_id: provider_id.to_string(),
        });
    }

    // --- nowhere to go: the answer names the allocation and why, at once
    let applied = t.apply(Command::DrainProvider {
        provider_id: "node_1".into(),
        deadline_after_ms: 60_000,
    });
    let Ok(CommandResponse::Drain { moving, cannot_move, .. }) = applied.result else {
        panic!("{:?}", applied.result)
    };
    assert!(moving.is_empty());
    assert_eq!(
        vec![qm_state_machine::command::Unmovable {
            allocation_id: allocation_id_for(first.request_id),
            reason: "no_room: no other open provider fits it now".into(),
        }],
        cannot_move
    );
    assert_eq!(Some(T0 + 60_000), t.table.next_due_ms());

    // --- at the deadline the rest is treated as the provider leaving: queued (nowhere fits), node_1 cordoned
    let applied = t.tick_at(T0 + 60_000);
    assert_eq!(
        RequestState::Queued,
        t.record(first.request_id).state,
        "{:?}",
        kinds(&applied.events)
    );
    assert_eq!(
        Some(qm_state_machine::Scheduling::Cordoned),
        t.table.provider("node_1").map(|p| p.scheduling)
    );
}
