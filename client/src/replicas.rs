//! [`ReplicaSet`]: one lazily connected channel per replica, which of them
//! the client believes is the leader, and the order calls try them in.
//!
//! The set starts with the configured endpoints (the *seeds*, never
//! dropped) and follows the cluster's membership: every membership read
//! (`membership.rs`, and the replies of `ClusterStatus`, `AddReplica` and
//! `RemoveReplica`) adds the members it names, and a NotLeader hint adds the
//! leader it names. A replica that left the membership stays until it stops
//! answering, then is dropped; at most [`REPLICAS_MAX`] are known at once.
//!
//! Replicas keep their index (their slot) for as long as they are known, so
//! a call in flight can go on naming replicas by index while the set
//! changes; a dropped replica's slot is reused by the next one added. Calls
//! go round the replicas in this order: seeds that are members (in the
//! configured order, so a client configured to start at a replica still
//! does), other members, seeds no longer members, then replicas that left
//! but may still answer. Locks are held only to read or change the list,
//! never across an await.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tonic::transport::{Channel, ClientTlsConfig};
use tonic::{Request, Response, Status};

use crate::call_plan::ReplicaView;
use crate::config::{check_endpoint, ClientConfig, ConfigError, REPLICAS_MAX};
use crate::pipeline::PipelineSlot;
use crate::proto::api::pipelined_call::Call as PipelinedRequest;
use crate::proto::api::quartermaster_client::QuartermasterClient;
use crate::proto::api::AllocationReply;
use crate::tls;

/// One replica: its address, a channel that connects on first use and
/// reconnects after failures, and the pipeline stream on that channel.
#[derive(Clone, Debug)]
pub(crate) struct Replica {
    pub(crate) addr: String,
    channel: Channel,
    /// `None` when the client sends every write as its own call.
    pipeline: Option<Arc<PipelineSlot>>,
}

/// The largest reply the client decodes. tonic's default of 4 MiB is
/// passed by whole-table answers of a large cluster (ListProviders at
/// 120,000 units, SystemState, a long List), which then failed with
/// `OUT_OF_RANGE` however healthy the cluster was. Replicas encode replies
/// without a limit; this still bounds what a client holds for one message.
pub const REPLY_SIZE_MAX_BYTES: usize = 256 * 1024 * 1024;

impl Replica {
    pub(crate) fn client(&self) -> QuartermasterClient<Channel> {
        QuartermasterClient::new(self.channel.clone()).max_decoding_message_size(REPLY_SIZE_MAX_BYTES)
    }

    /// An allocate, release or renew: on the replica's pipeline stream when
    /// this client pipelines (`pipeline_writes`), else as its own
    /// call (with the request's metadata, its deadline among them).
    pub(crate) async fn write(&self, request: Request<PipelinedRequest>) -> Result<Response<AllocationReply>, Status> {
        if let Some(slot) = &self.pipeline {
            let pipeline = slot.get_or_open(|| self.client()).await?;
            return pipeline.call(request.into_inner()).await.map(Response::new);
        }
        let (metadata, extensions, call) = request.into_parts();
        let mut client = self.client();
        match call {
            PipelinedRequest::Allocate(message) => client.allocate(Request::from_parts(metadata, extensions, message)).await,
            PipelinedRequest::Release(message) => client.release(Request::from_parts(metadata, extensions, message)).await,
            PipelinedRequest::RenewLease(message) => client.renew_lease(Request::from_parts(metadata, extensions, message)).await,
        }
    }
}

/// HTTP/2 keepalive ping interval on a connection with calls in flight. A
/// replica that stops answering pings (paused, cut off) has its connection
/// closed after `attempt_timeout_ms` more, which ends a watch stream on it
/// so the watch can move to another replica.
pub const KEEPALIVE_INTERVAL_MS: u64 = 1_000;

/// One replica as the client knows it: what `qm cluster status --verbose`
/// shows, in the order calls try them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KnownReplica {
    /// `host:port`, as the membership (or the configuration) names it.
    pub addr: String,
    /// One of the configured endpoints: kept whatever the membership says.
    pub seed: bool,
    /// In the membership the client last read (or named leader since).
    pub member: bool,
    /// The replica the client believes leads.
    pub leader: bool,
    /// Its last attempt found nobody there (refused, reset, no answer).
    pub unreachable: bool,
}

