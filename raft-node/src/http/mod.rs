//! The replica's HTTP port (`--http-listen`): the protocol's JSON API, a
//! Consul-compatible read-only service catalog, `/metrics`, and the OpenAPI
//! document of it all, on one axum server beside gRPC.
//!
//! ```text
//!  TCP ─▶ [rustls, mutual TLS: the same CA as gRPC] ─▶ hyper ─▶ axum Router (routes())
//!            │ the client's leaf certificate rides on each request (access::PeerCertificate)
//!            ▼
//!  handler ─▶ access::admit (Guard: role → Call, as gRPC) ─▶ parse + validate (400 naming the field)
//!          ─▶ crate::api::{requests, providers, cluster, watch} (the gRPC handlers themselves:
//!             the same namespace scoping, read index, leader checks and answers)
//!          ─▶ tonic::Status ──error::HttpError::from_status──▶ 307 to the leader | 400 | 404 | 409 | 503 + Retry-After
//! ```
//!
//! Every call goes through the very functions the gRPC service runs, so the
//! two APIs cannot disagree about what is allowed or what it means. A
//! follower answers writes and linearizable reads with `307 Temporary
//! Redirect` to the same path on the leader's HTTP address (from
//! `--http-peers`); it does not forward, because a forwarded call would
//! reach the leader with the follower's certificate instead of the caller's.
//!
//! # Layout
//!
//! * [`routes`] (here): every route, in one table the OpenAPI test reads.
//! * [`access`]: the caller's certificate → [`Caller`](crate::security::Caller); `GET /v1/identity`.
//! * [`error`]: [`HttpError`](error::HttpError), the one mapping of statuses to HTTP answers.
//! * [`params`]: query strings, durations, bodies (the named body limit).
//! * [`requests`]: allocate, release, get, list.
//! * [`providers`]: list, register, the monitor's system state, the cluster.
//! * [`quotas`]: namespace quotas, preemption settings, the allocate preview.
//! * [`policies`]: capability policies: list, set, get, delete (admin).
//! * [`history`]: one request's way through the protocol's states, from the events.
//! * [`events`]: the event stream as Server-Sent Events.
//! * [`catalog`]: the Consul-compatible catalog, health and status endpoints.
//! * [`replica_health`]: which replicas know a leader, probed in the background.
//! * [`scrape`]: the `/metrics` handler.
//! * [`openapi`]: the document served at `/v1/openapi.json`.
//! * [`serve`]: accepting connections, plain or mutual TLS.
//! * [`ui`]: the operators' web UI at `/ui/`, built into the binary.

pub mod access;
pub mod catalog;
pub mod error;
pub mod events;
pub mod history;
pub mod openapi;
pub mod params;
pub mod policies;
pub mod providers;
pub mod quotas;
pub mod replica_health;
pub mod requests;
pub mod scrape;
pub mod serve;
pub mod ui;

use std::sync::Arc;

use axum::http::Method;
use axum::routing::{delete, get, post, put, MethodRouter};
use axum::Router;

use crate::consensus::Node;
use crate::security::audit::AuditLog;
use crate::security::Guard;
use replica_health::ReplicaHealth;

/// What every handler shares.
pub struct HttpApi {
    pub node: Arc<Node>,
    pub guard: Guard,
    /// The replica's audit trail (shared with gRPC).
    pub audit: Arc<AuditLog>,
    /// `https` with mutual TLS, else `http`: the scheme of redirect URLs.
    pub scheme: &'static str,
    /// Which replicas know a leader, for the catalog's health checks.
    pub replica_health: ReplicaHealth,
}

/// The handlers' state.
pub type Shared = Arc<HttpApi>;

/// One route: its method, its path (axum's syntax, `{id}`, as OpenAPI's) and its handler.
pub struct Route {
    pub method: Method,
    pub path: &'static str,
    pub handler: MethodRouter<Shared>,
}

