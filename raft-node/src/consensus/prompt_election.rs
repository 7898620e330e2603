//! A follower whose leader is verifiably gone starts the election as soon as
//! the voters' leader lease has run out, instead of after the lease plus its
//! random election timeout.
//!
//! Why an election took about twice the timeout: openraft 0.9 keeps a
//! *leader lease* on every voter. A follower that last heard its leader at
//! `t` neither votes for another candidate before `t + lease` nor campaigns
//! itself before `t + lease + election_timeout`, where the lease is
//! `election_timeout_max` and the timeout is drawn once per process from
//! `[election_timeout_min, election_timeout_max)`. With 400-800 ms that is
//! 1.2-1.6 s of silence before a new leader, whatever happened to the old one.
//!
//! The lease protects a leader that is alive but slow (a disk stall, a
//! pause): it must not be deposed for a hiccup. A leader whose process is
//! gone needs no protection, and that is cheap to tell apart: once a
//! follower has missed [`SILENT_HEARTBEATS_BEFORE_PROBE`] heartbeats it
//! opens a TCP connection to the leader's address. Refused, or closed by the
//! other end at once (nothing behind a proxy), means no process serves
//! there; a connection that stays open (a stalled or paused process, whose
//! kernel still accepts) means nothing and leaves the decision to the timers.
//! A follower that found its leader gone asks openraft for an election when
//! the lease has surely run out on every voter: `lease + heartbeat ·
//! (1 + rank)`, where the rank is its place among the other voters by id,
//! so that two followers rarely split the vote (if the first has the
//! shorter log and is refused, the next asks a heartbeat later).
//!
//! Every decision is [`decide`], a pure function tested for exact outputs;
//! [`run_prompt_elections`] only observes, probes and triggers.

use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::ServerState;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tracing::info;

use crate::consensus::node::Node;
use crate::types::NodeId;

/// Heartbeats a follower misses before it probes its leader: one lost or
/// late heartbeat is common under load and is not worth a connection.
pub const SILENT_HEARTBEATS_BEFORE_PROBE: u32 = 2;
/// Observations per heartbeat interval: how finely the follower notices
/// that the lease ran out (a quarter of a heartbeat, 25 ms by default).
pub const CHECKS_PER_HEARTBEAT: u32 = 4;

/// What a follower knows at one check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observation {
    /// A voter, following a leader other than itself.
    pub following: Option<Following>,
    /// Time since a leader's AppendEntries was last accepted here.
    pub since_heard: Option<Duration>,
    /// The probe found nobody serving at the leader's address, since the
    /// leader was last heard.
    pub leader_gone: bool,
    /// The term an election was already asked for (once per term).
    pub triggered_in_term: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Following {
    pub leader: NodeId,
    pub term: u64,
    /// This replica's place among the voters other than the leader, by id (0: first).
    pub rank: usize,
}

/// The timing that applies: openraft's heartbeat and lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    pub heartbeat: Duration,
    /// `election_timeout_max`, the voters' leader lease in openraft 0.9.
    pub lease: Duration,
}

/// What to do at one check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// The leader is heard from, or nothing is to be done yet.
    Wait,
    /// The leader has been silent: find out whether anything serves at its address.
    Probe,
    /// The leader is gone and every voter's lease has run out: campaign now.
    Elect { term: u64 },
}

pub fn decide(observation: &Observation, timing: Timing) -> Next {
    let Some(following) = &observation.following else {
        return Next::Wait;
    };
    let Some(since_heard) = observation.since_heard else {
        return Next::Wait;
    };
    if since_heard < timing.heartbeat * SILENT_HEARTBEATS_BEFORE_PROBE {
        return Next::Wait;
    }
    if !observation.leader_gone {
        return Next::Probe;
    }
    if observation.triggered_in_term == Some(following.term) {
        return Next::Wait;
    }
    let turn = timing.lease + timing.heartbeat * (1 + following.rank as u32);
    match since_heard >= turn {
        true => Next::Elect { term: following.term },
        false => Next::Wait,
    }
}

/// Whether anything serves at `addr`: `false` when the connection is
/// refused or closed by the other end within `patience`; `true` when it is
/// answered, or neither within `patience` (slow is not gone).
pub async fn serving(addr: &str, patience: Duration) -> bool {
    let stream = match tokio::time::timeout(patience, TcpStream::connect(addr)).await {
        Err(_) => return true,
        Ok(Err(error)) => return !is_nobody_there(&error),
        Ok(Ok(stream)) => stream,
    };
    let mut stream = stream;
    let mut byte = [0u8; 1];
    match tokio::time::timeout(patience, stream.read(&mut byte)).await {
        Err(_) => true,
        Ok(Ok(0)) => false,
        Ok(Ok(_)) => true,
        Ok(Err(error)) => !is_nobody_there(&error),
    }
}

fn is_nobody_there(error: &std::io::Error) -> bool {
    use std::io::ErrorKind::{ConnectionRefused, ConnectionReset};
    matches!(error.kind(), ConnectionRefused | ConnectionReset)
}

