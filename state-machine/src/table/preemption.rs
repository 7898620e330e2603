//! The decision on a new request (reject, place, preempt or queue), the
//! search for victims, and the dry run that shows the decision unmade.
//!
//! Preemption happens only when a request arrives: it fits its quota, no
//! provider has room, and its namespace's setting (or the cluster's) lets
//! its priority preempt. The search looks at providers that could ever
//! hold the request and carry allocations of strictly lower priority from
//! namespaces that may be preempted, at most
//! [`PREEMPTION_PROVIDERS_EXAMINED_MAX`] of them in provider-id order. On
//! each it takes victims in the order lowest priority, then fewest units,
//! then newest, until the request fits, then gives back every victim it
//! turns out not to need (the later ones first). Among providers it prefers
//! the one whose victims' highest priority is lowest, then the fewest
//! victims, then the fewest units taken, then the lower provider id.

use std::cmp::Reverse;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::AllocationTable;
use crate::event::EventKind;
use crate::limits::{PREEMPTION_PROVIDERS_EXAMINED_MAX, PREEMPTION_VICTIMS_EXAMINED_MAX};
use crate::provider::Provider;
use crate::quota::OnPreemption;
use crate::record::{Placement, RequestRecord, RequestState};
use crate::request::AllocationRequest;
use crate::time::OptionalMillis;

/// What the table decides for a new request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Decision {
    Reject(String),
    Place(Placement),
    /// Place after taking these allocations (request ids, in victim order).
    Preempt {
        placement: Placement,
        victims: Vec<Uuid>,
    },
    Queue(String),
}

/// An allocation a request would preempt.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Victim {
    pub request_id: Uuid,
    pub allocation_id: Uuid,
    pub namespace: String,
    pub priority: i64,
    pub provider_id: String,
    /// Units it holds.
    pub units: u64,
}

/// What a request would get if submitted now (`qm allocate --dry-run`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PreviewOutcome {
    Allocated,
    Queued,
    Rejected,
}

/// A decision shown without being made.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Preview {
    pub outcome: PreviewOutcome,
    /// Why it would be queued or rejected.
    pub reason: Option<String>,
    pub placement: Option<Placement>,
    /// The allocations it would preempt, in the order they would be taken.
    pub victims: Vec<Victim>,
}

/// A victim's place in the order: lowest priority, fewest units, newest.
type VictimKey = (i64, usize, Reverse<u64>, Uuid);

/// Where a preemption would happen and what it costs, compared to choose
/// among providers: the victims' highest priority, their count, the units
/// taken, the provider.
type PreemptionCost = (i64, usize, usize, crate::name::Name);

impl AllocationTable {
    /// The decision on `request`, which the table has not seen, without
    /// changing anything.
    pub(super) fn decide(&self, request: &AllocationRequest) -> Decision {
        if let Some(reason) = self.never_placeable(request).or_else(|| self.quota_never_fits(request)) {
            return Decision::Reject(reason);
        }
        if let Some(reason) = self.quota_shortfall(request) {
            return Decision::Queue(reason);
        }
        if let Some(placement) = self.find_placement(request) {
            return Decision::Place(placement);
        }
        if !self.preemption_withheld && self.may_preempt(request) {
            if let Some((placement, victims)) = self.find_preemption(request) {
                return Decision::Preempt { placement, victims };
            }
        }
        Decision::Queue("insufficient_resources: no provider has enough free now".to_owned())
    }

