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
//!
//! It also measures the intervals between two contacts of one term
//! (`leader_contact_interval_seconds` and `leader_contact_age_max_seconds`
//! on `/metrics`, `crate::metrics::LeaderContactIntervals`): how long this replica
//! went without hearing from a leader that was still leading, e.g. while a
//! long apply held the leader's or this replica's runtime (issue 26's mass
//! failure). An interval across terms (an election) is not counted: the
//! term change says more about it, and a replica that led meanwhile did not
//! wait for anyone.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::metrics::LeaderContactIntervals;

/// The instant of the last AppendEntries or InstallSnapshot this replica
/// accepted from a leader. Shared by the Raft RPC server (which records) and
/// [`Node`](super::Node) (which asks).
#[derive(Debug, Default)]
pub struct LeaderContact {
    last: Mutex<Option<Instant>>,
    /// The term and instant of the last contact, to measure the next
    /// interval from.
    last_of_term: Mutex<Option<(u64, Instant)>>,
    /// The intervals between two contacts of one term, for `/metrics`.
    intervals: LeaderContactIntervals,
}

impl LeaderContact {
    /// An AppendEntries or InstallSnapshot of the leader of `term` was just
    /// accepted.
    pub fn heard(&self, term: u64) {
        self.heard_at(Instant::now(), term);
    }

    fn heard_at(&self, at: Instant, term: u64) {
        {
            let mut last = self.last.lock().expect("leader contact lock");
            // Concurrent RPCs may finish out of order: keep the latest.
            if last.is_none_or(|previous| previous < at) {
                *last = Some(at);
            }
        }
        let mut last_of_term = self.last_of_term.lock().expect("leader contact term lock");
        match *last_of_term {
            // An older RPC finishing late says nothing new.
            Some((last_term, last_at)) if last_term == term && at <= last_at => {}
            Some((last_term, last_at)) if last_term == term => {
                self.intervals.observe(at - last_at);
                *last_of_term = Some((term, at));
            }
            // A later term starts counting again; a stale one is ignored.
            Some((last_term, _)) if last_term > term => {}
            Some(_) => *last_of_term = Some((term, at)),
            None => {
                // Where a restart's time goes (issue 23): from here on the
                // replica knows its leader and learns what is committed.
                tracing::info!(term, "first contact from a leader since this replica opened its data");
                *last_of_term = Some((term, at));
            }
        }
    }

    /// The intervals between two accepted contacts of one leader term
    /// since this replica started (a histogram and the longest).
    pub fn intervals(&self) -> &LeaderContactIntervals {
        &self.intervals
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

        contact.heard_at(start, 1);
        assert!(contact.heard_within(window, start + window));
        assert!(!contact.heard_within(window, start + window + Duration::from_millis(1)));

        // A late-finishing older RPC does not move the contact back.
        contact.heard_at(start + Duration::from_millis(500), 1);
        contact.heard_at(start + Duration::from_millis(100), 1);
        assert_eq!(Some(Duration::from_millis(500)), contact.since(start + Duration::from_secs(1)));
    }

    #[test]
    fn the_longest_interval_counts_contacts_of_one_term_only() {
        let contact = LeaderContact::default();
        let start = Instant::now();
        let at = |ms| start + Duration::from_millis(ms);
        let longest = || contact.intervals().max();
        assert_eq!(None, longest(), "never heard");
        contact.heard_at(at(0), 3);
        assert_eq!(None, longest(), "one contact is no interval");

        // --- the leader of term 3 is heard at 0, 100, 1,300 and 1,400 ms
        contact.heard_at(at(100), 3);
        contact.heard_at(at(1_300), 3);
        contact.heard_at(at(1_400), 3);
        assert_eq!(Some(Duration::from_millis(1_200)), longest());

        // --- an RPC finishing late, and one of an older term: nothing new
        contact.heard_at(at(50), 3);
        contact.heard_at(at(9_000), 2);
        assert_eq!(Some(Duration::from_millis(1_200)), longest());

        // --- an election: 5 s until the leader of term 4 is heard, not counted
        contact.heard_at(at(6_400), 4);
        contact.heard_at(at(6_500), 4);
        assert_eq!(Some(Duration::from_millis(1_200)), longest());

        // --- term 4's leader is silent for 2 s
        contact.heard_at(at(8_500), 4);
        assert_eq!(Some(Duration::from_millis(2_000)), longest());
    }
}
