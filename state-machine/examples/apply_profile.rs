//! Applies the commands a `qm bench --workload alloc-release` run puts in the
//! log (one-unit allocations of `bench_slot` on providers of 2,000 units,
//! each released right after, by its allocation id), with nothing else in the
//! process, for a profiler: `valgrind --tool=callgrind` counts instructions,
//! which stay the same from run to run whatever else the machine is doing.
//!
//! ```text
//! cargo build --release -p qm-state-machine --example apply_profile
//! valgrind --tool=callgrind --toggle-collect='*apply_measured_pairs*' \
//!     target/release/examples/apply_profile 20000
//! ```
//!
//! First it fills the dedupe window (`finished_requests_max`, 100,000
//! finished requests, plus a few thousand pairs so eviction runs in step),
//! then it applies the measured pairs, the argument (default 20,000), in
//! `apply_measured_pairs`: with `--toggle-collect` callgrind counts only
//! those, so its total divided by the argument is the instructions per
//! allocate+release pair of a replica whose window is full. The commands are
//! made before that call and only applied (and dropped) inside it.
//!
//! Request ids are random version 4 uuids, as clients make them, drawn from a
//! fixed-seed generator so every run applies the same commands. The counts
//! it gave for the table's choices of index are in the crate's README
//! ("Profiling the apply path").
use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::Instant;

use qm_state_machine::record::allocation_id_for;
use qm_state_machine::{
    AllocationRequest, AllocationTable, Command, Constraints, PlacementPolicy, ProviderRegistration, Requirement, ResourceSpec,
    StampedCommand, TableConfig,
};
use uuid::Uuid;

const PROVIDERS: usize = 4;
const UNITS_PER_PROVIDER: usize = 2_000;
const T0: u64 = 1_710_481_600_000;
/// Pairs applied past a full dedupe window before measuring.
const WARM_UP_PAIRS_PAST_WINDOW: usize = 5_000;
/// Pairs applied per millisecond of the leader's clock: about the 9,000
/// pairs/s a cluster applies at 256 requests in flight (BENCHMARKS.md), so
/// that requests finish in the same millisecond as they do there.
const PAIRS_PER_MS: usize = 9;
/// The generator's seed: any non-zero value; fixed so runs compare.
const ID_SEED: u64 = 0x5eed_0fa1_10ca_7e57;

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
        address: None,
        port: None,
    }
}

/// Random version 4 request ids from xorshift64*, the same sequence every run.
struct RequestIds(u64);

impl RequestIds {
    fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn next_id(&mut self) -> Uuid {
        let bits = (u128::from(self.next_u64()) << 64) | u128::from(self.next_u64());
        uuid::Builder::from_random_bytes(bits.to_be_bytes()).into_uuid()
    }
}

fn allocation(request_id: Uuid) -> AllocationRequest {
    AllocationRequest {
        request_id,
        requester_id: "qm-bench".into(),
        namespace: "qm-bench".into(),
        requirements: vec![Requirement {
            kind: "bench_slot".into(),
            quantity: 1,
        }]
        .into(),
        priority: 0,
        deadline_ms: None.into(),
        lease_ttl_ms: None.into(),
        constraints: Constraints::default(),
        placement: PlacementPolicy::BestFit,
    }
}

/// The pair number `n`: an allocate and the release of its allocation.
fn pair(ids: &mut RequestIds, n: usize) -> [StampedCommand; 2] {
    let now_ms = T0 + (n / PAIRS_PER_MS) as u64;
    let request_id = ids.next_id();
    [
        StampedCommand::new(now_ms, Command::Allocate(allocation(request_id))),
        StampedCommand::new(
            now_ms,
            Command::Release {
                id: allocation_id_for(request_id),
            },
        ),
    ]
}

/// Applies `pairs` with `apply_into_history`, as a replica applies its log.
fn apply_pairs(table: &mut AllocationTable, pairs: Vec<[StampedCommand; 2]>) {
    for [allocate, release] in pairs {
        let allocated = table.apply_into_history(allocate);
        assert!(
            allocated.is_ok_and(|response| response.request().is_some_and(|record| record.state.is_active())),
            "the allocation was not placed"
        );
        let released = table.apply_into_history(release);
        assert!(released.is_ok(), "{released:?}");
    }
}

/// The pairs callgrind counts (`--toggle-collect`); not inlined, so that it
/// keeps its name.
#[inline(never)]
fn apply_measured_pairs(table: &mut AllocationTable, pairs: Vec<[StampedCommand; 2]>) {
    apply_pairs(black_box(table), black_box(pairs));
}

fn main() {
    let measured: usize = std::env::args().nth(1).map_or(20_000, |arg| arg.parse().expect("pairs: a number"));
    let config = TableConfig::default();
    let warm_up = config.finished_requests_max + WARM_UP_PAIRS_PAST_WINDOW;
    let mut table = AllocationTable::new(config);
    for n in 0..PROVIDERS {
        let applied = table.apply(&StampedCommand::new(T0, Command::RegisterProvider(registration(n))));
        assert!(applied.result.is_ok(), "{:?}", applied.result);
    }
    let mut ids = RequestIds(ID_SEED);
    let warm_up_pairs = (0..warm_up).map(|n| pair(&mut ids, n)).collect();
    apply_pairs(&mut table, warm_up_pairs);
    let measured_pairs = (warm_up..warm_up + measured).map(|n| pair(&mut ids, n)).collect();
    let started = Instant::now();
    apply_measured_pairs(&mut table, measured_pairs);
    let elapsed = started.elapsed();
    eprintln!(
        "{measured} pairs past {warm_up} in {elapsed:.2?}: {:.2} µs per pair; {} requests remembered",
        elapsed.as_secs_f64() * 1e6 / measured as f64,
        table.requests_len()
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
