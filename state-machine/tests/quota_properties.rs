//! Property tests of quotas and preemption: random histories over three
//! namespaces with quotas set, lowered and deleted, preemption turned on
//! and off (cluster-wide and per namespace, some namespaces protected),
//! allocations at mixed priorities, releases, ticks, failures and agent
//! confirmations. After every step, checked from the outside (events and
//! public queries, not the table's own invariants alone):
//!
//! * no grant takes a namespace past its quota (a quota lowered below use
//!   holds grants, so the check is at each grant, not on the totals);
//! * no unit over capacity or in two allocations;
//! * a preempted allocation always had strictly lower priority than its
//!   preemptor, and came from a namespace that may be preempted;
//! * two replicas fed the same commands have byte-identical snapshots.
//!
//! `PROPTEST_CASES=2000 cargo test -p qm-state-machine --test quota_properties`
//! runs a longer search.

use std::collections::BTreeMap;

mod common;

use common::histories::{cases, check_units, spec};
use proptest::prelude::*;
use qm_state_machine::record::allocation_id_for;
use qm_state_machine::{
    AllocationRequest, AllocationTable, Command, Constraints, EventKind, ListFilter, OnPreemption, PlacementPolicy, PreemptionSetting,
    ProviderRegistration, ReleaseFilter, Requirement, ResourceSpec, Sharing, StampedCommand, TableConfig,
};
use uuid::Uuid;

const T0: u64 = 1_710_481_600_000;
const PROVIDERS: u8 = 3;
const NAMESPACES: u8 = 3;
const REQUEST_IDS: u8 = 24;

#[derive(Clone, Debug)]
enum Op {
    Register {
        provider: u8,
        cores: u8,
        gpus: u8,
        confirms: bool,
    },
    Allocate {
        request: u8,
        namespace: u8,
        cores: u8,
        gpus: u8,
        priority: i8,
        lease: bool,
        release_on_preemption: bool,
    },
    Release {
        target: u8,
    },
    Tick,
    Fail {
        provider: u8,
    },
    Recover {
        provider: u8,
    },
    SetQuota {
        namespace: u8,
        cores: Option<u8>,
        gpus: Option<u8>,
    },
    DeleteQuota {
        namespace: u8,
    },
    ClusterPreemption {
        from_priority: Option<i8>,
    },
    NamespacePreemption {
        namespace: u8,
        from_priority: Option<Option<i8>>,
        preemptible: bool,
    },
    Confirm {
        target: u8,
        deallocation: bool,
    },
    ReleaseNamespace {
        namespace: u8,
    },
}

fn namespace(n: u8) -> String {
    format!("team_{}", n % NAMESPACES)
}

fn provider_id(n: u8) -> String {
    format!("node_{}", n % PROVIDERS)
}

fn target_id(table: &AllocationTable, target: u8) -> Uuid {
    let remembered = table.list(&ListFilter::default());
    match remembered.is_empty() {
        true => Uuid::from_u128(target as u128 + 1),
        false => remembered[target as usize % remembered.len()].request.request_id,
    }
}

fn setting(from_priority: Option<i8>) -> PreemptionSetting {
    from_priority.map_or(PreemptionSetting::Off, |priority| PreemptionSetting::FromPriority(priority as i64))
}

