//! A replica's configuration: command-line flags (each with an env variable),
//! optionally a TOML file (`--config`), one set of defaults, and
//! [`NodeConfig::validate`] with a structured error.
//!
//! Precedence: a flag given on the command line beats the file, the file
//! beats the default.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use serde::Deserialize;

use qm_state_machine::TableConfig;

use crate::security::audit::{
    AuditDestination, AUDIT_FILES_KEPT_DEFAULT, AUDIT_FILES_KEPT_MAX, AUDIT_FILE_BYTES_MAX_DEFAULT, AUDIT_FILE_BYTES_MIN,
};
use crate::types::NodeId;

/// The most runtime worker threads a replica may ask for.
pub const WORKER_THREADS_MAX: usize = 256;

/// `qm-node`: one replica of the Quartermaster manager.
#[derive(Parser, Debug, Default, Clone, Deserialize)]
#[command(
    name = "qm-node",
    version,
    about = "One replica of the Quartermaster resource manager (Raft: openraft + sled + tonic)."
)]
#[serde(deny_unknown_fields)]
pub struct NodeArgs {
    /// A TOML file with any of these settings (names with underscores).
    #[arg(long, env = "QM_NODE_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// This replica's id: a positive integer, unique in the cluster.
    #[arg(long, env = "QM_NODE_ID")]
    pub id: Option<NodeId>,
    /// Address to serve the public API and Raft traffic on.
    #[arg(long, env = "QM_NODE_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Where the log, vote, snapshots and applied state live (created if missing).
    #[arg(long, env = "QM_NODE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// The initial members: `1=127.0.0.1:7101,2=127.0.0.1:7102,3=127.0.0.1:7103`,
    /// this replica included. A fresh cluster initialises itself once all are reachable.
    #[arg(long, env = "QM_NODE_PEERS")]
    pub peers: Option<String>,
    /// Serve Prometheus metrics alone on this address (`/metrics`, plain
    /// HTTP). `/metrics` is also on --http-listen, with the rest of the HTTP API.
    #[arg(long, env = "QM_NODE_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// Serve --metrics-listen over plain HTTP without a certificate even
    /// when mutual TLS is on (a scraper on a closed monitoring network that
    /// has no client certificate). Without it, a TLS replica serves
    /// metrics over the same mutual TLS as everything else.
    #[arg(long, env = "QM_NODE_METRICS_PLAIN_HTTP")]
    #[serde(default)]
    pub metrics_plain_http: bool,
    /// Serve the HTTP API on this address: the protocol's JSON (`/v1/...`),
    /// the Consul-compatible catalog, `/metrics` and `/v1/openapi.json`. With
    /// mutual TLS on, over the same TLS and role checks as gRPC. Default:
    /// this replica's entry in --http-peers, else off.
    #[arg(long, env = "QM_NODE_HTTP_LISTEN")]
    pub http_listen: Option<SocketAddr>,
    /// Every replica's HTTP address, `1=127.0.0.1:7201,2=127.0.0.1:7202,...`:
    /// where a follower sends callers to the leader (307) and what the
    /// Consul-compatible catalog lists as the replicas' metrics endpoints.
    #[arg(long, env = "QM_NODE_HTTP_PEERS")]
    pub http_peers: Option<String>,
    /// The datacenter name the Consul-compatible catalog answers with.
    #[arg(long, env = "QM_NODE_DATACENTER")]
    pub datacenter: Option<String>,
    /// `text` or `json`.
    #[arg(long, env = "QM_NODE_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,
    /// Leader heartbeat to followers.
    #[arg(long)]
    pub heartbeat_interval_ms: Option<u64>,
    /// A follower that hears no leader for a random time in [min, max] starts an election.
    #[arg(long)]
    pub election_timeout_min_ms: Option<u64>,
    #[arg(long)]
    pub election_timeout_max_ms: Option<u64>,
    /// Take a snapshot every this many applied commands, then purge the log behind it.
    #[arg(long)]
    pub snapshot_every_commands: Option<u64>,
    /// Take a snapshot every this many applied log entries (each a batch of commands), whatever their commands.
    #[arg(long)]
    pub snapshot_every_entries: Option<u64>,
    /// Take a snapshot once this many milliseconds were spent applying commands since the last one
    /// (or as long as the last snapshot took to build, if longer): bounds what a restart applies again.
    #[arg(long)]
    pub snapshot_every_apply_ms: Option<u64>,
    /// Entries kept behind a snapshot so a slow follower can catch up from the log.
    #[arg(long)]
    pub log_kept_behind_snapshot_entries: Option<u64>,
    /// How often the leader checks for due leases, deadlines and silent providers.
    #[arg(long)]
    pub tick_interval_ms: Option<u64>,
    /// A provider silent for this long is declared failed by the leader.
    #[arg(long)]
    pub provider_failure_window_ms: Option<u64>,
    /// How long a write may wait for its commit before the caller is told the outcome is unknown.
    #[arg(long)]
    pub request_timeout_ms: Option<u64>,
    /// Largest gRPC message accepted from clients.
    #[arg(long)]
    pub message_size_max_bytes: Option<usize>,
    /// Events the table keeps for watchers resuming from a revision (older
    /// ones are compacted). Part of the table: give every replica the same value.
    #[arg(long)]
    pub event_history_max: Option<usize>,
    /// This replica's certificate (PEM, role resource_manager). With --tls-key
    /// and --tls-ca it turns on mutual TLS for Raft and client traffic.
    #[arg(long, env = "QM_NODE_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, env = "QM_NODE_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// The cluster's CA certificate (PEM): peers and clients must present a certificate it signed.
    #[arg(long, env = "QM_NODE_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// A certificate revocation list (PEM, from `qm certs revoke`): client,
    /// provider and replica certificates it lists are refused at the
    /// handshake and per call. Needs the other --tls-* flags.
    #[arg(long, env = "QM_NODE_TLS_CRL")]
    pub tls_crl: Option<PathBuf>,
    /// How often the replica looks at its certificate, key, CA and CRL
    /// files for changes (their modification time and size) and reloads
    /// them; SIGHUP reloads at once. 0 turns the polling off.
    #[arg(long, env = "QM_NODE_TLS_RELOAD_INTERVAL_MS")]
    pub tls_reload_interval_ms: Option<u64>,
    /// The audit trail: a JSON line per write, read of request records by an
    /// admin, and refused call, to this file (rotated by size) or `-` for
    /// standard output. Off by default.
    #[arg(long, env = "QM_NODE_AUDIT_LOG")]
    pub audit_log: Option<String>,
    /// The audit file is rotated before it would grow past this.
    #[arg(long, env = "QM_NODE_AUDIT_LOG_FILE_BYTES_MAX")]
    pub audit_log_file_bytes_max: Option<u64>,
    /// Rotated audit files kept (`PATH.1` newest ... `PATH.N`); older ones are deleted.
    #[arg(long, env = "QM_NODE_AUDIT_LOG_FILES_KEPT")]
    pub audit_log_files_kept: Option<u32>,
    /// Threads that run the replica's tasks (default: one per core). Replicas
    /// that share a machine's cores (a local cluster) do better with 1: less
    /// handing of each request from thread to thread.
    #[arg(long, env = "QM_NODE_WORKER_THREADS")]
    pub worker_threads: Option<usize>,
    /// Let the kernel back the replica's memory with transparent huge pages
    /// (2 MiB): faster under heavy load, ~10 % more memory at a million
    /// allocations (off by default; BENCHMARKS.md, "Session 15").
    #[arg(long, env = "QM_NODE_TRANSPARENT_HUGE_PAGES")]
    #[serde(default)]
    pub transparent_huge_pages: bool,
    /// TEST ONLY: answer reads from local state without the read index, so the
    /// fault-injection suite can show it catches stale reads. Never in production.
    #[arg(long, hide = true)]
    #[serde(default)]
    pub unsafe_stale_reads: bool,
    /// TEST ONLY: announce format versions shifted by this much from this
    /// build's, so that a test can show how replicas of builds too far
    /// apart refuse each other (`consensus::announce`). Never in production.
    #[arg(long, hide = true, allow_hyphen_values = true)]
    #[serde(default)]
    pub test_format_version_offset: Option<i32>,
}

