//! `qm bench`: load a running cluster through the client library and report
//! throughput and latency per operation type.
//!
//! ```text
//!  setup: register bench providers (units of kind `bench_slot`), heartbeat them
//!  closed loop: C workers, each: allocate → release → allocate → ...        (latency from send)
//!  open loop:   a pacer schedules op i at t0 + i/R; up to C in flight        (latency from the
//!               intended send time, so a stalled server cannot hide its queueing:
//!               no coordinated omission)
//!  teardown: one bulk release of the run's requester (its allocations and
//!            queued requests), then deregister the bench providers, which
//!            heartbeat until they are gone
//! ```
//!
//! The cluster is left as the bench found it: every request of a run is made
//! by the requester `qm-bench-<run id>` in namespace `qm-bench`, so the
//! teardown is one `ReleaseMatching` of that requester (a thousand short log
//! entries for a million allocations, not a million calls), and the
//! providers keep heartbeating until deregistered, so none is declared
//! failed and nothing is evacuated or re-queued behind the bench's back.
//!
//! Every acknowledged allocation is durable on a majority's disk before the
//! server answers, so the figures include fsync and replication.
//!
//! A long run (`scripts/soak.sh`) also writes one JSON line per interval
//! ([`IntervalReports`]): operations, errors and latency percentiles of that
//! interval alone, so a p99 that drifts over an hour shows where the
//! whole-run percentiles would average it away.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use qm_state_machine::provider::{ProviderRegistration, ResourceSpec, Sharing};
use qm_state_machine::ResourceRequest;
use serde::Serialize;
use tokio::sync::Semaphore;

use qm_client::proto::api;
use qm_client::Error;
use qm_client::{Client, Consistency};

/// The kind bench units are registered as, so a bench never takes units real
/// requesters could use.
pub const BENCH_KIND: &str = "bench_slot";
/// Units per bench provider: keeps each registration entry well under the
/// log's inline entry size.
pub const UNITS_PER_PROVIDER: u64 = 2_000;
/// The most units a bench may register.
pub const UNITS_MAX: u64 = 10_000_000;
/// The most workers (closed loop) or operations in flight (open loop).
pub const CONCURRENCY_MAX: usize = 10_000;
/// The highest open-loop rate.
pub const RATE_MAX: u64 = 1_000_000;
/// Latencies above this are recorded as this (the histogram's range).
pub const LATENCY_RECORDED_MAX_US: u64 = 60_000_000;
/// Deregistrations (and heartbeats) in flight at once.
pub const TEARDOWN_CONCURRENCY: usize = 64;
/// How often bench providers heartbeat.
pub const HEARTBEAT_INTERVAL_MS: u64 = 1_000;
/// The namespace of every bench request.
pub const BENCH_NAMESPACE: &str = "qm-bench";
/// The shortest interval of interval reports.
pub const INTERVAL_MIN: Duration = Duration::from_secs(1);

/// What each operation does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Workload {
    /// Allocate one unit, then release it.
    AllocRelease,
    /// Allocate one unit and keep it (until the units run out; they are
    /// released at the end).
    AllocOnly,
    /// Allocate, read it back (linearizable get), release.
    Mixed,
}

/// One bench run.
#[derive(Clone, Debug)]
pub struct BenchConfig {
    pub duration: Duration,
    /// Run before measuring, not counted.
    pub warmup: Duration,
    /// Closed loop: workers. Open loop: operations in flight at most.
    pub concurrency: usize,
    /// Workload operations started per second (open loop; an alloc-release
    /// pair is one operation of two calls); `None` is the closed loop.
    pub rate: Option<u64>,
    /// Units to register for the bench.
    pub units: u64,
    pub workload: Workload,
    /// One JSON line per interval of the measured window, appended to a file.
    pub intervals: Option<IntervalReports>,
}

/// Where and how often a run reports each interval on its own.
#[derive(Clone, Debug)]
pub struct IntervalReports {
    pub path: PathBuf,
    pub every: Duration,
}

/// One line of the interval reports.
#[derive(Clone, Debug, Serialize)]
pub struct IntervalReport {
    /// End of the interval, seconds after the end of the warm-up.
    pub at_s: f64,
    pub seconds: f64,
    /// Operations that finished in the interval (each call counts once).
    pub ops: u64,
    pub ops_per_s: f64,
    pub latency: BTreeMap<&'static str, LatencySummary>,
    pub errors: BTreeMap<String, u64>,
}

