//! What only the leader does, outside the log: keep provider heartbeats in
//! memory and turn silence into `ProviderFailed`, propose `Tick`s when a lease
//! or deadline is due, and give every lease a fresh window when it takes over.
//!
//! Heartbeats never enter the log (they are high-frequency and carry no
//! decision); only their consequences do. A new leader knows no heartbeat, so
//! it counts every provider as last seen at the moment it took over: the
//! fresh window the issue asks for.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use qm_state_machine::{Command, ProviderStatus};
use tracing::{info, warn};

use crate::node::{now_ms, Node};

/// Metrics a provider reported in its last heartbeat, per resource.
pub type ReportedMetrics = BTreeMap<String, BTreeMap<String, f64>>;

/// The leader's memory of providers. Cleared whenever leadership changes.
#[derive(Default)]
pub struct HeartbeatBook {
    /// The term this book belongs to and when this replica became its leader.
    leadership: Option<(u64, u64)>,
    last_seen_ms: BTreeMap<String, u64>,
    metrics: BTreeMap<String, ReportedMetrics>,
}

impl HeartbeatBook {
    pub fn record(&mut self, provider_id: &str, now_ms: u64, metrics: ReportedMetrics) {
        self.last_seen_ms.insert(provider_id.to_owned(), now_ms);
        self.metrics.insert(provider_id.to_owned(), metrics);
    }

    pub fn last_seen_ms(&self, provider_id: &str) -> Option<u64> {
        self.last_seen_ms.get(provider_id).copied()
    }

    pub fn metrics(&self, provider_id: &str) -> Option<&ReportedMetrics> {
        self.metrics.get(provider_id)
    }

    pub fn forget(&mut self, provider_id: &str) {
        self.last_seen_ms.remove(provider_id);
        self.metrics.remove(provider_id);
    }

    /// When a silent provider is considered last seen: its heartbeat, or the
    /// start of this leadership if it has not been heard from since.
    fn silent_since(&self, provider_id: &str) -> Option<u64> {
        let (_, since) = self.leadership?;
        Some(self.last_seen_ms(provider_id).unwrap_or(since).max(since))
    }
}

/// Runs the leader's duties every `tick_interval_ms` until the node stops.
pub async fn run_duties(node: Arc<Node>, book: Arc<Mutex<HeartbeatBook>>) {
    let mut interval = tokio::time::interval(Duration::from_millis(node.config.tick_interval_ms));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        interval.tick().await;
        let Some(term) = node.leading_term() else {
            book.lock().expect("heartbeat book").leadership = None;
            continue;
        };
        let became_leader = book.lock().expect("heartbeat book").leadership.map(|(t, _)| t) != Some(term);
        if became_leader && !take_over(&node, &book, term).await {
            continue;
        }
        propose_due_work(&node, &book).await;
    }
}

/// Starts a leadership: waits until every entry of earlier terms is applied
/// (so the table is current), resets the heartbeat book, refreshes leases.
async fn take_over(node: &Node, book: &Mutex<HeartbeatBook>, term: u64) -> bool {
    if let Err(error) = node.raft.ensure_linearizable().await {
        warn!(%error, "leadership not confirmed yet");
        return false;
    }
    {
        let mut book = book.lock().expect("heartbeat book");
        *book = HeartbeatBook {
            leadership: Some((term, now_ms())),
            ..HeartbeatBook::default()
        };
    }
    info!(
        term,
        operation_type = "take_over",
        "this replica leads; providers and leases get a fresh window"
    );
    let has_leases = node.with_table(|table| table.next_due_ms().is_some()).await;
    if has_leases {
        if let Err(status) = node.propose(Command::RefreshLeases).await {
            warn!(%status, "could not refresh leases");
        }
    }
    true
}

async fn propose_due_work(node: &Node, book: &Mutex<HeartbeatBook>) {
    let now = now_ms();
    let (tick_due, silent, returned) = node
        .with_table(|table| {
            let book = book.lock().expect("heartbeat book");
            let tick_due = table.next_due_ms().is_some_and(|due| due <= now);
            let mut silent = Vec::new();
            let mut returned = Vec::new();
            for provider in table.providers() {
                match provider.status {
                    ProviderStatus::Active => {
                        let since = book.silent_since(&provider.provider_id).unwrap_or(now);
                        if now.saturating_sub(since) > node.config.provider_failure_window_ms {
                            silent.push(provider.provider_id.clone());
                        }
                    }
                    ProviderStatus::Failed => {
                        // Heard from after it was declared failed: it is back.
                        let heard = book.last_seen_ms(&provider.provider_id);
                        if heard.is_some_and(|at| now.saturating_sub(at) <= node.config.provider_failure_window_ms) {
                            returned.push(provider.provider_id.clone());
                        }
                    }
                }
            }
            (tick_due, silent, returned)
        })
        .await;
    if tick_due {
        if let Err(status) = node.propose(Command::Tick).await {
            warn!(%status, operation_type = "tick", "tick not committed");
        }
    }
    for provider_id in silent {
        warn!(resource_id = %provider_id, operation_type = "provider_failed", "no heartbeat within the failure window");
        if let Err(status) = node
            .propose(Command::ProviderFailed {
                provider_id: provider_id.clone(),
            })
            .await
        {
            warn!(%status, resource_id = %provider_id, "provider failure not committed");
        }
    }
    for provider_id in returned {
        info!(resource_id = %provider_id, operation_type = "provider_recovered", "failed provider heartbeats again");
        if let Err(status) = node
            .propose(Command::ProviderRecovered {
                provider_id: provider_id.clone(),
            })
            .await
        {
            warn!(%status, resource_id = %provider_id, "provider recovery not committed");
        }
    }
}