/// How logs are printed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// The validated configuration.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub id: NodeId,
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub peers: BTreeMap<NodeId, String>,
    pub metrics_listen: Option<SocketAddr>,
    /// `--metrics-listen` stays plain HTTP with TLS on.
    pub metrics_plain_http: bool,
    /// Where the HTTP API listens; `None`: no HTTP API.
    pub http_listen: Option<SocketAddr>,
    /// Every replica's advertised HTTP address (`host:port`), by replica id.
    pub http_peers: BTreeMap<NodeId, String>,
    /// The Consul-compatible catalog's datacenter name.
    pub datacenter: String,
    pub log_format: LogFormat,
    pub heartbeat_interval_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    pub snapshot_every_commands: u64,
    pub snapshot_every_entries: u64,
    pub snapshot_every_apply_ms: u64,
    pub log_kept_behind_snapshot_entries: u64,
    pub tick_interval_ms: u64,
    pub provider_failure_window_ms: u64,
    pub request_timeout_ms: u64,
    pub message_size_max_bytes: usize,
    pub event_history_max: usize,
    /// Mutual TLS; `None`: plain gRPC and every call allowed (development only).
    pub tls: Option<TlsFiles>,
    /// How often the TLS files are looked at for changes; 0: only on SIGHUP.
    pub tls_reload_interval_ms: u64,
    /// Where the audit trail goes; `None`: no audit trail.
    pub audit: Option<AuditDestination>,
    /// Runtime worker threads; `None`: one per core.
    pub worker_threads: Option<usize>,
    pub transparent_huge_pages: bool,
    pub unsafe_stale_reads: bool,
    /// TEST ONLY: see `NodeArgs::test_format_version_offset`; 0 normally.
    pub test_format_version_offset: i32,
}

