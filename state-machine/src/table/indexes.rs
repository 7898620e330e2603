//! Derived look-up structures of the table, kept in step with its state.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};

use uuid::Uuid;

use super::allocation_index::AllocationIndex;
use super::id_key::IdKey;
use super::id_set::IdSet;
use crate::name::Name;
use crate::provider::Provider;
use crate::record::{RequestRecord, RequestState};
use crate::request::AllocationRequest;

/// Everything here can be recomputed from providers and requests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Indexes {
    /// Allocation id → request id, to resolve a command that names an
    /// allocation. Only ever looked up by one id, never walked, so a hash
    /// table: see [`AllocationIndex`] for what it saves and what it risks.
    pub allocation_to_request: AllocationIndex,
    /// Kind → (free amount, provider) for active providers with some free:
    /// the best-fit search walks this upwards from the wanted amount.
    pub free_by_kind: BTreeMap<String, BTreeSet<(u64, String)>>,
    /// Kind → (capacity, provider) for every registered provider, failed
    /// ones included: decides whether a request could *ever* be placed.
    pub capacity_by_kind: BTreeMap<String, BTreeSet<(u64, String)>>,
    /// The queue: higher priority first, then arrival order.
    pub queue: BTreeSet<(Reverse<i64>, u64, Uuid)>,
    /// Queued requests by deadline, for those never granted yet.
    pub deadlines: BTreeSet<(u64, Uuid)>,
    /// Active allocations by lease expiry.
    pub leases: BTreeSet<(u64, Uuid)>,
    /// Finished requests by the time they finished, for dedupe eviction.
    pub finished: BTreeSet<(u64, Uuid)>,
    /// Namespace → requester → every remembered request of theirs. Nested,
    /// so that heap strings are compared in two small maps and the ids
    /// inline; the ids in a B-tree because `list` walks them, keyed by
    /// [`IdKey`] (BENCHMARKS.md, "The table's indexes").
    /// Its keys are the one copy of each owner's names that the owner's
    /// records share (see [`Name`]).
    pub by_owner: BTreeMap<Name, BTreeMap<Name, BTreeSet<IdKey>>>,
    /// Provider → requests actively placed on it (an [`IdSet`]: a sorted
    /// slice for the few hundred a provider usually holds).
    pub by_provider: BTreeMap<String, IdSet>,
    /// Namespace → kind → what its active allocations asked for in total:
    /// what its quota bounds. No zero entries, so a rebuild compares equal.
    pub held: BTreeMap<String, BTreeMap<String, u64>>,
    /// Namespace → its queued requests in queue order, so that freeing a
    /// namespace's quota re-examines that namespace's queue even when the
    /// head of the whole queue is someone else's.
    pub queue_by_namespace: BTreeMap<String, BTreeSet<(Reverse<i64>, u64, Uuid)>>,
    /// Priority → how many active allocations have it: the lowest is a
    /// bound no preemption's victims can go below, so the victim search
    /// stops as soon as it found victims that cheap.
    pub active_priorities: BTreeMap<i64, u64>,
    /// Moves under way (records in `optimization`), by deadline.
    pub moves: BTreeSet<(u64, Uuid)>,
    /// Active allocations that allow moves: while there are none, no
    /// tick is proposed to evaluate the optimization triggers.
    pub movable_active: usize,
}

