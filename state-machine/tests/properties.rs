//! Property tests: random sequences of register / allocate / release / fail /
//! recover / deregister / tick / renew / refresh / confirm / cordon /
//! optimize, with movable allocations whose moves are confirmed, time out
//! or meet failing providers. After every step
//! the table's invariants hold; at the end a snapshot restores an equal table
//! and a second table fed the same sequence has byte-identical snapshots.
//!
//! `PROPTEST_CASES=2000 cargo test -p qm-state-machine --test properties`
//! runs a longer search; the default stays small so the suite is quick.

use std::collections::BTreeMap;

mod common;

use common::histories::{cases, check_units, spec};
use proptest::prelude::*;
use qm_state_machine::record::allocation_id_for;
use qm_state_machine::request::DEFAULT_NAMESPACE;
use qm_state_machine::{
    AllocationRequest, AllocationTable, Applied, Command, ConstraintSet, Constraints, Event, ListFilter, PlacementPolicy,
    ProviderRegistration, ReleaseFilter, RequestState, Requirement, ResourceSpec, Sharing, StampedCommand, TableConfig,
};
use uuid::Uuid;

const T0: u64 = 1_710_481_600_000;
const PROVIDERS: u8 = 4;
/// Few enough that ids are reused: retries and `RequestIdReused` happen.
const REQUEST_IDS: u8 = 16;

/// One step of a random history. Small numbers, mapped onto commands by
/// [`Op::command`], so that failures shrink to something readable. `target`
/// picks one of the requests the table remembers (by position), so releases,
/// renewals and confirmations mostly hit something; a target of
/// [`UNKNOWN_TARGET`] or more names a request that is likely unknown.
#[derive(Clone, Debug)]
enum Op {
    Register {
        provider: u8,
        cores: u8,
        memory_gb: u8,
        gpu: bool,
        confirms: bool,
    },
    Allocate {
        request: u8,
        cores: u8,
        memory_gb: u8,
        gpus: u8,
        priority: i8,
        lease: bool,
        deadline_ms: Option<u16>,
        pin: Option<u8>,
        spread: bool,
        movable: bool,
    },
    /// The remembered request sent again, unchanged: a client's retry.
    Retry {
        target: u8,
    },
    Release {
        target: u8,
        by_allocation_id: bool,
    },
    Renew {
        target: u8,
    },
    Tick,
    Fail {
        provider: u8,
    },
    Recover {
        provider: u8,
    },
    Deregister {
        provider: u8,
    },
    RefreshLeases,
    /// A bulk release: `by` 0 the namespace, 1 a requester of it, 2 a
    /// provider; after the request `after` designates, if any.
    ReleaseMatching {
        by: u8,
        key: u8,
        after: Option<u8>,
    },
    /// From the provider the allocation is on, or (`right_provider` false) from another.
    Confirm {
        target: u8,
        right_provider: bool,
        deallocation: bool,
    },
    /// An operator's plan (`Command::Optimize`).
    Optimize,
    Drain {
        provider: u8,
        deadline_ms: u16,
    },
    Cordon {
        provider: u8,
        cordon: bool,
    },
    /// The agent of a move's target (or, `deallocation`, its source)
    /// confirms; a plain confirmation when the request is not moving.
    ConfirmMove {
        target: u8,
        deallocation: bool,
    },
}

const UNKNOWN_TARGET: u8 = 240;

fn provider_id(n: u8) -> String {
    format!("node_{n}")
}

fn request_id(n: u8) -> Uuid {
    Uuid::from_u128(n as u128 + 1)
}

/// The request `target` designates in `table`: see [`Op`].
fn target_id(table: &AllocationTable, target: u8) -> Uuid {
    let remembered = table.list(&ListFilter::default());
    match remembered.is_empty() || target >= UNKNOWN_TARGET {
        true => request_id(target),
        false => remembered[target as usize % remembered.len()].request.request_id,
    }
}

