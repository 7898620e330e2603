//! Providers joining, changing, failing, coming back and leaving.

use std::sync::Arc;

use uuid::Uuid;

use super::lifecycle::GrantCause;
use super::AllocationTable;
use crate::command::{ApplyResult, CommandResponse};
use crate::error::CommandError;
use crate::event::{EventKind, ResourceState};
use crate::provider::{Provider, ProviderRegistration, ProviderStatus};

/// The evacuation reason of a deregistered provider (in `evacuating`, and
/// the reason its allocations move or queue with): it is leaving, not
/// failed, so it never comes back on a heartbeat and is forgotten once empty.
const DEREGISTERED: &str = "provider_deregistered";

impl AllocationTable {
    /// The registered provider `provider_id`.
    pub(super) fn registered_provider(&self, provider_id: &str) -> Result<&Provider, CommandError> {
        self.providers
            .get(provider_id)
            .map(Arc::as_ref)
            .ok_or_else(|| CommandError::UnknownProvider {
                provider_id: provider_id.to_owned(),
            })
    }

    /// The registered provider `provider_id`, to change: copied first if a
    /// snapshot copy still shares it (see `snapshot_copy`).
    pub(super) fn provider_mut(&mut self, provider_id: &str) -> Result<&mut Provider, CommandError> {
        self.providers
            .get_mut(provider_id)
            .map(Arc::make_mut)
            .ok_or_else(|| CommandError::UnknownProvider {
                provider_id: provider_id.to_owned(),
            })
    }

    pub(super) fn register_provider(&mut self, registration: &ProviderRegistration) -> ApplyResult {
        let registration = registration.clone().validate()?;
        let provider_id = registration.provider_id.clone();
        let resources = registration.resources.len() as u64;
        match self.providers.get(&provider_id) {
            None => {
                // The neighbour by id, for its units' names.
                let neighbour = (self.providers.range::<String, _>(..&provider_id).next_back())
                    .or_else(|| self.providers.range::<String, _>(&provider_id..).next())
                    .map(|(_, provider)| &**provider);
                let provider = Provider::new(&registration, self.clock_ms, neighbour);
                self.index.add_provider(&provider);
                self.providers.insert(provider_id.clone(), Arc::new(provider));
                self.emit(EventKind::ProviderRegistered {
                    provider_id: provider_id.clone(),
                    resources,
                });
            }
            Some(existing) => {
                let updated = updated_provider(existing, &registration)?;
                let was_failed = existing.status == ProviderStatus::Failed;
                let old = self
                    .providers
                    .insert(provider_id.clone(), Arc::new(updated))
                    .expect("just looked up");
                self.index.remove_provider(&old);
                self.index.add_provider(&self.providers[&provider_id]);
                self.emit(EventKind::ProviderUpdated {
                    provider_id: provider_id.clone(),
                    resources,
                });
                if was_failed {
                    // What was not moved yet stays where it is.
                    self.evacuating.remove(&provider_id);
                    self.emit(EventKind::ProviderRecovered {
                        provider_id: provider_id.clone(),
                    });
                }
            }
        }
        self.emit_provider_statuses(&provider_id);
        self.examine_queue();
        Ok(self.provider_response(&provider_id))
    }

    /// Marks the provider leaving: failed (nothing new is placed on it) and
    /// evacuated like a failed provider, a bounded number per command by
    /// [`Self::continue_evacuations`], which forgets it once it holds
    /// nothing (`ProviderDeregistered`). Until then its record stays, so that
    /// every allocation still placed on it points at a registered provider.
    /// Deregistering it again changes nothing; registering it again stops
    /// its departure as a failed provider's return would.
    pub(super) fn deregister_provider(&mut self, provider_id: &str) -> ApplyResult {
        self.registered_provider(provider_id)?;
        let moves_ended = self.end_moves_touching(provider_id, DEREGISTERED);
        // Failed first, so that evacuation cannot pick it again.
        self.index.remove_free(&self.providers[provider_id]);
        if self.providers[provider_id].status != ProviderStatus::Failed {
            self.provider_mut(provider_id)?.status = ProviderStatus::Failed;
        }
        // Replaces a failure's reason: what is left moves because it leaves.
        self.evacuating.insert(provider_id.to_owned(), DEREGISTERED.to_owned());
        if self.holds_nothing(provider_id) {
            // Gone at once, before anything this command re-places.
            self.finish_evacuation(provider_id);
        }
        if moves_ended > 0 {
            self.examine_queue();
        }
        Ok(CommandResponse::ProviderRemoved {
            provider_id: provider_id.to_owned(),
        })
    }