impl Indexes {
    /// Builds every index from scratch, in bulk: entries are gathered, sorted
    /// and turned into trees at once, instead of a million single inserts at
    /// random positions (which made restoring a large snapshot several times
    /// slower). [`AllocationTable::assert_invariants`](super::AllocationTable)
    /// checks that the result equals the incrementally maintained indexes.
    pub fn build<'a>(providers: impl Iterator<Item = &'a Provider>, records: impl Iterator<Item = &'a RequestRecord>) -> Indexes {
        let mut index = Indexes::default();
        for provider in providers {
            index.add_provider(provider);
        }
        // Records come in request-id order, so each id list below is already
        // sorted; grouping through small maps keyed by borrowed strings
        // avoids sorting a million string tuples.
        let mut owners: BTreeMap<GroupKey, BTreeMap<GroupKey, Vec<IdKey>>> = BTreeMap::new();
        let mut placed: BTreeMap<GroupKey, Vec<Uuid>> = BTreeMap::new();
        let mut allocation_to_request = Vec::new();
        let (mut queue, mut deadlines, mut leases, mut finished) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for record in records {
            let request = &record.request;
            let id = request.request_id;
            allocation_to_request.push((record.allocation_id(), id));
            let requesters = owners.entry(GroupKey::new(&request.namespace)).or_default();
            requesters.entry(GroupKey::new(&request.requester_id)).or_default().push(id.into());
            match record.state {
                RequestState::Queued => {
                    queue.push((Reverse(request.priority), record.arrival_seq, id));
                    deadlines.extend(record.pending_deadline_ms().map(|deadline| (deadline, id)));
                    index.add_namespace_queued(record);
                }
                RequestState::Allocation | RequestState::Monitoring | RequestState::Optimization => {
                    index.add_held(request);
                    *index.active_priorities.entry(request.priority).or_insert(0) += 1;
                    index.add_move_state(record);
                    leases.extend(record.lease_expires_at_ms.get().map(|expires| (expires, id)));
                    let placement = record.placement.as_ref().expect("an active request has a placement");
                    placed.entry(GroupKey::new(&placement.provider_id)).or_default().push(id);
                }
                RequestState::Deallocation | RequestState::Idle | RequestState::Error => {
                    finished.push((record.finished_at_ms().get().expect("a finished request has a finish time"), id));
                }
            }
        }
        // `collect` into a B-tree sorts first, then builds the tree bottom-up.
        // Pre-sorting on the ids as integers (big-endian, so the same order as
        // `Uuid`'s byte order) is much cheaper than a `memcmp` per comparison,
        // and leaves `collect` a single sorted run to check.
        leases.sort_unstable_by_key(|(expires, id): &(u64, Uuid)| (*expires, id.as_u128()));
        index.allocation_to_request = allocation_to_request.into_iter().collect();
        index.queue = queue.into_iter().collect();
        index.deadlines = deadlines.into_iter().collect();
        index.leases = leases.into_iter().collect();
        index.finished = finished.into_iter().collect();
        let owned = |key: GroupKey| key.name.clone();
        index.by_owner = owners
            .into_iter()
            .map(|(namespace, requesters)| {
                (
                    owned(namespace),
                    requesters
                        .into_iter()
                        .map(|(requester, ids)| (owned(requester), ids.into_iter().collect()))
                        .collect(),
                )
            })
            .collect();
        index.by_provider = placed
            .into_iter()
            .map(|(provider_id, ids)| (provider_id.name.to_string(), ids.into_iter().collect()))
            .collect();
        index
    }

    /// Indexes what never changes in a record: its ids and its owner. Once,
    /// when the table first takes the request in.
    /// The record's owner names become the index's copies.
    pub fn add_identity(&mut self, record: &mut RequestRecord) {
        self.allocation_to_request.insert(record.allocation_id(), record.request.request_id);
        let request = &mut record.request;
        owned_by(&mut self.by_owner, &mut request.namespace, &mut request.requester_id).insert(request.request_id.into());
    }

    /// Undoes [`Self::add_identity`], when the table forgets the request.
    pub fn remove_identity(&mut self, record: &RequestRecord) {
        let request = &record.request;
        self.allocation_to_request.remove(record.allocation_id(), request.request_id);
        disown(&mut self.by_owner, &request.namespace, &request.requester_id, request.request_id);
    }

    /// Indexes what depends on the record's state (queue, deadlines, leases,
    /// placement, finish time). Taken out and put back around every change,
    /// unlike the identity, so a state change touches only these trees.
    pub fn add_state(&mut self, record: &RequestRecord) {
        let request = &record.request;
        let id = request.request_id;
        match record.state {
            RequestState::Queued => {
                self.queue.insert((Reverse(request.priority), record.arrival_seq, id));
                if let Some(deadline) = record.pending_deadline_ms() {
                    self.deadlines.insert((deadline, id));
                }
                self.add_namespace_queued(record);
            }
            RequestState::Allocation | RequestState::Monitoring | RequestState::Optimization => {
                self.add_held(request);
                *self.active_priorities.entry(request.priority).or_insert(0) += 1;
                self.add_move_state(record);
                if let Some(expires) = record.lease_expires_at_ms.get() {
                    self.leases.insert((expires, id));
                }
                let placement = record.placement.as_ref().expect("an active request has a placement");
                match self.by_provider.get_mut(&*placement.provider_id) {
                    Some(ids) => ids.insert(id),
                    None => self.by_provider.entry(placement.provider_id.to_string()).or_default().insert(id),
                };
            }
            RequestState::Deallocation | RequestState::Idle | RequestState::Error => {
                let finished_at = record.finished_at_ms().get().expect("a finished request has a finish time");
                self.finished.insert((finished_at, id));
            }
        }
    }

    /// Undoes [`Self::add_state`].
    pub fn remove_state(&mut self, record: &RequestRecord) {
        let request = &record.request;
        let id = request.request_id;
        match record.state {
            RequestState::Queued => {
                self.queue.remove(&(Reverse(request.priority), record.arrival_seq, id));
                if let Some(deadline) = record.pending_deadline_ms() {
                    self.deadlines.remove(&(deadline, id));
                }
                self.remove_namespace_queued(record);
            }
            RequestState::Allocation | RequestState::Monitoring | RequestState::Optimization => {
                self.remove_held(request);
                let count = self
                    .active_priorities
                    .get_mut(&request.priority)
                    .expect("active requests are counted by priority");
                *count -= 1;
                if *count == 0 {
                    self.active_priorities.remove(&request.priority);
                }
                if record.movable {
                    self.movable_active -= 1;
                }
                if let Some(moving) = record.moving() {
                    self.moves.remove(&(moving.deadline_ms, id));
                }
                if let Some(expires) = record.lease_expires_at_ms.get() {
                    self.leases.remove(&(expires, id));
                }
                let placement = record.placement.as_ref().expect("an active request has a placement");
                let on_provider = self
                    .by_provider
                    .get_mut(&*placement.provider_id)
                    .expect("placed requests are indexed by provider");
                on_provider.remove(&id);
                if on_provider.is_empty() {
                    self.by_provider.remove(&*placement.provider_id);
                }
            }
            RequestState::Deallocation | RequestState::Idle | RequestState::Error => {
                self.finished
                    .remove(&(record.finished_at_ms().get().expect("a finished request has a finish time"), id));
            }
        }
    }

    /// Counts an active request's asks against its namespace.
    fn add_held(&mut self, request: &AllocationRequest) {
        if !self.held.contains_key(&*request.namespace) {
            self.held.insert(request.namespace.to_string(), BTreeMap::new());
        }
        let kinds = self.held.get_mut(&*request.namespace).expect("just ensured");
        for requirement in &request.requirements {
            match kinds.get_mut(&*requirement.kind) {
                Some(held) => *held += requirement.quantity,
                None => {
                    kinds.insert(requirement.kind.to_string(), requirement.quantity);
                }
            }
        }
    }

    /// Undoes [`Self::add_held`], dropping entries that reach zero.
    fn remove_held(&mut self, request: &AllocationRequest) {
        let kinds = self
            .held
            .get_mut(&*request.namespace)
            .expect("active requests are counted by namespace");
        for requirement in &request.requirements {
            let held = kinds.get_mut(&*requirement.kind).expect("active requests are counted by kind");
            *held = held
                .checked_sub(requirement.quantity)
                .expect("a namespace never holds less than one of its allocations asked");
            if *held == 0 {
                kinds.remove(&*requirement.kind);
            }
        }
        if kinds.is_empty() {
            self.held.remove(&*request.namespace);
        }
    }

    fn add_namespace_queued(&mut self, record: &RequestRecord) {
        let request = &record.request;
        let entry = (Reverse(request.priority), record.arrival_seq, request.request_id);
        match self.queue_by_namespace.get_mut(&*request.namespace) {
            Some(queue) => queue.insert(entry),
            None => self
                .queue_by_namespace
                .entry(request.namespace.to_string())
                .or_default()
                .insert(entry),
        };
    }

    fn remove_namespace_queued(&mut self, record: &RequestRecord) {
        let request = &record.request;
        let queue = self
            .queue_by_namespace
            .get_mut(&*request.namespace)
            .expect("queued requests are indexed by namespace");
        queue.remove(&(Reverse(request.priority), record.arrival_seq, request.request_id));
        if queue.is_empty() {
            self.queue_by_namespace.remove(&*request.namespace);
        }
    }

    /// The move and movability of an active record.
    fn add_move_state(&mut self, record: &RequestRecord) {
        if record.movable {
            self.movable_active += 1;
        }
        if let Some(moving) = record.moving() {
            self.moves.insert((moving.deadline_ms, record.request.request_id));
        }
    }

    /// Adds a provider's capacity, and its free amounts if it is active.
    pub fn add_provider(&mut self, provider: &Provider) {
        for (kind, totals) in &provider.kinds {
            self.capacity_by_kind
                .entry(kind.to_string())
                .or_default()
                .insert((totals.capacity, provider.provider_id.to_string()));
        }
        self.add_free(provider);
    }

    pub fn remove_provider(&mut self, provider: &Provider) {
        for (kind, totals) in &provider.kinds {
            remove_entry(
                &mut self.capacity_by_kind,
                kind,
                &(totals.capacity, provider.provider_id.to_string()),
            );
        }
        self.remove_free(provider);
    }

    /// Makes an active, open provider's free amounts placeable.
    pub fn add_free(&mut self, provider: &Provider) {
        if !provider.accepts_placements() {
            return;
        }
        for (kind, totals) in &provider.kinds {
            if totals.free > 0 {
                self.free_by_kind
                    .entry(kind.to_string())
                    .or_default()
                    .insert((totals.free, provider.provider_id.to_string()));
            }
        }
    }

    pub fn remove_free(&mut self, provider: &Provider) {
        for (kind, totals) in &provider.kinds {
            remove_entry(&mut self.free_by_kind, kind, &(totals.free, provider.provider_id.to_string()));
        }
    }

    /// Moves an active, open provider's entry for `kind` from `before` to its current free amount.
    pub fn update_free(&mut self, provider: &Provider, kind: &str, before: u64) {
        if !provider.accepts_placements() {
            return;
        }
        let now = provider.free_of(kind);
        if now == before {
            return;
        }
        remove_entry(&mut self.free_by_kind, kind, &(before, provider.provider_id.to_string()));
        if now > 0 {
            self.free_by_kind
                .entry(kind.to_owned())
                .or_default()
                .insert((now, provider.provider_id.to_string()));
        }
    }
}