impl Op {
    /// The command this step proposes. A pure function of the op and the
    /// table, so replicas with equal tables derive equal commands.
    fn command(&self, table: &AllocationTable) -> Command {
        match *self {
            Op::Register {
                provider,
                cores,
                memory_gb,
                gpu,
                confirms,
            } => {
                let mut resources: Vec<ResourceSpec> = (0..cores).map(|n| spec(&format!("cpu_{n}"), "cpu_cores", 1, None)).collect();
                if memory_gb > 0 {
                    resources.push(spec("mem_0", "memory_gb", memory_gb as i64, None));
                }
                if gpu {
                    resources.push(spec("gpu_0", "gpu", 2, Some(Sharing::Exclusive)));
                }
                if resources.is_empty() {
                    resources.push(spec("cpu_0", "cpu_cores", 1, None));
                }
                let labels = BTreeMap::from([("parity".to_owned(), (provider % 2).to_string())]);
                Command::RegisterProvider(ProviderRegistration {
                    provider_id: provider_id(provider),
                    labels,
                    resources,
                    confirms_allocations: confirms,
                    address: None,
                    port: None,
                })
            }
            Op::Allocate {
                request,
                cores,
                memory_gb,
                gpus,
                priority,
                lease,
                deadline_ms,
                pin,
                spread,
                movable,
            } => {
                let mut requirements = Vec::new();
                for (kind, quantity) in [("cpu_cores", cores), ("gpu", gpus), ("memory_gb", memory_gb)] {
                    if quantity > 0 {
                        requirements.push(Requirement {
                            kind: kind.to_owned().into(),
                            quantity: quantity as u64,
                        });
                    }
                }
                if requirements.is_empty() {
                    requirements.push(Requirement {
                        kind: "cpu_cores".to_owned().into(),
                        quantity: 1,
                    });
                }
                let constraints = match pin {
                    None => Constraints::default(),
                    Some(provider) if provider % 2 == 0 => Constraints::new(ConstraintSet {
                        provider_id: Some(provider_id(provider)),
                        ..ConstraintSet::default()
                    }),
                    Some(provider) => Constraints::new(ConstraintSet {
                        labels: BTreeMap::from([("parity".to_owned(), (provider % 2).to_string())]),
                        ..ConstraintSet::default()
                    }),
                };
                let request = AllocationRequest {
                    request_id: request_id(request),
                    requester_id: format!("agent_{}", request % 3).into(),
                    namespace: DEFAULT_NAMESPACE.to_owned().into(),
                    requirements: requirements.into(),
                    priority: priority as i64,
                    // Relative to T0, so some deadlines are already past when the request arrives.
                    deadline_ms: deadline_ms.map(|offset| T0 + offset as u64 * 10).into(),
                    lease_ttl_ms: lease.then_some(2_000).into(),
                    constraints,
                    placement: if spread {
                        PlacementPolicy::Spread
                    } else {
                        PlacementPolicy::BestFit
                    },
                };
                match movable {
                    true => Command::AllocateMovable(request),
                    false => Command::Allocate(request),
                }
            }
            Op::Retry { target } => match table.get(target_id(table, target)) {
                Some(record) if record.movable => Command::AllocateMovable(record.request.clone()),
                Some(record) => Command::Allocate(record.request.clone()),
                None => Command::Tick,
            },
            Op::Optimize => Command::Optimize,
            Op::Drain { provider, deadline_ms } => Command::DrainProvider {
                provider_id: provider_id(provider),
                deadline_after_ms: u64::from(deadline_ms),
            },
            Op::Cordon { provider, cordon } => Command::CordonProvider {
                provider_id: provider_id(provider),
                cordon,
            },
            Op::ConfirmMove { target, deallocation } => {
                let id = target_id(table, target);
                let record = table.get(id);
                let moving = record.and_then(|record| record.moving());
                let placed_on = record.and_then(|record| record.placement.as_ref()).map(|p| p.provider_id.clone());
                let provider_id = match (moving, deallocation) {
                    (Some(moving), false) => moving.to.provider_id.clone(),
                    (Some(moving), true) => moving.from.provider_id.clone(),
                    (None, _) => placed_on.unwrap_or_else(|| provider_id(target % PROVIDERS).into()),
                };
                let allocation_id = allocation_id_for(id);
                match deallocation {
                    false => Command::ConfirmAllocation {
                        allocation_id,
                        provider_id: provider_id.to_string(),
                    },
                    true => Command::ConfirmDeallocation {
                        allocation_id,
                        provider_id: provider_id.to_string(),
                    },
                }
            }
            Op::Release { target, by_allocation_id } => {
                let id = target_id(table, target);
                Command::Release {
                    id: if by_allocation_id { allocation_id_for(id) } else { id },
                }
            }
            Op::Renew { target } => Command::RenewLease {
                id: target_id(table, target),
            },
            Op::Tick => Command::Tick,
            Op::Fail { provider } => Command::ProviderFailed {
                provider_id: provider_id(provider),
            },
            Op::Recover { provider } => Command::ProviderRecovered {
                provider_id: provider_id(provider),
            },
            Op::Deregister { provider } => Command::DeregisterProvider {
                provider_id: provider_id(provider),
            },
            Op::RefreshLeases => Command::RefreshLeases,
            Op::ReleaseMatching { by, key, after } => {
                let namespace = (by % 3 != 2).then(|| DEFAULT_NAMESPACE.to_owned());
                let filter = ReleaseFilter {
                    namespace,
                    requester_id: (by % 3 == 1).then(|| format!("agent_{}", key % 3)),
                    provider_id: (by % 3 == 2).then(|| provider_id(key % PROVIDERS)),
                };
                Command::ReleaseMatching {
                    filter,
                    after: after.map(|target| target_id(table, target)),
                }
            }
            Op::Confirm {
                target,
                right_provider,
                deallocation,
            } => {
                let id = target_id(table, target);
                let placed_on = table
                    .get(id)
                    .and_then(|record| record.placement.as_ref())
                    .map(|placement| placement.provider_id.clone());
                let provider_id = match (right_provider, placed_on) {
                    (true, Some(provider_id)) => provider_id,
                    _ => provider_id(target % PROVIDERS).into(),
                };
                let allocation_id = allocation_id_for(id);
                match deallocation {
                    false => Command::ConfirmAllocation {
                        allocation_id,
                        provider_id: provider_id.to_string(),
                    },
                    true => Command::ConfirmDeallocation {
                        allocation_id,
                        provider_id: provider_id.to_string(),
                    },
                }
            }
        }
    }
}