/// Observes this replica every quarter heartbeat, probes a silent leader,
/// and asks openraft for an election when [`decide`] says so.
pub async fn run_prompt_elections(node: Arc<Node>) {
    let timing = Timing {
        heartbeat: Duration::from_millis(node.config.heartbeat_interval_ms),
        lease: Duration::from_millis(node.config.election_timeout_max_ms),
    };
    let mut interval = tokio::time::interval(timing.heartbeat / CHECKS_PER_HEARTBEAT);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    // (leader, term) the probe found gone; forgotten when either changes
    // or the leader is heard again.
    let mut gone: Option<(NodeId, u64)> = None;
    let mut triggered_in_term = None;
    loop {
        interval.tick().await;
        let metrics = node.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        let following = match (metrics.state, metrics.current_leader) {
            (ServerState::Follower, Some(leader)) if leader != node.id && membership.voter_ids().any(|id| id == node.id) => {
                let rank = membership.voter_ids().filter(|id| *id != leader && *id < node.id).count();
                Some(Following {
                    leader,
                    term: metrics.current_term,
                    rank,
                })
            }
            _ => None,
        };
        let since_heard = node.leader_contact.since(Instant::now());
        if since_heard.is_some_and(|since| since < timing.heartbeat * SILENT_HEARTBEATS_BEFORE_PROBE)
            || gone != following.as_ref().map(|following| (following.leader, following.term))
        {
            gone = None;
        }
        let observation = Observation {
            since_heard,
            leader_gone: gone.is_some(),
            triggered_in_term,
            following,
        };
        match decide(&observation, timing) {
            Next::Wait => {}
            Next::Probe => {
                let following = observation.following.as_ref().expect("a probe follows a leader");
                let Some(addr) = membership.get_node(&following.leader).map(|node| node.addr.clone()) else {
                    continue;
                };
                if !serving(&addr, timing.heartbeat / 2).await {
                    info!(leader = following.leader, term = following.term, %addr, "nothing serves at the silent leader's address; campaigning once its lease has run out");
                    gone = Some((following.leader, following.term));
                }
            }
            Next::Elect { term } => {
                triggered_in_term = Some(term);
                info!(term, "the leader is gone and its lease has run out: starting an election");
                if let Err(error) = node.raft.trigger().elect().await {
                    info!(%error, "the election could not be started");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMING: Timing = Timing {
        heartbeat: Duration::from_millis(100),
        lease: Duration::from_millis(500),
    };

    fn following(rank: usize) -> Option<Following> {
        Some(Following { leader: 1, term: 7, rank })
    }

    fn observed(since_ms: u64, leader_gone: bool, rank: usize) -> Observation {
        Observation {
            following: following(rank),
            since_heard: Some(Duration::from_millis(since_ms)),
            leader_gone,
            triggered_in_term: None,
        }
    }

    #[test]
    fn a_leader_heard_within_two_heartbeats_is_left_alone() {
        assert_eq!(Next::Wait, decide(&observed(0, false, 0), TIMING));
        assert_eq!(Next::Wait, decide(&observed(199, false, 0), TIMING));
        assert_eq!(Next::Wait, decide(&observed(199, true, 0), TIMING));
    }

    #[test]
    fn a_silent_leader_is_probed_until_found_gone() {
        assert_eq!(Next::Probe, decide(&observed(200, false, 0), TIMING));
        // Alive but silent for long: still only probed; openraft's timers decide.
        assert_eq!(Next::Probe, decide(&observed(5_000, false, 0), TIMING));
    }

    #[test]
    fn a_gone_leader_is_replaced_once_the_lease_has_run_out_in_rank_order() {
        assert_eq!(Next::Wait, decide(&observed(599, true, 0), TIMING));
        assert_eq!(Next::Elect { term: 7 }, decide(&observed(600, true, 0), TIMING));
        assert_eq!(Next::Wait, decide(&observed(600, true, 1), TIMING));
        assert_eq!(Next::Elect { term: 7 }, decide(&observed(700, true, 1), TIMING));
    }

    #[test]
    fn one_election_per_term_and_none_without_a_leader_to_follow() {
        let mut observation = observed(900, true, 0);
        observation.triggered_in_term = Some(7);
        assert_eq!(Next::Wait, decide(&observation, TIMING));
        observation.triggered_in_term = Some(6);
        assert_eq!(Next::Elect { term: 7 }, decide(&observation, TIMING));

        let mut leaderless = observed(900, true, 0);
        leaderless.following = None;
        assert_eq!(Next::Wait, decide(&leaderless, TIMING));
        let mut never_heard = observed(0, true, 0);
        never_heard.since_heard = None;
        assert_eq!(Next::Wait, decide(&never_heard, TIMING));
    }

    #[tokio::test]
    async fn nobody_serves_at_a_closed_port_and_a_silent_listener_counts_as_serving() {
        let patience = Duration::from_millis(200);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        // Accepted by the kernel, never read or closed: like a paused process.
        assert!(serving(&addr, patience).await);
        // Accepted and closed at once: like a proxy with nothing behind it.
        let closer = tokio::spawn(async move {
            // The first probe's connection, then the second's.
            for _ in 0..2 {
                let (stream, _) = listener.accept().await.expect("accept");
                drop(stream);
            }
            listener
        });
        assert!(!serving(&addr, patience).await);
        drop(closer.await.expect("closer"));
        // Nothing listens any more: refused.
        assert!(!serving(&addr, patience).await);
    }
}
