//! Optimization plans: which movable allocations move where, computed in
//! apply so that every replica derives the same plan.
//!
//! # The rule
//!
//! A plan packs allocations onto fewer providers, so that a provider's free
//! units add up to something a large request can use. Sources are taken
//! from the least loaded provider up, targets from the most loaded down; an
//! allocation moves only if the move strictly raises the *packing measure*
//! `Σ over providers and kinds of load²` (load: the amount held, counting a
//! move under way at its target). Moving amounts `x_k` from `S` to `T`
//! changes the measure by `2 Σ_k x_k (load_T,k − load_S,k + x_k)`, so the
//! rule is that sum being positive: roughly, from a less to a more loaded
//! provider. The measure only grows and is bounded, so plans can never
//! cycle (A to B, then B to A). On top of that: at most
//! [`TableConfig::moves_per_plan_max`] moves are under way at once, an
//! allocation is not moved again within [`TableConfig::move_cooldown_ms`],
//! and automatic plans wait [`TableConfig::plan_cooldown_ms`].
//!
//! Only allocations whose request allowed it (`movable`) move, only from
//! `monitoring`, and never one pinned to a provider or to units. Targets
//! are providers that accept placements (active, not cordoned), checked
//! with the request's own constraints, exactly as a placement is.
//!
//! # Triggers
//!
//! `Command::Optimize` (an operator), or on a tick once the plan cooldown
//! has passed: a queued request is *stranded* (the cluster's free amount of
//! each of its kinds would hold it, but no provider alone does), or a
//! kind's fragmentation passes [`TableConfig::fragmentation_mark_permille`].
//!
//! [`TableConfig::moves_per_plan_max`]: crate::TableConfig::moves_per_plan_max
//! [`TableConfig::move_cooldown_ms`]: crate::TableConfig::move_cooldown_ms
//! [`TableConfig::plan_cooldown_ms`]: crate::TableConfig::plan_cooldown_ms
//! [`TableConfig::fragmentation_mark_permille`]: crate::TableConfig::fragmentation_mark_permille

use std::collections::BTreeMap;

use super::AllocationTable;
use crate::command::{ApplyResult, CommandResponse, PlannedMove};
use crate::event::EventKind;
use crate::record::{MoveReason, RequestState};

/// Queued requests (from the head) looked at for the stranded trigger.
pub const STRANDED_EXAMINED_MAX: usize = 8;
/// Allocations of one source provider looked at by one plan.
pub const PLAN_ALLOCATIONS_PER_SOURCE_MAX: usize = 64;

/// Load per kind on one provider, as the plan sees it.
type Load = BTreeMap<String, i128>;

impl AllocationTable {
    /// `Command::Optimize`: a plan now, whatever the cooldown.
    pub(super) fn optimize_now(&mut self) -> ApplyResult {
        let moves = self.plan_and_begin("operator");
        self.emit(EventKind::OptimizationNeeded {
            trigger: "operator".to_owned(),
            moves: moves.len() as u64,
        });
        if !moves.is_empty() {
            // Moves between providers without agents are over already.
            self.examine_queue();
        }
        Ok(CommandResponse::Plan(moves))
    }

    /// The plan `qm optimize` would begin now, without beginning it: the
    /// same computation on a copy of the table (a copy of its indexes, so
    /// an operator's query, not something to call per command).
    pub fn optimization_plan_preview(&self) -> Vec<PlannedMove> {
        let mut copy = self.clone();
        let moves = copy.plan_and_begin("operator");
        copy.pending_events.clear();
        moves
    }

    /// On a tick: a plan if a trigger holds and the plan cooldown passed.
    pub(super) fn optimize_if_triggered(&mut self) {
        if self.index.movable_active == 0 || self.plan_due_ms().is_none_or(|due| due > self.clock_ms) {
            return;
        }
        // Evaluated or not, the triggers are not looked at again until the
        // cooldown passes: a tick's cost stays bounded.
        self.last_plan_at_ms = Some(self.clock_ms);
        let Some(trigger) = self.optimization_trigger() else {
            return;
        };
        let moves = self.plan_and_begin(&trigger);
        if !moves.is_empty() {
            self.emit(EventKind::OptimizationNeeded {
                trigger,
                moves: moves.len() as u64,
            });
            self.examine_queue();
        }
    }