fn register() -> impl Strategy<Value = Op> {
    (0..PROVIDERS, 0..4u8, 0..9u8, prop::bool::weighted(0.3), prop::bool::weighted(0.3)).prop_map(
        |(provider, cores, memory_gb, gpu, confirms)| Op::Register {
            provider,
            cores,
            memory_gb,
            gpu,
            confirms,
        },
    )
}

fn allocate() -> impl Strategy<Value = Op> {
    (
        0..REQUEST_IDS,
        (0..4u8, 0..7u8, prop::bool::weighted(0.15).prop_map(u8::from)),
        -1..3i8,
        any::<bool>(),
        prop::option::weighted(0.3, 0..1000u16),
        prop::option::weighted(0.2, 0..PROVIDERS),
        (prop::bool::weighted(0.3), prop::bool::weighted(0.5)),
    )
        .prop_map(
            |(request, (cores, memory_gb, gpus), priority, lease, deadline_ms, pin, (spread, movable))| Op::Allocate {
                request,
                cores,
                memory_gb,
                gpus,
                priority,
                lease,
                deadline_ms,
                pin,
                spread,
                movable,
            },
        )
}

fn op() -> impl Strategy<Value = Op> {
    let provider = 0..PROVIDERS;
    let target = any::<u8>;
    prop_oneof![
        2 => register(),
        6 => allocate(),
        1 => target().prop_map(|target| Op::Retry { target }),
        3 => (target(), any::<bool>()).prop_map(|(target, by_allocation_id)| Op::Release { target, by_allocation_id }),
        2 => target().prop_map(|target| Op::Renew { target }),
        2 => Just(Op::Tick),
        1 => provider.clone().prop_map(|provider| Op::Fail { provider }),
        1 => provider.clone().prop_map(|provider| Op::Recover { provider }),
        1 => provider.prop_map(|provider| Op::Deregister { provider }),
        1 => Just(Op::RefreshLeases),
        1 => (any::<u8>(), any::<u8>(), prop::option::of(target())).prop_map(|(by, key, after)| Op::ReleaseMatching { by, key, after }),
        2 => (target(), prop::bool::weighted(0.8), any::<bool>())
            .prop_map(|(target, right_provider, deallocation)| Op::Confirm { target, right_provider, deallocation }),
        2 => Just(Op::Optimize),
        1 => (0..PROVIDERS, 0..3000u16).prop_map(|(provider, deadline_ms)| Op::Drain { provider, deadline_ms }),
        1 => (0..PROVIDERS, prop::bool::weighted(0.6)).prop_map(|(provider, cordon)| Op::Cordon { provider, cordon }),
        3 => (target(), any::<bool>()).prop_map(|(target, deallocation)| Op::ConfirmMove { target, deallocation }),
    ]
}

