//! Where a replica's table keeps its bytes at scale, structure by structure
//! (issue 23), in one process: no Raft, no network, no profiler.
//!
//! ```text
//! cargo run --release -p qm-state-machine --example memory_breakdown -- [bench|slots|scale] [PROVIDERS] [ALLOCATIONS] [decoded]
//! ```
//!
//! `bench` (the default) builds the criterion bench's table (`benches/apply.rs`):
//! providers (default 10,000) of 128 one-core units and one divisible unit of
//! 1,024 GB, and allocations (default 1,000,000) of one core and 4 GB, with a
//! lease, from 1,000 requesters. `slots` builds what `qm bench --workload
//! alloc-only` leaves in a replica: providers (default 500) of 2,000 one-unit
//! `bench_slot`s, one unit per allocation, one requester. `scale` builds what
//! `scripts/scale.sh` loads (`client/examples/scale_load.rs`): providers
//! (default 10,000) of `ceil(1.25 × ALLOCATIONS / PROVIDERS)` one-unit
//! `scale_slot`s, allocations of one slot from 100 requesters in namespace
//! `scale`, without a lease.
//!
//! Prints the table's heap bytes per structure (from a counting allocator:
//! the bytes asked for, before the allocator's size classes round them up),
//! per allocation (of the table decoded from its own snapshot with
//! `decoded`: a restarted replica's); the snapshot's size, encode and decode times and a hash
//! of its bytes (equal hashes before and after a change of the in-memory
//! representation show the encoding did not change); and the process's
//! resident memory (VmRSS, VmHWM). BENCHMARKS.md has the figures.

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use qm_state_machine::provider::Resource;
use qm_state_machine::record::Move;
use qm_state_machine::request::DEFAULT_NAMESPACE;
use qm_state_machine::{
    AllocationRequest, AllocationTable, Command, Constraints, Placement, PlacementPolicy, ProviderRegistration, RequestRecord, Requirement,
    ResourceSpec, StampedCommand, TableConfig, UnitGrant,
};
use uuid::Uuid;

/// The system allocator, counting the bytes live.
struct Counting;

static LIVE_BYTES: AtomicUsize = AtomicUsize::new(0);
static LIVE_ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(layout.size(), Ordering::Relaxed);
        LIVE_ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: forwarded as received.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size(), Ordering::Relaxed);
        LIVE_ALLOCATIONS.fetch_sub(1, Ordering::Relaxed);
        // SAFETY: forwarded as received.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE_BYTES.fetch_add(new_size, Ordering::Relaxed);
        LIVE_BYTES.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: forwarded as received.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn live_bytes() -> usize {
    LIVE_BYTES.load(Ordering::Relaxed)
}

const T0: u64 = 1_710_481_600_000;

#[derive(Clone, Copy, PartialEq)]
enum Shape {
    /// The criterion bench's table.
    Bench,
    /// `qm bench --workload alloc-only`'s.
    Slots,
    /// `scripts/scale.sh`'s, with this many slots per provider.
    Scale { slots: usize },
}

fn unit(resource_id: String, kind: &str, capacity: i64) -> ResourceSpec {
    ResourceSpec {
        resource_id,
        kind: kind.into(),
        capacity,
        labels: BTreeMap::new(),
        sharing: None,
    }
}

fn registration(shape: Shape, n: usize) -> ProviderRegistration {
    let (provider_id, resources, labels) = match shape {
        Shape::Bench => {
            let mut resources: Vec<ResourceSpec> = (0..128).map(|core| unit(format!("cpu_{core:03}"), "cpu_cores", 1)).collect();
            resources.push(unit("mem_0".into(), "memory_gb", 1024));
            let labels = BTreeMap::from([("zone".to_owned(), format!("zone_{}", n % 8))]);
            (format!("node_{n:05}"), resources, labels)
        }
        Shape::Slots => {
            let resources = (0..2_000).map(|slot| unit(format!("slot-{slot}"), "bench_slot", 1)).collect();
            (format!("qm-bench-0123456789abcdef-{n}"), resources, BTreeMap::new())
        }
        Shape::Scale { slots } => {
            let resources = (0..slots).map(|slot| unit(format!("slot-{slot:04}"), "scale_slot", 1)).collect();
            (format!("scale-provider-{n:05}"), resources, BTreeMap::new())
        }
    };
    ProviderRegistration {
        provider_id,
        labels,
        resources,
        confirms_allocations: false,
        address: None,
        port: None,
    }
}

fn allocation(shape: Shape, n: u128) -> AllocationRequest {
    let requirement = |kind: &str, quantity| Requirement {
        kind: kind.into(),
        quantity,
    };
    let (requester_id, namespace, requirements, lease_ttl_ms) = match shape {
        Shape::Bench => (
            format!("agent_{}", n % 1000),
            DEFAULT_NAMESPACE.to_owned(),
            vec![requirement("cpu_cores", 1), requirement("memory_gb", 4)],
            Some(3_600_000),
        ),
        Shape::Slots => (
            "qm-bench-0123456789abcdef".to_owned(),
            "qm-bench".to_owned(),
            vec![requirement("bench_slot", 1)],
            None,
        ),
        Shape::Scale { .. } => (
            format!("scale-requester-{:03}", n % 100),
            "scale".to_owned(),
            vec![requirement("scale_slot", 1)],
            None,
        ),
    };
    AllocationRequest {
        // Spread over the id space, as random ids are.
        request_id: Uuid::from_u128(n.wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835)),
        requester_id: requester_id.into(),
        namespace: namespace.into(),
        requirements: requirements.into(),
        priority: 0,
        deadline_ms: None.into(),
        lease_ttl_ms: lease_ttl_ms.into(),
        constraints: Constraints::default(),
        placement: PlacementPolicy::BestFit,
    }
}

