//! The bridge's own metrics, in the Prometheus text format (through
//! `prometheus-client`) on `--metrics-listen` at `/metrics`:
//!
//! * `qm_bridge_events_published_total`: event messages sent to `resource_events`;
//! * `qm_bridge_events_confirmed_total`: of those, confirmed by the broker;
//! * `qm_bridge_requests_total{action, outcome}`: request messages handled
//!   (`outcome` = `replied`, `dead_lettered`, `requeued`);
//! * `qm_bridge_redelivered_total`: request messages the broker delivered again;
//! * `qm_bridge_dead_lettered_total`: request messages rejected to the dead-letter exchange;
//! * `qm_bridge_resyncs_total`: `resync_required` messages sent;
//! * `qm_bridge_cursor_revision`: the last revision confirmed by the broker and saved;
//! * `qm_bridge_cursor_lag`: the cluster's revision minus that;
//! * `qm_bridge_holds_cursor`: 1 while this bridge is the one publishing events.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::routing::get;
use axum::Router;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tracing::warn;

/// The labels of `qm_bridge_requests_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub action: &'static str,
    pub outcome: &'static str,
}

/// Every metric of the bridge; cheap to update from any task.
#[derive(Default)]
pub struct Metrics {
    pub events_published: Counter,
    pub events_confirmed: Counter,
    pub requests: Family<RequestLabels, Counter>,
    pub redelivered: Counter,
    pub dead_lettered: Counter,
    pub resyncs: Counter,
    pub cursor_revision: Gauge,
    pub cursor_lag: Gauge,
    pub holds_cursor: Gauge,
}

impl Metrics {
    fn registry(&self) -> Registry {
        let mut registry = Registry::with_prefix("qm_bridge");
        registry.register(
            "events_published",
            "Event messages sent to resource_events",
            self.events_published.clone(),
        );
        registry.register(
            "events_confirmed",
            "Event messages the broker confirmed",
            self.events_confirmed.clone(),
        );
        registry.register("requests", "Request messages handled, by action and outcome", self.requests.clone());
        registry.register(
            "redelivered",
            "Request messages the broker delivered again",
            self.redelivered.clone(),
        );
        registry.register(
            "dead_lettered",
            "Request messages rejected to resource_management.dlx",
            self.dead_lettered.clone(),
        );
        registry.register("resyncs", "resync_required messages sent", self.resyncs.clone());
        registry.register(
            "cursor_revision",
            "Last revision confirmed by the broker and saved in the cluster",
            self.cursor_revision.clone(),
        );
        registry.register("cursor_lag", "The cluster's revision minus the cursor's", self.cursor_lag.clone());
        registry.register(
            "holds_cursor",
            "1 while this bridge publishes the events",
            self.holds_cursor.clone(),
        );
        registry
    }

    pub fn count_request(&self, action: &'static str, outcome: &'static str) {
        self.requests.get_or_create(&RequestLabels { action, outcome }).inc();
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry()).expect("writing to a String cannot fail");
        text
    }
}

/// Serves `/metrics` on `addr` until the process ends.
pub async fn serve(addr: SocketAddr, metrics: Arc<Metrics>) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let app = Router::new().route(
        "/metrics",
        get(move || {
            let metrics = metrics.clone();
            async move { ([("content-type", "text/plain; version=0.0.4")], metrics.render()) }
        }),
    );
    tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, app).await {
            warn!(%error, "the metrics endpoint stopped");
        }
    });
    Ok(())
}
