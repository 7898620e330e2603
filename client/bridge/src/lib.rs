//! # qm-bridge: the protocol's message broker, in front of the cluster
//!
//! The protocol's agents talk through RabbitMQ (resource-management-
//! protocol.md, "Integration Points"): a topic exchange
//! `resource_management` for requests and a fanout exchange
//! `resource_events` for events. This bridge, run as `qm bridge amqp`, lets
//! an agent with nothing but an AMQP client and the protocol's JSON
//! allocate, release and watch:
//!
//! ```text
//!  agent ──resource_request.<ns> (JSON)──▶ RabbitMQ ──▶ bridge ──Allocate (gRPC, request_id = idempotency key)──▶ cluster
//!  agent ◀──allocation_response (reply_to, correlation_id)── RabbitMQ ◀── bridge
//!  agents ◀──every event, in revision order── resource_events ◀── bridge ◀──Watch from the cursor── cluster
//! ```
//!
//! Several bridges may run at once: they share the request queue (each
//! message goes to one of them), and the one holding the cursor publishes
//! the events while the others stand by.
//!
//! # Layout
//!
//! * [`messages`]: routing keys, request and release bodies, rejections,
//!   event bodies and ids — pure functions, tested without a broker.
//! * [`topology`]: the exchanges and queues the bridge declares.
//! * [`requests`]: the request consumer (acknowledged only after the reply
//!   is confirmed; bad input dead-lettered; no leader requeued).
//! * [`events`]: the event publisher and its cursor in the cluster's log.
//! * [`metrics`]: published, confirmed, redelivered, dead-lettered, cursor lag.

pub mod events;
pub mod messages;
pub mod metrics;
pub mod requests;
pub mod topology;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use lapin::tcp::OwnedTLSConfig;
use lapin::{Connection, ConnectionProperties};
use qm_client::Client;
use tracing::{info, warn};

use crate::metrics::Metrics;

/// The cursor's name unless told otherwise: bridges of one deployment share it.
pub const DEFAULT_CURSOR: &str = "amqp-bridge";
/// The cluster's name in event message ids unless told otherwise.
pub const DEFAULT_CLUSTER_NAME: &str = "quartermaster";
/// First wait before reconnecting to a failed broker; it doubles up to
/// [`RECONNECT_DELAY_MAX`].
pub const RECONNECT_DELAY_MIN: Duration = Duration::from_millis(200);
pub const RECONNECT_DELAY_MAX: Duration = Duration::from_secs(5);
/// Largest prefetch: the bridge runs one call per unacknowledged message.
pub const PREFETCH_MAX: u16 = 1024;

/// What a bridge needs besides its cluster client.
#[derive(Clone, Debug)]
pub struct BridgeConfig {
    /// `amqp://user:pass@host:port/vhost` or `amqps://...`.
    pub amqp_url: String,
    /// CA certificate (PEM) the broker's certificate must chain to, for `amqps://`.
    pub amqp_ca: Option<PathBuf>,
    /// The request queue, shared by the bridges of one deployment.
    pub queue: String,
    /// Names the cluster in event message ids.
    pub cluster_name: String,
    /// The cursor in the cluster's log; bridges sharing it publish in turn.
    pub cursor: String,
    /// This bridge, as the cursor's holder; unique per process.
    pub holder: String,
    /// How long a hold lasts without being renewed: how soon a standby
    /// bridge takes over from one that vanished.
    pub cursor_hold: Duration,
    /// How often the confirmed revision is saved (and the hold renewed);
    /// at most this much is published twice after a crash.
    pub cursor_save_interval: Duration,
    /// The namespaces requests may be for; empty: any (the cluster still
    /// checks each call against the bridge's certificate).
    pub namespaces: Vec<String>,
    /// Request messages handled at once.
    pub prefetch: u16,
    /// Serve `/metrics` here.
    pub metrics_listen: Option<SocketAddr>,
}

/// A configuration that cannot work.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    #[error("invalid {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("cannot read {path}: {source}")]
    ReadCa { path: PathBuf, source: std::io::Error },
    #[error("cannot serve metrics on {addr}: {source}")]
    Metrics { addr: SocketAddr, source: std::io::Error },
}

