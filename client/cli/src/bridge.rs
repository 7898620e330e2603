//! `qm bridge amqp`: the protocol's RabbitMQ exchanges in front of the
//! cluster (see the `qm_bridge` crate). Runs until SIGTERM or Ctrl-C, then
//! lets go of the event cursor so a standby bridge takes over at once.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};
use qm_bridge::topology::DEFAULT_REQUEST_QUEUE;
use qm_bridge::{BridgeConfig, BridgeError, DEFAULT_CLUSTER_NAME, DEFAULT_CURSOR};
use qm_client::tls::{Identity, Role};
use qm_client::Client;

use super::agent::shutdown_requested;
use super::error::CliError;

#[derive(Debug, Subcommand)]
pub enum BridgeCommand {
    /// RabbitMQ: requests from `resource_management` (`resource_request.NAMESPACE`,
    /// `resource_release.NAMESPACE`), replies to `reply_to`, every event to `resource_events`.
    Amqp(AmqpArgs),
}

#[derive(Debug, Args)]
pub struct AmqpArgs {
    /// The broker: amqp://user:password@host:port/vhost (vhost `/` is `%2f`), or amqps://.
    #[arg(long, env = "QM_AMQP_URL", default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    pub amqp_url: String,
    /// CA certificate (PEM) of the broker's TLS certificate, for amqps://.
    #[arg(long, env = "QM_AMQP_CA")]
    pub amqp_ca: Option<PathBuf>,
    /// The request queue; bridges of one deployment share it.
    #[arg(long, env = "QM_BRIDGE_QUEUE", default_value = DEFAULT_REQUEST_QUEUE)]
    pub queue: String,
    /// The cluster's name in event message ids (message_id = uuid v5 of it and the revision).
    #[arg(long, env = "QM_CLUSTER_NAME", default_value = DEFAULT_CLUSTER_NAME)]
    pub cluster_name: String,
    /// The event cursor in the cluster's log; bridges sharing it publish in turn.
    #[arg(long, env = "QM_BRIDGE_CURSOR", default_value = DEFAULT_CURSOR)]
    pub cursor: String,
    /// This bridge's name as the cursor's holder (default: host, pid and a random suffix).
    #[arg(long, env = "QM_BRIDGE_HOLDER")]
    pub holder: Option<String>,
    /// A standby bridge takes over this long after the publishing one vanished (ms).
    #[arg(long, env = "QM_BRIDGE_CURSOR_HOLD_MS", default_value_t = 10_000)]
    pub cursor_hold_ms: u64,
    /// How often the confirmed revision is saved in the cluster (ms): at most this much
    /// is published twice after a crash.
    #[arg(long, env = "QM_BRIDGE_CURSOR_SAVE_MS", default_value_t = 1_000)]
    pub cursor_save_ms: u64,
    /// Namespaces requests may be for (comma-separated); default: any, or with a
    /// consumer certificate its namespace.
    #[arg(long = "namespace", env = "QM_BRIDGE_NAMESPACES", value_delimiter = ',')]
    pub namespaces: Vec<String>,
    /// Request messages handled at once (the consumer's prefetch).
    #[arg(long, env = "QM_BRIDGE_PREFETCH", default_value_t = 64)]
    pub prefetch: u16,
    /// Serve the bridge's Prometheus metrics on this address (`/metrics`).
    #[arg(long, env = "QM_BRIDGE_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
}

pub async fn run(client: Client, command: BridgeCommand, tls_cert: Option<&PathBuf>, out: &mut dyn Write) -> Result<(), CliError> {
    let BridgeCommand::Amqp(args) = command;
    let namespaces = match (args.namespaces.is_empty(), tls_cert) {
        (true, Some(cert)) => certificate_namespace(cert)?.into_iter().collect(),
        _ => args.namespaces,
    };
    let config = BridgeConfig {
        amqp_url: args.amqp_url,
        amqp_ca: args.amqp_ca,
        queue: args.queue,
        cluster_name: args.cluster_name,
        cursor: args.cursor,
        holder: args.holder.unwrap_or_else(qm_bridge::default_holder),
        cursor_hold: Duration::from_millis(args.cursor_hold_ms),
        cursor_save_interval: Duration::from_millis(args.cursor_save_ms),
        namespaces,
        prefetch: args.prefetch,
        metrics_listen: args.metrics_listen,
    };
    config.validate().map_err(bridge_error)?;
    writeln!(
        out,
        "bridge {} running: queue {}, cursor {}",
        config.holder, config.queue, config.cursor
    )?;
    out.flush()?;
    tokio::select! {
        ended = qm_bridge::run(client.clone(), config.clone()) => ended.map_err(bridge_error),
        _ = shutdown_requested() => {
            qm_bridge::let_go(&client, &config).await;
            Ok(())
        }
    }
}

/// A consumer certificate's namespace: the only one its bridge may act for.
fn certificate_namespace(cert: &PathBuf) -> Result<Option<String>, CliError> {
    let pem = std::fs::read_to_string(cert).map_err(|error| CliError::Input {
        path: cert.display().to_string(),
        reason: error.to_string(),
    })?;
    let identity = Identity::from_certificate_pem(&pem).map_err(|error| CliError::Input {
        path: cert.display().to_string(),
        reason: error.to_string(),
    })?;
    Ok(match identity.role {
        Role::ResourceConsumer => identity.namespace,
        _ => None,
    })
}

fn bridge_error(error: BridgeError) -> CliError {
    match error {
        BridgeError::Invalid { field, reason } => CliError::Client(qm_client::Error::InvalidArgument {
            field: field.to_owned(),
            reason,
        }),
        other => CliError::Input {
            path: "qm bridge".to_owned(),
            reason: other.to_string(),
        },
    }
}
