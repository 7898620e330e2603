//! A Consul-compatible, read-only service catalog: the cluster is its own
//! registry (as Nomad is since 1.3), so Consul clients, consul-template and
//! Prometheus' `consul_sd_configs` find the protocol's three services.
//!
//! | service | one entry per | address:port | check passing while |
//! |---|---|---|---|
//! | `resource_manager` | replica (membership) | its gRPC address | it knows a leader |
//! | `resource_providers` | provider | what it registered (else its id, port 0) | it is `active` (`failed`: critical) |
//! | `system_monitor` | replica with an `--http-peers` entry | its HTTP address (`/metrics`) | it knows a leader |
//!
//! Provider labels become tags (`key=value`) and meta. Endpoints:
//! `/v1/catalog/services`, `/v1/catalog/service/{name}`,
//! `/v1/health/service/{name}` (`passing`, `tag`), `/v1/agent/self`,
//! `/v1/status/leader`, `/v1/status/peers`, and `/v1/sd/prometheus` (the same
//! entries for Prometheus' `http_sd_configs`).
//!
//! **Consistency**: linearizable by default: a follower redirects (307) to
//! the leader and the leader confirms its leadership with a quorum (read
//! index) before answering; `?stale` answers from this replica's table.
//! **Blocking queries**: `?index=N&wait=30s` waits while the table's
//! revision is still `N` (at most `wait`, default 5 minutes, at most 10).
//! Every answer carries `X-Consul-Index` (the table's revision),
//! `X-Consul-KnownLeader` and `X-Consul-LastContact`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderName, HeaderValue, Uri};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use qm_state_machine::{AllocationTable, ProviderStatus};
use serde_json::{json, Value};
use tokio::time::Instant;

use super::access::{admit, PeerCertificate};
use super::error::HttpError;
use super::params::Params;
use super::{HttpApi, Shared};
use crate::security::Call;

/// The protocol's service names.
pub const RESOURCE_MANAGER: &str = "resource_manager";
pub const RESOURCE_PROVIDERS: &str = "resource_providers";
pub const SYSTEM_MONITOR: &str = "system_monitor";
pub const SERVICES: [&str; 3] = [RESOURCE_MANAGER, RESOURCE_PROVIDERS, SYSTEM_MONITOR];
/// A blocking query without `wait` waits this long at most (Consul's default).
pub const BLOCKING_WAIT_DEFAULT_MS: u64 = 300_000;

const CONSUL_INDEX: HeaderName = HeaderName::from_static("x-consul-index");
const CONSUL_KNOWN_LEADER: HeaderName = HeaderName::from_static("x-consul-knownleader");
const CONSUL_LAST_CONTACT: HeaderName = HeaderName::from_static("x-consul-lastcontact");

/// One instance of a service, as both the catalog and health endpoints show it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceEntry {
    pub node: String,
    pub service_id: String,
    pub service: &'static str,
    pub tags: Vec<String>,
    pub address: String,
    pub port: u16,
    pub meta: BTreeMap<String, String>,
    /// `passing` or `critical`.
    pub status: &'static str,
    pub output: String,
}

/// `host:port` split; a port that does not parse is 0.
fn split_addr(addr: &str) -> (String, u16) {
    match addr.rsplit_once(':') {
        Some((host, port)) => (host.trim_matches(['[', ']']).to_owned(), port.parse().unwrap_or(0)),
        None => (addr.to_owned(), 0),
    }
}

/// The `resource_providers` entries: one per provider, in id order.
pub fn provider_entries(table: &AllocationTable) -> Vec<ServiceEntry> {
    table
        .providers()
        .map(|provider| {
            let active = provider.status == ProviderStatus::Active;
            let mut meta = provider.labels.clone();
            meta.insert("provider_status".into(), if active { "active" } else { "failed" }.into());
            ServiceEntry {
                node: provider.provider_id.to_string(),
                service_id: provider.provider_id.to_string(),
                service: RESOURCE_PROVIDERS,
                tags: provider.labels.iter().map(|(key, value)| format!("{key}={value}")).collect(),
                address: provider.address.clone().unwrap_or_else(|| provider.provider_id.to_string()),
                port: provider.port.unwrap_or(0),
                meta,
                status: if active { "passing" } else { "critical" },
                output: format!("provider {} is {}", provider.provider_id, if active { "active" } else { "failed" }),
            }
        })
        .collect()
}

