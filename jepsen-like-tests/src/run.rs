//! [`run`]: one whole test, from starting the replicas to writing the report.
//!
//! Phases: with `--tls`, make the run's CA and certificates → lay out and
//! start the cluster (behind proxies) → set up the workload's providers →
//! clients and nemesis run until the time limit → clients drain → the
//! nemesis heals everything → the final read → every replica is killed (by
//! the pids started) and its log kept → check → report.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use qm_client::{Client, ClientConfig, HeartbeatLoop};
use tokio::sync::Mutex;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::cluster::TestCluster;
use crate::config::{defaults, RunConfig, WorkloadKind};
use crate::credentials::Credentials;
use crate::error::JepsenError;
use crate::events::{EventLog, EventWatcher};
use crate::history::HistoryRecorder;
use crate::nemesis::{Nemesis, NemesisSchedule};
use crate::report::{self, Results, TestDescription};
use crate::workload::providers::ProviderClients;
use crate::workload::{allocation, provider_ids, register, WorkerContext};

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

    // --- certificates (a TLS run), then the cluster
    let credentials = Credentials::for_run(&config)?;
    if let Some(dir) = credentials.dir() {
        info!(certs = %dir.display(), "mutual TLS: a fresh CA and certificates");
    }
    info!(nodes = config.nodes, seed = config.seed, tls = config.tls, out = %out.display(), "starting the cluster");
    let cluster = Arc::new(Mutex::new(TestCluster::start(&config, &credentials).await?));
    let history = Arc::new(HistoryRecorder::create(&out.join("history.jsonl"))?);
    let driven = drive(&config, &credentials, &cluster, &history).await;

    // --- stop everything this run started, whatever happened
    cluster.lock().await.stop(&out.join("nodes"))?;
    let (notes, events) = driven?;

    // --- check and report
    let ops = history.finish()?;
    if let Some(events) = &events {
        events.write(&out)?;
    }
    info!(operations = ops.len(), "checking the history");
    let mut checked = report::check(&test, &ops, events.as_ref(), notes);
    report::write(&out, &ops, &mut checked)?;
    Ok(RunOutcome {
        results: checked.results,
        out,
    })
}