impl BenchConfig {
    pub fn validate(&self) -> Result<(), Error> {
        let invalid = |field: &str, reason: String| {
            Err(Error::InvalidArgument {
                field: field.to_owned(),
                reason,
            })
        };
        if self.duration.is_zero() {
            return invalid("duration", "must be positive".into());
        }
        if self.concurrency == 0 || self.concurrency > CONCURRENCY_MAX {
            return invalid("concurrency", format!("must be 1..={CONCURRENCY_MAX}"));
        }
        if self.rate.is_some_and(|rate| rate == 0 || rate > RATE_MAX) {
            return invalid("rate", format!("must be 1..={RATE_MAX}"));
        }
        if let Some(intervals) = &self.intervals {
            if intervals.every < INTERVAL_MIN {
                return invalid("interval-s", format!("must be at least {} s", INTERVAL_MIN.as_secs()));
            }
        }
        if self.units == 0 || self.units > UNITS_MAX {
            return invalid("units", format!("must be 1..={UNITS_MAX}"));
        }
        if self.workload != Workload::AllocOnly && self.units < self.concurrency as u64 {
            return invalid(
                "units",
                format!("must be at least --concurrency ({}) so no request queues", self.concurrency),
            );
        }
        Ok(())
    }
}

/// Latency of one operation type, in milliseconds.
#[derive(Clone, Debug, Serialize)]
pub struct LatencySummary {
    pub count: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

/// What a run measured.
#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    pub workload: Workload,
    /// `closed` or `open`.
    pub mode: &'static str,
    pub concurrency: usize,
    pub rate: Option<u64>,
    /// From the end of the warm-up to the last completion (at least the
    /// configured duration).
    pub duration_s: f64,
    /// Operations completed in the measured window (each call counts once).
    pub ops: u64,
    pub ops_per_s: f64,
    /// Allocations acknowledged as allocated per second.
    pub allocations_per_s: f64,
    pub latency: BTreeMap<&'static str, LatencySummary>,
    /// Failed operations by error kind.
    pub errors: BTreeMap<String, u64>,
}

/// Progress for a caller's display: operations done so far.
#[derive(Default)]
pub struct Progress {
    pub ops: AtomicU64,
}

/// What the workers share while measuring.
struct Recorder {
    measuring_from: Instant,
    histograms: Mutex<BTreeMap<&'static str, Histogram<u64>>>,
    errors: Mutex<BTreeMap<String, u64>>,
    ops: AtomicU64,
    allocations: AtomicU64,
    /// When the last counted operation finished, in µs after `measuring_from`:
    /// an open loop that falls behind finishes after its deadline, and its
    /// throughput is what it completed over that longer time.
    last_finished_us: AtomicU64,
    progress: Arc<Progress>,
    /// The current interval, when interval reports are on.
    interval: Option<Mutex<IntervalWindow>>,
}

/// What the current interval has seen so far.
#[derive(Default)]
struct IntervalWindow {
    histograms: BTreeMap<&'static str, Histogram<u64>>,
    errors: BTreeMap<String, u64>,
    ops: u64,
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_RECORDED_MAX_US, 3).expect("valid bounds")
}

impl Recorder {
    fn record(&self, operation: &'static str, started: Instant, finished: Instant, outcome: Result<(), &Error>) {
        self.progress.ops.fetch_add(1, Ordering::Relaxed);
        if started < self.measuring_from {
            return;
        }
        self.ops.fetch_add(1, Ordering::Relaxed);
        self.last_finished_us
            .fetch_max((finished - self.measuring_from).as_micros() as u64, Ordering::Relaxed);
        let micros = (finished - started).as_micros().min(u128::from(LATENCY_RECORDED_MAX_US)) as u64;
        match outcome {
            Ok(()) => {
                let mut histograms = self.histograms.lock().expect("histograms");
                histograms
                    .entry(operation)
                    .or_insert_with(new_histogram)
                    .saturating_record(micros.max(1));
            }
            Err(error) => *self.errors.lock().expect("errors").entry(error_kind(error)).or_default() += 1,
        }
        if let Some(interval) = &self.interval {
            let mut window = interval.lock().expect("interval");
            window.ops += 1;
            match outcome {
                Ok(()) => window
                    .histograms
                    .entry(operation)
                    .or_insert_with(new_histogram)
                    .saturating_record(micros.max(1)),
                Err(error) => *window.errors.entry(error_kind(error)).or_default() += 1,
            }
        }
    }