/// A borrowed name as a grouping key: its length and first 16 bytes
/// compare as integers, the text itself only on a tie, so grouping a million
/// records makes integer comparisons instead of `memcmp` calls. Its order is
/// not string order, which does not matter: the groups are collected into the
/// index's `String`-keyed maps, which sort them. The index keeps a clone of
/// the name, the copy its records hold.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct GroupKey<'a> {
    len: usize,
    prefix: u128,
    name: &'a Name,
}

impl<'a> GroupKey<'a> {
    fn new(name: &'a Name) -> GroupKey<'a> {
        let mut prefix = [0u8; 16];
        let kept = name.len().min(prefix.len());
        prefix[..kept].copy_from_slice(&name.as_bytes()[..kept]);
        GroupKey {
            len: name.len(),
            prefix: u128::from_be_bytes(prefix),
            name,
        }
    }
}

/// The set of `requester`'s requests in `namespace`, created if new; keys
/// are cloned only when a namespace or requester first appears.
fn owned_by<'a>(
    by_owner: &'a mut BTreeMap<Name, BTreeMap<Name, BTreeSet<IdKey>>>,
    namespace: &mut Name,
    requester: &mut Name,
) -> &'a mut BTreeSet<IdKey> {
    if !by_owner.contains_key(namespace.as_str()) {
        by_owner.insert(namespace.clone(), BTreeMap::new());
    }
    share(by_owner, namespace);
    let requesters = by_owner.get_mut(namespace.as_str()).expect("just ensured");
    if !requesters.contains_key(requester.as_str()) {
        requesters.insert(requester.clone(), BTreeSet::new());
    }
    share(requesters, requester);
    requesters.get_mut(requester.as_str()).expect("just ensured")
}

