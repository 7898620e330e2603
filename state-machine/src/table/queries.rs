//! Read-only questions the API and the monitor ask of the table.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::AllocationTable;
use crate::event::Event;
use crate::provider::{Provider, ProviderStatus};
use crate::record::{RequestRecord, RequestState};

/// Which requests `list` returns. Empty fields match everything.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListFilter {
    pub namespace: Option<String>,
    /// Needs `namespace`: requester ids are scoped by namespace.
    pub requester_id: Option<String>,
    /// Only requests actively placed on this provider.
    pub provider_id: Option<String>,
    pub state: Option<RequestState>,
    /// Start after this request id (for paging).
    pub after: Option<Uuid>,
    pub limit: usize,
}

/// Capacity, use and free amount of one kind.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KindUsage {
    /// On active providers.
    pub capacity: u64,
    pub used: u64,
    /// What new allocations could still get (exclusive units count whole).
    pub free: u64,
    /// On failed providers: offered to nobody until they return.
    pub failed_capacity: u64,
}

/// One provider's use, per kind.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProviderUsage {
    pub provider_id: String,
    pub status: ProviderStatus,
    pub allocations: u64,
    pub kinds: BTreeMap<String, KindUsage>,
}

/// The monitor's view of the whole table (the protocol's SystemState).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub by_kind: BTreeMap<String, KindUsage>,
    pub providers: Vec<ProviderUsage>,
    pub queue_len: u64,
    pub active_allocations: u64,
    pub failed_providers: Vec<String>,
    pub revision: u64,
    /// Allocations still on failed providers, to be moved by the next
    /// commands (bounded evacuation); 0 once every move is done.
    #[serde(default)]
    pub evacuations_pending: u64,
    /// Providers an operator cordoned or is draining: no new placements.
    #[serde(default)]
    pub cordoned_providers: Vec<String>,
    /// Per kind, in thousandths: 1 − largest free amount on one provider ÷
    /// total free amount (0: all free capacity is on one provider).
    #[serde(default)]
    pub fragmentation_permille: BTreeMap<String, u64>,
    /// Providers holding only movable allocations whose held amounts the
    /// other open providers have free: a plan could empty each of them
    /// (one at a time, not all at once).
    #[serde(default)]
    pub emptiable_providers: Vec<String>,
    /// Moves by outcome since the table began.
    #[serde(default)]
    pub moves_started: u64,
    #[serde(default)]
    pub moves_completed: u64,
    #[serde(default)]
    pub moves_rolled_back: u64,
}

/// A watcher asked for history the table no longer keeps.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EventsError {
    #[error("revision {requested} is compacted; the oldest kept is {oldest}")]
    Compacted { requested: u64, oldest: u64 },
}

impl AllocationTable {
    /// A request by its request id or allocation id.
    pub fn get(&self, id: Uuid) -> Option<&RequestRecord> {
        self.resolve(id).ok().map(|request_id| self.requests[&request_id].as_ref())
    }

