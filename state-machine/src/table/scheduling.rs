//! An operator's say over where new allocations go: cordon, uncordon, drain.
//!
//! A cordoned provider leaves the free index, so no placement, queue
//! re-examination or evacuation picks it; what it holds stays. Uncordoning
//! puts it back and re-examines the queue, since its free units may fit a
//! waiting request.

use uuid::Uuid;

use super::AllocationTable;
use crate::command::{ApplyResult, CommandResponse, PlannedMove, Unmovable};
use crate::error::InvalidArgument;
use crate::event::EventKind;
use crate::limits::DRAIN_DEADLINE_MS_MAX;
use crate::provider::Scheduling;
use crate::record::{MoveReason, RequestState};

/// The evacuation reason of a provider whose drain deadline passed (in
/// `evacuating`, and the reason its allocations move or queue with).
pub(super) const DRAIN_DEADLINE: &str = "drain_deadline";

impl AllocationTable {
    /// Cordons (`cordon`) or opens a provider; doing it again is a no-op
    /// without an event. Uncordoning a draining provider ends the drain.
    pub(super) fn cordon_provider(&mut self, provider_id: &str, cordon: bool) -> ApplyResult {
        let wanted = if cordon { Scheduling::Cordoned } else { Scheduling::Open };
        self.set_scheduling(provider_id, wanted)
    }

    /// Sets a provider's scheduling, keeping the free index in step.
    pub(super) fn set_scheduling(&mut self, provider_id: &str, wanted: Scheduling) -> ApplyResult {
        let current = self.registered_provider(provider_id)?.scheduling;
        if current != wanted {
            self.index.remove_free(&self.providers[provider_id]);
            self.provider_mut(provider_id)?.scheduling = wanted;
            self.index.add_free(&self.providers[provider_id]);
            self.emit(EventKind::ProviderScheduling {
                provider_id: provider_id.to_owned(),
                scheduling: wanted,
            });
            if wanted == Scheduling::Open {
                if self.evacuating_for_drain(provider_id) {
                    // Uncordoned while what its drain left was moving off:
                    // what has not moved yet stays.
                    self.evacuating.remove(provider_id);
                }
                self.examine_queue();
            }
        }
        Ok(CommandResponse::Scheduling {
            provider_id: provider_id.to_owned(),
            scheduling: wanted,
        })
    }
}

impl AllocationTable {
    /// Starts (or, asked again, continues) draining a provider; see
    /// [`Command::DrainProvider`](crate::Command::DrainProvider).
    pub(super) fn drain_provider(&mut self, provider_id: &str, deadline_after_ms: u64) -> ApplyResult {
        if deadline_after_ms == 0 || deadline_after_ms > DRAIN_DEADLINE_MS_MAX {
            return Err(InvalidArgument::new("deadline_ms", format!("must be 1..={DRAIN_DEADLINE_MS_MAX} ms")).into());
        }
        self.registered_provider(provider_id)?;
        let deadline_ms = self.clock_ms + deadline_after_ms;
        self.set_scheduling(provider_id, Scheduling::Draining { deadline_ms })?;
        let (moving, cannot_move) = self.continue_drain(provider_id);
        Ok(CommandResponse::Drain {
            provider_id: provider_id.to_owned(),
            deadline_ms,
            moving,
            cannot_move,
        })
    }

    /// Providers being drained, in id order (few: an operator's doing).
    fn draining(&self) -> Vec<(String, u64)> {
        self.providers
            .values()
            .filter_map(|provider| match provider.scheduling {
                Scheduling::Draining { deadline_ms } => Some((provider.provider_id.to_string(), deadline_ms)),
                _ => None,
            })
            .collect()
    }

    /// When a drain is next due, for the leader's ticks: now for a drain
    /// whose provider holds nothing any more (a release emptied it), else
    /// the earliest deadline.
    pub(super) fn next_drain_deadline_ms(&self) -> Option<u64> {
        self.draining()
            .into_iter()
            .map(|(provider_id, deadline)| {
                if self.holds_nothing(&provider_id) {
                    self.clock_ms
                } else {
                    deadline
                }
            })
            .min()
    }

    /// On every tick and after every move ends: a drain whose provider holds
    /// nothing any more is complete; one past its deadline moves what is
    /// left as if the provider left; both end cordoned. The others begin the
    /// moves they have room and budget for.
    pub(super) fn continue_drains(&mut self) {
        for (provider_id, deadline_ms) in self.draining() {
            if self.holds_nothing(&provider_id) {
                // Drained: what an operator waits for before maintenance.
                self.set_scheduling(&provider_id, Scheduling::Cordoned)
                    .expect("a draining provider is registered");
            } else if deadline_ms <= self.clock_ms {
                self.end_moves_touching(&provider_id, DRAIN_DEADLINE);
                self.set_scheduling(&provider_id, Scheduling::Cordoned)
                    .expect("a draining provider is registered");
                // Moved by `continue_evacuations`, a bounded number per
                // command, as a failed provider's are. A provider failing
                // meanwhile keeps its own reason.
                self.evacuating.entry(provider_id).or_insert_with(|| DRAIN_DEADLINE.to_owned());
            } else {
                self.continue_drain(&provider_id);
            }
        }
    }

    /// Whether `provider_id`'s allocations are being moved off because its
    /// drain deadline passed.
    pub(super) fn evacuating_for_drain(&self, provider_id: &str) -> bool {
        self.evacuating.get(provider_id).is_some_and(|reason| reason == DRAIN_DEADLINE)
    }

    /// Begins moves off `provider_id` (draining) within the move budget;
    /// returns the moves under way off it and what cannot move now.
    fn continue_drain(&mut self, provider_id: &str) -> (Vec<PlannedMove>, Vec<Unmovable>) {
        if self.providers[provider_id].status != crate::provider::ProviderStatus::Active {
            // A failed provider's allocations are evacuated instead.
            return (Vec::new(), Vec::new());
        }
        let placed: Vec<Uuid> = self.index.by_provider.get(provider_id).into_iter().flatten().copied().collect();
        let mut cannot_move = Vec::new();
        for request_id in placed {
            let record = &self.requests[&request_id];
            let constraints = &record.request.constraints;
            let reason = if !record.movable || constraints.provider_id.is_some() || !constraints.resource_ids.is_empty() {
                Some("pinned: moves only when the drain deadline passes".to_owned())
            } else if record.state != RequestState::Monitoring {
                // Not confirmed yet, or moving already.
                None
            } else if self.index.moves.len() >= self.config.moves_per_plan_max {
                Some("waiting: the move budget is in use; it moves after the moves under way".to_owned())
            } else if let Some(placement) = self.find_placement(&record.request) {
                self.begin_move(request_id, placement, MoveReason::Drain);
                None
            } else {
                Some("no_room: no other open provider fits it now".to_owned())
            };
            if let Some(reason) = reason {
                cannot_move.push(Unmovable {
                    allocation_id: self.requests[&request_id].allocation_id(),
                    reason,
                });
            }
        }
        let moving = self
            .index
            .moves
            .iter()
            .map(|(_, id)| &self.requests[id])
            .filter_map(|record| {
                let moving = record.moving()?;
                (moving.from.provider_id == provider_id).then(|| PlannedMove {
                    request_id: record.request.request_id,
                    allocation_id: record.allocation_id(),
                    namespace: record.request.namespace.to_string(),
                    from_provider: moving.from.provider_id.to_string(),
                    to_provider: moving.to.provider_id.to_string(),
                    grants: moving.to.grants.to_vec(),
                })
            })
            .collect();
        (moving, cannot_move)
    }
}