/// A slot of the set.
#[derive(Debug)]
struct Entry {
    replica: Replica,
    seed: bool,
    member: bool,
    unreachable: bool,
    /// Dropped: out of the rotation, its slot free for the next replica.
    retired: bool,
}

impl Entry {
    /// A seed that left the membership and stopped answering: kept, but
    /// out of the calls' rotation (each attempt on it would use up a retry,
    /// during an election too) while any other replica is in it. A
    /// membership read that lists it, or an answer, brings it back.
    fn dormant(&self) -> bool {
        self.seed && !self.member && self.unreachable
    }

    /// Where it goes in the rotation (lower first); `None` when retired.
    fn rank(&self) -> Option<u8> {
        match (self.retired, self.seed, self.member) {
            (true, _, _) => None,
            (false, true, true) => Some(0),
            (false, false, true) => Some(1),
            (false, true, false) => Some(2),
            (false, false, false) => Some(3),
        }
    }
}

/// The slots and the rotation over them.
#[derive(Debug, Default)]
struct Known {
    entries: Vec<Entry>,
    /// Indexes of the entries that are not retired, in the order calls try them.
    order: Vec<usize>,
}

impl Known {
    fn reorder(&mut self) {
        let ranked = |skip_dormant: bool| {
            let mut order: Vec<(u8, usize)> = self
                .entries
                .iter()
                .enumerate()
                .filter(|(_, entry)| !(skip_dormant && entry.dormant()))
                .filter_map(|(index, entry)| entry.rank().map(|rank| (rank, index)))
                .collect();
            // Stable by slot within a rank: seeds keep the configured order.
            order.sort_unstable();
            order.into_iter().map(|(_, index)| index).collect::<Vec<usize>>()
        };
        self.order = ranked(true);
        if self.order.is_empty() {
            // Nothing but dormant seeds left: try them.
            self.order = ranked(false);
        }
        assert!(!self.order.is_empty(), "the seeds are never retired, and there is at least one");
    }

    /// The dormant seeds: out of the rotation, asked only by a refresh.
    fn dormant(&self) -> Vec<usize> {
        (0..self.entries.len())
            .filter(|index| self.entries[*index].dormant() && !self.order.contains(index))
            .collect()
    }

    fn position(&self, addr: &str) -> Option<usize> {
        self.entries.iter().position(|entry| entry.replica.addr == addr)
    }

    /// A slot for a new replica: a retired one, a fresh one while there is
    /// room, else the slot of a replica that left the membership (never a
    /// seed, never `keep`).
    fn free_slot(&self, keep: Option<usize>) -> Option<usize> {
        if let Some(index) = self.entries.iter().position(|entry| entry.retired) {
            return Some(index);
        }
        if self.entries.len() < REPLICAS_MAX {
            return Some(self.entries.len());
        }
        self.entries
            .iter()
            .enumerate()
            .find(|(index, entry)| !entry.seed && !entry.member && Some(*index) != keep)
            .map(|(index, _)| index)
    }

    fn put(&mut self, slot: usize, entry: Entry) {
        match slot == self.entries.len() {
            true => self.entries.push(entry),
            false => self.entries[slot] = entry,
        }
    }
}

#[derive(Debug)]
pub(crate) struct ReplicaSet {
    connect_timeout: Duration,
    keepalive_timeout: Duration,
    /// Whether writes go on each replica's pipeline stream.
    pipeline_writes: bool,
    /// The certificates every channel presents and trusts (read once, at
    /// construction); `None`: plain http/2.
    tls: Option<ClientTlsConfig>,
    known: Mutex<Known>,
    /// Index of the believed leader; `NO_LEADER` when unknown.
    leader: AtomicUsize,
    /// Woken when something suggests the membership changed (a redirect, a
    /// replica that stopped answering): the refresh task reads it then.
    refresh_wanted: Arc<Notify>,
}

