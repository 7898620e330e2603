//! A request's life: allocate, queue, grant, renew, release, expire.

use std::borrow::Cow;
use std::ops::Bound;
use std::sync::Arc;

use uuid::Uuid;

use super::{AllocationTable, LeaseRefresh};
use crate::command::{ApplyResult, CommandResponse};
use crate::error::{CommandError, InvalidArgument};
use crate::event::{EventKind, ResourceState};
use crate::limits::NAMESPACES_EXAMINED_PER_FREE_MAX;
use crate::quota::OnPreemption;
use crate::record::{AllocationStatus, Placement, RequestRecord, RequestState};
use crate::request::AllocationRequest;
use crate::time::OptionalMillis;

/// What releasing a live request did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Released {
    /// An active allocation let go of its units.
    Released,
    /// A queued request left the queue.
    Cancelled,
}

/// How a grant came about, for the event it emits.
pub(super) enum GrantCause {
    /// First placement of a new or queued request.
    New,
    /// Re-placement off a failed or deregistered provider, for `reason`.
    MovedFrom { from_provider: String, reason: String },
}

impl AllocationTable {
    pub(super) fn allocate(&mut self, request: Cow<'_, AllocationRequest>, on_preemption: OnPreemption, movable: bool) -> ApplyResult {
        request.check()?;
        if let Some(existing) = self.requests.get(&request.request_id) {
            // The idempotency key: a retry gets the request's current record.
            return match existing.request == *request && existing.on_preemption == on_preemption && existing.movable == movable {
                true => Ok(CommandResponse::Request(Arc::clone(existing))),
                false => Err(CommandError::RequestIdReused {
                    request_id: request.request_id,
                }),
            };
        }
        if let Some(provider_id) = &request.constraints.provider_id {
            let Some(provider) = self.providers.get(provider_id) else {
                return Err(InvalidArgument::new("constraints.provider_id", format!("unknown provider {provider_id}")).into());
            };
            if let Some(missing) = request
                .constraints
                .resource_ids
                .iter()
                .find(|id| !provider.resources.contains_key(id.as_str()))
            {
                return Err(InvalidArgument::new(
                    "constraints.resource_ids",
                    format!("provider {provider_id} has no resource {missing}"),
                )
                .into());
            }
        }
        let request_id = request.request_id;
        let mut record = RequestRecord {
            // The command's own request when the caller gave it up, else a copy.
            request: request.into_owned(),
            state: RequestState::Queued,
            status: AllocationStatus::Queued,
            placement: None,
            lease_expires_at_ms: OptionalMillis::NONE,
            arrival_seq: self.next_arrival_seq,
            submitted_at_ms: self.clock_ms,
            updated_at_ms: self.clock_ms,
            first_granted_at_ms: OptionalMillis::NONE,
            on_preemption,
            movable,
            rare: None,
        };
        self.next_arrival_seq += 1;
        let decision = self.decide(&record.request);
        self.carry_out(&mut record, decision);
        self.insert_new_record(record);
        // A preemption gave its victims' namespaces quota back: what their
        // quotas held back may fit now, as after a release.
        if !self.freed_namespaces.is_empty() {
            self.examine_queue();
        }
        Ok(CommandResponse::Request(Arc::clone(&self.requests[&request_id])))
    }

    pub(super) fn release(&mut self, id: Uuid) -> ApplyResult {
        let request_id = self.resolve(id)?;
        if self.release_live(request_id).is_some() {
            self.examine_queue();
        }
        Ok(CommandResponse::Request(Arc::clone(&self.requests[&request_id])))
    }

