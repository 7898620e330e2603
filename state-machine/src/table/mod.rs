//! The allocation table: providers, requests, the queue and the event history.
//!
//! Only `config`, the counters, `providers`, `requests`, `history` and `cursors` are
//! state; everything in `Indexes` is derived from them, skipped by the
//! snapshot and rebuilt on restore. Every mutation of a request goes through
//! `AllocationTable::take_record` / `AllocationTable::put_record`, which
//! keep the state indexes in step with the record's state; a request's ids
//! and owner are indexed once when it arrives (`insert_new_record`) and
//! dropped when it is forgotten (`forget_record`).
//!
//! Requests (in the shards of a `RecordMap`) and providers are shared
//! copy-on-write, so [`AllocationTable::snapshot_copy`] is a copy of
//! pointers that a replica can take while apply waits, and encode after.
//!
//! Every decision is bounded, whatever the table's size: a placement examines
//! at most [`TableConfig::placement_candidates_max`] providers, freed capacity
//! re-examines at most [`TableConfig::queue_examined_per_free_max`] queued
//! requests (skipping those past their deadline, which the next
//! [`Command::Tick`] rejects), a tick handles at most
//! [`TableConfig::expirations_per_tick_max`] expiries and rejections, and a
//! command moves at most [`TableConfig::evacuations_per_command_max`]
//! allocations off failed, deregistered or past-deadline drained providers
//! (the rest in the commands after it; a deregistered provider is
//! forgotten once empty).

mod allocation_index;
mod bulk_release;
mod cursors;
mod id_key;
mod id_set;
mod indexes;
mod lifecycle;
mod memory;
mod moves;
mod optimize;
mod placement;
mod policies;
mod preemption;
mod providers;
mod queries;
mod quotas;
mod record_map;
mod scheduling;
mod snapshot;
mod snapshot_v5;
mod snapshot_v6;

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::command::{Applied, ApplyResult, Command, StampedCommand};
use crate::event::{Event, EventKind};
use crate::limits::TableConfig;
use crate::policy::CapabilityPolicy;
use crate::provider::Provider;
use crate::quota::{NamespacePolicy, OnPreemption, PreemptionSetting};
use crate::record::RequestRecord;
use crate::time::OptionalMillis;
use record_map::RecordMap;

pub use cursors::Cursor;
pub(crate) use indexes::Indexes;
pub use moves::MoveCounts;
pub use preemption::{Preview, PreviewOutcome, Victim};
pub use queries::{EventsError, KindUsage, ListFilter, ProviderUsage, Usage};
pub use quotas::NamespaceUsage;
pub use snapshot::{SNAPSHOT_DECODED_BYTES_MAX, SNAPSHOT_FORMAT_VERSION};

/// A lease refresh under way: every lease gets at least `from_ms` plus its
/// TTL, walked in the lease index's order after `after`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct LeaseRefresh {
    from_ms: u64,
    after: Option<(u64, Uuid)>,
}

