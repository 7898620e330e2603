//! Loads a running cluster for `scripts/scale.sh` (issues 23 and 26):
//! registers providers of one-unit slots, then places allocations through
//! the cluster, and leaves them there (no teardown, unlike `qm bench`).
//!
//! ```text
//! cargo run --release -p qm-client --example scale_load -- ENDPOINTS PROVIDERS ALLOCATIONS [CONCURRENCY]
//! ```
//!
//! `ENDPOINTS` is comma-separated (`127.0.0.1:7101,127.0.0.1:7102,...`).
//! Each provider offers `ceil(1.25 × ALLOCATIONS / PROVIDERS)` exclusive
//! units of kind `scale_slot` (at most `RESOURCES_PER_PROVIDER_MAX`), so the
//! table ends about 80% full; each allocation asks for one, from one of
//! 100 requesters in namespace `scale`, without a lease. The providers do
//! not heartbeat: start the replicas with a provider failure window longer
//! than the run (`scripts/scale.sh` does). Prints one line,
//! `loaded ALLOCATIONS allocations on PROVIDERS providers in SECONDS s`,
//! after every allocation is placed; any error ends it with a failure.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use qm_client::{proto, Client, ClientConfig};
use qm_state_machine::limits::RESOURCES_PER_PROVIDER_MAX;
use qm_state_machine::provider::{ProviderRegistration, ResourceSpec, Sharing};
use qm_state_machine::ResourceRequest;

/// Registrations in flight at once.
const REGISTRATION_CONCURRENCY: usize = 32;
/// How often progress is printed (to standard error).
const PROGRESS_INTERVAL: Duration = Duration::from_secs(10);

fn registration(index: usize, units: usize) -> ProviderRegistration {
    ProviderRegistration {
        provider_id: format!("scale-provider-{index:05}"),
        labels: BTreeMap::new(),
        resources: (0..units)
            .map(|unit| ResourceSpec {
                resource_id: format!("slot-{unit:04}"),
                kind: "scale_slot".to_owned(),
                capacity: 1,
                labels: BTreeMap::new(),
                sharing: Some(Sharing::Exclusive),
            })
            .collect(),
        confirms_allocations: false,
        address: None,
        port: None,
    }
}

fn request(n: u64) -> ResourceRequest {
    ResourceRequest {
        requester_id: Some(format!("scale-requester-{:03}", n % 100)),
        resource_requirements: Some(BTreeMap::from([("scale_slot".to_owned(), 1.into())])),
        priority: Some(0.into()),
        namespace: Some("scale".to_owned()),
        ..Default::default()
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 3 {
        return Err("usage: scale_load ENDPOINTS PROVIDERS ALLOCATIONS [CONCURRENCY]".into());
    }
    let endpoints: Vec<String> = args[0].split(',').map(str::to_owned).collect();
    let providers: usize = args[1].parse()?;
    let allocations: u64 = args[2].parse()?;
    let concurrency: usize = args.get(3).map_or(Ok(256), |arg| arg.parse())?;
    let units = (allocations as usize * 5 / 4)
        .div_ceil(providers.max(1))
        .clamp(1, RESOURCES_PER_PROVIDER_MAX);
    if (units * providers) < allocations as usize {
        return Err(format!("{providers} providers of at most {RESOURCES_PER_PROVIDER_MAX} units cannot hold {allocations}").into());
    }
    let client = Client::new(ClientConfig::with_endpoints(endpoints))?;
    let started = Instant::now();

    let registered: Vec<_> = futures::stream::iter(0..providers)
        .map(|index| {
            let client = client.clone();
            async move { client.register_provider(&registration(index, units)).await }
        })
        .buffer_unordered(REGISTRATION_CONCURRENCY)
        .collect()
        .await;
    for outcome in registered {
        outcome?;
    }
    eprintln!("registered {providers} providers of {units} units in {:.1?}", started.elapsed());

    let next = Arc::new(AtomicU64::new(0));
    let placed = Arc::new(AtomicU64::new(0));
    let progress = {
        let placed = Arc::clone(&placed);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(PROGRESS_INTERVAL).await;
                eprintln!("placed {} in {:.0?}", placed.load(Ordering::Relaxed), started.elapsed());
            }
        })
    };
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (client, next, placed) = (client.clone(), Arc::clone(&next), Arc::clone(&placed));
            tokio::spawn(async move {
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= allocations {
                        return Ok::<(), qm_client::Error>(());
                    }
                    let reply = client.allocate(request(n)).await?;
                    if reply.status() != proto::api::AllocationStatus::Allocated {
                        eprintln!("allocation {n} was not placed: {:?}", reply.status());
                    }
                    placed.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await??;
    }
    progress.abort();
    println!(
        "loaded {allocations} allocations on {providers} providers in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
