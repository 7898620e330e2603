//! `GET /metrics`: the replica's Prometheus metrics ([`crate::metrics`]),
//! sampled from openraft and the table at scrape time. With mutual TLS any
//! role may scrape (as any role may read the cluster status).

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use axum::Extension;

use super::access::{admit, PeerCertificate};
use super::error::HttpError;
use super::Shared;
use crate::consensus::Node;
use crate::metrics::{self, RaftSample, ReplicaSample, UtilizationSample};
use crate::security::audit::AuditLog;
use crate::security::Call;

pub async fn metrics(State(api): State<Shared>, Extension(peer): Extension<PeerCertificate>) -> Result<Response, HttpError> {
    admit(&api, &peer, Call::ClusterStatus)?;
    let text = render(&api.node, &api.audit).await;
    Ok(([(CONTENT_TYPE, metrics::CONTENT_TYPE)], text).into_response())
}

/// The exposition: Raft's state now, each unit's use now, each namespace's
/// use against its quota now, the counters so far, on the leader the
/// longest silence of an active provider now, and the longest this replica
/// went without hearing from its leader.
pub async fn render(node: &Node, audit: &AuditLog) -> String {
    let raft_metrics = node.raft.metrics().borrow().clone();
    let commit_index = node.commit_index().await;
    let raft = RaftSample {
        node_id: node.id,
        term: raft_metrics.current_term,
        leader_id: raft_metrics.current_leader,
        is_leader: raft_metrics.current_leader == Some(node.id),
        commit_index,
        applied_index: raft_metrics.last_applied.map_or(0, |log_id| log_id.index),
        last_log_index: raft_metrics.last_log_index.unwrap_or(0),
        snapshot_index: raft_metrics.snapshot.map_or(0, |log_id| log_id.index),
        storage_failed: matches!(raft_metrics.running_state, Err(openraft::error::Fatal::StorageError(_))),
    };
    let utilization = node
        .with_table(|table| {
            let mut samples = Vec::new();
            'providers: for provider in table.providers() {
                for resource in provider.resources.values() {
                    for (allocation_id, amount) in &resource.holders {
                        if samples.len() == metrics::UTILIZATION_SERIES_MAX {
                            break 'providers;
                        }
                        let consumer_id = table
                            .get(*allocation_id)
                            .map(|record| record.request.requester_id.clone())
                            .unwrap_or_default();
                        samples.push(UtilizationSample {
                            provider_id: provider.provider_id.to_string(),
                            resource_id: resource.resource_id.to_string(),
                            consumer_id: consumer_id.to_string(),
                            utilization: amount as f64 / resource.capacity as f64,
                        });
                    }
                }
            }
            samples
        })
        .await;
    let quotas = node.with_table(|table| table.namespace_usage()).await;
    let optimization = node
        .with_table(|table| metrics::OptimizationSample {
            fragmentation_permille: table.fragmentation_permille(),
            moves_started: table.move_counts().started,
            moves_completed: table.move_counts().completed,
            moves_rolled_back: table.move_counts().rolled_back,
        })
        .await;
    // Read with the table and the book together, as the duties read them.
    let now = crate::clock::now_ms();
    let heartbeat_age_max_ms = node
        .with_table(|table| {
            let active = table
                .providers()
                .filter(|provider| provider.status == qm_state_machine::ProviderStatus::Active)
                .map(|provider| provider.provider_id.as_str());
            node.heartbeats.lock().expect("heartbeat book").silence_max_ms(active, now)
        })
        .await;
    node.metrics.render(
        &raft,
        &utilization,
        &quotas,
        node.state.apply_durations(),
        &optimization,
        &ReplicaSample {
            heartbeat_age_max_ms,
            audit_records_dropped: audit.is_on().then(|| audit.dropped()),
            leader_contact: node.leader_contact.intervals().clone(),
        },
    )
}
