//! Placement: which provider, which units. Deterministic and bounded.
//!
//! The search never scans every provider. It anchors on the request's
//! scarcest kind (the one the fewest providers have free), walks that kind's
//! free index from the wanted amount upwards (best fit) or from the top down
//! (spread), and takes the first provider that also fits every other kind,
//! the labels and the pinned units. At most
//! [`TableConfig::placement_candidates_max`](crate::TableConfig) providers are
//! examined; if none fits, the request waits in the queue.

use std::collections::BTreeSet;

use super::AllocationTable;
use crate::provider::Provider;
use crate::record::Placement;
use crate::request::{AllocationRequest, PlacementPolicy};

impl AllocationTable {
    /// Where `request` would go now, without changing anything.
    pub(super) fn find_placement(&self, request: &AllocationRequest) -> Option<Placement> {
        if let Some(provider_id) = &request.constraints.provider_id {
            return self.providers.get(provider_id).and_then(|provider| self.fit_on(provider, request));
        }
        let anchor = request
            .requirements
            .iter()
            .min_by_key(|requirement| self.index.free_by_kind.get(&*requirement.kind).map_or(0, |set| set.len()))?;
        let free = self.index.free_by_kind.get(&*anchor.kind)?;
        let candidates: Box<dyn Iterator<Item = &(u64, String)>> = match request.placement {
            PlacementPolicy::BestFit => Box::new(free.range((anchor.quantity, String::new())..)),
            PlacementPolicy::Spread => Box::new(most_free_first(free, anchor.quantity)),
        };
        candidates
            .take(self.config.placement_candidates_max)
            .find_map(|(_, provider_id)| self.fit_on(&self.providers[provider_id], request))
    }

    /// The units `request` would get on `provider`, if it fits there.
    pub(super) fn fit_on(&self, provider: &Provider, request: &AllocationRequest) -> Option<Placement> {
        if !provider.accepts_placements() || !provider.has_labels(&request.constraints.labels) {
            return None;
        }
        if request
            .requirements
            .iter()
            .any(|requirement| provider.free_of(&requirement.kind) < requirement.quantity)
        {
            return None;
        }
        // One unit per requirement is the common case: then no slack to shrink.
        let mut grants = Vec::with_capacity(request.requirements.len());
        for requirement in &request.requirements {
            grants.extend(provider.pick_units(
                &requirement.kind,
                requirement.quantity,
                &request.constraints.resource_ids,
                request.placement,
            )?);
        }
        grants.sort_by(|a, b| a.resource_id.cmp(&b.resource_id));
        // Kept for as long as the allocation lives: without the slack that
        // growing left (room for four grants where most hold one, 168 bytes
        // per allocation; BENCHMARKS.md, "Memory and disk"), as a boxed slice.
        Some(Placement {
            provider_id: provider.provider_id.clone(),
            grants: grants.into_boxed_slice(),
            granted_at_ms: self.clock_ms,
        })
    }

    /// Why `request` can never be placed, if so: its deadline has passed, or
    /// no registered provider (failed ones included) has that much of a kind
    /// in total. Labels are not considered: a provider with the labels may
    /// register later, and the request waits for it (or for its deadline).
    pub(super) fn never_placeable(&self, request: &AllocationRequest) -> Option<String> {
        if let Some(deadline) = request.deadline_ms.get() {
            if deadline <= self.clock_ms {
                return Some(format!(
                    "deadline_exceeded: the deadline {} has already passed",
                    crate::time::format_rfc3339(deadline)
                ));
            }
        }
        if let Some(provider_id) = &request.constraints.provider_id {
            let provider = &self.providers[provider_id];
            for requirement in &request.requirements {
                let capacity: u64 = match request.constraints.resource_ids.is_empty() {
                    true => provider.capacity_of(&requirement.kind),
                    false => request
                        .constraints
                        .resource_ids
                        .iter()
                        .filter_map(|id| provider.resources.get(id.as_str()))
                        .filter(|resource| resource.kind == requirement.kind)
                        .map(|resource| resource.capacity)
                        .sum(),
                };
                if capacity < requirement.quantity {
                    return Some(format!(
                        "insufficient_capacity: provider {provider_id} can never hold {} {} (it has {capacity} in the allowed units)",
                        requirement.quantity, requirement.kind
                    ));
                }
            }
            return None;
        }
        for requirement in &request.requirements {
            match self.index.capacity_by_kind.get(&*requirement.kind).and_then(|set| set.last()) {
                None => return Some(format!("unknown_kind: no provider offers {}", requirement.kind)),
                Some((largest, _)) if *largest < requirement.quantity => {
                    return Some(format!(
                        "insufficient_capacity: no provider could ever hold {} {} (the largest has {largest})",
                        requirement.quantity, requirement.kind
                    ))
                }
                Some(_) => {}
            }
        }
        None
    }
}

/// The entries of a kind's free index with at least `wanted` free, the most
/// free first and, among equal amounts, the lower provider id first. A plain
/// reverse walk would break ties towards the higher id, against the rule.
fn most_free_first(free: &BTreeSet<(u64, String)>, wanted: u64) -> impl Iterator<Item = &(u64, String)> {
    let amounts = std::iter::successors(free.last().map(|(amount, _)| *amount), move |&amount| {
        free.range(..(amount, String::new())).next_back().map(|(below, _)| *below)
    });
    amounts
        .take_while(move |&amount| amount >= wanted)
        .flat_map(move |amount| free.range((amount, String::new())..).take_while(move |(same, _)| *same == amount))
}
