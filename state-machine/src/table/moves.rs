//! A live move, make-before-break: reserve the target's units, wait for its
//! agent, release the source's, wait for its agent, done.
//!
//! ```text
//! monitoring ──begin_move──▶ optimization (source + target held)
//!     ▲                        │ target confirms          │ deadline, a provider fails,
//!     │                        ▼                          │ release or expiry
//!     │                optimization (target held; source  ▼
//!     │                freed, its release unconfirmed)   monitoring on the source
//!     │                        │ source confirms, or      (`optimization_failed`)
//!     └── `allocation_moved` ◀─┘ its deadline passes
//! ```
//!
//! A provider without an agent confirms at once, so a move between two of
//! them ends inside the apply that began it. Every move ends: by its
//! agents, by its deadline on a tick, or when a provider it touches fails
//! or leaves (`end_moves_touching`).

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::AllocationTable;
use crate::command::ApplyResult;
use crate::command::CommandResponse;
use crate::event::EventKind;
use crate::record::{Move, MoveReason, Placement, RequestRecord, RequestState};
use crate::time::OptionalMillis;

/// Moves by outcome since the table began (carried in snapshots).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MoveCounts {
    pub started: u64,
    pub completed: u64,
    pub rolled_back: u64,
}

impl AllocationTable {
    /// Moves by outcome so far.
    pub fn move_counts(&self) -> &MoveCounts {
        &self.move_counts
    }

    /// Moves under way.
    pub fn moves_in_flight(&self) -> usize {
        self.index.moves.len()
    }

    /// `optimization_complete` when the last move under way ended in this
    /// command: moves were under way before it, or began in it, and none
    /// is now. Once per command, so that a plan whose moves all end inside
    /// the apply that began them (providers without agents) completes once.
    pub(super) fn note_moves_settled(&mut self, (in_flight_before, started_before): (usize, u64)) {
        let had_moves = in_flight_before > 0 || self.move_counts.started != started_before;
        if had_moves && self.index.moves.is_empty() {
            self.emit(EventKind::OptimizationComplete {
                completed_total: self.move_counts.completed,
                rolled_back_total: self.move_counts.rolled_back,
            });
        }
    }

    /// Begins moving `request_id` (active, in `monitoring`) to `to`.
    pub(super) fn begin_move(&mut self, request_id: Uuid, to: Placement, reason: MoveReason) {
        let mut record = self.take_record(request_id);
        assert_eq!(RequestState::Monitoring, record.state, "only a settled allocation moves");
        let from = record.placement.clone().expect("an active request has a placement");
        assert_ne!(from.provider_id, to.provider_id, "a move changes provider");
        self.hold_units(record.allocation_id(), &to);
        self.emit(EventKind::AllocationMoving {
            request_id,
            allocation_id: record.allocation_id(),
            namespace: record.request.namespace.to_string(),
            from_provider: from.provider_id.to_string(),
            to_provider: to.provider_id.to_string(),
            grants: to.grants.to_vec(),
            reason: reason.as_str().to_owned(),
        });
        self.move_counts.started += 1;
        let target_confirms = self.providers[&*to.provider_id].confirms_allocations;
        record.state = RequestState::Optimization;
        record.rare_mut().moving = Some(Box::new(Move {
            reason,
            from,
            to,
            deadline_ms: self.clock_ms + self.config.move_confirm_timeout_ms,
            target_confirmed: false,
        }));
        if !target_confirms {
            self.target_confirmed(&mut record);
        }
        self.put_record(record);
    }

    /// The target holds the allocation: the source's units are let go, and
    /// the move ends unless the source's agent has to confirm the release.
    fn target_confirmed(&mut self, record: &mut RequestRecord) {
        let (from, to) = {
            let mut rare = record.rare_mut();
            let moving = rare.moving.as_mut().expect("a move is under way");
            moving.target_confirmed = true;
            moving.deadline_ms = self.clock_ms + self.config.move_confirm_timeout_ms;
            (moving.from.clone(), moving.to.clone())
        };
        self.emit(EventKind::MoveTargetReady {
            request_id: record.request.request_id,
            allocation_id: record.allocation_id(),
            namespace: record.request.namespace.to_string(),
            from_provider: from.provider_id.to_string(),
            to_provider: to.provider_id.to_string(),
        });
        self.unhold_units(record.allocation_id(), &from);
        record.placement = Some(to);
        let source_confirms = self
            .providers
            .get(&*from.provider_id)
            .is_some_and(|provider| provider.confirms_allocations);
        if !source_confirms {
            self.finish_move(record);
        }
    }

    /// The move is over: `allocation_moved`, back in `monitoring`.
    fn finish_move(&mut self, record: &mut RequestRecord) {
        let moving = record.rare_mut().moving.take().expect("a move is under way");
        assert!(moving.target_confirmed, "a move finishes only after its target confirmed");
        self.emit(EventKind::AllocationMoved {
            request_id: record.request.request_id,
            allocation_id: record.allocation_id(),
            namespace: record.request.namespace.to_string(),
            from_provider: moving.from.provider_id.to_string(),
            to_provider: moving.to.provider_id.to_string(),
            grants: moving.to.grants.into_vec(),
            reason: moving.reason.as_str().to_owned(),
        });
        record.state = RequestState::Monitoring;
        record.rare_mut().last_moved_at_ms = OptionalMillis::some(self.clock_ms);
        self.move_counts.completed += 1;
    }