    /// Whether `provider_id` is deregistered and still being evacuated: it
    /// places nothing, does not come back on a heartbeat, and is forgotten
    /// once it holds nothing.
    pub fn deregistering(&self, provider_id: &str) -> bool {
        self.evacuating.get(provider_id).is_some_and(|reason| reason == DEREGISTERED)
    }

    pub(super) fn provider_failed(&mut self, provider_id: &str) -> ApplyResult {
        if self.registered_provider(provider_id)?.status == ProviderStatus::Failed {
            return Ok(self.provider_response(provider_id));
        }
        let moves_ended = self.end_moves_touching(provider_id, "provider_failed");
        self.index.remove_free(&self.providers[provider_id]);
        self.provider_mut(provider_id)?.status = ProviderStatus::Failed;
        self.emit(EventKind::ProviderFailed {
            provider_id: provider_id.to_owned(),
        });
        self.emit_provider_statuses(provider_id);
        // Moved by `continue_evacuations`, a bounded number per command,
        // starting right after this one's own events.
        self.evacuating.insert(provider_id.to_owned(), "provider_failed".to_owned());
        if moves_ended > 0 {
            self.examine_queue();
        }
        Ok(self.provider_response(provider_id))
    }

    pub(super) fn provider_recovered(&mut self, provider_id: &str) -> ApplyResult {
        // Looked at before it is changed: a provider that is already active
        // is not copied away from a snapshot copy that shares it.
        // A leaving provider stays failed until it is gone, heartbeat or not.
        if self.registered_provider(provider_id)?.status == ProviderStatus::Active || self.deregistering(provider_id) {
            return Ok(self.provider_response(provider_id));
        }
        self.provider_mut(provider_id)?.status = ProviderStatus::Active;
        // What was not moved yet stays where it is.
        self.evacuating.remove(provider_id);
        self.index.add_free(&self.providers[provider_id]);
        self.emit(EventKind::ProviderRecovered {
            provider_id: provider_id.to_owned(),
        });
        self.emit_provider_statuses(provider_id);
        self.examine_queue();
        Ok(self.provider_response(provider_id))
    }

    /// Moves at most `evacuations_per_command_max` allocations off the
    /// providers in `evacuating`, in provider-id order; a provider left with
    /// none leaves `evacuating` (and the table, if it was deregistered).
    pub(super) fn continue_evacuations(&mut self) {
        let mut budget = self.config.evacuations_per_command_max.max(1);
        while budget > 0 {
            let Some((provider_id, reason)) = self.evacuating.first_key_value().map(|(id, reason)| (id.clone(), reason.clone())) else {
                break;
            };
            budget -= self.evacuate(&provider_id, &reason, budget);
            if self.holds_nothing(&provider_id) {
                self.finish_evacuation(&provider_id);
            }
        }
        if budget == 0 {
            // Releases may have emptied a provider after the one the budget
            // ran out on; it finishes now rather than keep an empty entry
            // (and a deregistered provider) until the budget reaches it.
            let emptied: Vec<String> = self.evacuating.keys().filter(|id| self.holds_nothing(id)).cloned().collect();
            for provider_id in emptied {
                self.finish_evacuation(&provider_id);
            }
        }
    }

    pub(super) fn holds_nothing(&self, provider_id: &str) -> bool {
        self.index.by_provider.get(provider_id).is_none_or(|ids| ids.is_empty())
    }

    /// Ends the evacuation of a provider that holds nothing any more; a
    /// deregistered one is forgotten now.
    fn finish_evacuation(&mut self, provider_id: &str) {
        assert!(
            self.holds_nothing(provider_id),
            "{provider_id} finished evacuating while it holds allocations"
        );
        let reason = self.evacuating.remove(provider_id).expect("finishing an evacuation under way");
        if reason == DEREGISTERED {
            let provider = self
                .providers
                .remove(provider_id)
                .expect("a leaving provider stays registered until it is empty");
            self.index.remove_provider(&provider);
            self.emit(EventKind::ProviderDeregistered {
                provider_id: provider_id.to_owned(),
            });
        }
    }

    /// Allocations still to move off failed, leaving or drained providers.
    pub fn evacuations_pending(&self) -> usize {
        self.evacuating
            .keys()
            .map(|provider_id| self.index.by_provider.get(provider_id).map_or(0, |ids| ids.len()))
            .sum()
    }