    /// What submitting `request` now would do: the dry run of an allocate.
    /// A request id the table knows previews as what it got.
    pub fn preview(&self, request: &AllocationRequest) -> Result<Preview, crate::error::InvalidArgument> {
        request.check()?;
        if let Some(record) = self.requests.get(&request.request_id) {
            return Ok(Preview {
                outcome: match record.status {
                    crate::record::AllocationStatus::Allocated => PreviewOutcome::Allocated,
                    crate::record::AllocationStatus::Queued => PreviewOutcome::Queued,
                    crate::record::AllocationStatus::Rejected => PreviewOutcome::Rejected,
                },
                reason: record.reason().map(str::to_owned),
                placement: record.placement.clone(),
                victims: Vec::new(),
            });
        }
        if let Some(provider_id) = &request.constraints.provider_id {
            if !self.providers.contains_key(provider_id) {
                return Err(crate::error::InvalidArgument::new(
                    "constraints.provider_id",
                    format!("unknown provider {provider_id}"),
                ));
            }
        }
        let (outcome, reason, placement, victims) = match self.decide(request) {
            Decision::Reject(reason) => (PreviewOutcome::Rejected, Some(reason), None, Vec::new()),
            Decision::Queue(reason) => (PreviewOutcome::Queued, Some(reason), None, Vec::new()),
            Decision::Place(placement) => (PreviewOutcome::Allocated, None, Some(placement), Vec::new()),
            Decision::Preempt { placement, victims } => (PreviewOutcome::Allocated, None, Some(placement), victims),
        };
        let victims = victims
            .into_iter()
            .map(|request_id| {
                let record = &self.requests[&request_id];
                let placement = record.placement.as_ref().expect("victims are placed");
                Victim {
                    request_id,
                    allocation_id: record.allocation_id(),
                    namespace: record.request.namespace.to_string(),
                    priority: record.request.priority,
                    provider_id: placement.provider_id.to_string(),
                    units: placement.grants.len() as u64,
                }
            })
            .collect();
        Ok(Preview {
            outcome,
            reason,
            placement,
            victims,
        })
    }

    /// The cheapest preemption that makes room for `request`, if any.
    fn find_preemption(&self, request: &AllocationRequest) -> Option<(Placement, Vec<Uuid>)> {
        let candidates: Box<dyn Iterator<Item = &String>> = match &request.constraints.provider_id {
            Some(provider_id) => Box::new(std::iter::once(provider_id)),
            None => Box::new(self.index.by_provider.keys()),
        };
        let mut best: Option<(PreemptionCost, Placement, Vec<Uuid>)> = None;
        let examined = candidates
            .filter_map(|provider_id| self.providers.get(provider_id))
            .filter(|provider| could_ever_hold(provider, request))
            .take(PREEMPTION_PROVIDERS_EXAMINED_MAX);
        // No preemption costs less than one victim of the lowest priority
        // any allocation has, holding one unit: found that, later providers
        // (higher ids, which lose ties) cannot do better.
        let cheapest = self.index.active_priorities.keys().next().map(|lowest| (*lowest, 1, 1));
        for provider in examined {
            if let (Some((cost, _, _)), Some(cheapest)) = (&best, cheapest) {
                if (cost.0, cost.1, cost.2) <= cheapest {
                    break;
                }
            }
            let best_cost = best.as_ref().map(|(cost, _, _)| cost);
            if let Some(found) = self.preemption_on(provider, request, best_cost) {
                best = Some(found);
            }
        }
        best.map(|(_, placement, victims)| (placement, victims))
    }

