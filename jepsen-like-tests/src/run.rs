//! [`run`]: one whole test, from starting the replicas to writing the report.
//!
//! Phases: lay out and start the cluster (behind proxies) → set up the
//! workload's providers → clients and nemesis run until the time limit →
//! clients drain → the nemesis heals everything → the final read → every
//! replica is killed (by the pids started) and its log kept → check → report.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use qm_client::{Client, ClientConfig, HeartbeatLoop};
use tokio::sync::Mutex;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::cluster::TestCluster;
use crate::config::{defaults, RunConfig, WorkloadKind};
use crate::error::JepsenError;
use crate::history::HistoryRecorder;
use crate::nemesis::{Nemesis, NemesisSchedule};
use crate::report::{self, Results, TestDescription};
use crate::workload::{allocation, register, WorkerContext};

/// How long clients may take to finish their last operation after the time
/// limit (a call's deadline plus its backoff is well under this). An
/// operation still running then is cut off and counts as `info`.
pub const WORKER_DRAIN_TIMEOUT_MS: u64 = 30_000;
/// Providers' heartbeat interval.
pub const PROVIDER_HEARTBEAT_INTERVAL_MS: u64 = 1_000;

/// A finished run: its verdict and where the report is.
pub struct RunOutcome {
    pub results: Results,
    pub out: PathBuf,
}

/// Runs one test as `config` says and writes its report to `config.out`.
pub async fn run(config: RunConfig) -> Result<RunOutcome, JepsenError> {
    config.validate()?;
    let out = config.out.clone();
    std::fs::create_dir_all(&out).map_err(JepsenError::io(&out))?;
    let test = TestDescription::new(config.clone());
    report::write_test(&out, &test)?;

    // --- start the cluster
    info!(nodes = config.nodes, seed = config.seed, out = %out.display(), "starting the cluster");
    let cluster = Arc::new(Mutex::new(TestCluster::start(&config).await?));
    let history = Arc::new(HistoryRecorder::create(&out.join("history.jsonl"))?);
    let driven = drive(&config, &cluster, &history).await;

    // --- stop everything this run started, whatever happened
    cluster.lock().await.stop(&out.join("nodes"))?;
    let notes = driven?;

    // --- check and report
    let ops = history.finish()?;
    info!(operations = ops.len(), "checking the history");
    let mut checked = report::check(&test, &ops, notes);
    report::write(&out, &ops, &mut checked)?;
    Ok(RunOutcome {
        results: checked.results,
        out,
    })
}

/// Sets the workload up, runs clients and nemesis, heals, reads the final
/// state. Returns notes for the report.
async fn drive(config: &RunConfig, cluster: &Arc<Mutex<TestCluster>>, history: &Arc<HistoryRecorder>) -> Result<Vec<String>, JepsenError> {
    let endpoints = cluster.lock().await.endpoints();
    let setup = Client::new(ClientConfig::with_endpoints(endpoints.clone())).map_err(JepsenError::cluster)?;
    let providers: Vec<String> = match config.workload {
        WorkloadKind::Register => {
            register::setup(&setup, config.units).await?;
            vec![register::PROVIDER_ID.to_owned()]
        }
        WorkloadKind::Allocation => {
            allocation::setup(&setup).await?;
            allocation::registrations()
                .into_iter()
                .map(|registration| registration.provider_id)
                .collect()
        }
    };
    let heartbeats: Vec<HeartbeatLoop> = providers
        .iter()
        .map(|provider| setup.heartbeat_loop(provider, Duration::from_millis(PROVIDER_HEARTBEAT_INTERVAL_MS)))
        .collect();

    // --- clients and nemesis until the time limit
    let started = Instant::now();
    let end = started + config.time_limit();
    info!(seconds = config.time_limit_secs, workload = config.workload.name(), nemesis = %config.nemesis_flag(), "running");
    let mut workers = Vec::new();
    for worker in 0..config.concurrency {
        let context = WorkerContext::new(
            worker,
            config.concurrency,
            &endpoints,
            history.clone(),
            config.seed,
            config.rate,
            end,
        )
        .map_err(JepsenError::cluster)?;
        workers.push(match config.workload {
            WorkloadKind::Register => tokio::spawn(register::run_worker(context, config.units)),
            WorkloadKind::Allocation => tokio::spawn(allocation::run_worker(context)),
        });
    }
    let schedule = NemesisSchedule {
        kinds: config.nemeses.clone(),
        partitions: config.partitions.clone(),
        first_fault_after: Duration::from_secs_f64(defaults::FIRST_FAULT_AFTER_SECS),
        fault_mean: Duration::from_secs_f64(config.fault_secs),
        heal_mean: Duration::from_secs_f64(config.heal_secs),
        final_healed: Duration::from_secs_f64(defaults::FINAL_HEALED_SECS),
    };
    let mut nemesis = Nemesis::new(cluster.clone(), history.clone(), config.seed, config.nodes);
    let nemesis_task = tokio::spawn(async move {
        nemesis.run(&schedule, started, end).await;
        nemesis
    });

    // --- drain the clients
    let mut notes = Vec::new();
    let drain_deadline = end + Duration::from_millis(WORKER_DRAIN_TIMEOUT_MS);
    for worker in workers {
        let abort = worker.abort_handle();
        if tokio::time::timeout_at(drain_deadline, worker).await.is_err() {
            abort.abort();
            notes.push("a client was still running its last operation at the drain deadline; it counts as info".to_owned());
        }
    }

    // --- heal everything, then read the final state
    let mut nemesis = nemesis_task
        .await
        .map_err(|error| JepsenError::cluster(format!("the nemesis panicked: {error}")))?;
    info!("healing the cluster");
    nemesis.heal_everything().await;
    let endpoints = cluster.lock().await.endpoints();
    let reader = Client::new(ClientConfig::with_endpoints(endpoints)).map_err(JepsenError::cluster)?;
    info!("final read");
    let read = match config.workload {
        WorkloadKind::Register => register::final_read(&reader, history, config.units).await,
        WorkloadKind::Allocation => allocation::final_read(&reader, history).await,
    };
    if !read {
        warn!("the final read failed");
        notes.push("the final read failed: the cluster did not serve a linearizable read after healing".to_owned());
    }
    drop(heartbeats);
    Ok(notes)
}