    /// Gives up a move whose target has not confirmed: the target's units
    /// are let go, the allocation stays where it was.
    fn roll_back_move(&mut self, record: &mut RequestRecord, why: &str) {
        let moving = record.rare_mut().moving.take().expect("a move is under way");
        assert!(!moving.target_confirmed, "a move is rolled back only before its target confirmed");
        self.unhold_units(record.allocation_id(), &moving.to);
        self.emit(EventKind::OptimizationFailed {
            request_id: record.request.request_id,
            allocation_id: record.allocation_id(),
            namespace: record.request.namespace.to_string(),
            from_provider: moving.from.provider_id.to_string(),
            to_provider: moving.to.provider_id.to_string(),
            reason: why.to_owned(),
        });
        record.state = RequestState::Monitoring;
        // The cooldown holds after a failure too, so that a target that
        // never confirms is not tried again and again.
        record.rare_mut().last_moved_at_ms = OptionalMillis::some(self.clock_ms);
        self.move_counts.rolled_back += 1;
    }

    /// Ends the move of `record` (taken out of the table), if any, before it
    /// is released or expires: rolled back before the target confirmed,
    /// finished after. The caller frees what it holds then.
    pub(super) fn abandon_move(&mut self, record: &mut RequestRecord, why: &str) {
        match record.moving() {
            None => {}
            Some(moving) if moving.target_confirmed => self.finish_move(record),
            Some(_) => self.roll_back_move(record, why),
        }
    }

    /// Ends every move that reached its deadline, at most
    /// `expirations_per_tick_max`; returns how many.
    pub(super) fn end_overdue_moves(&mut self) -> usize {
        let overdue: Vec<Uuid> = self
            .index
            .moves
            .range(..=(self.clock_ms, Uuid::max()))
            .take(self.config.expirations_per_tick_max)
            .map(|(_, id)| *id)
            .collect();
        for &request_id in &overdue {
            let mut record = self.take_record(request_id);
            let moving = record.moving().expect("indexed moves are under way");
            let why = format!(
                "target_unconfirmed: {} did not confirm within {} ms",
                moving.to.provider_id, self.config.move_confirm_timeout_ms
            );
            self.abandon_move(&mut record, &why);
            self.put_record(record);
        }
        overdue.len()
    }

    /// Ends every move from or to `provider_id` before it fails or leaves;
    /// returns how many (the caller re-examines the queue once the
    /// provider's status is set: units may have come free elsewhere).
    pub(super) fn end_moves_touching(&mut self, provider_id: &str, why: &str) -> usize {
        let touching: Vec<Uuid> = self
            .index
            .moves
            .iter()
            .map(|(_, id)| *id)
            .filter(|id| {
                let moving = self.requests[id].moving().expect("indexed moves are under way");
                moving.from.provider_id == provider_id || moving.to.provider_id == provider_id
            })
            .collect();
        for &request_id in &touching {
            let mut record = self.take_record(request_id);
            self.abandon_move(&mut record, &format!("{why}: {provider_id}"));
            self.put_record(record);
        }
        touching.len()
    }

    /// A confirmation that belongs to a move, answered here; `None` when it
    /// is not about a move (the ordinary confirmation path answers it).
    pub(super) fn confirm_move(&mut self, id: Uuid, provider_id: &str, deallocation: bool) -> Option<ApplyResult> {
        let request_id = self.resolve(id).ok()?;
        let record = &self.requests[&request_id];
        let moving = record.moving()?;
        let placed_on = record.placement.as_ref().map(|placement| placement.provider_id.as_str());
        match (deallocation, moving.target_confirmed) {
            (false, false) if moving.to.provider_id == provider_id => {
                let mut record = self.take_record(request_id);
                self.emit(EventKind::AllocationConfirmed {
                    allocation_id: record.allocation_id(),
                    namespace: record.request.namespace.to_string(),
                    provider_id: provider_id.to_owned(),
                });
                self.target_confirmed(&mut record);
                self.put_record(record);
                // The source's units are free now.
                self.examine_queue();
            }
            // The provider holding it confirming again: nothing to do.
            (false, _) if placed_on == Some(provider_id) => {}
            (true, true) if moving.from.provider_id == provider_id => {
                let mut record = self.take_record(request_id);
                self.emit(EventKind::DeallocationConfirmed {
                    allocation_id: record.allocation_id(),
                    namespace: record.request.namespace.to_string(),
                    provider_id: provider_id.to_owned(),
                });
                self.finish_move(&mut record);
                self.put_record(record);
                // The budget has room again for a drain's next move.
                self.continue_drains();
            }
            _ => return None,
        }
        Some(Ok(CommandResponse::Request(Arc::clone(&self.requests[&request_id]))))
    }

    /// Holds `placement`'s units for `allocation_id`, keeping the free index in step.
    fn hold_units(&mut self, allocation_id: Uuid, placement: &Placement) {
        let provider = self
            .provider_mut(&placement.provider_id)
            .expect("placements name registered providers");
        let changed = provider.hold(allocation_id, &placement.grants);
        for (kind, before) in changed {
            self.index.update_free(&self.providers[&*placement.provider_id], &kind, before);
        }
        self.emit_unit_statuses(placement);
    }

    /// Lets go of `placement`'s units held by `allocation_id`.
    fn unhold_units(&mut self, allocation_id: Uuid, placement: &Placement) {
        let provider = self
            .provider_mut(&placement.provider_id)
            .expect("placements name registered providers");
        let changed = provider.unhold(allocation_id, &placement.grants);
        for (kind, before) in changed {
            self.index.update_free(&self.providers[&*placement.provider_id], &kind, before);
        }
        self.emit_unit_statuses(placement);
    }
}