/// Sets the workload up, runs clients and nemesis, heals, reads the final
/// state. Returns notes for the report, and with `--preemption` the
/// table's events as the watcher saw them.
async fn drive(
    config: &RunConfig,
    credentials: &Credentials,
    cluster: &Arc<Mutex<TestCluster>>,
    history: &Arc<HistoryRecorder>,
) -> Result<(Vec<String>, Option<EventLog>), JepsenError> {
    let endpoints = cluster.lock().await.endpoints();
    let admin_config = |endpoints: Vec<String>| ClientConfig {
        tls: credentials.admin(),
        ..ClientConfig::with_endpoints(endpoints)
    };
    // --- the event watcher first, from revision 1: it sees every entry.
    let watcher = match config.preemption {
        true => Some(EventWatcher::start(
            Client::new(admin_config(endpoints.clone())).map_err(JepsenError::cluster)?,
        )),
        false => None,
    };
    // --- providers: each registers and heartbeats through its own client
    let providers = ProviderClients::new(
        &provider_ids(config.workload),
        &ClientConfig::with_endpoints(endpoints.clone()),
        credentials,
    )?;
    match config.workload {
        WorkloadKind::Register => register::setup(&providers, config.units).await?,
        WorkloadKind::Allocation => {
            allocation::setup(&providers).await?;
            let admin = Client::new(ClientConfig {
                tls: credentials.admin(),
                ..ClientConfig::with_endpoints(endpoints.clone())
            })
            .map_err(JepsenError::cluster)?;
            allocation::set_quota(&admin).await?;
            if config.preemption {
                allocation::set_preemption(&admin).await?;
            }
        }
    }
    if config.policy {
        let admin = Client::new(ClientConfig {
            tls: credentials.admin(),
            ..ClientConfig::with_endpoints(endpoints.clone())
        })
        .map_err(JepsenError::cluster)?;
        set_worker_policy(&admin).await?;
    }
    let heartbeats: Vec<HeartbeatLoop> = providers.heartbeat_loops(Duration::from_millis(PROVIDER_HEARTBEAT_INTERVAL_MS));
    // The workers and the final read are consumers of namespace `default`.
    let consumer = |endpoints: Vec<String>| ClientConfig {
        tls: credentials.consumer(),
        ..ClientConfig::with_endpoints(endpoints)
    };
    let workers_config = consumer(endpoints);

    // --- clients and nemesis until the time limit
    let started = Instant::now();
    let end = started + config.time_limit();
    info!(seconds = config.time_limit_secs, workload = config.workload.name(), nemesis = %config.nemesis_flag(), "running");
    let mix = match config.preemption {
        true => allocation::PreemptionMix::On,
        false => allocation::PreemptionMix::Off,
    };
    let mut workers = Vec::new();
    if config.preemption {
        let admin = Client::new(admin_config(workers_config.endpoints.clone())).map_err(JepsenError::cluster)?;
        workers.push(tokio::spawn(allocation::run_quota_admin(admin, history.clone(), config.seed, end)));
    }
    for worker in 0..config.concurrency {
        let context = WorkerContext::new(
            worker,
            config.concurrency,
            &workers_config,
            history.clone(),
            config.seed,
            config.rate,
            end,
        )
        .map_err(JepsenError::cluster)?;
        workers.push(match config.workload {
            WorkloadKind::Register => tokio::spawn(register::run_worker(context, config.units)),
            WorkloadKind::Allocation => tokio::spawn(allocation::run_worker(context, mix)),
        });
    }
    let schedule = NemesisSchedule {
        kinds: config.nemeses.clone(),
        partitions: config.partitions.clone(),
        first_fault_after: Duration::from_secs_f64(defaults::FIRST_FAULT_AFTER_SECS),
        fault_mean: Duration::from_secs_f64(config.fault_secs),
        heal_mean: Duration::from_secs_f64(config.heal_secs),
        final_healed: Duration::from_secs_f64(defaults::FINAL_HEALED_SECS),
        faults_owed: config.faults_owed(),
        faults_max: config.kills,
    };
    let mut nemesis = Nemesis::new(cluster.clone(), history.clone(), config.seed, config.nodes).with_targets(config.targets);
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
    let reader = Client::new(consumer(endpoints)).map_err(JepsenError::cluster)?;
    info!("final read");
    let read = match config.workload {
        WorkloadKind::Register => register::final_read(&reader, history, config.units).await,
        WorkloadKind::Allocation => allocation::final_read(&reader, history).await,
    };
    if !read {
        warn!("the final read failed");
        notes.push("the final read failed: the cluster did not serve a linearizable read after healing".to_owned());
    }
    let events = match watcher {
        Some(watcher) => {
            let endpoints = cluster.lock().await.endpoints();
            let admin = Client::new(admin_config(endpoints)).map_err(JepsenError::cluster)?;
            Some(watcher.finish(&admin).await)
        }
        None => None,
    };
    drop(heartbeats);
    Ok((notes, events))
}

/// `--policy`: the workers' capability policy, bound to their certificate's
/// name. Generous enough to refuse nothing the workloads ask (any kind, any
/// provider, any priority, preemption allowed), with a total per kind so
/// that apply charges and checks every allocate too.
async fn set_worker_policy(admin: &Client) -> Result<(), JepsenError> {
    use qm_state_machine::policy::{Binding, Capability, PolicySpec};
    let spec = PolicySpec {
        name: "jepsen-workers".to_owned(),
        capability: Capability {
            max_held: [("cpu_cores".to_owned(), qm_state_machine::limits::QUOTA_MAX)].into(),
            ..Capability::unrestricted()
        },
        bindings: [Binding::CertName(crate::credentials::CONSUMER_NAME.to_owned())].into(),
    };
    crate::workload::with_final_retries(|| admin.set_policy(&spec))
        .await
        .map_err(|error| JepsenError::Setup {
            reason: format!("setting the workers' policy: {error}"),
        })?;
    info!(policy = %spec.name, "the workers run under a capability policy");
    Ok(())
}
