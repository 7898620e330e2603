//! An operator's say over where new allocations go: cordon and uncordon.
//!
//! A cordoned provider leaves the free index, so no placement, queue
//! re-examination or evacuation picks it; what it holds stays. Uncordoning
//! puts it back and re-examines the queue, since its free units may fit a
//! waiting request.

use super::AllocationTable;
use crate::command::{ApplyResult, CommandResponse};
use crate::event::EventKind;
use crate::provider::Scheduling;

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
                self.examine_queue();
            }
        }
        Ok(CommandResponse::Scheduling {
            provider_id: provider_id.to_owned(),
            scheduling: wanted,
        })
    }
}