    pub fn list(&self, filter: &ListFilter) -> Vec<&RequestRecord> {
        let matches = |record: &&RequestRecord| {
            filter.state.is_none_or(|state| record.state == state)
                && filter.after.is_none_or(|after| record.request.request_id > after)
                && filter.namespace.as_ref().is_none_or(|ns| record.request.namespace == *ns)
                && filter
                    .requester_id
                    .as_ref()
                    .is_none_or(|requester| record.request.requester_id == *requester)
        };
        let limit = if filter.limit == 0 { usize::MAX } else { filter.limit };
        let ids: Box<dyn Iterator<Item = Uuid> + '_> = match (&filter.provider_id, &filter.namespace) {
            (Some(provider_id), _) => Box::new(self.index.by_provider.get(provider_id).into_iter().flatten().copied()),
            (None, Some(namespace)) => {
                let requesters = self.index.by_owner.get(namespace.as_str()).into_iter().flatten();
                let wanted = filter.requester_id.as_ref();
                Box::new(
                    requesters
                        .filter(move |(requester, _)| wanted.is_none_or(|wanted| wanted == *requester))
                        .flat_map(|(_, ids)| ids.iter().map(|id| id.uuid())),
                )
            }
            (None, None) => Box::new(self.requests.keys()),
        };
        let mut found: Vec<&RequestRecord> = ids.map(|id| self.requests[&id].as_ref()).filter(matches).collect();
        found.sort_by_key(|record| record.request.request_id);
        found.truncate(limit);
        found
    }

    pub fn provider(&self, provider_id: &str) -> Option<&Provider> {
        self.providers.get(provider_id).map(Arc::as_ref)
    }

    pub fn providers(&self) -> impl Iterator<Item = &Provider> {
        self.providers.values().map(Arc::as_ref)
    }

    pub fn queue_len(&self) -> usize {
        self.index.queue.len()
    }

    /// Queued request ids, head first.
    pub fn queue(&self) -> impl Iterator<Item = Uuid> + '_ {
        self.index.queue.iter().map(|(_, _, id)| *id)
    }

    pub fn active_allocations(&self) -> usize {
        self.index.by_provider.values().map(|ids| ids.len()).sum()
    }

    /// Requests remembered, live and finished.
    pub fn requests_len(&self) -> usize {
        self.requests.len()
    }

    pub fn usage(&self) -> Usage {
        let mut by_kind: BTreeMap<String, KindUsage> = BTreeMap::new();
        let mut providers = Vec::new();
        for provider in self.providers.values() {
            let mut kinds = BTreeMap::new();
            for resource in provider.resources.values() {
                let usage: &mut KindUsage = kinds.entry(resource.kind.to_string()).or_default();
                match provider.status {
                    ProviderStatus::Active => {
                        usage.capacity += resource.capacity;
                        usage.used += resource.used();
                        usage.free += resource.free();
                    }
                    ProviderStatus::Failed => usage.failed_capacity += resource.capacity,
                }
            }
            for (kind, usage) in &kinds {
                let total = by_kind.entry(kind.to_string()).or_default();
                total.capacity += usage.capacity;
                total.used += usage.used;
                total.free += usage.free;
                total.failed_capacity += usage.failed_capacity;
            }
            let allocations = self.index.by_provider.get(&*provider.provider_id).map_or(0, |ids| ids.len() as u64);
            providers.push(ProviderUsage {
                provider_id: provider.provider_id.to_string(),
                status: provider.status,
                allocations,
                kinds,
            });
        }
        Usage {
            evacuations_pending: self.evacuations_pending() as u64,
            fragmentation_permille: self.fragmentation_permille(),
            emptiable_providers: self.emptiable_providers(),
            moves_started: self.move_counts().started,
            moves_completed: self.move_counts().completed,
            moves_rolled_back: self.move_counts().rolled_back,
            cordoned_providers: self
                .providers
                .values()
                .filter(|p| p.scheduling != crate::provider::Scheduling::Open)
                .map(|p| p.provider_id.to_string())
                .collect(),
            by_kind,
            providers,
            queue_len: self.index.queue.len() as u64,
            active_allocations: self.active_allocations() as u64,
            failed_providers: self
                .providers
                .values()
                .filter(|p| p.status == ProviderStatus::Failed)
                .map(|p| p.provider_id.to_string())
                .collect(),
            revision: self.revision,
        }
    }

    /// See [`Usage::emptiable_providers`]. Walks every provider holding
    /// something: a monitor's query, not for the apply path.
    pub fn emptiable_providers(&self) -> Vec<String> {
        let free_total = |kind: &str| -> u64 {
            self.index
                .free_by_kind
                .get(kind)
                .map_or(0, |free| free.iter().map(|(amount, _)| amount).sum())
        };
        self.index
            .by_provider
            .iter()
            .filter(|(provider_id, ids)| {
                let provider = &self.providers[provider_id.as_str()];
                if provider.status != ProviderStatus::Active || !ids.iter().all(|id| self.requests[id].movable) {
                    return false;
                }
                provider.kinds.iter().all(|(kind, totals)| {
                    let held = totals.capacity
                        - provider
                            .resources
                            .values()
                            .filter(|r| &r.kind == kind)
                            .map(|r| r.free())
                            .sum::<u64>();
                    let own_free = if provider.accepts_placements() { totals.free } else { 0 };
                    held == 0 || free_total(kind) - own_free >= held
                })
            })
            .map(|(provider_id, _)| provider_id.clone())
            .collect()
    }

    /// The newest event's revision (0 before any event).
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// The table's clock: the largest `now_ms` applied.
    pub fn clock_ms(&self) -> u64 {
        self.clock_ms
    }

    /// Events with a revision of at least `from`, oldest first. Revisions
    /// start at 1, so `from` 0 and 1 both mean "everything", and are refused
    /// only once revision 1 has been compacted away.
    pub fn events_from(&self, from: u64) -> Result<impl Iterator<Item = &Event>, EventsError> {
        let oldest = self.history.front().map_or(self.revision + 1, |event| event.revision);
        if from.max(1) < oldest {
            return Err(EventsError::Compacted { requested: from, oldest });
        }
        let skip = from.saturating_sub(oldest) as usize;
        Ok(self.history.iter().skip(skip))
    }

    /// When the next tick has work: the earliest lease expiry, deadline or
    /// move deadline, the next evaluation of the optimization triggers, or
    /// now while allocations are still to move off failed providers or a
    /// lease refresh is under way.
    /// The leader proposes a `Tick` once its clock reaches this.
    pub fn next_due_ms(&self) -> Option<u64> {
        let lease = self.index.leases.first().map(|(at, _)| *at);
        let deadline = self.index.deadlines.first().map(|(at, _)| *at);
        let evacuation = (!self.evacuating.is_empty() || self.lease_refresh.is_some()).then_some(self.clock_ms);
        let move_deadline = self.index.moves.first().map(|(at, _)| *at);
        let plan = self.plan_due_ms().map(|at| at.max(self.clock_ms));
        let drain = self.next_drain_deadline_ms();
        lease
            .into_iter()
            .chain(deadline)
            .chain(evacuation)
            .chain(move_deadline)
            .chain(plan)
            .chain(drain)
            .min()
    }

    /// Checks every invariant of the table; panics with the first broken one.
    /// Tests call it after every step; it walks everything, so it is not for
    /// the apply path.
    pub fn assert_invariants(&self) {
        assert!(self.pending_events.is_empty(), "events left pending between commands");
        let mut rebuilt = self.clone();
        rebuilt.rebuild_indexes();
        // The index and each provider's kind totals are derived: both must match a rebuild.
        assert_eq!(rebuilt.index, self.index, "indexes drifted from the state");
        for (provider_id, provider) in &self.providers {
            assert_eq!(
                rebuilt.providers[provider_id].kinds, provider.kinds,
                "kind totals of {provider_id} drifted from its units"
            );
        }
        assert!(self.freed_namespaces.is_empty(), "namespaces left to examine between commands");
        assert_eq!(rebuilt.awaited_by, self.awaited_by, "awaited releases drifted from their reverse");
        assert_eq!(
            rebuilt.held_by_holder, self.held_by_holder,
            "holders' totals drifted from their charges"
        );
        assert!(!self.preemption_withheld, "preemption left withheld between commands");
        for request_id in self.policy_holders.keys() {
            assert!(
                !self.requests[request_id].state.is_finished(),
                "{request_id} is charged though finished"
            );
        }
        assert!(
            self.namespaces.len() <= crate::limits::NAMESPACE_POLICIES_MAX,
            "too many namespace rules"
        );
        for (namespace, policy) in &self.namespaces {
            assert!(!policy.is_unset(), "{namespace} keeps an entry at the defaults");
        }
        for (preemptor, victims) in &self.release_awaited {
            assert!(!victims.is_empty(), "{preemptor} awaits no release but keeps an entry");
            let record = &self.requests[preemptor];
            assert_eq!(
                RequestState::Allocation,
                record.state,
                "{preemptor} awaits releases while {}",
                record.state.as_str()
            );
        }
        for provider_id in self.evacuating.keys() {
            let provider = self.providers.get(provider_id);
            let status = provider.map(|provider| provider.status);
            if self.evacuating_for_drain(provider_id) {
                // Past its drain deadline: still active, but closed to placements.
                assert_eq!(
                    Some(crate::provider::Scheduling::Cordoned),
                    provider.map(|provider| provider.scheduling),
                    "{provider_id} is evacuated for its drain but not cordoned"
                );
            } else {
                assert_eq!(
                    Some(ProviderStatus::Failed),
                    status,
                    "{provider_id} is evacuated but not a failed provider"
                );
            }
            assert!(
                self.index.by_provider.get(provider_id).is_some_and(|ids| !ids.is_empty()),
                "{provider_id} is evacuated but holds nothing"
            );
        }
        assert!(
            self.history.len() <= self.config.event_history_max,
            "history holds {} events",
            self.history.len()
        );
        assert!(
            self.history
                .iter()
                .zip(self.history.iter().skip(1))
                .all(|(a, b)| a.revision + 1 == b.revision),
            "history has gaps"
        );
        assert!(
            self.history.back().is_none_or(|event| event.revision == self.revision),
            "history does not end at the revision"
        );
        for provider in self.providers.values() {
            for resource in provider.resources.values() {
                assert!(
                    resource.used() <= resource.capacity,
                    "{}/{} over capacity",
                    provider.provider_id,
                    resource.resource_id
                );
                if resource.sharing == crate::provider::Sharing::Exclusive {
                    assert!(
                        resource.holders.len() <= 1,
                        "exclusive {}/{} has {} holders",
                        provider.provider_id,
                        resource.resource_id,
                        resource.holders.len()
                    );
                }
                for allocation_id in resource.holders.keys() {
                    let record = self.get(*allocation_id).expect("holders are known allocations");
                    assert!(
                        record.state.is_active(),
                        "{allocation_id} holds units while {}",
                        record.state.as_str()
                    );
                    // A move's target before it confirms holds units too.
                    let reserved_for_move = record
                        .moving()
                        .filter(|moving| !moving.target_confirmed)
                        .map(|moving| moving.to.provider_id.as_str());
                    assert!(
                        record.placement.as_ref().map(|p| p.provider_id.as_str()) == Some(provider.provider_id.as_str())
                            || reserved_for_move == Some(provider.provider_id.as_str()),
                        "{allocation_id} holds units of {} where it is neither placed nor moving",
                        provider.provider_id
                    );
                }
                // Only while its evacuation goes on, a bounded share per command.
                if provider.status == ProviderStatus::Failed && !self.evacuating.contains_key(&*provider.provider_id) {
                    assert!(
                        resource.holders.is_empty(),
                        "failed provider {} still holds allocations and is not being evacuated",
                        provider.provider_id
                    );
                }
            }
        }
        for record in self.requests.values() {
            assert!(
                record.arrival_seq < self.next_arrival_seq,
                "{} arrived in the future",
                record.request.request_id
            );
            if record.state == RequestState::Queued {
                assert!(record.placement.is_none(), "queued {} has a placement", record.request.request_id);
            }
            assert_eq!(
                record.state.is_finished(),
                record.finished_at_ms().is_some(),
                "{} finish time vs state",
                record.request.request_id
            );
            assert_eq!(
                record.state == RequestState::Optimization,
                record.moving().is_some(),
                "{} is {} with move {:?}",
                record.request.request_id,
                record.state.as_str(),
                record.moving()
            );
            if let Some(moving) = record.moving().filter(|moving| !moving.target_confirmed) {
                let target = &self.providers[&*moving.to.provider_id];
                for grant in &moving.to.grants {
                    assert_eq!(
                        target.resources[&*grant.resource_id].holders.get(&record.allocation_id()),
                        Some(grant.amount),
                        "move target of {} does not hold its units",
                        record.request.request_id
                    );
                }
            }
            if record.state.is_active() {
                let placement = record.placement.as_ref().expect("active requests are placed");
                let provider = &self.providers[&*placement.provider_id];
                // A provider evacuated for its drain deadline is active still.
                let evacuating = self.evacuating.contains_key(&*provider.provider_id) && !self.evacuating_for_drain(&provider.provider_id);
                assert_eq!(
                    provider.status,
                    if evacuating {
                        ProviderStatus::Failed
                    } else {
                        ProviderStatus::Active
                    },
                    "{} is placed on failed {}",
                    record.request.request_id,
                    provider.provider_id
                );
                for grant in &placement.grants {
                    assert_eq!(
                        provider.resources[&*grant.resource_id].holders.get(&record.allocation_id()),
                        Some(grant.amount)
                    );
                }
                for requirement in &record.request.requirements {
                    let granted: u64 = placement
                        .grants
                        .iter()
                        .filter(|g| g.kind == requirement.kind)
                        .map(|g| g.amount)
                        .sum();
                    assert!(
                        granted >= requirement.quantity,
                        "{} got {granted} of {} {}",
                        record.request.request_id,
                        requirement.quantity,
                        requirement.kind
                    );
                }
            }
        }
    }
}