impl Op {
    fn command(&self, table: &AllocationTable) -> Command {
        match self.clone() {
            Op::Register {
                provider,
                cores,
                gpus,
                confirms,
            } => {
                let mut resources: Vec<ResourceSpec> = (0..cores.max(1))
                    .map(|n| spec(&format!("cpu_{n}"), "cpu_cores", 1, Some(Sharing::Exclusive)))
                    .collect();
                resources.extend((0..gpus).map(|n| spec(&format!("gpu_{n}"), "gpu", 1, Some(Sharing::Exclusive))));
                Command::RegisterProvider(ProviderRegistration {
                    provider_id: provider_id(provider),
                    labels: BTreeMap::new(),
                    resources,
                    confirms_allocations: confirms,
                    address: None,
                    port: None,
                })
            }
            Op::Allocate {
                request,
                namespace: ns,
                cores,
                gpus,
                priority,
                lease,
                release_on_preemption,
            } => {
                let mut requirements = vec![Requirement {
                    kind: "cpu_cores".to_owned().into(),
                    quantity: cores.max(1) as u64,
                }];
                if gpus > 0 {
                    requirements.push(Requirement {
                        kind: "gpu".to_owned().into(),
                        quantity: gpus as u64,
                    });
                }
                let request = AllocationRequest {
                    request_id: Uuid::from_u128(request as u128 + 1),
                    requester_id: "agent".to_owned().into(),
                    namespace: namespace(ns).into(),
                    requirements: requirements.into(),
                    priority: priority as i64,
                    deadline_ms: None.into(),
                    lease_ttl_ms: lease.then_some(2_000).into(),
                    constraints: Constraints::default(),
                    placement: PlacementPolicy::BestFit,
                };
                match release_on_preemption {
                    true => Command::AllocateWith {
                        request,
                        on_preemption: OnPreemption::Release,
                    },
                    false => Command::Allocate(request),
                }
            }
            Op::Release { target } => Command::Release {
                id: target_id(table, target),
            },
            Op::Tick => Command::Tick,
            Op::Fail { provider } => Command::ProviderFailed {
                provider_id: provider_id(provider),
            },
            Op::Recover { provider } => Command::ProviderRecovered {
                provider_id: provider_id(provider),
            },
            Op::SetQuota {
                namespace: ns,
                cores,
                gpus,
            } => {
                let mut limits = BTreeMap::new();
                limits.insert("cpu_cores".to_owned(), cores.unwrap_or(4) as u64);
                if let Some(gpus) = gpus {
                    limits.insert("gpu".to_owned(), gpus as u64);
                }
                Command::SetQuota {
                    namespace: namespace(ns),
                    limits,
                }
            }
            Op::DeleteQuota { namespace: ns } => Command::DeleteQuota { namespace: namespace(ns) },
            Op::ClusterPreemption { from_priority } => Command::SetPreemption {
                namespace: None,
                setting: Some(setting(from_priority)),
                preemptible: true,
            },
            Op::NamespacePreemption {
                namespace: ns,
                from_priority,
                preemptible,
            } => Command::SetPreemption {
                namespace: Some(namespace(ns)),
                setting: from_priority.map(setting),
                preemptible,
            },
            Op::Confirm { target, deallocation } => {
                let id = target_id(table, target);
                let provider_id = table
                    .get(id)
                    .and_then(|record| record.placement.as_ref())
                    .map_or_else(|| provider_id(target), |placement| placement.provider_id.to_string());
                let allocation_id = allocation_id_for(id);
                match deallocation {
                    true => Command::ConfirmDeallocation {
                        allocation_id,
                        provider_id,
                    },
                    false => Command::ConfirmAllocation {
                        allocation_id,
                        provider_id,
                    },
                }
            }
            Op::ReleaseNamespace { namespace: ns } => Command::ReleaseMatching {
                filter: ReleaseFilter {
                    namespace: Some(namespace(ns)),
                    ..ReleaseFilter::default()
                },
                after: None,
            },
        }
    }
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (0..PROVIDERS, 1..6u8, 0..3u8, prop::bool::weighted(0.4))
            .prop_map(|(provider, cores, gpus, confirms)| Op::Register { provider, cores, gpus, confirms }),
        8 => (0..REQUEST_IDS, 0..NAMESPACES, 1..4u8, prop::bool::weighted(0.2).prop_map(u8::from), -1..4i8, prop::bool::weighted(0.2), prop::bool::weighted(0.3))
            .prop_map(|(request, namespace, cores, gpus, priority, lease, release_on_preemption)| Op::Allocate {
                request, namespace, cores, gpus, priority, lease, release_on_preemption
            }),
        3 => any::<u8>().prop_map(|target| Op::Release { target }),
        2 => Just(Op::Tick),
        1 => (0..PROVIDERS).prop_map(|provider| Op::Fail { provider }),
        1 => (0..PROVIDERS).prop_map(|provider| Op::Recover { provider }),
        3 => (0..NAMESPACES, prop::option::of(0..6u8), prop::option::of(0..2u8))
            .prop_map(|(namespace, cores, gpus)| Op::SetQuota { namespace, cores, gpus }),
        1 => (0..NAMESPACES).prop_map(|namespace| Op::DeleteQuota { namespace }),
        1 => prop::option::of(0..4i8).prop_map(|from_priority| Op::ClusterPreemption { from_priority }),
        1 => (0..NAMESPACES, prop::option::of(prop::option::of(0..4i8)), prop::bool::weighted(0.7))
            .prop_map(|(namespace, from_priority, preemptible)| Op::NamespacePreemption { namespace, from_priority, preemptible }),
        3 => (any::<u8>(), any::<bool>()).prop_map(|(target, deallocation)| Op::Confirm { target, deallocation }),
        1 => (0..NAMESPACES).prop_map(|namespace| Op::ReleaseNamespace { namespace }),
    ]
}

fn history() -> impl Strategy<Value = Vec<(u16, Op)>> {
    let register = (0..PROVIDERS, 2..6u8, 0..3u8, prop::bool::weighted(0.4)).prop_map(|(provider, cores, gpus, confirms)| {
        (
            0u16,
            Op::Register {
                provider,
                cores,
                gpus,
                confirms,
            },
        )
    });
    (
        prop::collection::vec(register, 1..4),
        prop::collection::vec((0..800u16, op()), 1..90),
    )
        .prop_map(|(mut start, rest)| {
            start.extend(rest);
            start
        })
}

