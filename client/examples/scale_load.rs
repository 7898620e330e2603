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
//! 100 requesters in namespace `scale`, without a lease. By default the
//! providers do not heartbeat: start the replicas with a provider failure
//! window longer than the run (`scripts/scale.sh` does). Prints one line,
//! `loaded ALLOCATIONS allocations on PROVIDERS providers in SECONDS s`,
//! after every allocation is placed; any error ends it with a failure.
//!
//! With `--heartbeat-ms MS` (`scripts/scale.sh --mass-failure`), every
//! provider heartbeats every MS from its registration on, and the loader
//! stays up after the load, keeping them alive, until SIGTERM or SIGINT.
//! With `--stop-on-usr1 N` as well, SIGUSR1 stops the heartbeats of the
//! first N providers at once (`scale-provider-00000` onwards: placement
//! fills the providers in id order, so these are the full ones) and prints
//! `stopped the heartbeats of N providers`: a mass failure on cue.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use qm_client::{proto, Client, ClientConfig};
use qm_state_machine::limits::RESOURCES_PER_PROVIDER_MAX;
use qm_state_machine::provider::{ProviderRegistration, ResourceSpec, Sharing};
use qm_state_machine::ResourceRequest;

/// Times one allocation or registration is asked again when its outcome is
/// unknown (no answer in time: on this shared machine a replica can stall
/// for seconds).
const UNKNOWN_OUTCOME_RETRIES_MAX: u32 = 10;
/// Registrations in flight at once.
const REGISTRATION_CONCURRENCY: usize = 32;
/// How often progress is printed (to standard error).
const PROGRESS_INTERVAL: Duration = Duration::from_secs(10);
const USAGE: &str = "usage: scale_load ENDPOINTS PROVIDERS ALLOCATIONS [CONCURRENCY] [--heartbeat-ms MS [--stop-on-usr1 N]]";

/// The optional flags after the positional arguments.
#[derive(Default)]
struct Heartbeats {
    /// Every provider heartbeats this often, and the loader stays up.
    every: Option<Duration>,
    /// SIGUSR1 stops the heartbeats of this many providers, the first ones.
    stopped_on_usr1: usize,
}

fn heartbeat_flags(flags: &[String]) -> Result<Heartbeats, Box<dyn std::error::Error>> {
    let mut heartbeats = Heartbeats::default();
    let mut flags = flags.iter();
    while let Some(flag) = flags.next() {
        let value = flags.next().ok_or(USAGE)?;
        match flag.as_str() {
            "--heartbeat-ms" => heartbeats.every = Some(Duration::from_millis(value.parse()?)),
            "--stop-on-usr1" => heartbeats.stopped_on_usr1 = value.parse()?,
            _ => return Err(USAGE.into()),
        }
    }
    if heartbeats.every.is_some_and(|every| every.is_zero()) || (heartbeats.stopped_on_usr1 > 0 && heartbeats.every.is_none()) {
        return Err(USAGE.into());
    }
    Ok(heartbeats)
}

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

/// Allocates `request`, asking again with the same request id while the
/// outcome is unknown: the table answers a repeat with the first outcome
/// (its dedupe window), so nothing is placed twice.
async fn allocate_surely(client: &Client, mut request: ResourceRequest) -> Result<proto::api::AllocationReply, qm_client::Error> {
    request.request_id = Some(uuid::Uuid::new_v4().to_string());
    let mut retries = 0;
    loop {
        match client.allocate(request.clone()).await {
            Err(error) if error.is_unknown() && retries < UNKNOWN_OUTCOME_RETRIES_MAX => {
                retries += 1;
                eprintln!("outcome unknown ({error}); asking again ({retries})");
            }
            outcome => return outcome,
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let positional = args.iter().take_while(|arg| !arg.starts_with("--")).count();
    if !(3..=4).contains(&positional) {
        return Err(USAGE.into());
    }
    let endpoints: Vec<String> = args[0].split(',').map(str::to_owned).collect();
    let providers: usize = args[1].parse()?;
    let allocations: u64 = args[2].parse()?;
    let concurrency: usize = args[..positional].get(3).map_or(Ok(256), |arg| arg.parse())?;
    let heartbeats = heartbeat_flags(&args[positional..])?;
    let units = (allocations as usize * 5 / 4)
        .div_ceil(providers.max(1))
        .clamp(1, RESOURCES_PER_PROVIDER_MAX);
    if (units * providers) < allocations as usize {
        return Err(format!("{providers} providers of at most {RESOURCES_PER_PROVIDER_MAX} units cannot hold {allocations}").into());
    }
    let client = Client::new(ClientConfig::with_endpoints(endpoints))?;
    let started = Instant::now();

    // Each provider heartbeats from its own registration on: registering
    // hundreds of large providers takes longer than a short failure window,
    // so a loop started after the last one would come too late for the
    // first. `buffered` keeps the loops in provider order (SIGUSR1 stops
    // the first ones).
    let heartbeat_every = heartbeats.every;
    let registered: Vec<_> = futures::stream::iter(0..providers)
        .map(|index| {
            let client = client.clone();
            async move {
                // Registering a provider again with the same resources changes nothing.
                let registration = registration(index, units);
                let mut retries = 0;
                loop {
                    match client.register_provider(&registration).await {
                        Err(error) if error.is_unknown() && retries < UNKNOWN_OUTCOME_RETRIES_MAX => {
                            retries += 1;
                            eprintln!("registration outcome unknown ({error}); registering again ({retries})");
                        }
                        Err(error) => return Err(error),
                        Ok(_) => return Ok(heartbeat_every.map(|every| client.heartbeat_loop(&registration.provider_id, every))),
                    }
                }
            }
        })
        .buffered(REGISTRATION_CONCURRENCY)
        .collect()
        .await;
    // Dropping a loop stops its heartbeats.
    let mut beating = Vec::with_capacity(providers);
    for outcome in registered {
        beating.extend(outcome?);
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
                    let reply = allocate_surely(&client, request(n)).await?;
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
    if heartbeats.every.is_some() {
        keep_beating(&mut beating, heartbeats.stopped_on_usr1).await?;
    }
    Ok(())
}

/// Keeps the providers' heartbeats going until SIGTERM or SIGINT; the first
/// SIGUSR1 stops the first `stopped_on_usr1` of them at once.
async fn keep_beating(beating: &mut Vec<qm_client::HeartbeatLoop>, stopped_on_usr1: usize) -> Result<(), Box<dyn std::error::Error>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut user = signal(SignalKind::user_defined1())?;
    let mut armed = stopped_on_usr1 > 0;
    println!("heartbeating {} providers", beating.len());
    loop {
        tokio::select! {
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
            _ = user.recv(), if armed => {
                armed = false;
                let stopped = stopped_on_usr1.min(beating.len());
                beating.drain(..stopped);
                // Standard output is line-buffered: the script sees this at once.
                println!("stopped the heartbeats of {stopped} providers");
            }
        }
    }
    println!("stopped heartbeating");
    Ok(())
}
