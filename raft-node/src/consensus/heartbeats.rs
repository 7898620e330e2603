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

    /// The longest silence at `now_ms` among `provider_ids` (the active
    /// providers, those a silence fails), each measured as
    /// [`Self::silent_since`] measures it: how close the nearest one is to
    /// the failure window. `None` while this replica does not lead or when
    /// there is no provider.
    pub fn silence_max_ms<'a>(&self, provider_ids: impl IntoIterator<Item = &'a str>, now_ms: u64) -> Option<u64> {
        provider_ids
            .into_iter()
            .filter_map(|provider_id| self.silent_since(provider_id))
            .map(|since| now_ms.saturating_sub(since))
            .max()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_silence_counts_from_the_last_heartbeat_or_the_take_over() {
        // --- a follower's book measures nothing
        let mut book = HeartbeatBook::default();
        book.record("node_1", 1_000, ReportedMetrics::new());
        assert_eq!(None, book.silence_max_ms(["node_1"], 5_000));

        // --- led since 2 s: node_1 heard at 3 s, node_2 never (counts from 2 s)
        let mut book = HeartbeatBook::taken_over(7, 2_000);
        book.record("node_1", 3_000, ReportedMetrics::new());
        assert_eq!(Some(1_000), book.silence_max_ms(["node_1"], 4_000));
        assert_eq!(Some(2_000), book.silence_max_ms(["node_1", "node_2"], 4_000));
        assert_eq!(None, book.silence_max_ms([], 4_000));
    }
}