/// The replicated allocation table. Apply the same commands in the same order
/// and two tables are equal, down to their snapshot bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllocationTable {
    config: TableConfig,
    /// The largest `now_ms` of any applied command: the table's clock.
    clock_ms: u64,
    /// The revision of the newest event.
    revision: u64,
    /// Arrival order of requests, for first-come-first-served within a priority.
    next_arrival_seq: u64,
    /// Shared, as the requests' shards are: a snapshot copy copies a pointer
    /// per provider, and a provider changed while a copy holds it is copied
    /// then (its units, once per snapshot).
    providers: BTreeMap<String, Arc<Provider>>,
    /// Shared in shards, so that [`AllocationTable::snapshot_copy`] copies
    /// a pointer per shard instead of every record (`record_map`).
    requests: RecordMap,
    /// The newest events, at most `config.event_history_max`.
    history: VecDeque<Event>,
    /// Named cursors into the history, at most [`crate::limits::CURSORS_MAX`].
    cursors: BTreeMap<String, Cursor>,
    /// Failed providers whose allocations are still being moved, with the
    /// reason their queued ones get: at most
    /// [`TableConfig::evacuations_per_command_max`] move per command, in
    /// provider-id order, each provider's oldest first. The reason
    /// `provider_deregistered` marks a provider that is leaving: it stays
    /// (failed) only until it holds nothing, then it is forgotten;
    /// `drain_deadline` one whose drain deadline passed (active, cordoned).
    evacuating: BTreeMap<String, String>,
    /// A new leader's lease refresh still under way: no lease expires
    /// until it is done.
    lease_refresh: Option<LeaseRefresh>,
    /// Who may preempt, cluster-wide; a namespace may override it.
    cluster_preemption: PreemptionSetting,
    /// Namespaces with rules of their own (quota, preemption override or
    /// protection), at most [`crate::limits::NAMESPACE_POLICIES_MAX`]; an
    /// entry back at the defaults is dropped.
    namespaces: BTreeMap<String, NamespacePolicy>,
    /// Preemptor request id → the allocations it took, each with the
    /// provider whose agent has yet to confirm letting go of it. The
    /// preemptor's own grant is not confirmed while its list is non-empty;
    /// the entry goes when the list empties or the preemptor leaves the
    /// `allocation` state (confirmed, released, moved).
    release_awaited: BTreeMap<Uuid, Vec<(Uuid, String)>>,
    /// The reverse of `release_awaited`: (victim allocation, provider) →
    /// the preemptors waiting for it. Derived, rebuilt on restore.
    #[serde(skip)]
    awaited_by: BTreeMap<(Uuid, String), BTreeSet<Uuid>>,
    /// Namespaces whose quota this command freed, for
    /// [`Self::examine_queue`] to re-examine their own queues; empty
    /// between commands.
    #[serde(skip)]
    freed_namespaces: BTreeSet<String>,
    /// When the last optimization plan ran: automatic plans wait
    /// `plan_cooldown_ms` after it.
    last_plan_at_ms: Option<u64>,
    /// Moves by outcome, for the measures (`qm state`, metrics).
    move_counts: MoveCounts,
    /// Capability policies by name, at most [`crate::policy::POLICIES_MAX`].
    policies: BTreeMap<String, CapabilityPolicy>,
    /// The revision of the newest policy set: each set takes the next, so
    /// a policy deleted and set again never repeats a revision (an
    /// allocate checked against the old one is refused at apply).
    policy_revision: u64,
    /// Live requests allocated under a grant with totals → their holder
    /// (the certificate name): what the holders' totals count.
    policy_holders: BTreeMap<Uuid, String>,
    /// Holder → kind → what its charged live requests ask for. Derived
    /// from `policy_holders`, rebuilt on restore; no zero entries.
    #[serde(skip)]
    held_by_holder: BTreeMap<String, BTreeMap<String, u64>>,
    /// Set only while an allocate whose grant forbids preemption runs.
    #[serde(skip)]
    preemption_withheld: bool,
    #[serde(skip)]
    index: Indexes,
    /// Events of the command being applied; drained at the end of `apply`.
    #[serde(skip)]
    pending_events: Vec<Event>,
}

impl Default for AllocationTable {
    fn default() -> Self {
        AllocationTable::new(TableConfig::default())
    }
}

impl AllocationTable {
    pub fn new(config: TableConfig) -> Self {
        AllocationTable {
            config,
            clock_ms: 0,
            revision: 0,
            next_arrival_seq: 0,
            providers: BTreeMap::new(),
            requests: RecordMap::default(),
            history: VecDeque::new(),
            cursors: BTreeMap::new(),
            evacuating: BTreeMap::new(),
            lease_refresh: None,
            cluster_preemption: PreemptionSetting::Off,
            namespaces: BTreeMap::new(),
            release_awaited: BTreeMap::new(),
            awaited_by: BTreeMap::new(),
            freed_namespaces: BTreeSet::new(),
            last_plan_at_ms: None,
            move_counts: MoveCounts::default(),
            policies: BTreeMap::new(),
            policy_revision: 0,
            policy_holders: BTreeMap::new(),
            held_by_holder: BTreeMap::new(),
            preemption_withheld: false,
            index: Indexes::default(),
            pending_events: Vec::new(),
        }
    }

