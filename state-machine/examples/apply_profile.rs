//! Applies the commands a `qm bench --workload alloc-release` run puts in the
//! log (one-unit allocations of `bench_slot` on providers of 2,000 units,
//! each released right after), with nothing else in the process, for a
//! profiler: `valgrind --tool=callgrind` counts instructions, which stay the
//! same from run to run whatever else the machine is doing.
//!
//! ```text
//! cargo build --release -p qm-state-machine --example apply_profile
//! valgrind --tool=callgrind target/release/examples/apply_profile 150000
//! ```
//!
//! The argument is the number of pairs (default 150,000: past the dedupe
//! window of 100,000 finished requests, so eviction runs as in a long bench).
use std::collections::BTreeMap;
use std::time::Instant;

use qm_state_machine::{
    AllocationRequest, AllocationTable, Command, Constraints, PlacementPolicy, ProviderRegistration, Requirement, ResourceSpec,
    StampedCommand, TableConfig,
};
use uuid::Uuid;

const PROVIDERS: usize = 4;
const UNITS_PER_PROVIDER: usize = 2_000;
const T0: u64 = 1_710_481_600_000;

fn registration(n: usize) -> ProviderRegistration {
    ProviderRegistration {
        provider_id: format!("qm-bench-run-{n}"),
        labels: BTreeMap::from([("qm-bench".to_owned(), "run".to_owned())]),
        resources: (0..UNITS_PER_PROVIDER)
            .map(|unit| ResourceSpec {
                resource_id: format!("slot_{unit:05}"),
                kind: "bench_slot".into(),
                capacity: 1,
                labels: BTreeMap::new(),
                sharing: None,
            })
            .collect(),
        confirms_allocations: false,
    }
}

/// Spreads request ids over the whole id space, as the random ids clients
/// make are, while staying the same from run to run.
const ID_SPREAD: u128 = 0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835;

fn allocation(n: u128) -> AllocationRequest {
    AllocationRequest {
        request_id: Uuid::from_u128(n.wrapping_mul(ID_SPREAD)),
        requester_id: "qm-bench".into(),
        namespace: "qm-bench".into(),
        requirements: vec![Requirement {
            kind: "bench_slot".into(),
            quantity: 1,
        }],
        priority: 0,
        deadline_ms: None,
        lease_ttl_ms: None,
        constraints: Constraints::default(),
        placement: PlacementPolicy::BestFit,
    }
}

fn main() {
    let pairs: u128 = std::env::args().nth(1).map_or(150_000, |arg| arg.parse().expect("pairs: a number"));
    let mut table = AllocationTable::new(TableConfig::default());
    for n in 0..PROVIDERS {
        let applied = table.apply(&StampedCommand::new(T0, Command::RegisterProvider(registration(n))));
        assert!(applied.result.is_ok(), "{:?}", applied.result);
    }
    let started = Instant::now();
    for n in 0..pairs {
        // A millisecond per pair, as the clock moves in a real run.
        let now_ms = T0 + n as u64;
        // `apply_into_history`, as a replica applies its log.
        let allocated = table.apply_into_history(StampedCommand::new(now_ms, Command::Allocate(allocation(n))));
        let id = allocated
            .as_ref()
            .ok()
            .and_then(|response| response.request())
            .map(|record| record.allocation_id)
            .expect("placed");
        let released = table.apply_into_history(StampedCommand::new(now_ms, Command::Release { id }));
        assert!(released.is_ok(), "{released:?}");
    }
    let elapsed = started.elapsed();
    eprintln!(
        "{pairs} pairs in {elapsed:.2?}: {:.2} µs per pair",
        elapsed.as_secs_f64() * 1e6 / pairs as f64
    );
    // What a replica's snapshot costs at this point: the copy taken while
    // apply waits, then the encoding done beside it.
    let started = Instant::now();
    let copy = table.snapshot_copy();
    let copied = started.elapsed();
    let bytes = copy.to_snapshot_bytes();
    eprintln!(
        "snapshot: copy {copied:.2?} (apply waits), encode {:.2?}, {} bytes",
        started.elapsed() - copied,
        bytes.len()
    );
}
