//! # qm-cli: the `qm` command line
//!
//! Clap definitions and [`run`], which `main` and the tests call. Every
//! command builds one [`Client`] from the global options, makes its calls,
//! and prints the answer as a table (default) or as JSON (`--output json`:
//! the protocol's shapes where it has one). An error is one line on stderr;
//! the exit code is 2 for bad input, 1 otherwise.
//!
//! ```text
//!  argv ──clap──▶ Cli ──run──▶ qm_client::Client ──gRPC──▶ replicas
//!                  │             (qm agent: qm_agent::Agent; qm certs: qm_ca::CertAuthority)
//!                  ▼
//!          table / JSON on stdout, one-line error on stderr (exit 2 bad input, 1 otherwise)
//! ```
//!
//! # Layout
//!
//! * one module per command group: `allocate`, `allocations` (get, list,
//!   release, renew), `provider`, `cluster`, `state`, `watch`, `top`,
//!   `agent`, `certs`, `bench`, `bridge`, `snapshot` (backups), `audit`
//!   (reading a replica's audit file), `quota`
//!   (quotas, preemption settings, the `allocate --dry-run` preview);
//! * `load`: the load generator behind `qm bench`;
//! * `input`, `output`, `table`: reading the protocol's JSON, printing answers;
//! * `error`: [`CliError`] and the exit codes.

mod agent;
mod allocate;
mod allocations;
mod audit;
mod bench;
mod bridge;
mod certs;
mod cluster;
mod error;
mod input;
mod load;
mod optimize;
mod output;
mod policy;
mod provider;
mod quota;
mod snapshot;
mod state;
mod summary;
mod table;
mod top;
mod watch;

use std::io::Write;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

pub use agent::AgentArgs;
pub use allocate::AllocateArgs;
pub use allocations::{ListArgs, ReleaseArgs};
pub use audit::AuditCommand;
pub use bench::BenchArgs;
pub use bridge::{AmqpArgs, BridgeCommand};
pub use certs::CertsCommand;
pub use cluster::ClusterCommand;
pub use error::CliError;
pub use output::OutputFormat;
pub use provider::ProviderCommand;
pub use snapshot::{BackupSummary, SnapshotCommand};
pub use top::TopArgs;
pub use watch::WatchArgs;

use qm_client::config::{ClientConfig, DEFAULT_ENDPOINTS};
use qm_client::tls::TlsConfig;
use qm_client::Client;

/// Quartermaster's command line: allocate resources, manage providers and
/// the replicas, watch the table.
#[derive(Debug, Parser)]
#[command(name = "qm", version, about, propagate_version = true)]
pub struct Cli {
    /// Replica addresses (host:port), comma-separated; any live one finds the leader.
    #[arg(long, global = true, env = "QM_ENDPOINTS", value_delimiter = ',', default_value = DEFAULT_ENDPOINTS)]
    pub endpoints: Vec<String>,

    /// How to print answers.
    #[arg(long, global = true, env = "QM_OUTPUT", value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,

    /// Deadline of each call, across failovers and retries (ms).
    #[arg(long, global = true, env = "QM_TIMEOUT_MS", default_value_t = ClientConfig::default().request_timeout_ms)]
    pub timeout_ms: u64,

    /// This client's certificate (PEM) for a cluster with mutual TLS; its role and namespace decide what it may do.
    #[arg(long, global = true, env = "QM_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,

    /// The certificate's private key (PEM).
    #[arg(long, global = true, env = "QM_TLS_KEY")]
    pub tls_key: Option<PathBuf>,

    /// The cluster's CA certificate (PEM): replicas must present a certificate it signed.
    #[arg(long, global = true, env = "QM_TLS_CA")]
    pub tls_ca: Option<PathBuf>,

    /// Send each allocate, release and renew as its own gRPC call instead of on the replica's shared Pipeline stream.
    #[arg(long, global = true, env = "QM_NO_PIPELINE")]
    pub no_pipeline: bool,