/// A few registrations first (so most requests have somewhere to go), then
/// anything. Each op comes with how far the leader's clock moves before it,
/// sometimes backwards: a new leader with a slower clock.
fn history() -> impl Strategy<Value = Vec<(i16, Op)>> {
    let step = || (prop_oneof![6 => 0..700i16, 1 => -300..0i16], op());
    (
        prop::collection::vec((Just(0i16), register()), 1..4),
        prop::collection::vec(step(), 1..80),
    )
        .prop_map(|(mut start, rest)| {
            start.extend(rest);
            start
        })
}

/// Tight bounds, so eviction, compaction, queue limits and bounded searches
/// all happen within a short history.
fn tight_config() -> TableConfig {
    TableConfig {
        dedupe_window_ms: 3_000,
        finished_requests_max: 6,
        evictions_per_command_max: 2,
        placement_candidates_max: 2,
        queue_examined_per_free_max: 3,
        queue_len_max: 5,
        expirations_per_tick_max: 2,
        event_history_max: 24,
        evacuations_per_command_max: 2,
        lease_refreshes_per_command_max: 2,
        moves_per_plan_max: 2,
        move_confirm_timeout_ms: 1_500,
        move_cooldown_ms: 1_000,
        plan_cooldown_ms: 500,
        fragmentation_mark_permille: 300,
        plan_providers_examined_max: 2,
    }
}

fn config() -> impl Strategy<Value = TableConfig> {
    prop_oneof![Just(TableConfig::default()), Just(tight_config())]
}

/// Applies the history from the leader clock `now_ms`, checking everything
/// after every step; returns each step's outcome and the clock at the end.
fn run_from(table: &mut AllocationTable, mut now_ms: u64, history: &[(i16, Op)]) -> (Vec<Applied>, u64) {
    let mut outcomes = Vec::new();
    for (delta_ms, op) in history {
        now_ms = now_ms.saturating_add_signed(*delta_ms as i64);
        let before = table.clone();
        let applied = table.apply(&StampedCommand::new(now_ms, op.command(table)));
        table.assert_invariants();
        check_units(table);
        check_events(before.revision(), &applied.events, table);
        if applied.result.is_err() {
            assert_eq!(&before, table, "failed {op:?} changed the table");
        }
        outcomes.push(applied);
    }
    (outcomes, now_ms)
}

fn run(table: &mut AllocationTable, history: &[(i16, Op)]) -> Vec<Applied> {
    run_from(table, T0, history).0
}

/// The checks the issue names, from the outside (public API only), so they
/// do not rely on `assert_invariants` being right.
fn check_events(revision_before: u64, events: &[Event], table: &AllocationTable) {
    let revisions: Vec<u64> = events.iter().map(|event| event.revision).collect();
    let expected: Vec<u64> = (revision_before + 1..=table.revision()).collect();
    assert_eq!(expected, revisions, "revisions must continue one by one");
    for event in events {
        assert_eq!(table.clock_ms(), event.at_ms);
    }
}