/// The `resource_manager` or `system_monitor` entries: one per member.
fn replica_entries(api: &HttpApi, service: &'static str) -> Vec<ServiceEntry> {
    let metrics = api.node.raft.metrics().borrow().clone();
    let membership = metrics.membership_config.membership();
    let voters: BTreeSet<u64> = membership.voter_ids().collect();
    membership
        .nodes()
        .filter_map(|(id, member)| {
            let role = match (Some(*id) == metrics.current_leader, voters.contains(id)) {
                (true, _) => "leader",
                (false, true) => "follower",
                (false, false) => "learner",
            };
            let healthy = api.replica_health.knows_leader(&api.node, *id);
            let (address, port) = match service {
                SYSTEM_MONITOR => split_addr(api.node.config.http_peers.get(id)?),
                _ => split_addr(&member.addr),
            };
            let mut meta = BTreeMap::from([("replica_id".to_owned(), id.to_string()), ("raft_role".to_owned(), role.to_owned())]);
            if service == SYSTEM_MONITOR {
                meta.insert("metrics_path".into(), "/metrics".into());
            }
            Some(ServiceEntry {
                node: format!("qm-{id}"),
                service_id: format!("{service}-{id}"),
                service,
                tags: vec![role.to_owned()],
                address,
                port,
                meta,
                status: if healthy { "passing" } else { "critical" },
                output: if healthy {
                    format!("replica {id} knows a leader")
                } else {
                    format!("replica {id} knows no leader or does not answer")
                },
            })
        })
        .collect()
}

/// The entries of `service` (none for an unknown name, as Consul answers).
async fn entries(api: &HttpApi, service: &str) -> Vec<ServiceEntry> {
    match service {
        RESOURCE_PROVIDERS => api.node.with_table(provider_entries).await,
        RESOURCE_MANAGER => replica_entries(api, RESOURCE_MANAGER),
        SYSTEM_MONITOR => replica_entries(api, SYSTEM_MONITOR),
        _ => Vec::new(),
    }
}

/// Runs the consistency and blocking rules of a catalog read; returns the
/// revision the answer is at.
async fn settle(api: &HttpApi, params: &Params, uri: &Uri) -> Result<u64, HttpError> {
    let stale = params.flag("stale");
    let barrier = || async {
        api.node
            .read_barrier(stale)
            .await
            .map_err(|error| HttpError::from_status(api, &tonic::Status::from(error), uri))
    };
    barrier().await?;
    let index = params.number("index")?;
    let wait = params.duration("wait")?.unwrap_or(Duration::from_millis(BLOCKING_WAIT_DEFAULT_MS));
    let revision = || api.node.with_table(|table| table.revision());
    if let Some(index) = index.filter(|index| *index > 0) {
        let deadline = Instant::now() + wait;
        let mut changes = api.node.state.subscribe();
        // Waits while nothing changed since the caller's answer. An index the
        // table is not at (a newer one from another replica, or one from
        // before a restore) is answered at once, and the caller starts over.
        while revision().await.max(1) == index {
            tokio::select! {
                changed = changes.changed() => if changed.is_err() { break },
                () = tokio::time::sleep_until(deadline) => break,
            }
        }
        barrier().await?;
    }
    Ok(revision().await)
}

