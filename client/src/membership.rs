//! The membership refresh: the client follows the replicas the cluster has,
//! not only the ones it was configured with.
//!
//! Before this, a client learned a replica only from a NotLeader hint, which
//! names the leader and comes only from a live replica the client already
//! knows. During a rolling replacement the new replicas join as followers
//! (never named), and the old ones are stopped once removed, so once the
//! last replica a client knew was gone every attempt met a closed port: no
//! replica answered, there was no redirect to follow, and the client was
//! stranded with a healthy cluster next to it (the 56 failed calls at the
//! end of qm-jepsen's membership run, issue 24). A refresh reads the
//! membership (`ClusterStatus`, which every role may call) and adds the
//! members to the client's `ReplicaSet` (`replicas.rs`):
//!
//! ```text
//!  Client::new ──spawn──▶ refresh task ──▶ ask the believed leader, else each known replica in turn
//!                            ▲   │           (stale ClusterStatus: any replica answers)
//!   every interval ──────────┤   │ an answer from a follower that names another leader:
//!   a redirect, a replica ───┘   │ ask that leader too, and prefer its view
//!   found gone (spaced by        ▼
//!   MEMBERSHIP_REFRESH_INTERVAL_MS_MIN)   ReplicaSet::apply_membership(voters' addresses)
//! ```
//!
//! The refresh never changes the believed leader: which replica a call
//! starts at is learned by the calls themselves, as before.

use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::task::AbortHandle;
use tracing::debug;

use crate::client::ClientInner;
use crate::config::MEMBERSHIP_REFRESH_INTERVAL_MS_MIN;
use crate::failure::Failure;
use crate::proto::api;

/// Why a membership refresh learned nothing.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MembershipError {
    /// None of the replicas the client knows answered its status.
    #[error("no replica answered the membership read after {asked} tries; last cause: {last_cause}")]
    NoReplicaAnswered { asked: usize, last_cause: String },
    /// A replica answered with no voter in its membership (it has not
    /// joined a cluster yet, e.g. a blank replica waiting to be added).
    #[error("{addr} knows no members yet")]
    NoMembers { addr: String },
}

/// What one refresh changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MembershipChange {
    /// Voters in the membership read.
    pub members: usize,
    /// Replicas the client did not know before.
    pub added: usize,
    /// Replicas dropped: left the membership and stopped answering.
    pub dropped: usize,
}

/// Starts the refresh task of `inner`: one refresh now, then one every
/// `membership_refresh_interval_ms`, and one whenever the replica set asks
/// for it. It holds the client only while it refreshes, and ends when the
/// client is dropped.
pub(crate) fn spawn(inner: &Arc<ClientInner>) -> AbortHandle {
    let weak = Arc::downgrade(inner);
    let wanted = inner.replicas.refresh_wanted();
    let interval = inner.config.membership_refresh_interval();
    let spacing = Duration::from_millis(MEMBERSHIP_REFRESH_INTERVAL_MS_MIN).min(interval);
    tokio::spawn(async move {
        loop {
            if !refresh_once(&weak).await {
                return;
            }
            tokio::time::sleep(spacing).await;
            tokio::select! {
                _ = tokio::time::sleep(interval - spacing) => {}
                _ = wanted.notified() => {}
            }
        }
    })
    .abort_handle()
}

/// One refresh, if the client still exists; whether it does.
async fn refresh_once(weak: &Weak<ClientInner>) -> bool {
    let Some(inner) = weak.upgrade() else {
        return false;
    };
    // A refresh that finds no replica is retried at the next interval or
    // redirect; the calls themselves report what they meet.
    if let Err(error) = refresh(&inner).await {
        debug!(%error, "membership refresh");
    }
    true
}