/// Makes `name` the copy `map` holds as a key, if it holds one.
pub(crate) fn share<V>(map: &BTreeMap<Name, V>, name: &mut Name) {
    if let Some((key, _)) = map.get_key_value(name.as_str()) {
        if !key.shares_with(name) {
            *name = key.clone();
        }
    }
}

/// Removes `id` from its owner's set, dropping sets and maps left empty so the
/// index equals one rebuilt from scratch.
fn disown(by_owner: &mut BTreeMap<Name, BTreeMap<Name, BTreeSet<IdKey>>>, namespace: &str, requester: &str, id: Uuid) {
    let requesters = by_owner.get_mut(namespace).expect("remembered requests are indexed by namespace");
    let ids = requesters.get_mut(requester).expect("remembered requests are indexed by requester");
    assert!(ids.remove(&id.into()), "request {id} was not indexed under its owner");
    if ids.is_empty() {
        requesters.remove(requester);
        if requesters.is_empty() {
            by_owner.remove(namespace);
        }
    }
}

fn remove_entry(map: &mut BTreeMap<String, BTreeSet<(u64, String)>>, kind: &str, entry: &(u64, String)) {
    if let Some(set) = map.get_mut(kind) {
        set.remove(entry);
        if set.is_empty() {
            map.remove(kind);
        }
    }
}
