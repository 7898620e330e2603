//! [`run`]: start one replica on a bound listener and serve until `shutdown`.
//!
//! ```text
//!  listener ─▶ [rustls, mutual TLS] ─▶ tonic ─┬─ quartermaster.v1 (ApiService) ─▶ Node::propose / read_barrier
//!                                             ├─ quartermaster.raft.v1 (RaftRpcServer) ─▶ openraft
//!                                             ├─ grpc.health.v1 (SERVING while a leader is known)
//!                                             └─ grpc.reflection (v1 and v1alpha)
//!  every service admits each call through security::Guard (role, namespace, provider) first
//!  openraft ─▶ LogStore (sled, flushed per append) / StateMachineStore (AllocationTable)
//!  background: leader duties, prompt elections, bootstrap, health
//!  --http-listen ─▶ [rustls, mutual TLS] ─▶ axum (crate::http): JSON API, Consul catalog, /metrics ─▶ the same api handlers
//!  --metrics-listen ─▶ [rustls, mutual TLS] ─▶ axum: /metrics only
//!  with TLS: ReloadableTls reloads the certificate, key, CA and CRL on SIGHUP or a change of their files
//! ```

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::proto::raft_server::RaftServer;
use anyhow::Context;
use openraft::{BasicNode, SnapshotPolicy};
use qm_api::proto::api::quartermaster_client::QuartermasterClient;
use qm_api::proto::api::quartermaster_server::QuartermasterServer;
use qm_api::proto::api::ClusterStatusRequest;
use qm_api::proto::FILE_DESCRIPTOR_SET;
use qm_state_machine::TableConfig;
use tokio::net::TcpListener;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::server::TcpIncoming;
use tracing::{debug, info, warn};

use crate::api::ApiService;
use crate::config::NodeConfig;
use crate::consensus::announce::cluster_id_at_initialization;
use crate::consensus::raft_writer::RaftBatchWriter;
use crate::consensus::{duties, prompt_election};
use crate::consensus::{HeartbeatBook, LeaderContact, Node, Proposer};
use crate::http::{self, replica_health::ReplicaHealth, HttpApi};
use crate::metrics::Metrics;
use crate::network::client::PeerNetwork;
use crate::network::server::RaftRpcServer;
use crate::security::audit::AuditLog;
use crate::security::reload::ReloadableTls;
use crate::security::{handshakes, Call, Guard, MutualTls};
use crate::storage::fault::StorageFault;
use crate::storage::{self, SnapshotRequests};
use crate::types::Raft;

/// How long a stopping replica lets open calls and streams finish after
/// SIGTERM before it closes them: in-flight unary calls take well under the
/// request timeout's worth; a client's stream is reopened elsewhere.
pub const SHUTDOWN_GRACE_MS: u64 = 2_000;

/// How often an uninitialised replica probes its peers before bootstrapping.
pub const BOOTSTRAP_PROBE_INTERVAL_MS: u64 = 200;
/// How long a peer probe may take.
pub const BOOTSTRAP_PROBE_TIMEOUT_MS: u64 = 500;

/// Runs a replica on `listener` until `shutdown` completes.
///
/// A replica whose disk fails (full, or failing writes) stays up answering
/// UNAVAILABLE and NOT_SERVING while its Raft core is stopped, probes the
/// disk, and once the disk takes writes again stops that Raft instance and
/// serves again on the same listener from what its data dir holds (see
/// [`crate::storage::fault`]). Each such pass is one `serve_replica`.
pub async fn run(config: NodeConfig, listener: TcpListener, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
    let (tls, guard) = secure(&config)?;
    let audit = Arc::new(match &config.audit {
        Some(destination) => {
            let audit = AuditLog::start(config.id, destination).context("--audit-log")?;
            info!(?destination, "audit trail on");
            audit
        }
        None => AuditLog::off(),
    });
    if config.unsafe_stale_reads {
        warn!("--unsafe-stale-reads is on: reads skip the read index and may be stale. This switch exists only to prove the fault-injection checkers; never use it in production");
    }
    let (signalled, stop) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = signalled.send(true);
    });
    // Kept open across passes (each pass serves a duplicate of it), so that
    // the port stays this replica's while its storage is reopened.
    let listener = listener.into_std().context("the listener")?;
    let mut reopened = false;
    loop {
        let pass_listener = TcpListener::from_std(listener.try_clone().context("duplicating the listener")?).context("the listener")?;
        let secured = Secured {
            tls: tls.clone(),
            guard: guard.clone(),
            audit: audit.clone(),
        };
        match serve_replica(&config, pass_listener, &secured, stop.clone(), reopened).await? {
            Served::Stopped => return Ok(()),
            Served::DiskRecovered => {
                info!(data_dir = %config.data_dir.display(), "the disk takes writes again: opening the data dir again");
                reopened = true;
            }
        }
    }
}