fn config() -> impl Strategy<Value = TableConfig> {
    let tight = TableConfig {
        finished_requests_max: 6,
        placement_candidates_max: 2,
        queue_examined_per_free_max: 2,
        queue_len_max: 8,
        expirations_per_tick_max: 2,
        evacuations_per_command_max: 2,
        ..TableConfig::default()
    };
    prop_oneof![Just(TableConfig::default()), Just(tight)]
}

/// What the checker knows of an active allocation, learnt when it was granted.
#[derive(Clone, Debug)]
struct Held {
    namespace: String,
    priority: i64,
    asks: Vec<Requirement>,
}

/// The checker's own account of what each namespace holds, kept from the
/// events alone and compared with the table's after every step.
#[derive(Default)]
struct QuotaModel {
    active: BTreeMap<Uuid, Held>,
}

impl QuotaModel {
    fn held(&self, namespace: &str, kind: &str) -> u64 {
        self.active
            .values()
            .filter(|held| held.namespace == namespace)
            .flat_map(|held| &held.asks)
            .filter(|ask| ask.kind == kind)
            .map(|ask| ask.quantity)
            .sum()
    }

    /// Follows one command's events, checking each grant against the quota
    /// and each preemption against the priorities and protection.
    fn follow(&mut self, table: &AllocationTable, events: &[qm_state_machine::Event]) {
        for event in events {
            match &event.kind {
                EventKind::AllocationGranted { request_id, namespace, .. } => {
                    let record = table.get(*request_id).expect("a request granted in this command is remembered");
                    assert!(!self.active.contains_key(request_id), "{request_id} granted twice");
                    self.active.insert(
                        *request_id,
                        Held {
                            namespace: namespace.clone(),
                            priority: record.request.priority,
                            asks: record.request.requirements.to_vec(),
                        },
                    );
                    // Only the kinds it asks for: another kind may be over
                    // a quota lowered below its use, which holds only grants of that kind.
                    let quota = &table.policy(namespace).quota;
                    for ask in &record.request.requirements {
                        let (kind, Some(limit)) = (&ask.kind, quota.get(ask.kind.as_str())) else {
                            continue;
                        };
                        let held = self.held(namespace, kind);
                        assert!(
                            held <= *limit,
                            "granting {request_id} took {namespace} to {held} {kind}, over its quota of {limit}"
                        );
                    }
                }
                EventKind::AllocationPreempted {
                    request_id,
                    namespace,
                    priority,
                    preemptor_request_id,
                    preemptor_priority,
                    ..
                } => {
                    let victim = self.active.remove(request_id).expect("a preempted allocation was active");
                    assert_eq!(victim.priority, *priority);
                    let preemptor = table.get(*preemptor_request_id).expect("the preemptor is remembered");
                    assert_eq!(preemptor.request.priority, *preemptor_priority);
                    assert!(
                        priority < preemptor_priority,
                        "{request_id} ({priority}) preempted by {preemptor_request_id} ({preemptor_priority})"
                    );
                    assert!(
                        table.policy(namespace).preemptible,
                        "{request_id} preempted from protected {namespace}"
                    );
                }
                EventKind::AllocationReleased { request_id, .. } | EventKind::AllocationExpired { request_id, .. } => {
                    self.active.remove(request_id).expect("a released allocation was active");
                }
                // Evacuated off a failed provider with nowhere to go.
                EventKind::RequestQueued { request_id, .. } => {
                    self.active.remove(request_id);
                }
                _ => {}
            }
        }
    }

    fn matches(&self, table: &AllocationTable) {
        for usage in table.namespace_usage() {
            for (kind, held) in &usage.held {
                assert_eq!(self.held(&usage.namespace, kind), *held, "{} {kind} held", usage.namespace);
            }
        }
        let counted: u64 = table.namespace_usage().iter().flat_map(|usage| usage.held.values()).sum();
        let modelled: u64 = self.active.values().flat_map(|held| &held.asks).map(|ask| ask.quantity).sum();
        assert_eq!(modelled, counted);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn quotas_and_preemption_keep_their_rules_on_two_replicas(config in config(), history in history()) {
        let mut first = AllocationTable::new(config.clone());
        let mut second = AllocationTable::new(config);
        let mut model = QuotaModel::default();
        let mut now_ms = T0;
        for (delta_ms, op) in &history {
            now_ms += *delta_ms as u64;
            let command = StampedCommand::new(now_ms, op.command(&first));
            let before = first.clone();
            let applied = first.apply(&command);
            first.assert_invariants();
            if applied.result.is_err() {
                prop_assert_eq!(&before, &first);
            }
            model.follow(&first, &applied.events);
            model.matches(&first);
            check_units(&first);
            // --- the other replica: the same command, the same bytes
            prop_assert_eq!(applied.result, second.apply_into_history(command));
            prop_assert_eq!(first.to_snapshot_bytes(), second.to_snapshot_bytes());
        }
        let restored = AllocationTable::from_snapshot_bytes(&first.to_snapshot_bytes()).unwrap();
        restored.assert_invariants();
        prop_assert_eq!(&first, &restored);
    }
}
