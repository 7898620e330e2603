//! Derived look-up structures of the table, kept in step with its state.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};

use uuid::Uuid;

use crate::provider::{Provider, ProviderStatus};
use crate::record::{RequestRecord, RequestState};

/// Everything here can be recomputed from providers and requests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Indexes {
    /// Allocation id → request id.
    pub allocation_to_request: BTreeMap<Uuid, Uuid>,
    /// Kind → (free amount, provider) for active providers with some free:
    /// the best-fit search walks this upwards from the wanted amount.
    pub free_by_kind: BTreeMap<String, BTreeSet<(u64, String)>>,
    /// Kind → (capacity, provider) for every registered provider, failed
    /// ones included: decides whether a request could *ever* be placed.
    pub capacity_by_kind: BTreeMap<String, BTreeSet<(u64, String)>>,
    /// The queue: higher priority first, then arrival order.
    pub queue: BTreeSet<(Reverse<i64>, u64, Uuid)>,
    /// Queued requests by deadline.
    pub deadlines: BTreeSet<(u64, Uuid)>,
    /// Active allocations by lease expiry.
    pub leases: BTreeSet<(u64, Uuid)>,
    /// Finished requests by the time they finished, for dedupe eviction.
    pub finished: BTreeSet<(u64, Uuid)>,
    /// (namespace, requester, request) for every remembered request.
    pub by_owner: BTreeSet<(String, String, Uuid)>,
    /// Provider → requests actively placed on it.
    pub by_provider: BTreeMap<String, BTreeSet<Uuid>>,
}

impl Indexes {
    pub fn add_record(&mut self, record: &RequestRecord) {
        let request = &record.request;
        let id = request.request_id;
        self.allocation_to_request.insert(record.allocation_id, id);
        self.by_owner.insert((request.namespace.clone(), request.requester_id.clone(), id));
        match record.state {
            RequestState::Queued => {
                self.queue.insert((Reverse(request.priority), record.arrival_seq, id));
                if let Some(deadline) = request.deadline_ms {
                    self.deadlines.insert((deadline, id));
                }
            }
            RequestState::Allocation | RequestState::Monitoring => {
                if let Some(expires) = record.lease_expires_at_ms {
                    self.leases.insert((expires, id));
                }
                let placement = record.placement.as_ref().expect("an active request has a placement");
                self.by_provider.entry(placement.provider_id.clone()).or_default().insert(id);
            }
            RequestState::Deallocation | RequestState::Idle | RequestState::Error => {
                let finished_at = record.finished_at_ms.expect("a finished request has a finish time");
                self.finished.insert((finished_at, id));
            }
        }
    }

    pub fn remove_record(&mut self, record: &RequestRecord) {
        let request = &record.request;
        let id = request.request_id;
        self.allocation_to_request.remove(&record.allocation_id);
        self.by_owner.remove(&(request.namespace.clone(), request.requester_id.clone(), id));
        match record.state {
            RequestState::Queued => {
                self.queue.remove(&(Reverse(request.priority), record.arrival_seq, id));
                if let Some(deadline) = request.deadline_ms {
                    self.deadlines.remove(&(deadline, id));
                }
            }
            RequestState::Allocation | RequestState::Monitoring => {
                if let Some(expires) = record.lease_expires_at_ms {
                    self.leases.remove(&(expires, id));
                }
                let placement = record.placement.as_ref().expect("an active request has a placement");
                let on_provider = self.by_provider.get_mut(&placement.provider_id).expect("placed requests are indexed by provider");
                on_provider.remove(&id);
                if on_provider.is_empty() {
                    self.by_provider.remove(&placement.provider_id);
                }
            }
            RequestState::Deallocation | RequestState::Idle | RequestState::Error => {
                self.finished.remove(&(record.finished_at_ms.expect("a finished request has a finish time"), id));
            }
        }
    }

    /// Adds a provider's capacity, and its free amounts if it is active.
    pub fn add_provider(&mut self, provider: &Provider) {
        for (kind, totals) in &provider.kinds {
            self.capacity_by_kind.entry(kind.clone()).or_default().insert((totals.capacity, provider.provider_id.clone()));
        }
        self.add_free(provider);
    }

    pub fn remove_provider(&mut self, provider: &Provider) {
        for (kind, totals) in &provider.kinds {
            remove_entry(&mut self.capacity_by_kind, kind, &(totals.capacity, provider.provider_id.clone()));
        }
        self.remove_free(provider);
    }

    /// Makes an active provider's free amounts placeable.
    pub fn add_free(&mut self, provider: &Provider) {
        if provider.status != ProviderStatus::Active {
            return;
        }
        for (kind, totals) in &provider.kinds {
            if totals.free > 0 {
                self.free_by_kind.entry(kind.clone()).or_default().insert((totals.free, provider.provider_id.clone()));
            }
        }
    }

    pub fn remove_free(&mut self, provider: &Provider) {
        for (kind, totals) in &provider.kinds {
            remove_entry(&mut self.free_by_kind, kind, &(totals.free, provider.provider_id.clone()));
        }
    }

    /// Moves an active provider's entry for `kind` from `before` to its current free amount.
    pub fn update_free(&mut self, provider: &Provider, kind: &str, before: u64) {
        if provider.status != ProviderStatus::Active {
            return;
        }
        let now = provider.free_of(kind);
        if now == before {
            return;
        }
        remove_entry(&mut self.free_by_kind, kind, &(before, provider.provider_id.clone()));
        if now > 0 {
            self.free_by_kind.entry(kind.to_owned()).or_default().insert((now, provider.provider_id.clone()));
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