    pub fn config(&self) -> &TableConfig {
        &self.config
    }

    /// Applies one command and returns its answer with a copy of the events
    /// it emitted. On error nothing has changed, not even the clock.
    pub fn apply(&mut self, entry: &StampedCommand) -> Applied {
        let result = self.run(entry.now_ms, Cow::Borrowed(&entry.command));
        let events = self.pending_events.clone();
        self.retire_pending_events();
        Applied { result, events }
    }

    /// [`Self::apply`] as a replica applies its log: without the copy of the
    /// events (they go to the history only, where watchers read them,
    /// [`Self::events_from`]; copying every event of every command only to
    /// drop the copy was a measurable share of a replica's CPU), and taking
    /// the command, which the replica no longer needs once applied, so a new
    /// request's record takes the request itself instead of a deep copy (its
    /// strings and vectors, about half a dozen allocations per allocate). The
    /// result and the table are exactly those of [`Self::apply`].
    pub fn apply_into_history(&mut self, entry: StampedCommand) -> ApplyResult {
        let result = self.run(entry.now_ms, Cow::Owned(entry.command));
        self.retire_pending_events();
        result
    }

    /// Runs one command, leaving its events in `pending_events`.
    fn run(&mut self, now_ms: u64, command: Cow<'_, Command>) -> ApplyResult {
        debug_assert!(self.pending_events.is_empty());
        let clock_before = self.clock_ms;
        self.clock_ms = self.clock_ms.max(now_ms);
        let operation_type = command.operation_type();
        let moves_before = (self.index.moves.len(), self.move_counts.started);
        let result = self.dispatch(command);
        self.freed_namespaces.clear();
        match &result {
            Ok(_) => {
                // Every successful command carries on with a bounded share
                // of a pending evacuation, after its own work.
                self.continue_lease_refresh();
                self.continue_evacuations();
                self.note_moves_settled(moves_before);
                self.evict_finished();
            }
            Err(_) => {
                assert!(self.pending_events.is_empty(), "a failed {operation_type} emitted events");
                self.clock_ms = clock_before;
            }
        }
        result
    }

    /// Moves the events of the command just run into the history.
    fn retire_pending_events(&mut self) {
        self.history.extend(self.pending_events.drain(..));
        // `>` and a loop, not `==` once: with a limit of 0 a single check
        // before each push would let the history grow without bound.
        while self.history.len() > self.config.event_history_max {
            self.history.pop_front();
        }
    }

    /// Only an owned allocate is worth taking apart: its request becomes the
    /// new record's. Every other command is read in place.
    fn dispatch(&mut self, command: Cow<'_, Command>) -> ApplyResult {
        match command {
            Cow::Owned(Command::Allocate(request)) => self.allocate(Cow::Owned(request), OnPreemption::Requeue, false),
            Cow::Owned(Command::AllocateWith { request, on_preemption }) => self.allocate(Cow::Owned(request), on_preemption, false),
            Cow::Owned(Command::AllocateMovable(request)) => self.allocate(Cow::Owned(request), OnPreemption::Requeue, true),
            Cow::Owned(Command::AllocateWithOptions { request, options }) => {
                self.allocate(Cow::Owned(request), options.on_preemption, options.movable)
            }
            Cow::Owned(Command::AllocateUnderPolicy {
                request,
                on_preemption,
                movable,
                grant,
            }) => self.allocate_under_policy(Cow::Owned(request), on_preemption, movable, &grant),
            command => self.dispatch_borrowed(&command),
        }
    }

