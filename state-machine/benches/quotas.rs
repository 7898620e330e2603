//! Placement with quotas and preemption at 10,000 providers: (a) one
//! allocate + release pair in a namespace with a quota (the quota checked
//! on the grant, the held index kept), (b) one preempting allocate + its
//! release in a full cluster (the victim search over the bounded number of
//! providers, the victim requeued, then granted again when the preemptor
//! releases), (c) the dry run of that preempting request.
//!
//! ```text
//! cargo bench -p qm-state-machine --bench quotas
//! ```
//!
//! Every core of every provider is held (160,000 one-core allocations at
//! priority 0, in one namespace with a quota), so a preemptor finds nothing
//! free and must choose victims.

use std::collections::BTreeMap;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, Criterion};
use qm_state_machine::{
    AllocationRequest, AllocationTable, Command, Constraints, PlacementPolicy, PreemptionSetting, ProviderRegistration, Requirement,
    ResourceSpec, StampedCommand, TableConfig,
};
use uuid::Uuid;

const PROVIDERS: usize = 10_000;
const CORES_PER_PROVIDER: usize = 16;
const ALLOCATIONS: usize = PROVIDERS * CORES_PER_PROVIDER;
const T0: u64 = 1_710_481_600_000;
/// The batch namespace's quota: above what it holds, so it binds no grant
/// but is checked on every one.
const BATCH_QUOTA: u64 = 1_000_000;

fn registration(n: usize) -> ProviderRegistration {
    ProviderRegistration {
        provider_id: format!("node_{n:05}"),
        labels: BTreeMap::new(),
        resources: (0..CORES_PER_PROVIDER)
            .map(|core| ResourceSpec {
                resource_id: format!("cpu_{core:02}"),
                kind: "cpu_cores".into(),
                capacity: 1,
                labels: BTreeMap::new(),
                sharing: None,
            })
            .collect(),
        confirms_allocations: false,
        address: None,
        port: None,
    }
}

fn one_core(n: u128, namespace: &str, priority: i64) -> AllocationRequest {
    AllocationRequest {
        request_id: Uuid::from_u128(n),
        requester_id: format!("agent_{}", n % 1000).into(),
        namespace: namespace.to_owned().into(),
        requirements: vec![Requirement {
            kind: "cpu_cores".into(),
            quantity: 1,
        }]
        .into(),
        priority,
        deadline_ms: None.into(),
        lease_ttl_ms: None.into(),
        constraints: Constraints::default(),
        placement: PlacementPolicy::BestFit,
    }
}

fn apply(table: &mut AllocationTable, command: Command) {
    let applied = table.apply(&StampedCommand::new(T0, command));
    assert!(applied.result.is_ok(), "{:?}", applied.result);
}

fn build_full_table() -> AllocationTable {
    let started = Instant::now();
    let mut table = AllocationTable::new(TableConfig::default());
    for n in 0..PROVIDERS {
        apply(&mut table, Command::RegisterProvider(registration(n)));
    }
    apply(
        &mut table,
        Command::SetQuota {
            namespace: "batch".to_owned(),
            limits: BTreeMap::from([("cpu_cores".to_owned(), BATCH_QUOTA)]),
        },
    );
    for n in 0..ALLOCATIONS {
        apply(&mut table, Command::Allocate(one_core(n as u128, "batch", 0)));
    }
    assert_eq!(ALLOCATIONS, table.active_allocations());
    eprintln!(
        "built {PROVIDERS} providers and {ALLOCATIONS} allocations in {:.1?}",
        started.elapsed()
    );
    table
}

fn with_quotas_and_preemption(c: &mut Criterion) {
    let mut table = build_full_table();
    let mut next_id = ALLOCATIONS as u128;

    // (a) One core of the batch namespace free, taken and given back.
    apply(&mut table, Command::Release { id: Uuid::from_u128(0) });
    c.bench_function("allocate_release_pair_with_quota_at_10k_providers", |b| {
        b.iter(|| {
            let request = one_core(next_id, "batch", 0);
            next_id += 1;
            let request_id = request.request_id;
            let granted = table.apply(&StampedCommand::new(T0 + 1, Command::Allocate(request)));
            let released = table.apply(&StampedCommand::new(T0 + 1, Command::Release { id: request_id }));
            (granted, released)
        })
    });
    // Full again, then preemption on from priority 10.
    apply(&mut table, Command::Allocate(one_core(next_id, "batch", 0)));
    next_id += 1;
    assert_eq!(ALLOCATIONS, table.active_allocations());
    apply(
        &mut table,
        Command::SetPreemption {
            namespace: None,
            setting: Some(PreemptionSetting::FromPriority(10)),
            preemptible: true,
        },
    );

    // (b) A preemptor takes one core (its victim is requeued) and releases
    // it (the victim is granted again): the table is as full after as before.
    c.bench_function("preempting_allocate_release_pair_at_10k_providers", |b| {
        b.iter(|| {
            let request = one_core(next_id, "ops", 10);
            next_id += 1;
            let request_id = request.request_id;
            let granted = table.apply(&StampedCommand::new(T0 + 1, Command::Allocate(request)));
            let released = table.apply(&StampedCommand::new(T0 + 1, Command::Release { id: request_id }));
            (granted, released)
        })
    });
    assert_eq!(ALLOCATIONS, table.active_allocations());
    assert_eq!(0, table.queue_len());

    // (c) The dry run of the same request: the decision, unmade.
    let preview = one_core(u128::MAX, "ops", 10);
    assert_eq!(1, table.preview(&preview).expect("valid").victims.len());
    c.bench_function("preview_preemption_at_10k_providers", |b| b.iter(|| table.preview(&preview)));
}

criterion_group!(benches, with_quotas_and_preemption);
criterion_main!(benches);