/// FNV-1a over the snapshot: a fingerprint of its bytes, not a checksum.
fn fingerprint(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn proc_status(field: &str) -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|line| line.starts_with(field))
                .map(|line| line[field.len()..].trim().to_owned())
        })
        .unwrap_or_else(|| "?".to_owned())
}

fn mib(bytes: usize) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let shape_name = args.first().map_or("bench", String::as_str);
    let number = |position: usize, default: usize| args.get(position).map_or(default, |arg| arg.parse().expect("a count"));
    let providers = number(1, if shape_name == "slots" { 500 } else { 10_000 });
    let allocations = number(2, 1_000_000);
    let shape = match shape_name {
        "bench" => Shape::Bench,
        "slots" => Shape::Slots,
        // As scale_load sizes them: the table ends about 80 % full.
        "scale" => Shape::Scale {
            slots: (allocations * 5 / 4).div_ceil(providers.max(1)),
        },
        other => panic!("unknown shape {other:?}: bench, slots or scale"),
    };

    let started = Instant::now();
    let empty = live_bytes();
    let mut table = AllocationTable::new(TableConfig::default());
    for n in 0..providers {
        let applied = table.apply_into_history(StampedCommand::new(T0, Command::RegisterProvider(registration(shape, n))));
        assert!(applied.is_ok(), "{applied:?}");
    }
    let with_providers = live_bytes();
    for n in 0..allocations {
        let applied = table.apply_into_history(StampedCommand::new(T0, Command::Allocate(allocation(shape, n as u128))));
        let placed = applied
            .as_ref()
            .ok()
            .and_then(|response| response.request())
            .is_some_and(|record| record.state.is_active());
        assert!(placed, "allocation {n} was not placed: {applied:?}");
    }
    let full = live_bytes();
    println!(
        "built {providers} providers and {allocations} allocations in {:.1?}: {:.1} MiB live ({:.1} MiB with the providers alone), {} live allocations",
        started.elapsed(),
        mib(full - empty),
        mib(with_providers - empty),
        LIVE_ALLOCATIONS.load(Ordering::Relaxed),
    );
    println!("resident: VmRSS {}, VmHWM {}", proc_status("VmRSS:"), proc_status("VmHWM:"));

    let copy_started = Instant::now();
    let copy = table.snapshot_copy();
    let copy_time = copy_started.elapsed();
    let copy_bytes = live_bytes() - full;
    let encode_started = Instant::now();
    let bytes = copy.to_snapshot_bytes();
    let encode_time = encode_started.elapsed();
    drop(copy);
    let before_decode = live_bytes();
    let decode_started = Instant::now();
    let restored = AllocationTable::from_snapshot_bytes(&bytes).expect("own snapshot decodes");
    let decode_time = decode_started.elapsed();
    // What a replica that restored a snapshot holds: as small as the built
    // table only if decoding shares what building shares.
    let decoded_bytes = live_bytes() - before_decode;
    assert!(restored == table, "the restored table equals the original");
    // `decoded` as the fourth argument breaks the restored table down
    // instead of the built one.
    let table = if args.get(3).map(String::as_str) == Some("decoded") {
        drop(table);
        restored
    } else {
        drop(restored);
        table
    };
    println!(
        "decoded from the snapshot: {:.1} MiB live, {:.1} bytes per allocation (built: {:.1})",
        mib(decoded_bytes),
        decoded_bytes as f64 / allocations.max(1) as f64,
        (full - empty) as f64 / allocations.max(1) as f64,
    );
    println!(
        "snapshot: {} bytes ({:.1} MiB), fingerprint {:016x}; copy {copy_time:.1?} ({:.1} MiB), encode {encode_time:.1?}, decode with indexes {decode_time:.1?}",
        bytes.len(),
        mib(bytes.len()),
        fingerprint(&bytes),
        mib(copy_bytes),
    );
    println!(
        "resident after the snapshot: VmRSS {}, VmHWM {}",
        proc_status("VmRSS:"),
        proc_status("VmHWM:")
    );
    drop(bytes);

    println!(
        "inline sizes: RequestRecord {}, AllocationRequest {}, Constraints {}, Placement {}, Move {}, UnitGrant {}, Resource {} bytes",
        size_of::<RequestRecord>(),
        size_of::<AllocationRequest>(),
        size_of::<Constraints>(),
        size_of::<Placement>(),
        size_of::<Move>(),
        size_of::<UnitGrant>(),
        size_of::<Resource>(),
    );
    let per_allocation = |bytes: usize| bytes as f64 / allocations.max(1) as f64;
    let before_breakdown = live_bytes();
    let parts = table.heap_bytes_by_structure(&live_bytes);
    println!(
        "live before the breakdown {:.1} MiB, after {:.1} MiB",
        mib(before_breakdown - empty),
        mib(live_bytes() - empty)
    );
    let total: usize = parts.iter().map(|(_, bytes)| bytes).sum();
    println!("{:<56} {:>10} {:>14}", "STRUCTURE", "MIB", "BYTES/ALLOC");
    for (name, bytes) in parts {
        println!("{name:<56} {:>10.1} {:>14.1}", mib(bytes), per_allocation(bytes));
    }
    println!("{:<56} {:>10.1} {:>14.1}", "total", mib(total), per_allocation(total));
}