/// An answer with Consul's headers.
fn consul_answer(api: &HttpApi, revision: u64, body: Value) -> Response {
    let metrics = api.node.raft.metrics().borrow().clone();
    let known_leader = api.node.leader().is_some();
    // Consul's meaning: 0 on the leader, else how long since the leader was
    // last heard from (openraft's own figure exists on the leader only).
    let last_contact_ms = match metrics.current_leader {
        Some(leader) if leader == api.node.id => 0,
        _ => api
            .node
            .leader_contact
            .since(std::time::Instant::now())
            .map_or(0, |since| since.as_millis() as u64),
    };
    let mut response = Json(body).into_response();
    let headers = response.headers_mut();
    // Consul clients treat index 0 as "no index"; a fresh table is at 1.
    headers.insert(CONSUL_INDEX, HeaderValue::from(revision.max(1)));
    headers.insert(
        CONSUL_KNOWN_LEADER,
        HeaderValue::from_static(if known_leader { "true" } else { "false" }),
    );
    headers.insert(CONSUL_LAST_CONTACT, HeaderValue::from(last_contact_ms));
    response
}

/// Entries carrying every asked tag (and, with `passing`, passing ones only).
fn filtered(entries: Vec<ServiceEntry>, params: &Params, passing_only: bool) -> Vec<ServiceEntry> {
    let tags: Vec<&str> = params.all("tag").collect();
    entries
        .into_iter()
        .filter(|entry| tags.iter().all(|tag| entry.tags.iter().any(|have| have == tag)))
        .filter(|entry| !passing_only || entry.status == "passing")
        .collect()
}

/// `GET /v1/catalog/services`: each service's name and the tags its entries carry.
pub async fn services(
    State(api): State<Shared>,
    Extension(peer): Extension<PeerCertificate>,
    uri: Uri,
    RawQuery(query): RawQuery,
) -> Result<Response, HttpError> {
    admit(&api, &peer, Call::ListProviders)?;
    let params = Params::parse(query.as_deref());
    let revision = settle(&api, &params, &uri).await?;
    let mut services = serde_json::Map::new();
    for service in SERVICES {
        let tags: BTreeSet<String> = entries(&api, service).await.into_iter().flat_map(|entry| entry.tags).collect();
        services.insert(service.to_owned(), json!(tags));
    }
    Ok(consul_answer(&api, revision, Value::Object(services)))
}

