//! [`LeaderContact`]: when this replica last heard from a leader, so that it
//! never sends a client to a leader that may be gone.
//!
//! openraft keeps a follower's `current_leader` until an election replaces
//! it, so for up to an election (and longer while no candidate wins, e.g.
//! without a quorum) a follower would name a dead leader in its
//! `x-qm-leader-addr` hints, and a client that follows one gets "connection
//! refused". A leader sends AppendEntries (entries or heartbeats) every
//! heartbeat interval, so a follower that has not had one accepted within the
//! longest election timeout has no reason to believe in its leader: it says
//! "no leader known" instead.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The instant of the last AppendEntries or InstallSnapshot this replica
/// accepted from a leader. Shared by the Raft RPC server (which records) and
/// [`Node`](super::Node) (which asks).
#[derive(Debug, Default)]
pub struct LeaderContact {
    last: Mutex<Option<Instant>>,
}

impl LeaderContact {
    /// A leader's AppendEntries or InstallSnapshot was just accepted.
    pub fn heard(&self) {
        self.heard_at(Instant::now());
    }

    fn heard_at(&self, at: Instant) {
        let mut last = self.last.lock().expect("leader contact lock");
        // Concurrent RPCs may finish out of order: keep the latest.
        if last.is_none_or(|previous| previous < at) {
            *last = Some(at);
        }
    }

    /// Whether a leader was heard from within `window` before `now`.
    pub fn heard_within(&self, window: Duration, now: Instant) -> bool {
        self.last
            .lock()
            .expect("leader contact lock")
            .is_some_and(|last| now.saturating_duration_since(last) <= window)
    }

    /// How long ago a leader was last heard from, if ever.
    pub fn since(&self, now: Instant) -> Option<Duration> {
        self.last
            .lock()
            .expect("leader contact lock")
            .map(|last| now.saturating_duration_since(last))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_leader_counts_only_within_the_window_since_it_was_last_heard() {
        let contact = LeaderContact::default();
        let start = Instant::now();
        let window = Duration::from_millis(800);
        assert!(!contact.heard_within(window, start), "never heard");

        contact.heard_at(start);
        assert!(contact.heard_within(window, start + window));
        assert!(!contact.heard_within(window, start + window + Duration::from_millis(1)));

        // A late-finishing older RPC does not move the contact back.
        contact.heard_at(start + Duration::from_millis(500));
        contact.heard_at(start + Duration::from_millis(100));
        assert_eq!(Some(Duration::from_millis(500)), contact.since(start + Duration::from_secs(1)));
    }
}