    /// The fewest victims on `provider` that make room for `request`, in
    /// victim order, where the request would then go, and what it costs;
    /// `None` if it cannot be done there, if the request fits there without
    /// victims (a placement the bounded search did not reach, not a reason
    /// to preempt), or if it could not cost less than `best`: a lower bound
    /// (the lowest eligible priority, one victim, the fewest units of one)
    /// skips the work on most providers once a cheap preemption is found,
    /// and skips only those that could not win.
    fn preemption_on(
        &self,
        provider: &Provider,
        request: &AllocationRequest,
        best: Option<&PreemptionCost>,
    ) -> Option<(PreemptionCost, Placement, Vec<Uuid>)> {
        let mut eligible: Vec<(VictimKey, Uuid)> = self
            .index
            .by_provider
            .get(&*provider.provider_id)?
            .iter()
            .map(|id| &self.requests[id])
            // A moving allocation holds units on two providers until its
            // agents confirm; it is preempted neither half-way nor twice.
            .filter(|record| {
                record.request.priority < request.priority
                    && record.moving().is_none()
                    && self.policy(&record.request.namespace).preemptible
            })
            .map(|record| (self.victim_key(record), record.request.request_id))
            .collect();
        eligible.sort_unstable();
        eligible.truncate(PREEMPTION_VICTIMS_EXAMINED_MAX);
        let lowest_priority = eligible.first()?.0 .0;
        let fewest_units = eligible.iter().map(|(key, _)| key.1).min().expect("not empty");
        let bound = (lowest_priority, 1, fewest_units, provider.provider_id.clone());
        if best.is_some_and(|best| bound >= *best) || self.fit_on(provider, request).is_some() {
            return None;
        }
        // Take victims in order until the request fits.
        let mut freed = provider.clone();
        let mut chosen = Vec::new();
        let mut placement = None;
        for (_, id) in &eligible {
            self.unhold_on(&mut freed, id);
            chosen.push(*id);
            placement = self.fit_on(&freed, request);
            if placement.is_some() {
                break;
            }
        }
        let mut placement = placement?;
        // Give back every victim not needed, the least preferred first. A
        // single victim is needed: the request does not fit without one.
        if chosen.len() > 1 {
            for index in (0..chosen.len()).rev() {
                let mut without = provider.clone();
                for (other, id) in chosen.iter().enumerate() {
                    if other != index {
                        self.unhold_on(&mut without, id);
                    }
                }
                if self.fit_on(&without, request).is_some() {
                    chosen.remove(index);
                }
            }
            let mut freed = provider.clone();
            for id in &chosen {
                self.unhold_on(&mut freed, id);
            }
            placement = self.fit_on(&freed, request).expect("the victims chosen make room");
        }
        let highest = chosen
            .iter()
            .map(|id| self.requests[id].request.priority)
            .max()
            .expect("a preemption has victims");
        let units = chosen.iter().map(|id| self.units_held(id)).sum();
        let cost = (highest, chosen.len(), units, provider.provider_id.clone());
        if best.is_some_and(|best| cost >= *best) {
            return None;
        }
        Some((cost, placement, chosen))
    }

    fn victim_key(&self, record: &RequestRecord) -> VictimKey {
        let units = record.placement.as_ref().map_or(0, |placement| placement.grants.len());
        (
            record.request.priority,
            units,
            Reverse(record.arrival_seq),
            record.request.request_id,
        )
    }

    fn units_held(&self, request_id: &Uuid) -> usize {
        self.requests[request_id]
            .placement
            .as_ref()
            .map_or(0, |placement| placement.grants.len())
    }

    /// Lets go of `request_id`'s units on a copy of its provider.
    fn unhold_on(&self, provider: &mut Provider, request_id: &Uuid) {
        let record = &self.requests[request_id];
        let placement = record.placement.as_ref().expect("victims are placed");
        provider.unhold(record.allocation_id(), &placement.grants);
    }

    /// Takes `victims`' units for `preemptor` (taken out of the table):
    /// each is requeued or released as it asked, with `allocation_preempted`
    /// naming the preemptor. Returns the victims whose agents must confirm
    /// the release before the preemptor's grant is confirmed.
    pub(super) fn preempt(&mut self, preemptor: &RequestRecord, victims: &[Uuid]) -> Vec<(Uuid, String)> {
        let mut awaited = Vec::new();
        for &request_id in victims {
            let mut record = self.take_record(request_id);
            assert!(
                record.request.priority < preemptor.request.priority,
                "a victim has strictly lower priority than its preemptor"
            );
            let placement = self.free_placement(&record);
            // The victim's namespace holds less now: what its quota held
            // back may fit, whether the victim is released or requeued.
            self.note_quota_freed(&record.request.namespace);
            let confirms = self.providers[&*placement.provider_id].confirms_allocations;
            let requeued = record.on_preemption == OnPreemption::Requeue;
            self.emit(EventKind::AllocationPreempted {
                request_id,
                allocation_id: record.allocation_id(),
                namespace: record.request.namespace.to_string(),
                provider_id: placement.provider_id.to_string(),
                priority: record.request.priority,
                preemptor_request_id: preemptor.request.request_id,
                preemptor_namespace: preemptor.request.namespace.to_string(),
                preemptor_priority: preemptor.request.priority,
                requeued,
            });
            let reason = format!("preempted: by request {}", preemptor.request.request_id);
            if requeued {
                record.placement = None;
                // Past `queue_len_max` if need be, as an evacuated
                // allocation: an acknowledged allocation is never dropped
                // for lack of queue room.
                self.enqueue(&mut record, reason);
            } else {
                record.state = if confirms { RequestState::Deallocation } else { RequestState::Idle };
                record.lease_expires_at_ms = OptionalMillis::NONE;
                record.set_reason(Some(reason.into()));
            }
            if confirms {
                awaited.push((record.allocation_id(), placement.provider_id.to_string()));
            }
            self.put_record(record);
        }
        awaited
    }