/// Reads the membership from the first replica that answers (the believed
/// leader first) and applies it, all within one call deadline.
pub(crate) async fn refresh(inner: &ClientInner) -> Result<MembershipChange, MembershipError> {
    let deadline = inner.config.request_timeout();
    match tokio::time::timeout(deadline, read_and_apply(inner)).await {
        Ok(result) => result,
        Err(_) => Err(MembershipError::NoReplicaAnswered {
            asked: 0,
            last_cause: format!("no answer within {} ms", deadline.as_millis()),
        }),
    }
}

async fn read_and_apply(inner: &ClientInner) -> Result<MembershipChange, MembershipError> {
    let mut last_cause = String::from("no replica to ask");
    let candidates = inner.replicas.refresh_candidates();
    let asked = candidates.len();
    for index in candidates {
        let status = match ask(inner, index).await {
            Ok(status) => status,
            Err(cause) => {
                last_cause = cause;
                continue;
            }
        };
        let status = match status.leader_id {
            // A follower's view may lag the leader's by a change or two.
            Some(leader) if leader != status.node_id && !status.leader_addr.is_empty() => {
                match inner.replicas.index_of_or_add(&status.leader_addr) {
                    Some(leader_index) => ask(inner, leader_index).await.unwrap_or(status),
                    None => status,
                }
            }
            _ => status,
        };
        return apply(inner, &status, &inner.replicas.get(index).addr);
    }
    Err(MembershipError::NoReplicaAnswered { asked, last_cause })
}

/// Applies the voters of `status` (as `addr` answered it) to the replica set.
pub(crate) fn apply(inner: &ClientInner, status: &api::ClusterStatusReply, addr: &str) -> Result<MembershipChange, MembershipError> {
    let voters = voter_addrs(status);
    if voters.is_empty() {
        return Err(MembershipError::NoMembers { addr: addr.to_owned() });
    }
    let (added, dropped) = inner.replicas.apply_membership(&voters);
    if added + dropped > 0 {
        debug!(from = %addr, members = ?voters, added, dropped, "membership refreshed");
    }
    Ok(MembershipChange {
        members: voters.len(),
        added,
        dropped,
    })
}

/// The voters' addresses. Learners are left out: one being added may not
/// have caught up, and it becomes a voter (and is read) soon enough.
fn voter_addrs(status: &api::ClusterStatusReply) -> Vec<String> {
    status
        .members
        .iter()
        .filter(|member| member.role != "learner" && !member.addr.is_empty())
        .map(|member| member.addr.clone())
        .collect()
}

/// One stale `ClusterStatus` of the replica at `index`, within one attempt's deadline.
async fn ask(inner: &ClientInner, index: usize) -> Result<api::ClusterStatusReply, String> {
    let replica = inner.replicas.get(index);
    let timeout = inner.config.attempt_timeout();
    let mut request = tonic::Request::new(api::ClusterStatusRequest {});
    request.set_timeout(timeout);
    let answer = tokio::time::timeout(timeout, replica.client().cluster_status(request)).await;
    match answer {
        Ok(Ok(reply)) => {
            inner.replicas.mark_answered(index);
            Ok(reply.into_inner())
        }
        Ok(Err(status)) => {
            if let Failure::Retryable { unreachable: true, .. } = Failure::from_status(&status) {
                inner.replicas.note_unreachable(index);
            } else {
                inner.replicas.mark_answered(index);
            }
            Err(format!("{}: {:?}: {}", replica.addr, status.code(), status.message()))
        }
        Err(_) => {
            inner.replicas.note_unreachable(index);
            Err(format!("{}: no answer within {} ms", replica.addr, timeout.as_millis()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::api::Member;

    fn member(id: u64, role: &str) -> Member {
        Member {
            id,
            addr: format!("127.0.0.1:710{id}"),
            role: role.to_owned(),
        }
    }

    #[test]
    fn the_voters_are_the_members_and_learners_are_not() {
        let status = api::ClusterStatusReply {
            members: vec![member(1, "leader"), member(4, "follower"), member(5, "learner")],
            ..Default::default()
        };

        assert_eq!(vec!["127.0.0.1:7101", "127.0.0.1:7104"], voter_addrs(&status));
    }
}
