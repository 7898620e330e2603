//! Bulk release by filter ([`Command::ReleaseMatching`](crate::Command)):
//! every live request of a namespace, a requester or a provider, a bounded
//! number per log entry, continued by the next entry after the last id this
//! one reached.
//!
//! The walk is in request-id order over the narrowest index the filter
//! allows: the provider's placed allocations, the requester's requests, or
//! (namespace alone) every remembered request. An entry stops after
//! [`BULK_RELEASE_PER_COMMAND_MAX`] releases or
//! [`BULK_RELEASE_EXAMINED_PER_COMMAND_MAX`] records looked at, whichever
//! comes first, and answers the id it stopped at; the same entries on two
//! replicas walk the same ids, so the tables stay identical.

use std::ops::Bound;

use uuid::Uuid;

use super::id_key::IdKey;
use super::lifecycle::Released;
use super::AllocationTable;
use crate::command::{ApplyResult, CommandResponse, ReleaseFilter};
use crate::event::EventKind;
use crate::limits::{BULK_RELEASE_EXAMINED_PER_COMMAND_MAX, BULK_RELEASE_PER_COMMAND_MAX};

impl AllocationTable {
    pub(super) fn release_matching(&mut self, filter: &ReleaseFilter, after: Option<Uuid>) -> ApplyResult {
        filter.check()?;
        let (matching, next) = self.live_matching(filter, after);
        let (mut released, mut cancelled) = (0u64, 0u64);
        for request_id in matching {
            match self.release_live(request_id).expect("live_matching picks live requests only") {
                Released::Released => released += 1,
                Released::Cancelled => cancelled += 1,
            }
        }
        if released > 0 {
            self.examine_queue();
        }
        self.emit(EventKind::ReleasedMatching {
            namespace: filter.namespace.clone(),
            requester_id: filter.requester_id.clone(),
            provider_id: filter.provider_id.clone(),
            released,
            cancelled,
            next,
        });
        Ok(CommandResponse::ReleasedMatching { released, cancelled, next })
    }

    /// The live requests matching `filter` after `after`, in id order, at
    /// most [`BULK_RELEASE_PER_COMMAND_MAX`]; and the id to continue after
    /// when the walk stopped at a bound rather than at the end.
    fn live_matching(&self, filter: &ReleaseFilter, after: Option<Uuid>) -> (Vec<Uuid>, Option<Uuid>) {
        let lower = after.map_or(Bound::Unbounded, Bound::Excluded);
        let ids: Box<dyn Iterator<Item = Uuid> + '_> = match (&filter.provider_id, &filter.namespace, &filter.requester_id) {
            (Some(provider_id), _, _) => Box::new(
                self.index
                    .by_provider
                    .get(provider_id)
                    .into_iter()
                    .flat_map(move |ids| ids.range((lower, Bound::Unbounded)).copied()),
            ),
            (None, Some(namespace), Some(requester_id)) => {
                let lower = after.map(IdKey::from).map_or(Bound::Unbounded, Bound::Excluded);
                Box::new(
                    self.index
                        .by_owner
                        .get(namespace.as_str())
                        .and_then(|requesters| requesters.get(requester_id.as_str()))
                        .into_iter()
                        .flat_map(move |ids| ids.range((lower, Bound::Unbounded)).map(|id| id.uuid())),
                )
            }
            _ => Box::new(self.requests.keys_after(after)),
        };
        let mut matching = Vec::new();
        for (examined, request_id) in ids.enumerate() {
            let record = &self.requests[&request_id];
            if !record.state.is_finished() && filter.matches_owner(record) {
                matching.push(request_id);
            }
            if matching.len() == BULK_RELEASE_PER_COMMAND_MAX || examined + 1 == BULK_RELEASE_EXAMINED_PER_COMMAND_MAX {
                return (matching, Some(request_id));
            }
        }
        (matching, None)
    }
}