/// `GET /v1/catalog/service/{name}[?tag=]`.
pub async fn catalog_service(
    State(api): State<Shared>,
    Extension(peer): Extension<PeerCertificate>,
    uri: Uri,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, HttpError> {
    admit(&api, &peer, Call::ListProviders)?;
    let params = Params::parse(query.as_deref());
    let revision = settle(&api, &params, &uri).await?;
    let datacenter = &api.node.config.datacenter;
    let body: Vec<Value> = filtered(entries(&api, &name).await, &params, false)
        .into_iter()
        .map(|entry| {
            json!({
                "ID": "",
                "Node": entry.node,
                "Address": entry.address,
                "Datacenter": datacenter,
                "TaggedAddresses": {},
                "NodeMeta": {},
                "ServiceKind": "",
                "ServiceID": entry.service_id,
                "ServiceName": entry.service,
                "ServiceTags": entry.tags,
                "ServiceAddress": entry.address,
                "ServicePort": entry.port,
                "ServiceMeta": entry.meta,
                "ServiceWeights": {"Passing": 1, "Warning": 1},
                "ServiceEnableTagOverride": false,
                "CreateIndex": revision.max(1),
                "ModifyIndex": revision.max(1),
            })
        })
        .collect();
    Ok(consul_answer(&api, revision, Value::Array(body)))
}

/// `GET /v1/health/service/{name}[?passing][&tag=]`.
pub async fn health_service(
    State(api): State<Shared>,
    Extension(peer): Extension<PeerCertificate>,
    uri: Uri,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, HttpError> {
    admit(&api, &peer, Call::ListProviders)?;
    let params = Params::parse(query.as_deref());
    let revision = settle(&api, &params, &uri).await?;
    let datacenter = &api.node.config.datacenter;
    let index = revision.max(1);
    let body: Vec<Value> = filtered(entries(&api, &name).await, &params, params.flag("passing"))
        .into_iter()
        .map(|entry| {
            json!({
                "Node": {
                    "ID": "", "Node": entry.node, "Address": entry.address, "Datacenter": datacenter,
                    "TaggedAddresses": {}, "Meta": {}, "CreateIndex": index, "ModifyIndex": index,
                },
                "Service": {
                    "ID": entry.service_id, "Service": entry.service, "Tags": entry.tags,
                    "Address": entry.address, "Port": entry.port, "Meta": entry.meta,
                    "Weights": {"Passing": 1, "Warning": 1}, "EnableTagOverride": false,
                    "CreateIndex": index, "ModifyIndex": index,
                },
                "Checks": [{
                    "Node": entry.node, "CheckID": format!("service:{}", entry.service_id),
                    "Name": format!("{} health", entry.service), "Status": entry.status, "Notes": "",
                    "Output": entry.output, "ServiceID": entry.service_id, "ServiceName": entry.service,
                    "ServiceTags": entry.tags, "Type": "", "CreateIndex": index, "ModifyIndex": index,
                }],
            })
        })
        .collect();
    Ok(consul_answer(&api, revision, Value::Array(body)))
}

/// `GET /v1/sd/prometheus[?service=NAME...][&stale]`: the catalog in
/// Prometheus' HTTP service discovery format (`http_sd_configs`), one target
/// group per entry, labelled as `consul_sd_configs` labels them
/// (`__meta_consul_service`, `__meta_consul_tags`,
/// `__meta_consul_service_metadata_*`, `__meta_consul_health`, ...), so the
/// same relabelling works with either. Debian's Prometheus is built without
/// Consul discovery; this is what it can use. Default: every service.
pub async fn prometheus_sd(
    State(api): State<Shared>,
    Extension(peer): Extension<PeerCertificate>,
    uri: Uri,
    RawQuery(query): RawQuery,
) -> Result<Response, HttpError> {
    admit(&api, &peer, Call::ListProviders)?;
    let params = Params::parse(query.as_deref());
    settle(&api, &params, &uri).await?;
    let asked: Vec<&str> = params.all("service").collect();
    let mut groups = Vec::new();
    for service in SERVICES.into_iter().filter(|service| asked.is_empty() || asked.contains(service)) {
        for entry in entries(&api, service).await {
            groups.push(target_group(&api.node.config.datacenter, &entry));
        }
    }
    Ok(Json(Value::Array(groups)).into_response())
}

/// One entry as an HTTP SD target group with Consul SD's labels.
fn target_group(datacenter: &str, entry: &ServiceEntry) -> Value {
    let mut labels = serde_json::Map::new();
    let mut label = |name: String, value: String| {
        labels.insert(name, Value::String(value));
    };
    label("__meta_consul_dc".into(), datacenter.to_owned());
    label("__meta_consul_node".into(), entry.node.clone());
    label("__meta_consul_address".into(), entry.address.clone());
    label("__meta_consul_service".into(), entry.service.to_owned());
    label("__meta_consul_service_id".into(), entry.service_id.clone());
    label("__meta_consul_service_address".into(), entry.address.clone());
    label("__meta_consul_service_port".into(), entry.port.to_string());
    // Consul SD's own separator convention: the tags between commas, with one at each end.
    label("__meta_consul_tags".into(), format!(",{},", entry.tags.join(",")));
    label("__meta_consul_health".into(), entry.status.to_owned());
    for (key, value) in &entry.meta {
        let name: String = key.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
        label(format!("__meta_consul_service_metadata_{name}"), value.clone());
    }
    json!({"targets": [format!("{}:{}", entry.address, entry.port)], "labels": labels})
}

/// `GET /v1/agent/self`: this replica as a Consul server agent (its datacenter).
pub async fn agent_self(State(api): State<Shared>, Extension(peer): Extension<PeerCertificate>) -> Result<Response, HttpError> {
    admit(&api, &peer, Call::ClusterStatus)?;
    let config = &api.node.config;
    let (address, port) = split_addr(config.advertised_addr());
    let name = format!("qm-{}", api.node.id);
    Ok(Json(json!({
        "Config": {
            "Datacenter": config.datacenter, "PrimaryDatacenter": config.datacenter, "NodeName": name,
            "NodeID": "", "Server": true, "Version": env!("CARGO_PKG_VERSION"), "Revision": "",
        },
        "Member": {"Name": name, "Addr": address, "Port": port, "Tags": {"role": "resource_manager", "dc": config.datacenter}, "Status": 1},
        "Meta": {},
        "Stats": {},
    }))
    .into_response())
}

/// `GET /v1/status/leader`: the leader's address (gRPC), `""` when none is known.
pub async fn status_leader(State(api): State<Shared>, Extension(peer): Extension<PeerCertificate>) -> Result<Response, HttpError> {
    admit(&api, &peer, Call::ClusterStatus)?;
    let leader = api.node.leader().map(|leader| leader.addr).unwrap_or_default();
    Ok(Json(json!(leader)).into_response())
}

/// `GET /v1/status/peers`: the voters' addresses (gRPC).
pub async fn status_peers(State(api): State<Shared>, Extension(peer): Extension<PeerCertificate>) -> Result<Response, HttpError> {
    admit(&api, &peer, Call::ClusterStatus)?;
    let metrics = api.node.raft.metrics().borrow().clone();
    let membership = metrics.membership_config.membership();
    let voters: Vec<String> = membership
        .voter_ids()
        .filter_map(|id| membership.get_node(&id).map(|node| node.addr.clone()))
        .collect();
    Ok(Json(json!(voters)).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use qm_state_machine::{Command, ProviderRegistration, ResourceSpec, StampedCommand, TableConfig};

    #[test]
    fn providers_are_entries_with_their_labels_as_tags_and_status_as_check() {
        let mut table = AllocationTable::new(TableConfig::default());
        let registration = ProviderRegistration {
            provider_id: "node_1".into(),
            labels: BTreeMap::from([("zone".into(), "a".into())]),
            resources: vec![ResourceSpec {
                resource_id: "cpu_1".into(),
                kind: "cpu_cores".into(),
                capacity: 1,
                labels: BTreeMap::new(),
                sharing: None,
            }],
            confirms_allocations: false,
            address: None,
            port: None,
        };
        table.apply(&StampedCommand::new(1, Command::RegisterProvider(registration.validate().unwrap())));
        let entries = provider_entries(&table);
        assert_eq!(1, entries.len());
        assert_eq!(vec!["zone=a".to_owned()], entries[0].tags);
        assert_eq!("passing", entries[0].status);
        assert_eq!(Some(&"a".to_owned()), entries[0].meta.get("zone"));
        table.apply(&StampedCommand::new(
            2,
            Command::ProviderFailed {
                provider_id: "node_1".into(),
            },
        ));
        assert_eq!("critical", provider_entries(&table)[0].status);
    }

    #[test]
    fn a_provider_is_listed_at_the_address_and_port_it_registered_else_at_its_id() {
        let mut table = AllocationTable::new(TableConfig::default());
        for (provider_id, address, port) in [("node_1", None, None), ("node_2", Some("10.1.2.3"), Some(9100))] {
            let registration = ProviderRegistration {
                provider_id: provider_id.into(),
                labels: BTreeMap::new(),
                resources: vec![ResourceSpec {
                    resource_id: "cpu_1".into(),
                    kind: "cpu_cores".into(),
                    capacity: 1,
                    labels: BTreeMap::new(),
                    sharing: None,
                }],
                confirms_allocations: false,
                address: address.map(str::to_owned),
                port,
            };
            table.apply(&StampedCommand::new(1, Command::RegisterProvider(registration.validate().unwrap())));
        }
        let entries = provider_entries(&table);
        assert_eq!(("node_1", 0), (entries[0].address.as_str(), entries[0].port));
        assert_eq!(("10.1.2.3", 9100), (entries[1].address.as_str(), entries[1].port));
    }

    #[test]
    fn addresses_split_into_host_and_port() {
        assert_eq!(("127.0.0.1".to_owned(), 7201), split_addr("127.0.0.1:7201"));
        assert_eq!(("::1".to_owned(), 80), split_addr("[::1]:80"));
        assert_eq!(("host".to_owned(), 0), split_addr("host"));
    }
}