    /// Releases the active allocation or cancels the queued request
    /// `request_id`, without re-examining the queue (the caller does, once).
    /// `None` if it was finished already (releasing is idempotent).
    pub(super) fn release_live(&mut self, request_id: Uuid) -> Option<Released> {
        let mut record = match self.requests[&request_id].state {
            RequestState::Queued | RequestState::Allocation | RequestState::Monitoring | RequestState::Optimization => {
                self.take_record(request_id)
            }
            // Released, expired or rejected already.
            _ => return None,
        };
        // A move under way ends first: rolled back, or finished if its
        // target already holds it.
        self.abandon_move(&mut record, "released");
        let request = &record.request;
        let released = if record.state == RequestState::Queued {
            self.emit(EventKind::RequestCancelled {
                request_id,
                namespace: request.namespace.to_string(),
            });
            record.state = RequestState::Idle;
            record.set_reason(Some("cancelled".into()));
            Released::Cancelled
        } else {
            let placement = self.free_placement(&record);
            let confirms = self.providers[&*placement.provider_id].confirms_allocations;
            self.note_quota_freed(&request.namespace);
            self.emit(EventKind::AllocationReleased {
                request_id,
                allocation_id: record.allocation_id(),
                namespace: request.namespace.to_string(),
                provider_id: placement.provider_id.to_string(),
            });
            record.state = if confirms { RequestState::Deallocation } else { RequestState::Idle };
            record.set_reason(Some("released".into()));
            record.lease_expires_at_ms = OptionalMillis::NONE;
            Released::Released
        };
        self.put_record(record);
        Some(released)
    }

    pub(super) fn renew_lease(&mut self, id: Uuid) -> ApplyResult {
        let request_id = self.resolve(id)?;
        let record = &self.requests[&request_id];
        if !record.state.is_active() {
            return Err(CommandError::NotActive {
                allocation_id: record.allocation_id(),
                state: record.state.as_str().to_owned(),
            });
        }
        let Some(ttl) = record.request.lease_ttl_ms.get() else {
            return Err(CommandError::NoLease {
                allocation_id: record.allocation_id(),
            });
        };
        let mut record = self.take_record(request_id);
        let expires_at_ms = self.clock_ms + ttl;
        record.lease_expires_at_ms = OptionalMillis::some(expires_at_ms);
        self.emit(EventKind::LeaseRenewed {
            allocation_id: record.allocation_id(),
            namespace: record.request.namespace.to_string(),
            expires_at_ms,
        });
        self.put_record(record);
        Ok(CommandResponse::Request(Arc::clone(&self.requests[&request_id])))
    }

    /// Expires leases and rejects queued requests whose deadline passed, at
    /// most `expirations_per_tick_max` of them together.
    pub(super) fn tick(&mut self) -> ApplyResult {
        let budget = self.config.expirations_per_tick_max;
        // While a new leader's refresh is under way, a lease not reached
        // yet may still carry its old expiry: none expires until it is done.
        let expiring = if self.lease_refresh.is_some() { 0 } else { budget };
        let expired: Vec<Uuid> = self
            .index
            .leases
            .range(..=(self.clock_ms, Uuid::max()))
            .take(expiring)
            .map(|(_, id)| *id)
            .collect();
        for &request_id in &expired {
            let mut record = self.take_record(request_id);
            self.abandon_move(&mut record, "lease_expired");
            let placement = self.free_placement(&record);
            self.note_quota_freed(&record.request.namespace);
            self.emit(EventKind::AllocationExpired {
                request_id,
                allocation_id: record.allocation_id(),
                namespace: record.request.namespace.to_string(),
                provider_id: placement.provider_id.to_string(),
            });
            record.state = RequestState::Idle;
            record.set_reason(Some("lease_expired".into()));
            record.lease_expires_at_ms = OptionalMillis::NONE;
            self.put_record(record);
        }
        let overdue: Vec<Uuid> = self
            .index
            .deadlines
            .range(..=(self.clock_ms, Uuid::max()))
            .take(budget - expired.len())
            .map(|(_, id)| *id)
            .collect();
        for &request_id in &overdue {
            let mut record = self.take_record(request_id);
            self.reject(&mut record, "deadline_exceeded: still queued when the deadline passed".to_owned());
            self.put_record(record);
        }
        let ended_moves = self.end_overdue_moves();
        self.continue_drains();
        if !expired.is_empty() || ended_moves > 0 {
            self.examine_queue();
        }
        self.optimize_if_triggered();
        Ok(CommandResponse::Ticked {
            expired: expired.len() as u64,
            rejected: overdue.len() as u64,
        })
    }