const NO_LEADER: usize = usize::MAX;

impl ReplicaSet {
    /// Channels for every endpoint. Must run inside a Tokio runtime: each
    /// channel spawns its connection task.
    pub(crate) fn new(config: &ClientConfig) -> Result<ReplicaSet, ConfigError> {
        let set = ReplicaSet {
            connect_timeout: config.connect_timeout(),
            keepalive_timeout: config.attempt_timeout(),
            pipeline_writes: config.pipeline_writes,
            tls: config.tls.as_ref().map(tls::TlsConfig::load).transpose()?,
            known: Mutex::new(Known::default()),
            leader: AtomicUsize::new(NO_LEADER),
            refresh_wanted: Arc::new(Notify::new()),
        };
        let mut known = Known::default();
        for (position, addr) in config.endpoints.iter().enumerate() {
            if known.position(addr).is_some() {
                continue;
            }
            let replica = set
                .connect(addr)
                .map_err(|reason| ConfigError::new(format!("endpoints[{position}]"), reason))?;
            known.entries.push(Entry {
                replica,
                seed: true,
                // Until the first membership read, the seeds are the members.
                member: true,
                unreachable: false,
                retired: false,
            });
        }
        known.reorder();
        *set.lock() = known;
        Ok(set)
    }

    /// A lazy channel to `addr`: `https` with this client's certificate when
    /// TLS is configured, plain http/2 otherwise.
    fn connect(&self, addr: &str) -> Result<Replica, String> {
        check_endpoint(addr)?;
        let endpoint = tls::endpoint(addr, self.tls.as_ref())?;
        let channel = endpoint
            .connect_timeout(self.connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_millis(KEEPALIVE_INTERVAL_MS))
            .keep_alive_timeout(self.keepalive_timeout)
            .connect_lazy();
        Ok(Replica {
            addr: addr.to_owned(),
            channel,
            pipeline: self.pipeline_writes.then(Arc::default),
        })
    }

    /// The replica in slot `index` (a retired one too: a call in flight may
    /// still name it).
    pub(crate) fn get(&self, index: usize) -> Replica {
        self.lock().entries[index].replica.clone()
    }