/// With bounds larger than the history can reach, capacity is never left
/// idle: no queued request still inside its deadline fits right now. Checked
/// by offering the same request under a fresh id to a copy of the table.
fn check_work_conserving(table: &AllocationTable) {
    let fresh_id = Uuid::from_u128(u128::MAX);
    for record in table.list(&ListFilter {
        state: Some(RequestState::Queued),
        ..ListFilter::default()
    }) {
        if record.pending_deadline_ms().is_some_and(|deadline| deadline <= table.clock_ms()) {
            continue; // the next tick rejects it
        }
        let mut copy = table.clone();
        let probe = AllocationRequest {
            request_id: fresh_id,
            ..record.request.clone()
        };
        let applied = copy.apply(&StampedCommand::new(table.clock_ms(), Command::Allocate(probe)));
        let placed = applied
            .result
            .ok()
            .and_then(|response| response.request().map(|probe| probe.state.is_active()));
        assert_ne!(Some(true), placed, "queued {} would fit now", record.request.request_id);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn invariants_hold_after_every_step(config in config(), history in history()) {
        let mut table = AllocationTable::new(config);
        run(&mut table, &history);
    }

    /// Every move ends: once no agent answers any more, ticks past the
    /// confirmation timeout end each move still under way (rolled back, or
    /// finished if its target had confirmed), a bounded number per tick.
    #[test]
    fn every_move_ends(config in config(), history in history()) {
        let mut table = AllocationTable::new(config.clone());
        let (_, mut now_ms) = run_from(&mut table, T0, &history);
        let ticks = config.moves_per_plan_max.div_ceil(config.expirations_per_tick_max) + 1;
        for _ in 0..ticks {
            // Past every deadline, but not so far that a plan can begin new moves unseen:
            // a plan begun here would be ended by the next ticks too.
            now_ms += config.move_confirm_timeout_ms + 1;
            run_from(&mut table, now_ms, &[(0, Op::Tick)]);
        }
        let started = table.move_counts().started;
        let ended = table.move_counts().completed + table.move_counts().rolled_back;
        prop_assert_eq!(started - ended, table.moves_in_flight() as u64);
        let moving = table.list(&ListFilter { state: Some(RequestState::Optimization), ..ListFilter::default() });
        prop_assert!(moving.len() <= config.moves_per_plan_max, "{} moves under way", moving.len());
        for record in moving {
            // Only a plan begun by the last tick may still be under way.
            prop_assert!(record.moving().unwrap().deadline_ms > now_ms - config.move_confirm_timeout_ms - 1);
        }
    }

    #[test]
    fn no_capacity_sits_idle_while_a_request_that_fits_waits(history in history()) {
        let mut table = AllocationTable::new(TableConfig::default());
        let mut now_ms = T0;
        for (delta_ms, op) in &history {
            now_ms = now_ms.saturating_add_signed(*delta_ms as i64);
            run_from(&mut table, now_ms, &[(0, op.clone())]);
            check_work_conserving(&table);
        }
    }

    #[test]
    fn a_snapshot_restores_an_equal_table(config in config(), history in history()) {
        let mut table = AllocationTable::new(config);
        run(&mut table, &history);
        let bytes = table.to_snapshot_bytes();
        let restored = AllocationTable::from_snapshot_bytes(&bytes).unwrap();
        prop_assert_eq!(&table, &restored);
        prop_assert_eq!(bytes, restored.to_snapshot_bytes());
    }

    /// Replicas encode a snapshot from a copy while the table goes on
    /// applying; the copy must stay the table as it was when copied.
    #[test]
    fn a_snapshot_copy_keeps_the_moment_it_was_taken(config in config(), history in history(), split in 0..84usize) {
        let mut table = AllocationTable::new(config);
        let split = split.min(history.len());
        let (_, now_ms) = run_from(&mut table, T0, &history[..split]);
        let bytes_when_copied = table.to_snapshot_bytes();
        let copy = table.snapshot_copy();
        run_from(&mut table, now_ms, &history[split..]);
        prop_assert_eq!(&bytes_when_copied, &copy.to_snapshot_bytes());
        let restored = AllocationTable::from_snapshot_bytes(&bytes_when_copied).unwrap();
        prop_assert_eq!(bytes_when_copied, restored.to_snapshot_bytes());
    }

    #[test]
    fn applying_owned_commands_gives_the_same_results_and_table(config in config(), history in history()) {
        let mut borrowing = AllocationTable::new(config.clone());
        let mut owning = AllocationTable::new(config);
        let mut now_ms = T0;
        for (delta_ms, op) in &history {
            now_ms = now_ms.saturating_add_signed(*delta_ms as i64);
            let command = StampedCommand::new(now_ms, op.command(&borrowing));
            let expected = borrowing.apply(&command).result;
            prop_assert_eq!(expected, owning.apply_into_history(command));
        }
        // The snapshot holds the records and the event history too.
        prop_assert_eq!(borrowing.to_snapshot_bytes(), owning.to_snapshot_bytes());
    }

    #[test]
    fn the_same_history_gives_byte_identical_tables(config in config(), history in history(), split in 0..84usize) {
        let mut first = AllocationTable::new(config.clone());
        let mut second = AllocationTable::new(config);
        let first_outcomes = run(&mut first, &history);

        // The second replica restores a snapshot part way through, as a lagging one would.
        let split = split.min(history.len());
        let (mut second_outcomes, now_ms) = run_from(&mut second, T0, &history[..split]);
        second = AllocationTable::from_snapshot_bytes(&second.to_snapshot_bytes()).unwrap();
        second_outcomes.extend(run_from(&mut second, now_ms, &history[split..]).0);

        prop_assert_eq!(first_outcomes, second_outcomes);
        prop_assert_eq!(first.to_snapshot_bytes(), second.to_snapshot_bytes());
    }
}