    /// Gives every lease a full TTL from now (a new leader's fresh window),
    /// at most `lease_refreshes_per_command_max` per command: this one and
    /// the ones after it ([`Self::continue_lease_refresh`]).
    pub(super) fn refresh_leases(&mut self) -> ApplyResult {
        let leases = self.index.leases.len() as u64;
        self.lease_refresh = Some(LeaseRefresh {
            from_ms: self.clock_ms,
            after: None,
        });
        self.emit(EventKind::LeasesRefreshed { leases });
        Ok(CommandResponse::LeasesRefreshed { leases })
    }

    /// The next share of a lease refresh under way. A refreshed lease moves
    /// later in the index and is met again further on, then left as it is;
    /// the walk ends when it reaches the index's end.
    pub(super) fn continue_lease_refresh(&mut self) {
        let Some(refresh) = self.lease_refresh.clone() else {
            return;
        };
        let budget = self.config.lease_refreshes_per_command_max.max(1);
        let lower = refresh.after.map_or(Bound::Unbounded, Bound::Excluded);
        let batch: Vec<(u64, Uuid)> = self.index.leases.range((lower, Bound::Unbounded)).take(budget).copied().collect();
        for &(expires, request_id) in &batch {
            let ttl = self.requests[&request_id]
                .request
                .lease_ttl_ms
                .get()
                .expect("indexed leases have a ttl");
            let fresh = expires.max(refresh.from_ms + ttl);
            if fresh != expires {
                let mut record = self.take_record(request_id);
                record.lease_expires_at_ms = OptionalMillis::some(fresh);
                self.put_record(record);
            }
        }
        self.lease_refresh = (batch.len() == budget).then(|| LeaseRefresh {
            after: batch.last().copied(),
            ..refresh
        });
    }

    /// Whether a lease refresh is still under way.
    pub fn lease_refresh_pending(&self) -> bool {
        self.lease_refresh.is_some()
    }

    /// Refused while the allocation is a preemptor whose victims' agents
    /// have not all confirmed letting go of their units.
    pub(super) fn confirm_allocation(&mut self, id: Uuid, provider_id: &str) -> ApplyResult {
        if let Some(answer) = self.confirm_move(id, provider_id, false) {
            return answer;
        }
        let request_id = self.resolve(id)?;
        let waiting_for = self.releases_awaited(request_id);
        if !waiting_for.is_empty() && self.requests[&request_id].state == RequestState::Allocation {
            return Err(CommandError::PreemptionUnconfirmed {
                allocation_id: self.requests[&request_id].allocation_id(),
                waiting_for,
            });
        }
        self.confirm(id, provider_id, RequestState::Allocation, RequestState::Monitoring)
    }

    /// A preempted allocation's release is confirmed by its old provider
    /// even when the allocation has moved on (requeued, or placed again):
    /// it settles what its preemptor waits for.
    pub(super) fn confirm_deallocation(&mut self, id: Uuid, provider_id: &str) -> ApplyResult {
        if let Some(answer) = self.confirm_move(id, provider_id, true) {
            return answer;
        }
        let request_id = self.resolve(id)?;
        let record = &self.requests[&request_id];
        let allocation_id = record.allocation_id();
        if !self.is_awaited(allocation_id, provider_id) {
            return self.confirm(id, provider_id, RequestState::Deallocation, RequestState::Idle);
        }
        let placed_on = record.placement.as_ref().map(|placement| placement.provider_id.as_str());
        let result = if record.state == RequestState::Deallocation && placed_on == Some(provider_id) {
            self.confirm(id, provider_id, RequestState::Deallocation, RequestState::Idle)
        } else {
            self.emit(EventKind::DeallocationConfirmed {
                allocation_id,
                namespace: record.request.namespace.to_string(),
                provider_id: provider_id.to_owned(),
            });
            Ok(CommandResponse::Request(Arc::clone(&self.requests[&request_id])))
        };
        self.release_confirmed(allocation_id, provider_id);
        result
    }