/// What every pass of [`serve_replica`] shares: TLS, the guard, the audit trail.
struct Secured {
    tls: Option<Arc<ReloadableTls>>,
    guard: Guard,
    audit: Arc<AuditLog>,
}

/// How one pass of [`serve_replica`] ended.
enum Served {
    /// `shutdown` completed.
    Stopped,
    /// The storage had failed and the disk takes writes again: serve anew.
    DiskRecovered,
}

/// Opens the data dir, on a pass after a disk fault again and again until
/// it opens or the replica is told to stop (the first pass reports a data
/// dir that does not open, as before).
async fn open_storage(
    config: &NodeConfig,
    reopened: bool,
    stop: &mut tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<Option<(storage::LogStore, storage::StateMachineStore)>> {
    let table_config = TableConfig {
        event_history_max: config.event_history_max,
        ..TableConfig::default()
    };
    loop {
        match storage::open(&config.data_dir, table_config.clone()).await {
            Ok(opened) => return Ok(Some(opened)),
            Err(error) if reopened => {
                warn!(%error, data_dir = %config.data_dir.display(), "the data dir does not open again yet; retrying")
            }
            Err(error) => return Err(error.into()),
        }
        tokio::select! {
            _ = stop.wait_for(|stopped| *stopped) => return Ok(None),
            () = tokio::time::sleep(Duration::from_millis(storage::fault::DISK_PROBE_INTERVAL_MS)) => {}
        }
    }
}

/// Serves one Raft instance on the data dir until `stop` or a disk fault
/// the disk has recovered from.
async fn serve_replica(
    config: &NodeConfig,
    listener: TcpListener,
    secured: &Secured,
    mut stop: tokio::sync::watch::Receiver<bool>,
    reopened: bool,
) -> anyhow::Result<Served> {
    let Secured { tls, guard, audit } = secured;
    let (tls, guard, audit) = (tls.clone(), guard.clone(), audit.clone());
    let Some((log_store, state_machine)) = open_storage(config, reopened, &mut stop).await? else {
        return Ok(Served::Stopped);
    };
    let truncations = log_store.truncations();
    let identity = log_store.cluster_identity()?;
    let formats = crate::consensus::announce::FormatVersions::claimed(config.test_format_version_offset);
    if config.test_format_version_offset != 0 {
        warn!(%formats, "TEST ONLY: announcing format versions other than this build's (--test-format-version-offset)");
    }
    let peers = Arc::new(crate::consensus::announce::PeerBook::default());
    let state = state_machine.reader();
    let snapshot_requests = state_machine.snapshot_requests(
        config.snapshot_every_commands,
        std::time::Duration::from_millis(config.snapshot_every_apply_ms),
    );
    let raft_config = openraft::Config {
        cluster_name: "quartermaster".to_owned(),
        heartbeat_interval: config.heartbeat_interval_ms,
        election_timeout_min: config.election_timeout_min_ms,
        election_timeout_max: config.election_timeout_max_ms,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(config.snapshot_every_entries),
        max_in_snapshot_log_to_keep: config.log_kept_behind_snapshot_entries,
        ..Default::default()
    }
    .validate()
    .context("raft configuration")?;
    let raft_started = std::time::Instant::now();
    let raft = Raft::new(
        config.id,
        Arc::new(raft_config),
        PeerNetwork::new(config.listen, tls.clone()).announcing(config.id, identity.clone(), formats, peers.clone()),
        log_store,
        state_machine,
    )
    .await
    .context("starting raft")?;
    // openraft applies the committed entries past the snapshot in `Raft::new`.
    // (Its metrics do not show them yet: they are reported from its task.)
    info!(elapsed_ms = raft_started.elapsed().as_millis() as u64, "raft started");
    let leader_contact = Arc::new(LeaderContact::default());
    let node = Arc::new(Node {
        id: config.id,
        config: config.clone(),
        raft: raft.clone(),
        proposer: Proposer::start(
            RaftBatchWriter::new(raft.clone(), truncations, config.data_dir.clone()),
            Duration::from_millis(config.request_timeout_ms),
        ),
        state,
        heartbeats: Arc::new(Mutex::new(HeartbeatBook::default())),
        metrics: Metrics::default(),
        leader_contact: leader_contact.clone(),
        identity: identity.clone(),
        formats,
        peers: peers.clone(),
        tls: tls.clone(),
    });
    info!(node_id = config.id, listen = %config.listen, data_dir = %config.data_dir.display(), "replica starting");

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    let health_reporter_for_faults = health_reporter.clone();
    // Both reflection versions: grpcurl and newer clients speak v1, Python's
    // grpcio-reflection and other older clients v1alpha.
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("gRPC reflection")?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .context("gRPC reflection (v1alpha)")?;
    let mut background = vec![
        tokio::spawn(duties::run_duties(node.clone())),
        tokio::spawn(prompt_election::run_prompt_elections(node.clone())),
        tokio::spawn(bootstrap(node.clone(), tls.clone())),
        tokio::spawn(report_health(node.clone(), health_reporter)),
        tokio::spawn(take_snapshots_when_asked(raft.clone(), snapshot_requests)),
    ];
    let (storage_failed, mut disk_recovered) = tokio::sync::oneshot::channel();
    background.push(tokio::spawn(watch_storage(
        node.clone(),
        health_reporter_for_faults,
        storage_failed,
    )));
    if let Some(tls) = &tls {
        background.push(tokio::spawn(tls.clone().reload_when_asked(config.tls_reload_interval_ms)));
    }
    background.extend(start_http(config, &node, &guard, &audit, tls.clone()).await?);

    let api = QuartermasterServer::new(ApiService::new(node.clone(), guard.clone(), audit.clone()))
        .max_decoding_message_size(config.message_size_max_bytes)
        .max_encoding_message_size(usize::MAX);
    let raft_service = RaftServer::new(RaftRpcServer::new(raft.clone(), guard.clone(), leader_contact).announcing(node.clone()))
        .max_decoding_message_size(usize::MAX)
        .max_encoding_message_size(usize::MAX);
    let router = tonic::transport::Server::builder()
        .add_service(InterceptedService::new(health_service, guard.clone().interceptor(Call::Health)))
        .add_service(InterceptedService::new(reflection, guard.clone().interceptor(Call::Reflection)))
        .add_service(InterceptedService::new(reflection_v1alpha, guard.interceptor(Call::Reflection)))
        .add_service(api)
        .add_service(raft_service);
    // Nagle off on every accepted connection: with it, a reply written as
    // headers then body waits for the peer's delayed ACK (~40 ms).
    // (The builder's `tcp_nodelay` applies only to listeners it binds itself.)
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    // Graceful, but bounded: a client's long-lived stream (the Pipeline, a
    // Watch) would otherwise hold a stopping replica up forever, and a
    // rolling restart waits for each replica to exit.
    // The server stops on `shutdown`, or when a disk that failed takes
    // writes again (this pass then ends, and the next one serves).
    let (signalled, mut signal_seen) = tokio::sync::watch::channel(false);
    let (disk_recovered_seen, disk_recovered_flag) = tokio::sync::watch::channel(false);
    let mut stop_seen = stop.clone();
    let signal = async move {
        let recovered = tokio::select! {
            _ = stop_seen.wait_for(|stopped| *stopped) => false,
            // A watcher that ended without a recovery (the pass is
            // ending anyway) disables this branch rather than stopping.
            Ok(()) = &mut disk_recovered => true,
        };
        let _ = signalled.send(true);
        if recovered {
            let _ = disk_recovered_seen.send(true);
        }
    };
    let serve = async {
        match &tls {
            // The handshakes are ours, so that a refused one is logged with its peer.
            Some(tls) => {
                router
                    .serve_with_incoming_shutdown(handshakes::tls_incoming(incoming, tls.clone()), signal)
                    .await
            }
            None => router.serve_with_incoming_shutdown(incoming, signal).await,
        }
    };
    let grace_over = async {
        let _ = signal_seen.wait_for(|seen| *seen).await;
        tokio::time::sleep(Duration::from_millis(SHUTDOWN_GRACE_MS)).await;
    };
    let served = tokio::select! {
        served = serve => served,
        () = grace_over => {
            warn!(grace_ms = SHUTDOWN_GRACE_MS, "calls still open after the shutdown grace; closing them");
            Ok(())
        }
    };
    for task in background {
        task.abort();
    }
    raft.shutdown().await.ok();
    // Connections still draining hold the node: its cluster id must not
    // hold the data dir open for the next pass.
    identity.release();
    served.context("gRPC server")?;
    match *disk_recovered_flag.borrow() && !*stop.borrow() {
        true => Ok(Served::DiskRecovered),
        false => {
            info!(node_id = config.id, "replica stopping");
            Ok(Served::Stopped)
        }
    }
}

/// Waits for the Raft core to stop on a storage error; then marks the
/// replica NOT_SERVING, says why, and probes the disk until it takes writes
/// again, when it tells the pass to end through `recovered` (see
/// [`crate::storage::fault`]). Ends quietly if the core stops otherwise.
async fn watch_storage(node: Arc<Node>, reporter: tonic_health::server::HealthReporter, recovered: tokio::sync::oneshot::Sender<()>) {
    let mut metrics = node.raft.metrics();
    let fault = loop {
        if let Err(fatal) = &metrics.borrow_and_update().running_state {
            match StorageFault::from_fatal(fatal, &node.config.data_dir) {
                Some(fault) => break fault,
                None => return,
            }
        }
        if metrics.changed().await.is_err() {
            // The core is gone; its last word is still in the channel.
            match &metrics.borrow().running_state {
                Err(fatal) => match StorageFault::from_fatal(fatal, &node.config.data_dir) {
                    Some(fault) => break fault,
                    None => return,
                },
                Ok(()) => return,
            }
        }
    };
    tracing::error!(node_id = node.id, data_dir = %fault.data_dir.display(), disk_full = fault.disk_full, free_bytes = fault.free_bytes, error = %fault.error, "storage failed: {fault}");
    reporter.set_not_serving::<QuartermasterServer<ApiService>>().await;
    reporter.set_service_status("", tonic_health::ServingStatus::NotServing).await;
    loop {
        tokio::time::sleep(Duration::from_millis(storage::fault::DISK_PROBE_INTERVAL_MS)).await;
        let data_dir = fault.data_dir.clone();
        match tokio::task::spawn_blocking(move || storage::fault::probe_disk(&data_dir)).await {
            Ok(Ok(())) => break,
            Ok(Err(error)) => debug!(%error, "the disk still refuses writes"),
            Err(join_error) => debug!(%join_error, "the disk probe did not finish"),
        }
    }
    info!(node_id = node.id, data_dir = %fault.data_dir.display(), "a probe wrote and fsynced {} bytes in the data dir", storage::fault::DISK_PROBE_BYTES);
    let _ = recovered.send(());
}

/// Turns the state machine's requests ([`SnapshotRequests`]: enough commands
/// since the last snapshot) into snapshots. openraft ignores a request while
/// it builds one already.
async fn take_snapshots_when_asked(raft: Raft, requests: SnapshotRequests) {
    loop {
        requests.wanted().await;
        if let Err(error) = raft.trigger().snapshot().await {
            debug!(%error, "snapshot request not taken");
        }
    }
}

/// Loads the TLS material and picks the guard: mutual TLS and per-call
/// authorization, or (without the flags) everything allowed, said loudly.
fn secure(config: &NodeConfig) -> anyhow::Result<(Option<Arc<ReloadableTls>>, Guard)> {
    let Some(files) = &config.tls else {
        warn!("INSECURE: TLS is off (no --tls-cert/--tls-key/--tls-ca). Anyone who can reach this port can read and change the allocation table and join the Raft traffic; use this for development only");
        return Ok((None, Guard::open()));
    };
    let tls = ReloadableTls::load(files)?;
    let current = tls.current();
    info!(identity = %current.identity, crl = ?files.crl, revoked = tls.revocations.len(), "mutual TLS on: peers and clients must present a certificate of the cluster's CA");
    if current.expires_soon() {
        warn!(identity = %current.identity, "this replica's certificate expires within {} days; issue a new one", crate::security::CERT_EXPIRY_WARNING_DAYS);
    }
    let guard = Guard::mutual_tls(tls.revocations.clone());
    Ok((Some(tls), guard))
}

/// Initialises a fresh cluster once: the lowest-id replica of `--peers`, when
/// it has no log of its own and every listed peer answers and has joined no
/// cluster yet. A replica restarted with its data dir, or a blank one added
/// to a running cluster, never initialises anything.
async fn bootstrap(node: Arc<Node>, tls: Option<Arc<ReloadableTls>>) {
    let peers: BTreeMap<u64, String> = node.config.peers.clone();
    if peers.keys().next() != Some(&node.id) {
        return;
    }
    loop {
        match node.raft.is_initialized().await {
            Ok(false) => {}
            _ => return,
        }
        let peer_tls = tls.as_ref().map(|tls| tls.current());
        match probe_peers(&peers, node.id, peer_tls.as_deref()).await {
            PeerProbe::AllFresh => {
                let members: BTreeMap<u64, BasicNode> = peers.iter().map(|(id, addr)| (*id, BasicNode { addr: addr.clone() })).collect();
                // The id is stored before the first entry, whose append's
                // flush makes both durable; a crash before it leaves a
                // replica that initialises again with the id it kept.
                if node.identity.get().is_none() {
                    let cluster_id = cluster_id_at_initialization(node.id, &peers, crate::clock::now_ms());
                    if let Err(error) = node.identity.set(&cluster_id).await {
                        warn!(%error, "could not store the new cluster's id; not initialising");
                        return;
                    }
                }
                match node.raft.initialize(members).await {
                    Ok(()) => {
                        info!(node_id = node.id, replicas = peers.len(), cluster_id = ?node.identity.get(), "initialised a new cluster")
                    }
                    Err(error) => warn!(%error, "could not initialise the cluster"),
                }
                return;
            }
            PeerProbe::ClusterExists => {
                info!("a peer already belongs to a cluster; waiting to be replicated to instead of initialising");
                return;
            }
            PeerProbe::Unreachable => tokio::time::sleep(Duration::from_millis(BOOTSTRAP_PROBE_INTERVAL_MS)).await,
        }
    }
}

enum PeerProbe {
    AllFresh,
    ClusterExists,
    Unreachable,
}

async fn probe_peers(peers: &BTreeMap<u64, String>, own_id: u64, tls: Option<&MutualTls>) -> PeerProbe {
    for (id, addr) in peers.iter().filter(|(id, _)| **id != own_id) {
        let probe = async {
            let timeout = Duration::from_millis(BOOTSTRAP_PROBE_TIMEOUT_MS);
            let mut client = QuartermasterClient::new(crate::network::dial::peer_channel(addr, tls, None, timeout).ok()?);
            client
                .cluster_status(ClusterStatusRequest {})
                .await
                .ok()
                .map(|reply| reply.into_inner())
        };
        match tokio::time::timeout(Duration::from_millis(BOOTSTRAP_PROBE_TIMEOUT_MS), probe).await {
            Ok(Some(status)) if !status.members.is_empty() || status.term > 0 => {
                info!(peer = id, "peer is already a cluster member");
                return PeerProbe::ClusterExists;
            }
            Ok(Some(_)) => {}
            _ => return PeerProbe::Unreachable,
        }
    }
    PeerProbe::AllFresh
}

/// `grpc.health.v1`: SERVING while this replica knows a leader.
async fn report_health(node: Arc<Node>, reporter: tonic_health::server::HealthReporter) {
    let mut metrics = node.raft.metrics();
    let mut serving = None;
    // A leader that falls silent changes no metric: look again this often.
    let recheck = Duration::from_millis(node.config.heartbeat_interval_ms);
    loop {
        // A core stopped (by a disk fault, say) serves nothing, whatever
        // leader it last knew.
        let has_leader = node.leader().is_some() && node.raft.metrics().borrow().running_state.is_ok();
        if serving != Some(has_leader) {
            serving = Some(has_leader);
            if has_leader {
                reporter.set_serving::<QuartermasterServer<ApiService>>().await;
                reporter.set_service_status("", tonic_health::ServingStatus::Serving).await;
            } else {
                reporter.set_not_serving::<QuartermasterServer<ApiService>>().await;
                reporter.set_service_status("", tonic_health::ServingStatus::NotServing).await;
            }
        }
        let changed = tokio::select! {
            changed = metrics.changed() => changed,
            _ = tokio::time::sleep(recheck) => Ok(()),
        };
        if changed.is_err() {
            return;
        }
    }
}

/// The HTTP API on `--http-listen` and `/metrics` alone on
/// `--metrics-listen`, both with the replica's mutual TLS and guard when
/// TLS is on (any role may scrape; `--metrics-plain-http` keeps the
/// metrics port plain), plain without. Returns their tasks.
async fn start_http(
    config: &NodeConfig,
    node: &Arc<Node>,
    guard: &Guard,
    audit: &Arc<AuditLog>,
    tls: Option<Arc<ReloadableTls>>,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<()>>> {
    let mut tasks = Vec::new();
    let tls_on = tls.is_some();
    let api = |guard| {
        Arc::new(HttpApi {
            node: node.clone(),
            guard,
            audit: audit.clone(),
            scheme: if tls_on { "https" } else { "http" },
            replica_health: ReplicaHealth::default(),
        })
    };
    if let Some(addr) = config.http_listen {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen for HTTP on {addr}"))?;
        let api = api(guard.clone());
        tasks.push(tokio::spawn(api.replica_health.clone().probe_forever(node.clone(), tls.clone())));
        tasks.push(tokio::spawn(http::serve::serve(listener, http::router(api), tls.clone())));
        info!(node_id = config.id, http = %addr, tls = tls_on, "HTTP API listening");
    }
    if let Some(addr) = config.metrics_listen {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen for metrics on {addr}"))?;
        let (metrics_guard, metrics_tls) = match config.metrics_plain_http {
            true => (Guard::open(), None),
            false => (guard.clone(), tls.clone()),
        };
        if tls_on && config.metrics_plain_http {
            warn!(metrics = %addr, "--metrics-plain-http: metrics are served without TLS or a certificate; keep this port on a closed network");
        }
        let metrics_tls_on = metrics_tls.is_some();
        tasks.push(tokio::spawn(http::serve::serve(
            listener,
            http::metrics_router(api(metrics_guard)),
            metrics_tls,
        )));
        info!(node_id = config.id, metrics = %addr, tls = metrics_tls_on, "metrics listening");
    }
    Ok(tasks)
}