    /// When automatic triggers are next evaluated, if any allocation may move.
    pub(super) fn plan_due_ms(&self) -> Option<u64> {
        if self.index.movable_active == 0 {
            return None;
        }
        let stranded_possible = !self.index.queue.is_empty();
        let fragmentation_watched = self.config.fragmentation_mark_permille < 1000;
        if !stranded_possible && !fragmentation_watched {
            return None;
        }
        Some(self.last_plan_at_ms.map_or(0, |at| at.saturating_add(self.config.plan_cooldown_ms)))
    }

    /// Why a plan is needed now, if it is.
    fn optimization_trigger(&self) -> Option<String> {
        let stranded = self.queue().take(STRANDED_EXAMINED_MAX).any(|request_id| {
            let request = &self.requests[&request_id].request;
            request.constraints.provider_id.is_none()
                && request
                    .requirements
                    .iter()
                    .all(|requirement| self.free_in_cluster(&requirement.kind) >= requirement.quantity)
                && self.find_placement(request).is_none()
        });
        if stranded {
            return Some("stranded_request".to_owned());
        }
        self.fragmentation_permille()
            .into_iter()
            .find(|(_, permille)| *permille > self.config.fragmentation_mark_permille)
            .map(|(kind, _)| format!("fragmentation: {kind}"))
    }

    /// Free amount of `kind` on providers that accept placements.
    fn free_in_cluster(&self, kind: &str) -> u64 {
        self.index
            .free_by_kind
            .get(kind)
            .map_or(0, |free| free.iter().map(|(amount, _)| amount).sum())
    }

    /// Per kind, in thousandths: 1 − (largest free amount on one provider ÷
    /// total free amount), over providers that accept placements; 0 when
    /// nothing is free. Integer arithmetic, rounded down.
    pub fn fragmentation_permille(&self) -> BTreeMap<String, u64> {
        self.index
            .free_by_kind
            .iter()
            .map(|(kind, free)| {
                let total: u64 = free.iter().map(|(amount, _)| amount).sum();
                let largest = free.last().map_or(0, |(amount, _)| *amount);
                let permille = match total {
                    0 => 0,
                    total => 1000 - (u128::from(largest) * 1000).div_ceil(u128::from(total)) as u64,
                };
                (kind.clone(), permille)
            })
            .collect()
    }

    /// Computes a plan and begins its moves; returns them.
    fn plan_and_begin(&mut self, _trigger: &str) -> Vec<PlannedMove> {
        self.last_plan_at_ms = Some(self.clock_ms);
        let mut budget = self.config.moves_per_plan_max.saturating_sub(self.index.moves.len());
        let mut loads = self.planned_loads();
        let mut sources: Vec<(i128, String)> = loads.iter().map(|(id, load)| (load.values().sum(), id.clone())).collect();
        sources.sort();
        sources.truncate(self.config.plan_providers_examined_max);
        let mut planned = Vec::new();
        for (_, source) in sources {
            if budget == 0 {
                break;
            }
            let candidates: Vec<uuid::Uuid> = self
                .index
                .by_provider
                .get(&source)
                .into_iter()
                .flatten()
                .copied()
                .filter(|id| self.may_move(*id))
                .take(PLAN_ALLOCATIONS_PER_SOURCE_MAX)
                .collect();
            for request_id in candidates {
                if budget == 0 {
                    break;
                }
                let Some(placement) = self.best_target(request_id, &source, &loads) else {
                    continue;
                };
                let record = &self.requests[&request_id];
                for grant in &placement.grants {
                    *loads.entry(source.clone()).or_default().entry(grant.kind.to_string()).or_default() -= i128::from(grant.amount);
                    *loads
                        .entry(placement.provider_id.to_string())
                        .or_default()
                        .entry(grant.kind.to_string())
                        .or_default() += i128::from(grant.amount);
                }
                planned.push(PlannedMove {
                    request_id,
                    allocation_id: record.allocation_id(),
                    namespace: record.request.namespace.to_string(),
                    from_provider: source.clone(),
                    to_provider: placement.provider_id.to_string(),
                    grants: placement.grants.to_vec(),
                });
                self.begin_move(request_id, placement, MoveReason::Optimization);
                budget -= 1;
            }
        }
        planned
    }

