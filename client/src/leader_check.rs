//! While an attempt on the believed leader goes unanswered, ask the other
//! replicas who leads.
//!
//! A leader that is paused (SIGSTOP, a long stall) or cut off still accepts
//! connections, so an attempt on it ends only at `attempt_timeout_ms`
//! (2 s): longer than the election that replaces it (about 1 s). After
//! [`LEADER_CHECK_AFTER_MS`] without an answer the call asks every other
//! replica's `ClusterStatus` (a local read, cheap) every
//! [`LEADER_CHECK_INTERVAL_MS`]; when one names a leader other than the
//! replica being waited on, the call stops waiting and goes there, as on a
//! NotLeader hint. The abandoned attempt may still apply (the write keeps
//! its request id, so the table answers the retry with that attempt's
//! record), which the plan counts as "maybe applied".
//!
//! The wait is well above a healthy write's latency even on this machine's
//! stalling disk (p99 under 300 ms), so checks only happen when something
//! is wrong. The calls of one client share the asking ([`LeaderChecks`]):
//! 256 calls waiting on a paused leader cost one round of `ClusterStatus`
//! per interval, not 256.

use std::time::{Duration, Instant};

use crate::client::ClientInner;
use crate::proto::api;

/// How long an attempt on the believed leader goes unanswered before the
/// other replicas are asked who leads.
pub const LEADER_CHECK_AFTER_MS: u64 = 500;
/// Between two rounds of asking, and the deadline of each ask.
pub const LEADER_CHECK_INTERVAL_MS: u64 = 100;

/// The last round of asking, shared by every call of a client.
#[derive(Debug, Default)]
pub(crate) struct LeaderChecks {
    last_round: tokio::sync::Mutex<Option<Round>>,
}

/// What the replicas answered in one round: each one's named leader.
#[derive(Debug)]
struct Round {
    at: Instant,
    named: Vec<(String, Option<u64>)>,
}

impl LeaderChecks {
    /// The leaders the replicas name now: the last round's answers if it
    /// ended within [`LEADER_CHECK_INTERVAL_MS`], else a new round. Calls
    /// arriving while a round is under way wait for it and share it.
    async fn named_leaders(&self, inner: &ClientInner) -> Vec<(String, Option<u64>)> {
        let mut last = self.last_round.lock().await;
        if let Some(round) = last.as_ref() {
            if round.at.elapsed() < Duration::from_millis(LEADER_CHECK_INTERVAL_MS) {
                return round.named.clone();
            }
        }
        let asks = inner.replicas.refresh_candidates().into_iter().map(|index| ask(inner, index));
        let named: Vec<(String, Option<u64>)> = futures::future::join_all(asks).await.into_iter().flatten().collect();
        *last = Some(Round {
            at: Instant::now(),
            named: named.clone(),
        });
        named
    }
}

/// A leader other than the replica at `waited_on`, as another replica
/// names it: its address and id. Never resolves while no replica names
/// another; the caller races it against the attempt. Addresses compare as
/// the replica set keys its members: as the replicas advertise them.
pub(crate) async fn another_leader(inner: &ClientInner, waited_on: usize) -> (String, Option<u64>) {
    let waited_on_addr = inner.replicas.get(waited_on).addr;
    tokio::time::sleep(Duration::from_millis(LEADER_CHECK_AFTER_MS)).await;
    loop {
        let named = inner.leader_checks.named_leaders(inner).await;
        if let Some(leader) = named.into_iter().find(|(addr, _)| *addr != waited_on_addr) {
            return leader;
        }
        tokio::time::sleep(Duration::from_millis(LEADER_CHECK_INTERVAL_MS)).await;
    }
}

/// The leader the replica at `index` names, if it answers in time and names one.
async fn ask(inner: &ClientInner, index: usize) -> Option<(String, Option<u64>)> {
    let timeout = Duration::from_millis(LEADER_CHECK_INTERVAL_MS);
    let mut request = tonic::Request::new(api::ClusterStatusRequest {});
    request.set_timeout(timeout);
    let reply = tokio::time::timeout(timeout, inner.replicas.get(index).client().cluster_status(request))
        .await
        .ok()?
        .ok()?
        .into_inner();
    (!reply.leader_addr.is_empty()).then_some((reply.leader_addr, reply.leader_id))
}