    /// Ends the current interval: its report, and a fresh window.
    fn take_interval(&self, at: Duration, seconds: f64) -> Option<IntervalReport> {
        let window = std::mem::take(&mut *self.interval.as_ref()?.lock().expect("interval"));
        Some(IntervalReport {
            at_s: at.as_secs_f64(),
            seconds,
            ops: window.ops,
            ops_per_s: window.ops as f64 / seconds.max(f64::EPSILON),
            latency: window
                .histograms
                .iter()
                .map(|(operation, histogram)| (*operation, summarize(histogram)))
                .collect(),
            errors: window.errors,
        })
    }
}

/// Writes an interval report every `reports.every` of the measured window,
/// until aborted; the run writes the last, shorter one itself.
fn report_intervals(recorder: Arc<Recorder>, reports: IntervalReports) -> tokio::task::JoinHandle<Result<(), Error>> {
    tokio::spawn(async move {
        // (The warm-up's operations never enter a window: `record` skips them.)
        let mut ticks = tokio::time::interval_at((recorder.measuring_from + reports.every).into(), reports.every);
        loop {
            ticks.tick().await;
            let at = recorder.measuring_from.elapsed();
            if let Some(report) = recorder.take_interval(at, reports.every.as_secs_f64()) {
                append_interval(&reports.path, &report)?;
            }
        }
    })
}

/// Stops the interval reporter and writes the last, shorter interval (from
/// the last report to the end of the window); the reporter's own failure
/// to write, if any, is the result.
async fn finish_intervals(
    recorder: &Recorder,
    reporter: tokio::task::JoinHandle<Result<(), Error>>,
    reports: &IntervalReports,
) -> Result<(), Error> {
    if reporter.is_finished() {
        reporter.await.unwrap_or(Ok(()))?;
    } else {
        reporter.abort();
    }
    let at = recorder.measuring_from.elapsed();
    let since = Duration::from_secs_f64(at.as_secs_f64() % reports.every.as_secs_f64());
    match recorder.take_interval(at, since.as_secs_f64()) {
        Some(report) if report.ops > 0 => append_interval(&reports.path, &report),
        _ => Ok(()),
    }
}

fn append_interval(path: &std::path::Path, report: &IntervalReport) -> Result<(), Error> {
    let cannot = |error: std::io::Error| Error::InvalidArgument {
        field: "intervals-to".to_owned(),
        reason: format!("cannot append to {}: {error}", path.display()),
    };
    let mut file = std::fs::OpenOptions::new().create(true).append(true).open(path).map_err(cannot)?;
    let line = serde_json::to_string(report).expect("interval reports serialize");
    writeln!(file, "{line}").map_err(cannot)
}

fn error_kind(error: &Error) -> String {
    let kind = match error {
        Error::InvalidArgument { .. } => "invalid_argument",
        Error::NotFound { .. } => "not_found",
        Error::Rejected { .. } => "rejected",
        Error::StillQueued { .. } => "still_queued",
        Error::Conflict { .. } => "conflict",
        Error::Unavailable { .. } => "unavailable",
        Error::Unknown { .. } => "unknown",
        Error::Transport { .. } => "transport",
        _ => "other",
    };
    kind.to_owned()
}