    /// A provider's confirmation moves `from` to `to`; confirming again is a no-op.
    fn confirm(&mut self, id: Uuid, provider_id: &str, from: RequestState, to: RequestState) -> ApplyResult {
        let request_id = self.resolve(id)?;
        let record = &self.requests[&request_id];
        let placed_on = record.placement.as_ref().map(|placement| placement.provider_id.as_str());
        if placed_on != Some(provider_id) {
            return Err(CommandError::WrongProvider {
                allocation_id: record.allocation_id(),
                claimed: provider_id.to_owned(),
                actual: placed_on.unwrap_or("no provider").to_owned(),
            });
        }
        if record.state == to {
            return Ok(CommandResponse::Request(Arc::clone(record)));
        }
        if record.state != from {
            return Err(CommandError::NotActive {
                allocation_id: record.allocation_id(),
                state: record.state.as_str().to_owned(),
            });
        }
        let mut record = self.take_record(request_id);
        record.state = to;
        let (allocation_id, namespace, provider_id) = (record.allocation_id(), record.request.namespace.clone(), provider_id.to_owned());
        self.emit(match to {
            RequestState::Monitoring => EventKind::AllocationConfirmed {
                allocation_id,
                namespace: namespace.to_string(),
                provider_id,
            },
            _ => EventKind::DeallocationConfirmed {
                allocation_id,
                namespace: namespace.to_string(),
                provider_id,
            },
        });
        self.put_record(record);
        Ok(CommandResponse::Request(Arc::clone(&self.requests[&request_id])))
    }

    /// Places queued requests that fit now, in queue order, skipping those
    /// past their deadline (the next tick rejects them). A smaller request
    /// further back may be placed ahead of a larger one that still does not
    /// fit (backfill): capacity is never left idle for a request that cannot
    /// use it, at the price that a large request can wait behind a stream of
    /// small ones until its deadline.
    ///
    /// Then, for each namespace whose quota the command freed (at most
    /// [`NAMESPACES_EXAMINED_PER_FREE_MAX`]), the head of that namespace's
    /// own queue: its requests may wait behind others' that still do not
    /// fit, and quota freed in a namespace helps only that namespace.
    pub(super) fn examine_queue(&mut self) {
        let waiting: Vec<Uuid> = self
            .index
            .queue
            .iter()
            .take(self.config.queue_examined_per_free_max)
            .map(|(_, _, id)| *id)
            .collect();
        self.examine_waiting(waiting);
        let freed = std::mem::take(&mut self.freed_namespaces);
        for namespace in freed.iter().take(NAMESPACES_EXAMINED_PER_FREE_MAX) {
            let waiting: Vec<Uuid> = self
                .index
                .queue_by_namespace
                .get(namespace)
                .into_iter()
                .flatten()
                .take(self.config.queue_examined_per_free_max)
                .map(|(_, _, id)| *id)
                .collect();
            self.examine_waiting(waiting);
        }
    }

    /// Grants each of `waiting` (queued request ids, in queue order) that
    /// fits now, its quota and a provider.
    fn examine_waiting(&mut self, waiting: Vec<Uuid>) {
        for request_id in waiting {
            let record = &self.requests[&request_id];
            // Granted already by the walk of the whole queue.
            if record.state != RequestState::Queued {
                continue;
            }
            // Past its deadline the requester has given up: the next tick
            // rejects it, and the units go to someone still waiting.
            if record.pending_deadline_ms().is_some_and(|deadline| deadline <= self.clock_ms) {
                continue;
            }
            if self.quota_shortfall(&record.request).is_some() {
                continue;
            }
            if let Some(placement) = self.find_placement(&record.request) {
                let mut record = self.take_record(request_id);
                self.grant(&mut record, placement, GrantCause::New);
                self.put_record(record);
            }
        }
    }