impl BridgeConfig {
    pub fn validate(&self) -> Result<(), BridgeError> {
        let invalid = |field, reason: &str| {
            Err(BridgeError::Invalid {
                field,
                reason: reason.to_owned(),
            })
        };
        if !(self.amqp_url.starts_with("amqp://") || self.amqp_url.starts_with("amqps://")) {
            return invalid("amqp-url", "must start with amqp:// or amqps://");
        }
        if self.prefetch == 0 || self.prefetch > PREFETCH_MAX {
            return invalid("prefetch", &format!("must be 1 to {PREFETCH_MAX}"));
        }
        if self.cursor_save_interval.is_zero() || self.cursor_save_interval * 2 > self.cursor_hold {
            return invalid(
                "cursor-hold",
                "must be at least twice the save interval, or the hold lapses between saves",
            );
        }
        if self.queue.is_empty() || self.cursor.is_empty() || self.holder.is_empty() {
            return invalid("queue", "the queue, cursor and holder names must not be empty");
        }
        Ok(())
    }

    /// Why a request for `namespace` is refused here, if it is.
    pub fn namespace_refusal(&self, namespace: Option<&str>) -> Option<String> {
        if self.namespaces.is_empty() {
            return None;
        }
        match namespace {
            Some(namespace) if self.namespaces.iter().any(|allowed| allowed == namespace) => None,
            Some(namespace) => Some(format!(
                "namespace {namespace:?} is not one this bridge may act for ({})",
                self.namespaces.join(", ")
            )),
            None => Some(format!(
                "the routing key names no namespace; this bridge acts for {} only",
                self.namespaces.join(", ")
            )),
        }
    }
}

/// A holder name unique to this process: host, pid and a random suffix.
pub fn default_holder() -> String {
    let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
    let host = host.trim();
    format!(
        "{}-{}-{:08x}",
        if host.is_empty() { "bridge" } else { host },
        std::process::id(),
        rand::random::<u32>()
    )
}

/// Runs the bridge until the process ends: connects, declares the topology,
/// consumes requests and publishes events; reconnects with backoff when the
/// broker fails. The cluster client fails over by itself.
pub async fn run(client: Client, config: BridgeConfig) -> Result<(), BridgeError> {
    config.validate()?;
    let tls = match &config.amqp_ca {
        None => OwnedTLSConfig::default(),
        Some(path) => OwnedTLSConfig {
            identity: None,
            cert_chain: Some(std::fs::read_to_string(path).map_err(|source| BridgeError::ReadCa {
                path: path.clone(),
                source,
            })?),
        },
    };
    let metrics = Arc::new(Metrics::default());
    if let Some(addr) = config.metrics_listen {
        metrics::serve(addr, metrics.clone())
            .await
            .map_err(|source| BridgeError::Metrics { addr, source })?;
    }
    let config = Arc::new(config);
    let mut delay = RECONNECT_DELAY_MIN;
    loop {
        let error = session(&client, &config, &metrics, tls.clone(), &mut delay).await;
        warn!(%error, delay_ms = delay.as_millis() as u64, "broker session ended; reconnecting");
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(RECONNECT_DELAY_MAX);
    }
}

/// One broker connection, until it fails; the failure.
async fn session(client: &Client, config: &Arc<BridgeConfig>, metrics: &Arc<Metrics>, tls: OwnedTLSConfig, delay: &mut Duration) -> String {
    let properties = ConnectionProperties::default().with_connection_name(format!("qm-bridge {}", config.holder).into());
    let runtime = match lapin::runtime::default_runtime() {
        Ok(runtime) => runtime,
        Err(error) => return format!("no async runtime: {error}"),
    };
    let connection = match Connection::connect_with_config(&config.amqp_url, properties, tls, runtime).await {
        Ok(connection) => connection,
        Err(error) => return format!("connect: {error}"),
    };
    let declared = async {
        let channel = connection.create_channel().await?;
        topology::declare(&channel, &config.queue).await?;
        channel.close(200, "declared".into()).await
    };
    if let Err(error) = declared.await {
        return format!("declare: {error}");
    }
    info!(queue = %config.queue, "connected to the broker");
    *delay = RECONNECT_DELAY_MIN;
    let ended = tokio::select! {
        ended = requests::serve(&connection, client, config, metrics) => ended.err().map(|error| format!("requests: {error}")),
        ended = events::publish(&connection, client, config, metrics) => ended.err().map(|error| format!("events: {error}")),
    };
    let _ = connection.close(200, "reconnecting".into()).await;
    ended.unwrap_or_else(|| "ended".to_owned())
}

/// Lets go of the cursor at once, so a standby bridge takes over without
/// waiting for the hold to lapse; for a clean shutdown.
pub async fn let_go(client: &Client, config: &BridgeConfig) {
    if let Err(error) = client.advance_cursor(&config.cursor, &config.holder, 0, Duration::ZERO).await {
        warn!(%error, "could not let go of the cursor; another bridge takes over when the hold lapses");
    }
}