/// Runs one bench against `client`'s cluster.
pub async fn run(client: Client, config: BenchConfig, progress: Arc<Progress>) -> Result<BenchReport, Error> {
    config.validate()?;
    let run_id = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let providers = register_providers(&client, &run_id, config.units).await?;
    let heartbeats = heartbeat_providers(client.clone(), providers.clone());
    let started = Instant::now();
    let recorder = Arc::new(Recorder {
        measuring_from: started + config.warmup,
        histograms: Mutex::default(),
        errors: Mutex::default(),
        ops: AtomicU64::new(0),
        allocations: AtomicU64::new(0),
        last_finished_us: AtomicU64::new(0),
        progress,
        interval: config.intervals.as_ref().map(|_| Mutex::default()),
    });
    let interval_reporter = config
        .intervals
        .clone()
        .map(|reports| (report_intervals(recorder.clone(), reports.clone()), reports));
    let deadline = started + config.warmup + config.duration;
    let requester = format!("qm-bench-{run_id}");
    match config.rate {
        None => closed_loop(&client, &config, &requester, &recorder, deadline).await,
        Some(rate) => open_loop(&client, &config, &requester, rate, &recorder, deadline).await,
    }
    let last_finished = Duration::from_micros(recorder.last_finished_us.load(Ordering::Relaxed));
    let measured = deadline
        .saturating_duration_since(recorder.measuring_from)
        .max(last_finished)
        .as_secs_f64()
        .max(f64::EPSILON);
    let intervals_result = match interval_reporter {
        Some((reporter, reports)) => finish_intervals(&recorder, reporter, &reports).await,
        None => Ok(()),
    };
    // The teardown runs whatever became of the interval reports: the
    // cluster is left as the bench found it.
    let teardown_result = teardown(&client, &requester, &providers).await;
    // Only now: a provider that stopped heartbeating while its allocations
    // were still being released would be declared failed and evacuated.
    heartbeats.abort();
    teardown_result?;
    intervals_result?;
    let latency = recorder
        .histograms
        .lock()
        .expect("histograms")
        .iter()
        .map(|(operation, histogram)| (*operation, summarize(histogram)))
        .collect();
    let ops = recorder.ops.load(Ordering::Relaxed);
    let errors = recorder.errors.lock().expect("errors").clone();
    Ok(BenchReport {
        workload: config.workload,
        mode: if config.rate.is_some() { "open" } else { "closed" },
        concurrency: config.concurrency,
        rate: config.rate,
        duration_s: measured,
        ops,
        ops_per_s: ops as f64 / measured,
        allocations_per_s: recorder.allocations.load(Ordering::Relaxed) as f64 / measured,
        latency,
        errors,
    })
}

fn summarize(histogram: &Histogram<u64>) -> LatencySummary {
    let ms = |micros: u64| micros as f64 / 1000.0;
    LatencySummary {
        count: histogram.len(),
        p50_ms: ms(histogram.value_at_quantile(0.50)),
        p90_ms: ms(histogram.value_at_quantile(0.90)),
        p99_ms: ms(histogram.value_at_quantile(0.99)),
        p999_ms: ms(histogram.value_at_quantile(0.999)),
        max_ms: ms(histogram.max()),
    }
}

async fn closed_loop(client: &Client, config: &BenchConfig, requester: &str, recorder: &Arc<Recorder>, deadline: Instant) {
    let workers: Vec<_> = (0..config.concurrency)
        .map(|_| {
            let (client, recorder, workload) = (client.clone(), recorder.clone(), config.workload);
            let requester = requester.to_owned();
            tokio::spawn(async move {
                while Instant::now() < deadline {
                    one_operation(&client, workload, &requester, &recorder, Instant::now()).await;
                }
            })
        })
        .collect();
    for worker in workers {
        let _ = worker.await;
    }
}

