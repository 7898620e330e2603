//! The allocation table at scale: 10,000 providers and 1,000,000 live
//! allocations. Measures (a) one allocate + release pair applied at that size
//! (the placement decision and everything around it), (b) writing the table's
//! snapshot, (c) restoring it.
//!
//! Targets: the pair under 50 µs, a snapshot under 2 s.
//!
//! ```text
//! CARGO_TARGET_DIR=/work/target-sm cargo bench -p qm-state-machine --bench apply
//! ```
//!
//! The table is built once per run (it takes seconds) and shared by the three
//! benchmarks; the snapshot benchmarks use few, flat samples.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, SamplingMode};
use qm_state_machine::request::DEFAULT_NAMESPACE;
use qm_state_machine::{
    AllocationRequest, AllocationTable, Command, Constraints, PlacementPolicy, ProviderRegistration, Requirement, ResourceSpec,
    StampedCommand, TableConfig,
};
use uuid::Uuid;

const PROVIDERS: usize = 10_000;
const ALLOCATIONS: usize = 1_000_000;
/// Cores per provider: 10,000 × 128 = 1.28 M cores for 1 M one-core allocations,
/// so the table is about 80% full and placement still has a choice.
const CORES_PER_PROVIDER: usize = 128;
const MEMORY_GB_PER_PROVIDER: i64 = 1024;
const T0: u64 = 1_710_481_600_000;

fn registration(n: usize) -> ProviderRegistration {
    let mut resources: Vec<ResourceSpec> = (0..CORES_PER_PROVIDER)
        .map(|core| ResourceSpec {
            resource_id: format!("cpu_{core:03}"),
            kind: "cpu_cores".into(),
            capacity: 1,
            labels: BTreeMap::new(),
            sharing: None,
        })
        .collect();
    resources.push(ResourceSpec {
        resource_id: "mem_0".into(),
        kind: "memory_gb".into(),
        capacity: MEMORY_GB_PER_PROVIDER,
        labels: BTreeMap::new(),
        sharing: None,
    });
    let labels = BTreeMap::from([("zone".to_owned(), format!("zone_{}", n % 8))]);
    ProviderRegistration {
        provider_id: format!("node_{n:05}"),
        labels,
        resources,
        confirms_allocations: false,
        address: None,
        port: None,
    }
}

/// One core and 4 GB from requester `agent_{n % 1000}`, with a lease so the
/// lease index is as full as the table.
fn allocation(n: u128) -> AllocationRequest {
    AllocationRequest {
        request_id: Uuid::from_u128(n),
        requester_id: format!("agent_{}", n % 1000).into(),
        namespace: DEFAULT_NAMESPACE.to_owned().into(),
        requirements: vec![
            Requirement {
                kind: "cpu_cores".into(),
                quantity: 1,
            },
            Requirement {
                kind: "memory_gb".into(),
                quantity: 4,
            },
        ]
        .into(),
        priority: 0,
        deadline_ms: None.into(),
        lease_ttl_ms: Some(3_600_000).into(),
        constraints: Constraints::default(),
        placement: PlacementPolicy::BestFit,
    }
}

fn build_table() -> AllocationTable {
    let started = Instant::now();
    let mut table = AllocationTable::new(TableConfig::default());
    for n in 0..PROVIDERS {
        let applied = table.apply(&StampedCommand::new(T0, Command::RegisterProvider(registration(n))));
        assert!(applied.result.is_ok(), "{:?}", applied.result);
    }
    for n in 0..ALLOCATIONS {
        let applied = table.apply(&StampedCommand::new(T0, Command::Allocate(allocation(n as u128))));
        let placed = applied
            .result
            .as_ref()
            .ok()
            .and_then(|response| response.request())
            .is_some_and(|record| record.state.is_active());
        assert!(placed, "allocation {n} was not placed: {:?}", applied.result);
    }
    assert_eq!(ALLOCATIONS, table.active_allocations());
    eprintln!(
        "built {PROVIDERS} providers and {ALLOCATIONS} allocations in {:.1?}",
        started.elapsed()
    );
    table
}

fn at_scale(c: &mut Criterion) {
    let mut table = build_table();

    // (a) One allocate + release pair: a fresh request id each time, so every
    // iteration makes a real placement decision and leaves a finished record
    // behind for the dedupe window, as production traffic does.
    let mut next_id = ALLOCATIONS as u128;
    c.bench_function("allocate_release_pair_at_1m", |b| {
        b.iter(|| {
            let request = allocation(next_id);
            next_id += 1;
            let request_id = request.request_id;
            let granted = table.apply(&StampedCommand::new(T0 + 1, Command::Allocate(request)));
            let released = table.apply(&StampedCommand::new(T0 + 1, Command::Release { id: request_id }));
            (granted, released)
        })
    });
    assert_eq!(ALLOCATIONS, table.active_allocations());

    let mut group = c.benchmark_group("snapshot_at_1m");
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .measurement_time(Duration::from_secs(20))
        .warm_up_time(Duration::from_secs(1));

    // (b) Writing the snapshot.
    let bytes = table.to_snapshot_bytes();
    eprintln!(
        "snapshot: {} bytes ({:.1} MiB)",
        bytes.len(),
        bytes.len() as f64 / (1024.0 * 1024.0)
    );
    group.bench_function("to_snapshot_bytes", |b| b.iter_with_large_drop(|| table.to_snapshot_bytes()));

    // (c) Restoring it, indexes rebuilt; dropping the restored table is not counted.
    group.bench_function("from_snapshot_bytes", |b| {
        b.iter_batched(
            || (),
            |()| AllocationTable::from_snapshot_bytes(&bytes).expect("own snapshot decodes"),
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

criterion_group!(benches, at_scale);
criterion_main!(benches);