fn route(method: Method, path: &'static str, handler: MethodRouter<Shared>) -> Route {
    Route { method, path, handler }
}

/// Every route the server has. `/v1/openapi.json` documents exactly these
/// (a unit test in [`openapi`] checks it, an integration test calls each).
pub fn routes() -> Vec<Route> {
    vec![
        route(Method::POST, "/v1/allocate", post(requests::allocate)),
        route(Method::POST, "/v1/release", post(requests::release)),
        route(Method::POST, "/v1/release/matching", post(requests::release_matching)),
        route(Method::GET, "/v1/requests", get(requests::list)),
        route(Method::GET, "/v1/requests/{id}", get(requests::get)),
        route(Method::GET, "/v1/requests/{id}/history", get(history::history)),
        route(Method::POST, "/v1/allocate/preview", post(quotas::preview)),
        route(Method::GET, "/v1/quotas", get(quotas::list)),
        route(Method::PUT, "/v1/quotas/{namespace}", put(quotas::set)),
        route(Method::DELETE, "/v1/quotas/{namespace}", delete(quotas::delete)),
        route(Method::POST, "/v1/preemption", post(quotas::set_preemption)),
        route(Method::GET, "/v1/policies", get(policies::list)),
        route(Method::PUT, "/v1/policies/{name}", put(policies::set)),
        route(Method::GET, "/v1/policies/{name}", get(policies::get)),
        route(Method::DELETE, "/v1/policies/{name}", delete(policies::delete)),
        route(Method::POST, "/v1/policies/{name}/bind", post(policies::bind)),
        route(Method::POST, "/v1/policies/{name}/unbind", post(policies::unbind)),
        route(Method::GET, "/v1/providers", get(providers::list)),
        route(Method::POST, "/v1/providers", post(providers::register)),
        route(Method::POST, "/v1/providers/{id}/cordon", post(providers::cordon)),
        route(Method::POST, "/v1/providers/{id}/uncordon", post(providers::uncordon)),
        route(Method::POST, "/v1/providers/{id}/drain", post(providers::drain)),
        route(Method::GET, "/v1/state", get(providers::system_state)),
        route(Method::POST, "/v1/optimize", post(providers::optimize)),
        route(Method::GET, "/v1/cluster", get(providers::cluster)),
        route(Method::GET, "/v1/identity", get(access::identity)),
        route(Method::GET, "/v1/events", get(events::events)),
        route(Method::GET, "/v1/openapi.json", get(openapi::document)),
        route(Method::GET, "/v1/catalog/services", get(catalog::services)),
        route(Method::GET, "/v1/catalog/service/{name}", get(catalog::catalog_service)),
        route(Method::GET, "/v1/health/service/{name}", get(catalog::health_service)),
        route(Method::GET, "/v1/agent/self", get(catalog::agent_self)),
        route(Method::GET, "/v1/sd/prometheus", get(catalog::prometheus_sd)),
        route(Method::GET, "/v1/status/leader", get(catalog::status_leader)),
        route(Method::GET, "/v1/status/peers", get(catalog::status_peers)),
        route(Method::GET, "/metrics", get(scrape::metrics)),
    ]
}

/// The whole HTTP API, and the web UI under `/ui/` ([`ui`]: pages, not
/// API, so not in [`routes`] nor in the OpenAPI document). Writes from a
/// browser page of another origin are refused ([`ui::same_origin_writes`]).
pub fn router(api: Shared) -> Router {
    routes()
        .into_iter()
        .fold(Router::new(), |router, route| router.route(route.path, route.handler))
        .merge(ui::router())
        .fallback(error::no_route)
        .layer(axum::middleware::from_fn(ui::same_origin_writes))
        .with_state(api)
}

/// `/metrics` alone, for `--metrics-listen`.
pub fn metrics_router(api: Shared) -> Router {
    Router::new()
        .route("/metrics", get(scrape::metrics))
        .fallback(error::no_route)
        .with_state(api)
}