    fn dispatch_borrowed(&mut self, command: &Command) -> ApplyResult {
        match command {
            Command::RegisterProvider(registration) => self.register_provider(registration),
            Command::DeregisterProvider { provider_id } => self.deregister_provider(provider_id),
            Command::Allocate(request) => self.allocate(Cow::Borrowed(request), OnPreemption::Requeue, false),
            Command::Release { id } => self.release(*id),
            Command::RenewLease { id } => self.renew_lease(*id),
            Command::Tick => self.tick(),
            Command::ProviderFailed { provider_id } => self.provider_failed(provider_id),
            Command::ProviderRecovered { provider_id } => self.provider_recovered(provider_id),
            Command::RefreshLeases => self.refresh_leases(),
            Command::ConfirmAllocation {
                allocation_id,
                provider_id,
            } => self.confirm_allocation(*allocation_id, provider_id),
            Command::ConfirmDeallocation {
                allocation_id,
                provider_id,
            } => self.confirm_deallocation(*allocation_id, provider_id),
            Command::AdvanceCursor {
                name,
                holder,
                revision,
                hold_ms,
            } => self.advance_cursor(name, holder, *revision, *hold_ms),
            Command::ReleaseMatching { filter, after } => self.release_matching(filter, *after),
            Command::SetQuota { namespace, limits } => self.set_quota(namespace, limits),
            Command::DeleteQuota { namespace } => self.delete_quota(namespace),
            Command::SetPreemption {
                namespace,
                setting,
                preemptible,
            } => self.set_preemption(namespace.as_deref(), *setting, *preemptible),
            Command::AllocateWith { request, on_preemption } => self.allocate(Cow::Borrowed(request), *on_preemption, false),
            Command::CordonProvider { provider_id, cordon } => self.cordon_provider(provider_id, *cordon),
            Command::AllocateMovable(request) => self.allocate(Cow::Borrowed(request), OnPreemption::Requeue, true),
            Command::Optimize => self.optimize_now(),
            Command::DrainProvider {
                provider_id,
                deadline_after_ms,
            } => self.drain_provider(provider_id, *deadline_after_ms),
            Command::AllocateWithOptions { request, options } => {
                self.allocate(Cow::Borrowed(request), options.on_preemption, options.movable)
            }
            Command::SetPolicy(spec) => self.set_policy(spec),
            Command::DeletePolicy { name } => self.delete_policy(name),
            Command::AllocateUnderPolicy {
                request,
                on_preemption,
                movable,
                grant,
            } => self.allocate_under_policy(Cow::Borrowed(request), *on_preemption, *movable, grant),
            Command::BindPolicy { name, binding } => self.bind_policy(name, binding),
            Command::UnbindPolicy { name, binding } => self.unbind_policy(name, binding),
        }
    }

    fn emit(&mut self, kind: EventKind) {
        self.revision += 1;
        self.pending_events.push(Event::new(self.revision, self.clock_ms, kind));
    }

    /// Removes a request from the table and its state indexes, to be changed
    /// and put back with [`Self::put_record`]. Its ids and owner stay
    /// indexed: they never change.
    fn take_record(&mut self, request_id: Uuid) -> RequestRecord {
        let record = self
            .requests
            .remove(&request_id)
            .expect("take_record is called with a known request id");
        self.index.remove_state(&record);
        // A copy only if a snapshot copy or an answer still holds it.
        Arc::unwrap_or_clone(record)
    }

    /// Puts back a record taken with [`Self::take_record`].
    fn put_record(&mut self, mut record: RequestRecord) {
        record.updated_at_ms = self.clock_ms;
        // A preemptor no longer waiting for its grant's confirmation
        // (released, moved, confirmed) waits for no victim either.
        if !self.release_awaited.is_empty() && record.state != crate::record::RequestState::Allocation {
            self.stop_awaiting(record.request.request_id);
        }
        if record.state.is_finished() && record.finished_at_ms().is_none() {
            record.rare_mut().finished_at_ms = OptionalMillis::some(self.clock_ms);
        }
        if record.state.is_finished() && !self.policy_holders.is_empty() {
            self.uncharge_finished(&record.request);
        }
        share_requirement_kinds(&mut record);
        self.index.add_state(&record);
        let previous = self.requests.insert(record.request.request_id, Arc::new(record));
        assert!(previous.is_none(), "put_record over a record that was not taken");
    }

