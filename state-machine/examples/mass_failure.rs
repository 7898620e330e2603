//! The longest apply when many providers fail at once, with evacuation
//! unbounded (as before issue 26) and bounded per command, then the bulk
//! release of everything left, all in one process (no Raft, no network).
//!
//! ```text
//! cargo run -p qm-state-machine --example mass_failure -- [FULL] [SPARE] [FAILING] [fail|deregister]
//! ```
//!
//! `FULL` providers of 2,000 one-unit slots (default 100) are filled, then
//! `SPARE` empty ones (default 50) registered, then `FAILING` of the full
//! ones (default 50) fail in consecutive commands, and ticks follow until
//! every allocation is moved or queued (as the leader proposes them). It
//! prints the longest single apply and the commands it took, for
//! `evacuations_per_command_max` = unbounded and 1,024; then the longest
//! entry and total time of a bulk release of the whole namespace. Run it in
//! the release profile for figures comparable with BENCHMARKS.md; the dev
//! profile is several times slower, though the ratio holds. With
//! `deregister` the `FAILING` providers are deregistered instead of failing
//! (unbounded is how a deregistration was applied before, all in one).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use qm_state_machine::{
    AllocationRequest, AllocationTable, Command, CommandResponse, Constraints, PlacementPolicy, ProviderRegistration, ReleaseFilter,
    Requirement, ResourceSpec, StampedCommand, TableConfig,
};
use uuid::Uuid;

const UNITS_PER_PROVIDER: usize = 2_000;
const T0: u64 = 1_710_481_600_000;

fn registration(n: usize) -> ProviderRegistration {
    ProviderRegistration {
        provider_id: format!("qm-bench-run-{n:04}"),
        labels: BTreeMap::new(),
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

fn allocation(n: u128) -> AllocationRequest {
    AllocationRequest {
        // Spread over the id space, as random ids are.
        request_id: Uuid::from_u128(n.wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835)),
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

/// The longest apply and the number of commands applied.
#[derive(Default)]
struct Applies {
    longest: Duration,
    commands: usize,
    total: Duration,
}

impl Applies {
    fn apply(&mut self, table: &mut AllocationTable, command: Command) -> CommandResponse {
        let started = Instant::now();
        let result = table.apply_into_history(StampedCommand::new(T0 + 1, command));
        let took = started.elapsed();
        self.longest = self.longest.max(took);
        self.total += took;
        self.commands += 1;
        result.expect("applied")
    }
}

fn filled(full: usize, spare: usize, evacuations_per_command_max: usize) -> AllocationTable {
    let mut table = AllocationTable::new(TableConfig {
        evacuations_per_command_max,
        ..TableConfig::default()
    });
    let mut setup = Applies::default();
    for n in 0..full {
        setup.apply(&mut table, Command::RegisterProvider(registration(n)));
    }
    for n in 0..(full * UNITS_PER_PROVIDER) as u128 {
        setup.apply(&mut table, Command::Allocate(allocation(n + 1)));
    }
    for n in full..full + spare {
        setup.apply(&mut table, Command::RegisterProvider(registration(n)));
    }
    table
}

fn main() {
    let arg = |index: usize, default: usize| std::env::args().nth(index).and_then(|text| text.parse().ok()).unwrap_or(default);
    let (full, spare, failing) = (arg(1, 100), arg(2, 50), arg(3, 50));
    let deregister = std::env::args().nth(4).is_some_and(|mode| mode == "deregister");
    let leaving = if deregister { "deregistered" } else { "failing" };
    println!(
        "{full} providers of {UNITS_PER_PROVIDER} slots filled ({} allocations), {spare} spare, {failing} {leaving} at once",
        full * UNITS_PER_PROVIDER
    );
    for (label, budget) in [("unbounded", usize::MAX), ("1,024 per command", 1024)] {
        let started = Instant::now();
        let mut table = filled(full, spare, budget);
        let setup = started.elapsed();
        let mut failure = Applies::default();
        for n in 0..failing {
            let provider_id = registration(n).provider_id;
            let command = match deregister {
                true => Command::DeregisterProvider { provider_id },
                false => Command::ProviderFailed { provider_id },
            };
            failure.apply(&mut table, command);
        }
        while table.evacuations_pending() > 0 {
            failure.apply(&mut table, Command::Tick);
        }
        println!(
            "evacuation {label:>18}: longest apply {:>8.1} ms, {} commands, {:.2} s applying in all; queue {} (setup {:.1} s)",
            failure.longest.as_secs_f64() * 1e3,
            failure.commands,
            failure.total.as_secs_f64(),
            table.queue_len(),
            setup.as_secs_f64()
        );
        let mut release = Applies::default();
        let filter = ReleaseFilter {
            namespace: Some("qm-bench".into()),
            ..ReleaseFilter::default()
        };
        let (mut after, mut released) = (None, 0);
        loop {
            let command = Command::ReleaseMatching {
                filter: filter.clone(),
                after,
            };
            let CommandResponse::ReleasedMatching {
                released: now,
                cancelled,
                next,
                ..
            } = release.apply(&mut table, command)
            else {
                unreachable!("a bulk release answers ReleasedMatching")
            };
            released += now + cancelled;
            after = next;
            if after.is_none() {
                break;
            }
        }
        println!(
            "bulk release {released} (released + cancelled): longest entry {:.1} ms, {} entries, {:.2} s applying in all",
            release.longest.as_secs_f64() * 1e3,
            release.commands,
            release.total.as_secs_f64()
        );
    }
}