    /// How often the client reads the cluster's membership to follow replicas added and removed (ms); also after every redirect.
    #[arg(long, global = true, env = "QM_MEMBERSHIP_REFRESH_INTERVAL_MS", default_value_t = ClientConfig::default().membership_refresh_interval_ms)]
    pub membership_refresh_interval_ms: u64,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// The replicas: Raft status and membership.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Resource providers: register, list, deregister.
    #[command(subcommand)]
    Provider(ProviderCommand),
    /// Ask for resources, from the protocol's resource_request JSON or from flags.
    Allocate(AllocateArgs),
    /// Release an allocation, or cancel a queued request (by allocation or
    /// request id); or release everything of a namespace, a requester or a
    /// provider (--namespace, --requester with --namespace, --provider).
    Release(ReleaseArgs),
    /// Renew an allocation's lease for another TTL.
    Renew {
        /// Allocation id or request id.
        id: String,
    },
    /// Show one request or allocation (by allocation or request id).
    Get {
        /// Allocation id or request id.
        id: String,
        /// Answer from any replica's local state, which may lag the leader.
        #[arg(long)]
        stale: bool,
    },
    /// List requests and allocations.
    List(ListArgs),
    /// Print the table's events as JSON lines, one per event, as they happen.
    Watch(WatchArgs),
    /// The monitor's view: capacity, use and free per kind and per provider.
    State {
        /// Answer from any replica's local state, which may lag the leader.
        #[arg(long)]
        stale: bool,
    },
    /// An optimization plan: movable allocations move make-before-break
    /// from less to more loaded providers (admin).
    Optimize {
        /// Show the plan without beginning it.
        #[arg(long)]
        dry_run: bool,
    },
    /// Load the cluster: throughput and latency percentiles per operation.
    Bench(BenchArgs),
    /// Run a provider agent: offer this host (or a declared inventory),
    /// heartbeat with usage metrics, confirm allocations and releases.
    Agent(AgentArgs),
    /// The monitor's view, live: capacity, use, measurements, queue, failures.
    Top(TopArgs),
    /// Certificates for mutual TLS: a CA, replicas, admins, providers, consumers.
    #[command(subcommand)]
    Certs(CertsCommand),
    /// A replica's audit trail (`qm-node --audit-log FILE`), read from its file.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Bridge a message broker to the cluster: `qm bridge amqp` (RabbitMQ).
    #[command(subcommand)]
    Bridge(BridgeCommand),
    /// Backups: save one from the leader, inspect one (checksum, contents).
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
    /// Namespace quotas: set, get, list, delete (setting is admin only under TLS).
    #[command(subcommand)]
    Quota(quota::QuotaCommand),
    /// Who may preempt, cluster-wide or per namespace (admin only under TLS).
    #[command(subcommand)]
    Preemption(quota::PreemptionCommand),
    /// Capability policies: what an identity may allocate (admin only under TLS).
    #[command(subcommand)]
    Policy(policy::PolicyCommand),
}

impl Cli {
    /// The client configuration the global options describe.
    pub fn client_config(&self) -> ClientConfig {
        let defaults = ClientConfig::default();
        ClientConfig {
            endpoints: self
                .endpoints
                .iter()
                .map(|endpoint| endpoint.trim().to_owned())
                .filter(|endpoint| !endpoint.is_empty())
                .collect(),
            request_timeout_ms: self.timeout_ms,
            attempt_timeout_ms: defaults.attempt_timeout_ms.min(self.timeout_ms),
            tls: self.tls_config(),
            pipeline_writes: !self.no_pipeline,
            membership_refresh_interval_ms: self.membership_refresh_interval_ms,
            ..defaults
        }
    }

    /// TLS when any of `--tls-cert`, `--tls-key`, `--tls-ca` is given; a
    /// missing one is then reported by `ClientConfig::validate`.
    pub fn tls_config(&self) -> Option<TlsConfig> {
        if self.tls_cert.is_none() && self.tls_key.is_none() && self.tls_ca.is_none() {
            return None;
        }
        Some(TlsConfig {
            ca: self.tls_ca.clone().unwrap_or_default(),
            cert: self.tls_cert.clone().unwrap_or_default(),
            key: self.tls_key.clone().unwrap_or_default(),
        })
    }
}

/// Runs one parsed command line, printing answers to `out`.
pub async fn run(cli: Cli, out: &mut dyn Write) -> Result<(), CliError> {
    let format = cli.output;
    let client = match cli.command {
        // Files only: no client, no replica.
        Command::Certs(command) => return certs::run(command, format, out),
        Command::Audit(command) => return audit::run(command, format, out),
        Command::Snapshot(SnapshotCommand::Inspect { file }) => return snapshot::inspect(&file, format, out),
        _ => Client::new(cli.client_config())?,
    };
    match cli.command {
        Command::Certs(_) | Command::Audit(_) | Command::Snapshot(SnapshotCommand::Inspect { .. }) => {
            unreachable!("answered without a client above")
        }
        Command::Snapshot(SnapshotCommand::Save { file }) => snapshot::save(&client, &file, format, out).await,
        Command::Cluster(command) => cluster::run(&client, command, format, out).await,
        Command::Provider(command) => provider::run(&client, command, format, out).await,
        Command::Allocate(args) => allocate::run(&client, args, format, out).await,
        Command::Release(args) => allocations::release(&client, args, format, out).await,
        Command::Renew { id } => allocations::renew(&client, &id, format, out).await,
        Command::Get { id, stale } => allocations::get(&client, &id, stale, format, out).await,
        Command::List(args) => allocations::list(&client, args, format, out).await,
        Command::Watch(args) => watch::run(&client, args, out).await,
        Command::State { stale } => state::run(&client, stale, format, out).await,
        Command::Optimize { dry_run } => optimize::run(&client, dry_run, format, out).await,
        Command::Bench(args) => bench::run(&client, args, format, out).await,
        Command::Agent(args) => agent::run(&client, args, format, out).await,
        Command::Top(args) => top::run(&client, args, format, out).await,
        Command::Bridge(command) => bridge::run(client, command, cli.tls_cert.as_ref(), out).await,
        Command::Quota(command) => quota::run(&client, command, format, out).await,
        Command::Preemption(command) => quota::run_preemption(&client, command, format, out).await,
        Command::Policy(command) => policy::run(&client, command, format, out).await,
    }
}

#[cfg(test)]
#[path = "cli_test.rs"]
mod tests;