    /// Replicas in the rotation.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lock().order.len()
    }

    /// Where a call starts: the believed leader, else the first in the rotation.
    pub(crate) fn first_target(&self) -> usize {
        self.leader_index().unwrap_or_else(|| self.lock().order[0])
    }

    /// The replica after `index` in the rotation, wrapping around.
    pub(crate) fn next_after(&self, index: usize) -> usize {
        next_in_order(&self.lock().order, index, &[])
    }

    /// The next replica after `index` that is not in `avoid`; just the next
    /// one when every replica is to be avoided.
    pub(crate) fn next_avoiding(&self, index: usize, avoid: &[usize]) -> usize {
        next_in_order(&self.lock().order, index, avoid)
    }

    /// Every replica in the rotation, the believed leader first: whom a
    /// membership refresh asks, in turn.
    pub(crate) fn refresh_candidates(&self) -> Vec<usize> {
        let known = self.lock();
        let mut candidates = known.order.clone();
        candidates.extend(known.dormant());
        drop(known);
        if let Some(leader) = self.leader_index() {
            candidates.retain(|index| *index != leader);
            candidates.insert(0, leader);
        }
        candidates
    }

    pub(crate) fn leader_index(&self) -> Option<usize> {
        let leader = self.leader.load(Ordering::Relaxed);
        (leader != NO_LEADER).then_some(leader)
    }

    pub(crate) fn leader_addr(&self) -> Option<String> {
        self.leader_index().map(|index| self.get(index).addr)
    }

    pub(crate) fn set_leader(&self, index: usize) {
        let known = self.lock();
        assert!(
            index < known.entries.len(),
            "leader index {index} out of {} slots",
            known.entries.len()
        );
        if !known.entries[index].retired {
            self.leader.store(index, Ordering::Relaxed);
        }
    }

    /// Forgets the leader if it is `index` (another call may already have
    /// learned a newer one).
    pub(crate) fn forget_leader(&self, index: usize) {
        let _ = self.leader.compare_exchange(index, NO_LEADER, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// The index of the replica at `addr`, adding it as a member if it is
    /// new (a leader hint names it) and there is room. `None` when the
    /// address is malformed or the set is full.
    pub(crate) fn index_of_or_add(&self, addr: &str) -> Option<usize> {
        let mut known = self.lock();
        if let Some(index) = known.position(addr) {
            let entry = &mut known.entries[index];
            if entry.retired || !entry.member {
                // Named leader: a member after all.
                entry.retired = false;
                entry.member = true;
                known.reorder();
            }
            return Some(index);
        }
        let slot = known.free_slot(self.leader_index())?;
        let replica = self.connect(addr).ok()?;
        self.forget_leader(slot);
        known.put(
            slot,
            Entry {
                replica,
                seed: false,
                member: true,
                unreachable: false,
                retired: false,
            },
        );
        known.reorder();
        Some(slot)
    }

    /// The membership as a replica read it (the voters' addresses): members
    /// are added (up to [`REPLICAS_MAX`]), replicas it leaves out are
    /// dropped once they stop answering (the seeds never). Returns how many
    /// replicas were added and dropped.
    pub(crate) fn apply_membership(&self, members: &[String]) -> (usize, usize) {
        assert!(!members.is_empty(), "a membership has at least one voter");
        let mut known = self.lock();
        let mut dropped = 0;
        for (index, entry) in known.entries.iter_mut().enumerate() {
            entry.member = members.contains(&entry.replica.addr);
            if entry.member {
                entry.retired = false;
            } else if !entry.seed && !entry.retired && entry.unreachable {
                entry.retired = true;
                dropped += 1;
                self.forget_leader(index);
            }
        }
        let mut added = 0;
        for addr in members {
            if known.position(addr).is_some() {
                continue;
            }
            let Some(slot) = known.free_slot(self.leader_index()) else {
                tracing::debug!(%addr, known_max = REPLICAS_MAX, "no room for another replica");
                break;
            };
            let Ok(replica) = self.connect(addr) else {
                tracing::debug!(%addr, "a member's address is not host:port; skipped");
                continue;
            };
            if known.entries.get(slot).is_some_and(|entry| !entry.retired) {
                dropped += 1;
            }
            self.forget_leader(slot);
            known.put(
                slot,
                Entry {
                    replica,
                    seed: false,
                    member: true,
                    unreachable: false,
                    retired: false,
                },
            );
            added += 1;
        }
        known.reorder();
        (added, dropped)
    }

    /// The attempt at `index` found nobody there. A replica that left the
    /// membership is dropped now; any other is kept (it may come back), and
    /// the membership is read again soon in case it was replaced.
    pub(crate) fn mark_unreachable(&self, index: usize) {
        self.note_unreachable(index);
        self.want_refresh();
    }

    /// [`ReplicaSet::mark_unreachable`] without asking for a refresh (for
    /// the refresh itself).
    pub(crate) fn note_unreachable(&self, index: usize) {
        let mut known = self.lock();
        let entry = &mut known.entries[index];
        let was_dormant = entry.dormant();
        entry.unreachable = true;
        if !entry.seed && !entry.member && !entry.retired {
            entry.retired = true;
            self.forget_leader(index);
        }
        if entry.retired || entry.dormant() != was_dormant {
            known.reorder();
        }
    }

    /// The replica at `index` answered (anything at all).
    pub(crate) fn mark_answered(&self, index: usize) {
        let mut known = self.lock();
        let was_dormant = known.entries[index].dormant();
        known.entries[index].unreachable = false;
        if was_dormant {
            known.reorder();
        }
    }

    /// Asks the refresh task to read the membership now (it spaces its
    /// reads by [`crate::config::MEMBERSHIP_REFRESH_INTERVAL_MS_MIN`]).
    pub(crate) fn want_refresh(&self) {
        self.refresh_wanted.notify_one();
    }

    pub(crate) fn refresh_wanted(&self) -> Arc<Notify> {
        self.refresh_wanted.clone()
    }

    /// The replicas in the rotation, then the dormant seeds, as `qm cluster
    /// status --verbose` shows them.
    pub(crate) fn known(&self) -> Vec<KnownReplica> {
        let leader = self.leader_index();
        let known = self.lock();
        known
            .order
            .iter()
            .copied()
            .chain(known.dormant())
            .collect::<Vec<usize>>()
            .iter()
            .map(|index| {
                let entry = &known.entries[*index];
                KnownReplica {
                    addr: entry.replica.addr.clone(),
                    seed: entry.seed,
                    member: entry.member,
                    leader: leader == Some(*index),
                    unreachable: entry.unreachable,
                }
            })
            .collect()
    }

    fn lock(&self) -> MutexGuard<'_, Known> {
        // Every change leaves the slots and the rotation consistent before
        // anything that could panic, so a poisoned lock is still consistent.
        self.known.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// In the rotation `order`, the next replica after `index` that is not in
/// `avoid`; just the next one when every replica is to be avoided. From
/// the start of the rotation when `index` is not in it (dropped since).
pub(crate) fn next_in_order(order: &[usize], index: usize, avoid: &[usize]) -> usize {
    assert!(!order.is_empty(), "the rotation always holds the seeds");
    let len = order.len();
    // Not in the rotation: as if it stood just before the first.
    let at = order.iter().position(|slot| *slot == index).unwrap_or(len - 1);
    (1..=len)
        .map(|step| order[(at + step) % len])
        .find(|candidate| !avoid.contains(candidate))
        .unwrap_or(order[(at + 1) % len])
}

/// Of `len` replicas in slot order, the next after `index` that is not in
/// `avoid`; just the next one when every replica is to be avoided.
#[cfg(test)]
pub(crate) fn next_avoiding(len: usize, index: usize, avoid: &[usize]) -> usize {
    next_in_order(&(0..len).collect::<Vec<_>>(), index, avoid)
}

impl ReplicaView for ReplicaSet {
    fn addr(&self, index: usize) -> String {
        self.get(index).addr
    }

    fn index_of_or_add(&self, addr: &str) -> Option<usize> {
        ReplicaSet::index_of_or_add(self, addr)
    }

    fn next_avoiding(&self, index: usize, avoid: &[usize]) -> usize {
        ReplicaSet::next_avoiding(self, index, avoid)
    }

    fn set_leader(&self, index: usize) {
        ReplicaSet::set_leader(self, index)
    }

    fn forget_leader(&self, index: usize) {
        ReplicaSet::forget_leader(self, index)
    }

    fn unreachable(&self, index: usize) {
        self.mark_unreachable(index)
    }

    fn answered(&self, index: usize) {
        self.mark_answered(index)
    }

    fn redirected(&self) {
        self.want_refresh()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set() -> ReplicaSet {
        ReplicaSet::new(&ClientConfig::default()).unwrap()
    }

    #[tokio::test]
    async fn calls_start_at_the_leader_once_known() {
        let replicas = set();
        assert_eq!((0, None), (replicas.first_target(), replicas.leader_addr()));

        replicas.set_leader(2);

        assert_eq!(
            (2, Some("127.0.0.1:7103".to_owned())),
            (replicas.first_target(), replicas.leader_addr())
        );
    }

    #[tokio::test]
    async fn forgetting_another_replica_keeps_the_leader() {
        let replicas = set();
        replicas.set_leader(1);

        replicas.forget_leader(0);
        assert_eq!(Some(1), replicas.leader_index());

        replicas.forget_leader(1);
        assert_eq!(None, replicas.leader_index());
    }

    #[tokio::test]
    async fn failover_goes_round_the_replicas() {
        let replicas = set();

        let order: Vec<usize> = std::iter::successors(Some(0), |index| Some(replicas.next_after(*index)))
            .take(5)
            .collect();

        assert_eq!(vec![0, 1, 2, 0, 1], order);
    }

    #[tokio::test]
    async fn failover_skips_replicas_that_failed_until_all_have() {
        let replicas = set();

        assert_eq!(2, replicas.next_avoiding(0, &[1]));
        assert_eq!(2, replicas.next_avoiding(1, &[0]));
        assert_eq!(1, replicas.next_avoiding(0, &[0, 2]));
        assert_eq!(1, replicas.next_avoiding(0, &[0, 1, 2]), "all failed: plain rotation");
    }

    fn addrs(replicas: &ReplicaSet) -> Vec<String> {
        replicas.known().into_iter().map(|replica| replica.addr).collect()
    }

    #[tokio::test]
    async fn the_membership_adds_members_after_the_seeds_and_drops_leavers_once_unreachable() {
        let replicas = set();
        let four = "127.0.0.1:7104".to_owned();
        let five = "127.0.0.1:7105".to_owned();

        // --- 1 and 2 were replaced by 4 and 5
        assert_eq!(
            (2, 0),
            replicas.apply_membership(&["127.0.0.1:7103".to_owned(), four.clone(), five.clone()])
        );
        assert_eq!(
            vec![
                "127.0.0.1:7103",
                "127.0.0.1:7104",
                "127.0.0.1:7105",
                "127.0.0.1:7101",
                "127.0.0.1:7102"
            ],
            addrs(&replicas),
            "members first (seeds among them in configured order), then seeds no longer members"
        );
        assert_eq!(2, replicas.first_target(), "the first member, with no leader known");

        // --- 4 leaves and stops answering: dropped; the seeds never are
        replicas.apply_membership(&["127.0.0.1:7103".to_owned(), five.clone()]);
        assert_eq!(5, replicas.len(), "4 left but may still answer: kept until it does not");
        let slot_of_four = 3;
        assert_eq!(four, replicas.get(slot_of_four).addr);
        replicas.mark_unreachable(slot_of_four);
        replicas.mark_unreachable(0);
        assert_eq!(
            vec!["127.0.0.1:7103", "127.0.0.1:7105", "127.0.0.1:7102", "127.0.0.1:7101"],
            addrs(&replicas),
            "4 is gone; seed 1, out of the membership and silent, is shown last"
        );
        assert_eq!(3, replicas.len(), "and is out of the calls' rotation");
        assert_eq!(vec![2, 4, 1, 0], replicas.refresh_candidates(), "but a refresh still asks it, last");
        replicas.mark_answered(0);
        assert_eq!(4, replicas.len(), "it answered: back in the rotation");

        // --- the next replica takes the dropped one's slot
        assert_eq!((1, 0), replicas.apply_membership(&["127.0.0.1:7106".to_owned(), five]));
        assert_eq!(Some(slot_of_four), replicas.index_of_or_add("127.0.0.1:7106"));
    }

    #[test]
    fn failover_from_a_dropped_replica_starts_the_rotation_again() {
        assert_eq!(2, next_in_order(&[2, 5, 0], 9, &[]));
        assert_eq!(0, next_in_order(&[2, 5, 0], 9, &[2, 5]));
        assert_eq!(2, next_in_order(&[2, 5, 0], 0, &[]));
    }

    #[tokio::test]
    async fn a_membership_larger_than_the_bound_is_cut_at_it() {
        let replicas = set();
        let members: Vec<String> = (7104..7150).map(|port| format!("127.0.0.1:{port}")).collect();

        replicas.apply_membership(&members);

        assert_eq!(REPLICAS_MAX, replicas.len());
    }

    #[tokio::test]
    async fn a_hinted_leader_is_added_once_and_bounded() {
        let replicas = set();

        assert_eq!(Some(1), replicas.index_of_or_add("127.0.0.1:7102"));
        assert_eq!(Some(3), replicas.index_of_or_add("127.0.0.1:7104"));
        assert_eq!(Some(3), replicas.index_of_or_add("127.0.0.1:7104"));
        assert_eq!(None, replicas.index_of_or_add("not an address"));
        for port in 7105..7200 {
            replicas.index_of_or_add(&format!("127.0.0.1:{port}"));
        }
        assert_eq!(REPLICAS_MAX, replicas.len());
        assert_eq!(None, replicas.index_of_or_add("127.0.0.1:7300"));
    }
}