    /// Whether `request_id` may be moved now: movable, settled, not pinned,
    /// not within its move cooldown.
    fn may_move(&self, request_id: uuid::Uuid) -> bool {
        let record = &self.requests[&request_id];
        let constraints = &record.request.constraints;
        let placed_on = &record.placement.as_ref().expect("an active request has a placement").provider_id;
        record.movable
            && record.state == RequestState::Monitoring
            // One on a failed provider is evacuated instead.
            && self.providers[&**placed_on].status == crate::provider::ProviderStatus::Active
            && constraints.provider_id.is_none()
            && constraints.resource_ids.is_empty()
            && record
                .rare()
                .last_moved_at_ms
                .get().is_none_or(|at| at.saturating_add(self.config.move_cooldown_ms) <= self.clock_ms)
    }

    /// The most loaded provider `request_id` fits on whose load makes the
    /// move raise the packing measure (ties: the lower provider id).
    fn best_target(&self, request_id: uuid::Uuid, source: &str, loads: &BTreeMap<String, Load>) -> Option<crate::record::Placement> {
        let record = &self.requests[&request_id];
        let held = &record.placement.as_ref().expect("an active request has a placement").grants;
        let mut amounts: BTreeMap<&str, i128> = BTreeMap::new();
        for grant in held {
            *amounts.entry(grant.kind.as_str()).or_default() += i128::from(grant.amount);
        }
        let empty = Load::new();
        let source_load = loads.get(source).unwrap_or(&empty);
        let mut targets: Vec<(std::cmp::Reverse<i128>, &String)> = loads
            .iter()
            .filter(|(id, _)| id.as_str() != source)
            .map(|(id, load)| (std::cmp::Reverse(load.values().sum()), id))
            .collect();
        targets.sort();
        targets
            .into_iter()
            .take(self.config.plan_providers_examined_max)
            .filter(|(_, target)| {
                let target_load = &loads[*target];
                let gain: i128 = amounts
                    .iter()
                    .map(|(kind, x)| {
                        let at = |load: &Load| load.get(*kind).copied().unwrap_or(0);
                        x * (at(target_load) - at(source_load) + x)
                    })
                    .sum();
                gain > 0
            })
            .find_map(|(_, target)| {
                let provider = &self.providers[target.as_str()];
                self.fit_on(provider, &record.request)
            })
    }

    /// Load per provider and kind as the plan sees it: what is held, minus
    /// what moves under way take away from their source. Every provider
    /// that holds something; an empty one is never a useful target.
    fn planned_loads(&self) -> BTreeMap<String, Load> {
        let mut loads: BTreeMap<String, Load> = BTreeMap::new();
        let moving = || {
            self.index
                .moves
                .iter()
                .map(|(_, request_id)| self.requests[request_id].moving().expect("indexed moves are under way"))
                .filter(|moving| !moving.target_confirmed)
        };
        // Targets of moves under way hold reserved units, placed or not.
        let holding = self
            .index
            .by_provider
            .keys()
            .map(String::as_str)
            .chain(moving().map(|moving| moving.to.provider_id.as_str()));
        for provider_id in holding {
            if loads.contains_key(provider_id) {
                continue;
            }
            let load = loads.entry(provider_id.to_owned()).or_default();
            for resource in self.providers[provider_id].resources.values() {
                *load.entry(resource.kind.to_string()).or_default() += i128::from(resource.used());
            }
        }
        for moving in moving() {
            for grant in &moving.from.grants {
                *loads
                    .entry(moving.from.provider_id.to_string())
                    .or_default()
                    .entry(grant.kind.to_string())
                    .or_default() -= i128::from(grant.amount);
            }
        }
        loads
    }
}
