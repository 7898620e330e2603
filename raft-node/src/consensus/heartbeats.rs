//! [`HeartbeatBook`]: the leader's memory of providers' heartbeats.
//!
//! Heartbeats never enter the log (they are high-frequency and carry no
//! decision); only their consequences do, proposed by the leader's duties
//! ([`crate::consensus::duties`]). A new leader knows no heartbeat, so it
//! counts every provider as last seen at the moment it took over: the fresh
//! window the issue asks for.

use std::collections::BTreeMap;

/// Metrics a provider reported in its last heartbeat, per resource.
pub type ReportedMetrics = BTreeMap<String, BTreeMap<String, f64>>;

/// The leader's memory of providers. Reset whenever this replica takes over.
#[derive(Debug, Default)]
pub struct HeartbeatBook {
    /// The term this book belongs to and when this replica became its
    /// leader; `None` while it does not lead.
    leadership: Option<(u64, u64)>,
    last_seen_ms: BTreeMap<String, u64>,
    metrics: BTreeMap<String, ReportedMetrics>,
}

impl HeartbeatBook {
    /// A fresh book for the leadership of `term` that began at `now_ms`:
    /// every heartbeat of earlier leaderships is forgotten.
    pub fn taken_over(term: u64, now_ms: u64) -> HeartbeatBook {
        HeartbeatBook {
            leadership: Some((term, now_ms)),
            ..HeartbeatBook::default()
        }
    }

    /// This replica no longer leads. Heartbeats stay readable (for
    /// `ListProviders`) until the next take-over resets the book.
    pub fn end_leadership(&mut self) {
        self.leadership = None;
    }

    /// The term whose leadership this book belongs to.
    pub fn term(&self) -> Option<u64> {
        self.leadership.map(|(term, _)| term)
    }

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
    /// start of this leadership if it has not been heard from since. `None`
    /// while this replica does not lead.
    pub fn silent_since(&self, provider_id: &str) -> Option<u64> {
        let (_, since) = self.leadership?;
        Some(self.last_seen_ms(provider_id).unwrap_or(since).max(since))
    }
}