    /// Takes in a request the table has not seen.
    fn insert_new_record(&mut self, mut record: RequestRecord) {
        self.index.add_identity(&mut record);
        self.put_record(record);
    }

    /// Forgets a request altogether (dedupe eviction).
    fn forget_record(&mut self, request_id: Uuid) {
        let record = self.take_record(request_id);
        self.index.remove_identity(&record);
    }

    /// Forgets finished requests past the dedupe window or over the count
    /// limit, a bounded number per command.
    fn evict_finished(&mut self) {
        for _ in 0..self.config.evictions_per_command_max {
            let Some(&(finished_at, request_id)) = self.index.finished.first() else {
                break;
            };
            let over_count = self.index.finished.len() > self.config.finished_requests_max;
            let past_window = finished_at.saturating_add(self.config.dedupe_window_ms) <= self.clock_ms;
            if !(over_count || past_window) {
                break;
            }
            self.forget_record(request_id);
        }
    }

    /// Rebuilds every derived structure from the state; used after restore.
    fn rebuild_indexes(&mut self) {
        for provider in self.providers.values_mut().map(Arc::make_mut) {
            provider.rebuild_kinds();
        }
        self.index = Indexes::build(self.providers.values().map(Arc::as_ref), self.requests.values());
        self.awaited_by = awaited_by(&self.release_awaited);
        self.rebuild_held_by_holder();
    }
}

impl AllocationTable {
    /// Makes every record's names the copies the table already holds: its
    /// owner's from the owner index, its placements' from their provider and
    /// units. Commands build records that way; a decoded snapshot gives each
    /// record copies of its own, a few million strings at a million
    /// allocations (BENCHMARKS.md, "Where a million allocations' bytes go").
    /// After a restore's index rebuild, when nothing else holds the records.
    fn share_names(&mut self) {
        let (providers, by_owner) = (&self.providers, &self.index.by_owner);
        for record in self.requests.records_mut() {
            let request = &mut record.request;
            if let Some(requesters) = by_owner.get(request.namespace.as_str()) {
                indexes::share(requesters, &mut request.requester_id);
            }
            indexes::share(by_owner, &mut request.namespace);
            let moves = record
                .rare
                .iter_mut()
                .flat_map(|rare| rare.moving.iter_mut())
                .flat_map(|moving| [&mut moving.from, &mut moving.to]);
            for placement in record.placement.iter_mut().chain(moves) {
                let Some(provider) = providers.get(placement.provider_id.as_str()) else {
                    continue;
                };
                placement.provider_id = provider.provider_id.clone();
                for grant in &mut placement.grants {
                    if let Some(unit) = provider.resources.get(grant.resource_id.as_str()) {
                        grant.resource_id = unit.resource_id.clone();
                        if unit.kind == grant.kind {
                            grant.kind = unit.kind.clone();
                        }
                    }
                }
            }
            share_requirement_kinds(record);
        }
    }
}

/// Makes the kinds a placed record asks for the copies its grants hold (its
/// units'), as a record's kinds arrive with the command, one copy each.
fn share_requirement_kinds(record: &mut RequestRecord) {
    let Some(placement) = &record.placement else {
        return;
    };
    for requirement in &mut record.request.requirements {
        if let Some(grant) = placement.grants.iter().find(|grant| grant.kind == requirement.kind) {
            if !grant.kind.shares_with(&requirement.kind) {
                requirement.kind = grant.kind.clone();
            }
        }
    }
}

/// The reverse of `release_awaited`: who waits for each victim's release.
fn awaited_by(release_awaited: &BTreeMap<Uuid, Vec<(Uuid, String)>>) -> BTreeMap<(Uuid, String), BTreeSet<Uuid>> {
    let mut reverse: BTreeMap<(Uuid, String), BTreeSet<Uuid>> = BTreeMap::new();
    for (preemptor, victims) in release_awaited {
        for victim in victims {
            reverse.entry(victim.clone()).or_default().insert(*preemptor);
        }
    }
    reverse
}