async fn open_loop(client: &Client, config: &BenchConfig, requester: &str, rate: u64, recorder: &Arc<Recorder>, deadline: Instant) {
    let in_flight = Arc::new(Semaphore::new(config.concurrency));
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for sequence in 0u64.. {
        let intended = start + interval.mul_f64(sequence as f64);
        if intended >= deadline {
            break;
        }
        tokio::time::sleep_until(intended.into()).await;
        // Waiting for a slot counts towards latency: it is measured from `intended`.
        let permit = in_flight.clone().acquire_owned().await.expect("semaphore open");
        let (client, recorder, workload) = (client.clone(), recorder.clone(), config.workload);
        let requester = requester.to_owned();
        tasks.spawn(async move {
            one_operation(&client, workload, &requester, &recorder, intended).await;
            drop(permit);
        });
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
}

/// One unit of work of the workload; the first call's latency counts from `intended`.
async fn one_operation(client: &Client, workload: Workload, requester: &str, recorder: &Recorder, intended: Instant) {
    let request = bench_request(requester);
    let allocated = client.allocate(request).await;
    let finished = Instant::now();
    let reply = match allocated {
        Ok(reply) => {
            recorder.record("allocate", intended, finished, Ok(()));
            if reply.status() == api::AllocationStatus::Allocated && intended >= recorder.measuring_from {
                recorder.allocations.fetch_add(1, Ordering::Relaxed);
            }
            reply
        }
        Err(error) => {
            recorder.record("allocate", intended, finished, Err(&error));
            return;
        }
    };
    if reply.status() != api::AllocationStatus::Allocated {
        // Queued (units ran out) or rejected: nothing to release but the request.
        if reply.status() == api::AllocationStatus::Queued {
            let _ = client.release(&reply.request_id).await;
        }
        return;
    }
    if workload == Workload::Mixed {
        let started = Instant::now();
        let read = client.get(&reply.allocation_id, Consistency::Linearizable).await.map(drop);
        recorder.record("get", started, Instant::now(), read.as_ref().map(|_| ()));
    }
    match workload {
        // Kept until the teardown's bulk release of the run's requester.
        Workload::AllocOnly => {}
        Workload::AllocRelease | Workload::Mixed => {
            let started = Instant::now();
            let released = client.release(&reply.allocation_id).await.map(drop);
            recorder.record("release", started, Instant::now(), released.as_ref().map(|_| ()));
        }
    }
}

fn bench_request(requester: &str) -> ResourceRequest {
    ResourceRequest {
        request_id: Some(uuid::Uuid::new_v4().to_string()),
        requester_id: Some(requester.to_owned()),
        resource_requirements: Some(BTreeMap::from([(BENCH_KIND.to_owned(), 1.into())])),
        priority: Some(0.into()),
        namespace: Some(BENCH_NAMESPACE.into()),
        ..Default::default()
    }
}

async fn register_providers(client: &Client, run_id: &str, units: u64) -> Result<Vec<String>, Error> {
    let mut providers = Vec::new();
    let mut remaining = units;
    for index in 0.. {
        if remaining == 0 {
            break;
        }
        let count = remaining.min(UNITS_PER_PROVIDER);
        remaining -= count;
        let provider_id = format!("qm-bench-{run_id}-{index}");
        let registration = ProviderRegistration {
            provider_id: provider_id.clone(),
            labels: BTreeMap::from([("qm-bench".to_owned(), run_id.to_owned())]),
            resources: (0..count)
                .map(|unit| ResourceSpec {
                    resource_id: format!("slot_{unit}"),
                    kind: BENCH_KIND.to_owned(),
                    capacity: 1,
                    labels: BTreeMap::new(),
                    sharing: Some(Sharing::Exclusive),
                })
                .collect(),
            confirms_allocations: false,
            address: None,
            port: None,
        };
        client.register_provider(&registration).await?;
        providers.push(provider_id);
    }
    Ok(providers)
}

/// Keeps the bench providers alive: a silent provider would be declared
/// failed. Concurrently, so that 500 providers each heartbeat within the
/// interval even while the cluster is busy with the teardown.
fn heartbeat_providers(client: Client, providers: Vec<String>) -> tokio::task::JoinHandle<()> {
    use futures::StreamExt;
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(Duration::from_millis(HEARTBEAT_INTERVAL_MS));
        loop {
            interval.tick().await;
            futures::stream::iter(&providers)
                .for_each_concurrent(TEARDOWN_CONCURRENCY, |provider_id| {
                    let client = &client;
                    async move {
                        let _ = client.heartbeat(provider_id, Vec::new()).await;
                    }
                })
                .await;
        }
    })
}

/// Releases everything the run's requester holds or waits for, in one bulk
/// release, then removes the bench providers (empty by then, so nothing is
/// evacuated).
async fn teardown(client: &Client, requester: &str, providers: &[String]) -> Result<(), Error> {
    use futures::StreamExt;
    client.release_matching(BENCH_NAMESPACE, requester, "").await?;
    futures::stream::iter(providers)
        .for_each_concurrent(TEARDOWN_CONCURRENCY, |provider_id| async move {
            let _ = client.deregister_provider(provider_id).await;
        })
        .await;
    Ok(())
}