    /// Holds `placement`'s units for `record` (taken out of the table).
    pub(super) fn grant(&mut self, record: &mut RequestRecord, placement: Placement, cause: GrantCause) {
        let provider = self
            .provider_mut(&placement.provider_id)
            .expect("placements name registered providers");
        // Derived from the request id (a SHA-1): once per grant.
        let allocation_id = record.allocation_id();
        let changed = provider.hold(allocation_id, &placement.grants);
        let confirms = provider.confirms_allocations;
        for (kind, before) in changed {
            self.index.update_free(&self.providers[&*placement.provider_id], &kind, before);
        }
        self.emit_unit_statuses(&placement);
        let request = &record.request;
        let (request_id, namespace) = (request.request_id, request.namespace.clone());
        if matches!(cause, GrantCause::MovedFrom { .. }) {
            // Off its provider, a preemptor waits for no release there.
            self.stop_awaiting(request_id);
        }
        self.emit(match cause {
            GrantCause::New => EventKind::AllocationGranted {
                request_id,
                allocation_id,
                requester_id: request.requester_id.to_string(),
                namespace: namespace.to_string(),
                provider_id: placement.provider_id.to_string(),
                grants: placement.grants.to_vec(),
            },
            GrantCause::MovedFrom { from_provider, reason } => EventKind::AllocationMoved {
                request_id,
                allocation_id,
                namespace: namespace.to_string(),
                from_provider,
                to_provider: placement.provider_id.to_string(),
                grants: placement.grants.to_vec(),
                reason,
            },
        });
        if record.lease_expires_at_ms.is_none() {
            record.lease_expires_at_ms = request.lease_ttl_ms.get().map(|ttl| self.clock_ms + ttl).into();
        }
        record.first_granted_at_ms.get_or_insert(self.clock_ms);
        record.state = if confirms {
            RequestState::Allocation
        } else {
            RequestState::Monitoring
        };
        record.status = AllocationStatus::Allocated;
        record.placement = Some(placement);
        record.set_reason(None);
    }

    pub(super) fn enqueue(&mut self, record: &mut RequestRecord, reason: String) {
        let request = &record.request;
        self.emit(EventKind::RequestQueued {
            request_id: request.request_id,
            requester_id: request.requester_id.to_string(),
            namespace: request.namespace.to_string(),
            reason: reason.clone(),
        });
        record.state = RequestState::Queued;
        record.status = AllocationStatus::Queued;
        record.lease_expires_at_ms = OptionalMillis::NONE;
        record.set_reason(Some(reason.into()));
    }

    pub(super) fn reject(&mut self, record: &mut RequestRecord, reason: String) {
        let request = &record.request;
        self.emit(EventKind::RequestRejected {
            request_id: request.request_id,
            requester_id: request.requester_id.to_string(),
            namespace: request.namespace.to_string(),
            reason: reason.clone(),
        });
        record.state = RequestState::Error;
        record.status = AllocationStatus::Rejected;
        record.set_reason(Some(reason.into()));
    }

    /// Lets go of the units an active `record` (taken out of the table) holds;
    /// the record keeps its placement as history. Returns that placement.
    pub(super) fn free_placement(&mut self, record: &RequestRecord) -> Placement {
        let placement = record.placement.clone().expect("an active request has a placement");
        let provider = self
            .provider_mut(&placement.provider_id)
            .expect("placements name registered providers");
        let changed = provider.unhold(record.allocation_id(), &placement.grants);
        for (kind, before) in changed {
            self.index.update_free(&self.providers[&*placement.provider_id], &kind, before);
        }
        self.emit_unit_statuses(&placement);
        placement
    }

    /// A `resource_status` event for each unit of `placement` as it is now.
    pub(super) fn emit_unit_statuses(&mut self, placement: &Placement) {
        let provider = &self.providers[&*placement.provider_id];
        let statuses: Vec<EventKind> = placement
            .grants
            .iter()
            .map(|grant| {
                let resource = &provider.resources[&*grant.resource_id];
                let used = resource.used();
                EventKind::ResourceStatus {
                    provider_id: provider.provider_id.to_string(),
                    resource_id: resource.resource_id.to_string(),
                    kind: resource.kind.to_string(),
                    status: if used == 0 {
                        ResourceState::Available
                    } else {
                        ResourceState::Allocated
                    },
                    used,
                    capacity: resource.capacity,
                }
            })
            .collect();
        for status in statuses {
            self.emit(status);
        }
    }

    /// The request id behind a request id or an allocation id.
    pub(super) fn resolve(&self, id: Uuid) -> Result<Uuid, CommandError> {
        if self.requests.contains_key(&id) {
            return Ok(id);
        }
        self.index.allocation_to_request.get(id).ok_or(CommandError::NotFound { id })
    }
}