    /// Moves the `limit` oldest allocations off `provider_id` (failed,
    /// leaving, or cordoned past its drain deadline: out of the free index
    /// either way) to other providers, or back into the queue where none
    /// fits; returns how many it moved. Evacuated requests enter the queue
    /// even past `queue_len_max`: an acknowledged allocation is never
    /// dropped for lack of queue room.
    pub(super) fn evacuate(&mut self, provider_id: &str, reason: &str, limit: usize) -> usize {
        let mut placed: Vec<(u64, Uuid)> = self
            .index
            .by_provider
            .get(provider_id)
            .map(|ids| ids.iter().map(|id| (self.requests[id].arrival_seq, *id)).collect())
            .unwrap_or_default();
        if placed.len() > limit {
            // The oldest `limit` in linear time, then only those sorted.
            placed.select_nth_unstable(limit);
            placed.truncate(limit);
        }
        placed.sort_unstable();
        let moved = placed.len();
        for (_, request_id) in placed {
            let mut record = self.take_record(request_id);
            // Moves touching a failed or leaving provider ended first
            // (`end_moves_touching`), so none is under way here.
            assert!(record.moving().is_none(), "evacuating {request_id} in the middle of a move");
            let old = record.placement.take().expect("an active request has a placement");
            let provider = self.provider_mut(provider_id).expect("evacuated provider is registered");
            provider.unhold(record.allocation_id(), &old.grants);
            match self.find_placement(&record.request) {
                Some(placement) => self.grant(
                    &mut record,
                    placement,
                    GrantCause::MovedFrom {
                        from_provider: provider_id.to_owned(),
                        reason: reason.to_owned(),
                    },
                ),
                None => self.enqueue(&mut record, Self::evacuated_reason(reason, provider_id)),
            }
            self.put_record(record);
        }
        moved
    }

    /// Why an evacuated allocation waits in the queue.
    fn evacuated_reason(reason: &str, provider_id: &str) -> String {
        if reason == super::scheduling::DRAIN_DEADLINE {
            format!("{reason}: {provider_id} was drained and no other provider fits")
        } else {
            format!("{reason}: {provider_id} failed and no other provider fits")
        }
    }

    /// A `resource_status` event for each unit of the provider.
    pub(super) fn emit_provider_statuses(&mut self, provider_id: &str) {
        let provider = &self.providers[provider_id];
        let statuses: Vec<EventKind> = provider
            .resources
            .values()
            .map(|resource| {
                let used = resource.used();
                let status = match (provider.status, used) {
                    (ProviderStatus::Failed, _) => ResourceState::Failed,
                    (ProviderStatus::Active, 0) => ResourceState::Available,
                    (ProviderStatus::Active, _) => ResourceState::Allocated,
                };
                EventKind::ResourceStatus {
                    provider_id: provider_id.to_owned(),
                    resource_id: resource.resource_id.to_string(),
                    kind: resource.kind.to_string(),
                    status,
                    used,
                    capacity: resource.capacity,
                }
            })
            .collect();
        for status in statuses {
            self.emit(status);
        }
    }

    fn provider_response(&self, provider_id: &str) -> CommandResponse {
        let provider = &self.providers[provider_id];
        CommandResponse::Provider {
            provider_id: provider_id.to_owned(),
            status: provider.status,
            resources: provider.resources.len() as u64,
        }
    }
}

/// The provider as `registration` changes it, or why it cannot: a unit held
/// by an allocation must stay, with the same kind and sharing, and at least
/// the capacity already held.
fn updated_provider(existing: &Provider, registration: &ProviderRegistration) -> Result<Provider, CommandError> {
    let mut updated = Provider::new(registration, existing.registered_at_ms, Some(existing));
    // A registration changes units and labels, never an operator's cordon.
    updated.scheduling = existing.scheduling;
    for (resource_id, held) in existing.resources.iter().filter(|(_, resource)| !resource.holders.is_empty()) {
        let in_use = |change: &str| CommandError::ResourceInUse {
            provider_id: existing.provider_id.to_string(),
            resource_id: resource_id.to_string(),
            change: change.to_owned(),
        };
        let Some(next) = updated.resources.get_mut(resource_id) else {
            return Err(in_use("removed"));
        };
        if next.kind != held.kind || next.sharing != held.sharing {
            return Err(in_use("changed in kind or sharing"));
        }
        if next.capacity < held.used() {
            return Err(in_use("shrunk below what is held"));
        }
        next.holders = held.holders.clone();
    }
    updated.rebuild_kinds();
    Ok(updated)
}