/// The PEM files of a replica with mutual TLS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// This replica's certificate: it serves with it and presents it to peers.
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The CA every peer's and client's certificate must chain to.
    pub ca: PathBuf,
    /// The CA's revocation list, if any.
    pub crl: Option<PathBuf>,
}

/// The defaults. openraft 0.9 makes the longest election timeout the
/// voters' leader lease: a follower campaigns after `max + [min, max)` of
/// silence (750-1000 ms here), or, when its leader's process is gone, after
/// `max` plus a heartbeat or two (`consensus::prompt_election`), so a
/// killed leader is replaced about 600 ms after it last sent a heartbeat.
/// Shorter timeouts would depose a leader for a disk stall
/// (`scripts/term-stability.sh` checks a cluster under load keeps its term).
pub mod defaults {
    pub const HEARTBEAT_INTERVAL_MS: u64 = 100;
    pub const ELECTION_TIMEOUT_MIN_MS: u64 = 250;
    pub const ELECTION_TIMEOUT_MAX_MS: u64 = 500;
    /// A snapshot after this many applied commands bounds the log behind
    /// it (~100 MB) and what a restart re-applies (~3 s of apply) whatever
    /// the load. Under full load (19k calls/s) that is a snapshot a minute;
    /// each costs a replica ~150 ms of CPU at 100k remembered requests.
    pub const SNAPSHOT_EVERY_COMMANDS: u64 = 1_000_000;
    /// An entry is a batch of 1 to 512 commands (`proposer`). Counting
    /// entries alone, a lightly loaded replica (one to four commands an
    /// entry) snapshotted every 10-40 s at 20,000 and a busy one let its log
    /// grow to millions of commands. With the command count bounding the
    /// busy case, this is etcd's `--snapshot-count` for the light one: at
    /// 1,000 pairs/s a snapshot every ~3 minutes.
    pub const SNAPSHOT_EVERY_ENTRIES: u64 = 100_000;
    /// A restart applies again every command after the stored snapshot,
    /// as fast as they were first applied, so a snapshot after this much
    /// apply time bounds that replay to about this long, whatever the
    /// table's size. The command count alone let it grow with the table:
    /// at a million allocations a command took 5-9 µs to apply again, and
    /// the last 1,000,000 commands 5-9 s, on top of the snapshot's 2-3 s
    /// decode (BENCHMARKS.md, "Session 15"). With a small table (a few µs a
    /// command) the command count still comes first. A snapshot is never
    /// asked for sooner than the last one took to build, so building them
    /// takes at most about as much CPU as applying.
    pub const SNAPSHOT_EVERY_APPLY_MS: u64 = 2_000;
    pub const LOG_KEPT_BEHIND_SNAPSHOT_ENTRIES: u64 = 5_000;
    pub const TICK_INTERVAL_MS: u64 = 100;
    pub const PROVIDER_FAILURE_WINDOW_MS: u64 = 5_000;
    pub const REQUEST_TIMEOUT_MS: u64 = 5_000;
    pub const MESSAGE_SIZE_MAX_BYTES: usize = 4 * 1024 * 1024;
    /// Consul's own default datacenter name, which Consul clients expect.
    pub const DATACENTER: &str = "dc1";
    /// A rotated certificate (or a new CRL) is in use within this long of
    /// being written, without a SIGHUP.
    pub const TLS_RELOAD_INTERVAL_MS: u64 = 5_000;
}