    /// Records that `preemptor`'s grant waits for `victims`' releases.
    pub(super) fn await_releases(&mut self, preemptor: Uuid, victims: Vec<(Uuid, String)>) {
        if victims.is_empty() {
            return;
        }
        for victim in &victims {
            self.awaited_by.entry(victim.clone()).or_default().insert(preemptor);
        }
        self.release_awaited.insert(preemptor, victims);
    }

    /// The releases `preemptor` still waits for.
    pub(super) fn releases_awaited(&self, preemptor: Uuid) -> Vec<Uuid> {
        self.release_awaited
            .get(&preemptor)
            .map(|victims| victims.iter().map(|(allocation_id, _)| *allocation_id).collect())
            .unwrap_or_default()
    }

    /// Whether some preemptor waits for `provider_id`'s agent to confirm
    /// releasing `allocation_id` (a preempted allocation, which may be
    /// queued or placed elsewhere by now).
    pub fn is_awaited(&self, allocation_id: Uuid, provider_id: &str) -> bool {
        self.awaited_by.contains_key(&(allocation_id, provider_id.to_owned()))
    }

    /// A victim's agent confirmed its release: no preemptor waits for it now.
    pub(super) fn release_confirmed(&mut self, allocation_id: Uuid, provider_id: &str) {
        let key = (allocation_id, provider_id.to_owned());
        let Some(preemptors) = self.awaited_by.remove(&key) else {
            return;
        };
        for preemptor in preemptors {
            let victims = self.release_awaited.get_mut(&preemptor).expect("the reverse index is in step");
            victims.retain(|victim| *victim != key);
            if victims.is_empty() {
                self.release_awaited.remove(&preemptor);
            }
        }
    }

    /// `preemptor` waits for nothing any more (it left the `allocation` state).
    pub(super) fn stop_awaiting(&mut self, preemptor: Uuid) {
        let Some(victims) = self.release_awaited.remove(&preemptor) else {
            return;
        };
        for victim in victims {
            if let Some(preemptors) = self.awaited_by.get_mut(&victim) {
                preemptors.remove(&preemptor);
                if preemptors.is_empty() {
                    self.awaited_by.remove(&victim);
                }
            }
        }
    }

    /// Allocate's half of the decision: carries `decision` out for `record`.
    pub(super) fn carry_out(&mut self, record: &mut RequestRecord, decision: Decision) {
        use super::lifecycle::GrantCause;
        match decision {
            Decision::Reject(reason) => self.reject(record, reason),
            Decision::Place(placement) => self.grant(record, placement, GrantCause::New),
            Decision::Preempt { placement, victims } => {
                let awaited = self.preempt(record, &victims);
                let provider = &self.providers[&*placement.provider_id];
                let replaced = self.fit_on(provider, &record.request).expect("the victims made room");
                assert_eq!(placement.grants, replaced.grants, "preemption placed where it previewed");
                self.grant(record, replaced, GrantCause::New);
                if record.state == RequestState::Allocation {
                    self.await_releases(record.request.request_id, awaited);
                }
            }
            Decision::Queue(reason) => {
                if self.index.queue.len() >= self.config.queue_len_max {
                    self.reject(
                        record,
                        format!("queue_full: {} requests are already waiting", self.index.queue.len()),
                    );
                } else {
                    self.enqueue(record, reason);
                }
            }
        }
    }
}

/// Whether `provider` could hold `request` with all its units free (and
/// takes placements: not failed, cordoned or draining).
fn could_ever_hold(provider: &Provider, request: &AllocationRequest) -> bool {
    provider.accepts_placements()
        && provider.has_labels(&request.constraints.labels)
        && request
            .requirements
            .iter()
            .all(|requirement| provider.capacity_of(&requirement.kind) >= requirement.quantity)
}