/// What is wrong with a configuration: the setting and why.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("--{setting} is required")]
    Missing { setting: &'static str },
    #[error("--{setting}: {reason}")]
    Invalid { setting: &'static str, reason: String },
    #[error("config file {path}: {reason}")]
    File { path: PathBuf, reason: String },
}

impl NodeArgs {
    /// Merges the TOML file named by `--config` under the flags.
    pub fn with_file(self) -> Result<NodeArgs, ConfigError> {
        let Some(path) = self.config.clone() else { return Ok(self) };
        let text = std::fs::read_to_string(&path).map_err(|e| ConfigError::File {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let file: NodeArgs = toml::from_str(&text).map_err(|e| ConfigError::File {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        Ok(NodeArgs {
            config: self.config,
            id: self.id.or(file.id),
            listen: self.listen.or(file.listen),
            data_dir: self.data_dir.or(file.data_dir),
            peers: self.peers.or(file.peers),
            metrics_listen: self.metrics_listen.or(file.metrics_listen),
            metrics_plain_http: self.metrics_plain_http || file.metrics_plain_http,
            http_listen: self.http_listen.or(file.http_listen),
            http_peers: self.http_peers.or(file.http_peers),
            datacenter: self.datacenter.or(file.datacenter),
            log_format: self.log_format.or(file.log_format),
            heartbeat_interval_ms: self.heartbeat_interval_ms.or(file.heartbeat_interval_ms),
            election_timeout_min_ms: self.election_timeout_min_ms.or(file.election_timeout_min_ms),
            election_timeout_max_ms: self.election_timeout_max_ms.or(file.election_timeout_max_ms),
            snapshot_every_commands: self.snapshot_every_commands.or(file.snapshot_every_commands),
            snapshot_every_entries: self.snapshot_every_entries.or(file.snapshot_every_entries),
            snapshot_every_apply_ms: self.snapshot_every_apply_ms.or(file.snapshot_every_apply_ms),
            log_kept_behind_snapshot_entries: self.log_kept_behind_snapshot_entries.or(file.log_kept_behind_snapshot_entries),
            tick_interval_ms: self.tick_interval_ms.or(file.tick_interval_ms),
            provider_failure_window_ms: self.provider_failure_window_ms.or(file.provider_failure_window_ms),
            request_timeout_ms: self.request_timeout_ms.or(file.request_timeout_ms),
            message_size_max_bytes: self.message_size_max_bytes.or(file.message_size_max_bytes),
            event_history_max: self.event_history_max.or(file.event_history_max),
            tls_cert: self.tls_cert.or(file.tls_cert),
            tls_key: self.tls_key.or(file.tls_key),
            tls_ca: self.tls_ca.or(file.tls_ca),
            tls_crl: self.tls_crl.or(file.tls_crl),
            tls_reload_interval_ms: self.tls_reload_interval_ms.or(file.tls_reload_interval_ms),
            audit_log: self.audit_log.or(file.audit_log),
            audit_log_file_bytes_max: self.audit_log_file_bytes_max.or(file.audit_log_file_bytes_max),
            audit_log_files_kept: self.audit_log_files_kept.or(file.audit_log_files_kept),
            worker_threads: self.worker_threads.or(file.worker_threads),
            transparent_huge_pages: self.transparent_huge_pages || file.transparent_huge_pages,
            unsafe_stale_reads: self.unsafe_stale_reads || file.unsafe_stale_reads,
            test_format_version_offset: self.test_format_version_offset.or(file.test_format_version_offset),
        })
    }

    /// Applies the defaults and validates.
    pub fn into_config(self) -> Result<NodeConfig, ConfigError> {
        use defaults::*;
        let peers = parse_peers(self.peers.as_deref().ok_or(ConfigError::Missing { setting: "peers" })?)?;
        let tls = tls_files(self.tls_cert, self.tls_key, self.tls_ca, self.tls_crl)?;
        let audit = audit_destination(self.audit_log, self.audit_log_file_bytes_max, self.audit_log_files_kept)?;
        let id = self.id.ok_or(ConfigError::Missing { setting: "id" })?;
        let http_peers = match self.http_peers.as_deref() {
            None => BTreeMap::new(),
            Some(text) => parse_addrs("http-peers", text)?,
        };
        let http_listen = match (self.http_listen, http_peers.get(&id)) {
            (Some(addr), _) => Some(addr),
            (None, Some(own)) => Some(own.parse().map_err(|_| ConfigError::Invalid {
                setting: "http-peers",
                reason: format!("this replica's entry {own:?} is not IP:PORT; give --http-listen"),
            })?),
            (None, None) => None,
        };
        let config = NodeConfig {
            id,
            listen: self.listen.ok_or(ConfigError::Missing { setting: "listen" })?,
            data_dir: self.data_dir.ok_or(ConfigError::Missing { setting: "data-dir" })?,
            peers,
            metrics_listen: self.metrics_listen,
            metrics_plain_http: self.metrics_plain_http,
            http_listen,
            http_peers,
            datacenter: self.datacenter.unwrap_or_else(|| DATACENTER.to_owned()),
            log_format: self.log_format.unwrap_or_default(),
            heartbeat_interval_ms: self.heartbeat_interval_ms.unwrap_or(HEARTBEAT_INTERVAL_MS),
            election_timeout_min_ms: self.election_timeout_min_ms.unwrap_or(ELECTION_TIMEOUT_MIN_MS),
            election_timeout_max_ms: self.election_timeout_max_ms.unwrap_or(ELECTION_TIMEOUT_MAX_MS),
            snapshot_every_commands: self.snapshot_every_commands.unwrap_or(SNAPSHOT_EVERY_COMMANDS),
            snapshot_every_entries: self.snapshot_every_entries.unwrap_or(SNAPSHOT_EVERY_ENTRIES),
            snapshot_every_apply_ms: self.snapshot_every_apply_ms.unwrap_or(SNAPSHOT_EVERY_APPLY_MS),
            log_kept_behind_snapshot_entries: self.log_kept_behind_snapshot_entries.unwrap_or(LOG_KEPT_BEHIND_SNAPSHOT_ENTRIES),
            tick_interval_ms: self.tick_interval_ms.unwrap_or(TICK_INTERVAL_MS),
            provider_failure_window_ms: self.provider_failure_window_ms.unwrap_or(PROVIDER_FAILURE_WINDOW_MS),
            request_timeout_ms: self.request_timeout_ms.unwrap_or(REQUEST_TIMEOUT_MS),
            message_size_max_bytes: self.message_size_max_bytes.unwrap_or(MESSAGE_SIZE_MAX_BYTES),
            event_history_max: self.event_history_max.unwrap_or(TableConfig::default().event_history_max),
            tls,
            tls_reload_interval_ms: self.tls_reload_interval_ms.unwrap_or(TLS_RELOAD_INTERVAL_MS),
            audit,
            worker_threads: self.worker_threads,
            transparent_huge_pages: self.transparent_huge_pages,
            unsafe_stale_reads: self.unsafe_stale_reads,
            test_format_version_offset: self.test_format_version_offset.unwrap_or(0),
        };
        config.validate()?;
        Ok(config)
    }
}

impl NodeConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |setting, reason: String| Err(ConfigError::Invalid { setting, reason });
        if self.id == 0 {
            return invalid("id", "must be a positive integer".into());
        }
        if !self.peers.contains_key(&self.id) {
            return invalid("peers", format!("must include this replica's id {}", self.id));
        }
        if self.heartbeat_interval_ms == 0 || self.heartbeat_interval_ms >= self.election_timeout_min_ms {
            return invalid(
                "heartbeat-interval-ms",
                "must be positive and below --election-timeout-min-ms".into(),
            );
        }
        if self.election_timeout_min_ms >= self.election_timeout_max_ms {
            return invalid("election-timeout-max-ms", "must be above --election-timeout-min-ms".into());
        }
        if self.snapshot_every_commands == 0 {
            return invalid("snapshot-every-commands", "must be positive".into());
        }
        if self.snapshot_every_entries == 0 {
            return invalid("snapshot-every-entries", "must be positive".into());
        }
        if self.snapshot_every_apply_ms == 0 {
            return invalid("snapshot-every-apply-ms", "must be positive".into());
        }
        if self.tick_interval_ms == 0 || self.tick_interval_ms * 2 > self.provider_failure_window_ms {
            return invalid("provider-failure-window-ms", "must be at least two tick intervals".into());
        }
        if self.request_timeout_ms == 0 {
            return invalid("request-timeout-ms", "must be positive".into());
        }
        if self.message_size_max_bytes < 1024 {
            return invalid("message-size-max-bytes", "must be at least 1024".into());
        }
        if self.datacenter.is_empty() || !self.datacenter.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            return invalid("datacenter", "must be letters, digits, '-' or '_'".into());
        }
        if self
            .worker_threads
            .is_some_and(|threads| threads == 0 || threads > WORKER_THREADS_MAX)
        {
            return invalid("worker-threads", format!("must be 1..={WORKER_THREADS_MAX}"));
        }
        Ok(())
    }

    /// This replica's advertised address: its entry in `peers`.
    pub fn advertised_addr(&self) -> &str {
        &self.peers[&self.id]
    }
}

/// The audit trail's destination and limits, if `--audit-log` is given.
fn audit_destination(
    path: Option<String>,
    file_bytes_max: Option<u64>,
    files_kept: Option<u32>,
) -> Result<Option<AuditDestination>, ConfigError> {
    let Some(path) = path else {
        if file_bytes_max.is_some() || files_kept.is_some() {
            return Err(ConfigError::Invalid {
                setting: "audit-log",
                reason: "is missing: the rotation limits apply to an --audit-log file".into(),
            });
        }
        return Ok(None);
    };
    if path == "-" {
        return Ok(Some(AuditDestination::Stdout));
    }
    if path.is_empty() {
        return Err(ConfigError::Invalid {
            setting: "audit-log",
            reason: "is empty: give a file or - for standard output".into(),
        });
    }
    let file_bytes_max = file_bytes_max.unwrap_or(AUDIT_FILE_BYTES_MAX_DEFAULT);
    if file_bytes_max < AUDIT_FILE_BYTES_MIN {
        return Err(ConfigError::Invalid {
            setting: "audit-log-file-bytes-max",
            reason: format!("must be at least {AUDIT_FILE_BYTES_MIN}"),
        });
    }
    let files_kept = files_kept.unwrap_or(AUDIT_FILES_KEPT_DEFAULT);
    if files_kept == 0 || files_kept > AUDIT_FILES_KEPT_MAX {
        return Err(ConfigError::Invalid {
            setting: "audit-log-files-kept",
            reason: format!("must be 1..={AUDIT_FILES_KEPT_MAX}"),
        });
    }
    Ok(Some(AuditDestination::File {
        path: PathBuf::from(path),
        file_bytes_max,
        files_kept,
    }))
}

/// All three TLS files (and the optional CRL), or none.
fn tls_files(
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    ca: Option<PathBuf>,
    crl: Option<PathBuf>,
) -> Result<Option<TlsFiles>, ConfigError> {
    match (cert, key, ca) {
        (None, None, None) if crl.is_some() => Err(ConfigError::Invalid {
            setting: "tls-crl",
            reason: "needs --tls-cert, --tls-key and --tls-ca: a CRL is checked by mutual TLS".into(),
        }),
        (None, None, None) => Ok(None),
        (Some(cert), Some(key), Some(ca)) => Ok(Some(TlsFiles { cert, key, ca, crl })),
        (cert, key, _) => Err(ConfigError::Invalid {
            setting: match (cert, key) {
                (None, _) => "tls-cert",
                (_, None) => "tls-key",
                _ => "tls-ca",
            },
            reason: "is missing: mutual TLS needs --tls-cert, --tls-key and --tls-ca together".into(),
        }),
    }
}

/// Parses `1=host:port,2=host:port`.
pub fn parse_peers(text: &str) -> Result<BTreeMap<NodeId, String>, ConfigError> {
    parse_addrs("peers", text)
}

/// Parses `1=host:port,2=host:port` given as `--{setting}`.
fn parse_addrs(setting: &'static str, text: &str) -> Result<BTreeMap<NodeId, String>, ConfigError> {
    let invalid = |reason: String| ConfigError::Invalid { setting, reason };
    let mut peers = BTreeMap::new();
    for item in text.split(',').map(str::trim).filter(|item| !item.is_empty()) {
        let (id, addr) = item
            .split_once('=')
            .ok_or_else(|| invalid(format!("{item:?} is not ID=HOST:PORT")))?;
        let id: NodeId = id.trim().parse().map_err(|_| invalid(format!("{id:?} is not a replica id")))?;
        let addr = addr.trim();
        if addr.rsplit_once(':').and_then(|(_, port)| port.parse::<u16>().ok()).is_none() {
            return Err(invalid(format!("{addr:?} is not HOST:PORT")));
        }
        if peers.insert(id, addr.to_owned()).is_some() {
            return Err(invalid(format!("replica {id} is listed twice")));
        }
    }
    if peers.is_empty() {
        return Err(invalid("lists no replica".into()));
    }
    Ok(peers)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> NodeArgs {
        let base = [
            "qm-node",
            "--id",
            "1",
            "--listen",
            "127.0.0.1:7101",
            "--data-dir",
            "/tmp/x",
            "--peers",
            "1=127.0.0.1:7101,2=127.0.0.1:7102",
        ];
        NodeArgs::try_parse_from(base.iter().chain(extra)).expect("parses")
    }

    #[test]
    fn defaults_apply_and_validate() {
        let config = args(&[]).into_config().expect("valid");
        assert_eq!(config.peers.len(), 2);
        assert_eq!(config.heartbeat_interval_ms, defaults::HEARTBEAT_INTERVAL_MS);
        assert_eq!(config.advertised_addr(), "127.0.0.1:7101");
    }

    #[test]
    fn refuses_inconsistent_timeouts() {
        let error = args(&["--election-timeout-min-ms", "900"]).into_config().unwrap_err();
        assert!(error.to_string().contains("election-timeout-max-ms"), "{error}");
    }

    #[test]
    fn refuses_peers_without_self() {
        let mut bad = args(&[]);
        bad.peers = Some("2=127.0.0.1:7102".into());
        assert!(bad
            .into_config()
            .unwrap_err()
            .to_string()
            .contains("must include this replica's id 1"));
    }

    #[test]
    fn refuses_malformed_peers() {
        for text in ["1", "x=127.0.0.1:1", "1=127.0.0.1", "1=a:1,1=b:2", ""] {
            assert!(parse_peers(text).is_err(), "{text}");
        }
    }

    #[test]
    fn tls_needs_all_three_files() {
        assert_eq!(None, args(&[]).into_config().expect("valid").tls);
        let config = args(&["--tls-cert", "r.crt", "--tls-key", "r.key", "--tls-ca", "ca.crt"])
            .into_config()
            .expect("valid");
        assert_eq!(Some(PathBuf::from("ca.crt")), config.tls.map(|tls| tls.ca));
        let error = args(&["--tls-cert", "r.crt", "--tls-ca", "ca.crt"]).into_config().unwrap_err();
        assert!(error.to_string().starts_with("--tls-key: is missing"), "{error}");
    }

    #[test]
    fn the_audit_log_is_a_file_with_named_limits_or_stdout() {
        assert_eq!(None, args(&[]).into_config().expect("valid").audit);
        assert_eq!(
            Some(AuditDestination::Stdout),
            args(&["--audit-log", "-"]).into_config().expect("valid").audit
        );
        let config = args(&["--audit-log", "/var/log/qm/audit.log", "--audit-log-files-kept", "3"])
            .into_config()
            .expect("valid");
        assert_eq!(
            Some(AuditDestination::File {
                path: "/var/log/qm/audit.log".into(),
                file_bytes_max: AUDIT_FILE_BYTES_MAX_DEFAULT,
                files_kept: 3,
            }),
            config.audit
        );
        let error = args(&["--audit-log", "a.log", "--audit-log-file-bytes-max", "100"])
            .into_config()
            .unwrap_err();
        assert!(error.to_string().starts_with("--audit-log-file-bytes-max"), "{error}");
        let error = args(&["--audit-log-files-kept", "2"]).into_config().unwrap_err();
        assert!(error.to_string().starts_with("--audit-log: is missing"), "{error}");
        let error = args(&["--tls-crl", "ca.crl"]).into_config().unwrap_err();
        assert!(error.to_string().starts_with("--tls-crl"), "{error}");
    }

    #[test]
    fn http_listens_on_its_own_entry_of_http_peers_unless_told() {
        assert_eq!(None, args(&[]).into_config().expect("valid").http_listen);
        let peers = ["--http-peers", "1=127.0.0.1:7201,2=127.0.0.1:7202"];
        let config = args(&peers).into_config().expect("valid");
        assert_eq!(Some("127.0.0.1:7201".parse().unwrap()), config.http_listen);
        assert_eq!("127.0.0.1:7202", config.http_peers[&2]);
        assert_eq!(defaults::DATACENTER, config.datacenter);
        let told = args(&[&peers[..], &["--http-listen", "0.0.0.0:8500"]].concat())
            .into_config()
            .expect("valid");
        assert_eq!(Some("0.0.0.0:8500".parse().unwrap()), told.http_listen);
        let error = args(&["--http-peers", "1=localhost:7201"]).into_config().unwrap_err();
        assert!(error.to_string().starts_with("--http-peers: this replica's entry"), "{error}");
        let error = args(&["--datacenter", "a b"]).into_config().unwrap_err();
        assert!(error.to_string().starts_with("--datacenter"), "{error}");
    }

    #[test]
    fn worker_threads_are_bounded() {
        assert_eq!(None, args(&[]).into_config().expect("valid").worker_threads);
        assert_eq!(
            Some(1),
            args(&["--worker-threads", "1"]).into_config().expect("valid").worker_threads
        );
        for bad in ["0", "257"] {
            let error = args(&["--worker-threads", bad]).into_config().unwrap_err();
            assert!(error.to_string().starts_with("--worker-threads: must be 1..=256"), "{error}");
        }
    }

    #[test]
    fn file_settings_sit_under_flags() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("node.toml");
        std::fs::write(&path, "id = 3\nheartbeat_interval_ms = 50\nlog_format = \"json\"\n").expect("write");
        let merged = args(&["--config", path.to_str().expect("utf8")]).with_file().expect("reads");
        assert_eq!(merged.id, Some(1), "the flag wins");
        assert_eq!(merged.heartbeat_interval_ms, Some(50), "the file fills what flags leave");
        assert_eq!(merged.log_format, Some(LogFormat::Json));
    }
}
