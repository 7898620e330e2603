//! [`Ledger`]: the allocations an agent holds, and the confirmations it still
//! owes the cluster. Pure: events and answers in, notices and confirmations
//! out; the confirmer (`confirmer.rs`) does the talking.
//!
//! ```text
//!  allocation_granted / allocation_moved (to us)      ──▶ holding, unconfirmed ──▶ owe AllocationConfirmed
//!  confirm answered / allocation_confirmed            ──▶ holding, confirmed
//!  allocation_released / allocation_preempted (ours)  ──▶ not held ──▶ owe DeallocationConfirmed
//!  allocation_moved (from us) / allocation_expired ──▶ not held, nothing owed
//!  allocation_moving (to us: a live move)          ──▶ holding, unconfirmed ──▶ owe AllocationConfirmed
//!  move_target_ready (from us)                     ──▶ not held ──▶ owe DeallocationConfirmed (the source's release)
//!  optimization_failed (to us: rolled back)        ──▶ not held, nothing owed
//! ```
//!
//! Every step is idempotent: the same event twice, or an event replayed
//! after a resynchronisation already showed its effect, changes nothing.

use std::collections::{BTreeMap, BTreeSet};

use qm_state_machine::UnitGrant;
use serde_json::Value;
use uuid::Uuid;

use super::notice::Notice;
use qm_client::client::Confirmation;
use qm_client::proto::api;

/// One allocation on this provider's units.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holding {
    pub request_id: Option<Uuid>,
    pub requester_id: Option<String>,
    pub namespace: String,
    pub grants: Vec<UnitGrant>,
    /// The table has recorded our AllocationConfirmed (state `monitoring`).
    pub confirmed: bool,
}

/// What the agent holds and owes; see the module docs.
#[derive(Clone, Debug, Default)]
pub struct Ledger {
    provider_id: String,
    holdings: BTreeMap<Uuid, Holding>,
    /// Confirmations still to send, one per allocation (a release replaces
    /// an allocation confirmation not sent yet).
    owed: BTreeMap<Uuid, Confirmation>,
    /// Releases tried on records that may be another provider's (found by
    /// state alone when resynchronising): a refusal of these is not news.
    probes: BTreeSet<Uuid>,
}

impl Ledger {
    pub fn new(provider_id: &str) -> Ledger {
        Ledger {
            provider_id: provider_id.to_owned(),
            ..Ledger::default()
        }
    }

    pub fn holdings(&self) -> &BTreeMap<Uuid, Holding> {
        &self.holdings
    }

    /// Confirmations to send now: releases first, because a preemptor's
    /// grant is confirmed only after the release of what it preempted.
    pub fn owed(&self) -> Vec<(Uuid, Confirmation)> {
        let mut owed: Vec<(Uuid, Confirmation)> = self.owed.iter().map(|(id, confirmation)| (*id, *confirmation)).collect();
        owed.sort_by_key(|(id, confirmation)| (*confirmation != Confirmation::Deallocation, *id));
        owed
    }

    /// Amount held per unit (resource id → amount).
    pub fn held_units(&self) -> BTreeMap<String, u64> {
        let mut units = BTreeMap::new();
        for grant in self.holdings.values().flat_map(|holding| &holding.grants) {
            *units.entry(grant.resource_id.to_string()).or_insert(0) += grant.amount;
        }
        units
    }

    /// What it holds, per kind, against `capacity`.
    pub fn holds(&self, capacity: &BTreeMap<String, u64>) -> Notice {
        let mut used = BTreeMap::new();
        for grant in self.holdings.values().flat_map(|holding| &holding.grants) {
            *used.entry(grant.kind.to_string()).or_insert(0) += grant.amount;
        }
        Notice::Holds {
            allocations: self.holdings.len(),
            unconfirmed: self.holdings.values().filter(|holding| !holding.confirmed).count(),
            used,
            capacity: capacity.clone(),
        }
    }

    /// One event from the watch (its JSON, as `event_to_json` writes it).
    pub fn apply_event(&mut self, event: &Value) -> Vec<Notice> {
        let text = |field: &str| event.get(field).and_then(Value::as_str);
        let id = |field: &str| text(field).and_then(|id| Uuid::parse_str(id).ok());
        let ours = |field: &str| text(field) == Some(self.provider_id.as_str());
        let Some(kind) = text("type") else {
            return Vec::new();
        };
        match kind {
            "allocation_granted" if ours("provider_id") => self.place(event, None),
            "allocation_moved" | "allocation_moving" if ours("to_provider") => self.place(event, text("from_provider").map(str::to_owned)),
            // A live move of one of ours: its target took it over, so we let go.
            "move_target_ready" if ours("from_provider") => id("allocation_id")
                .filter(|allocation_id| self.holdings.contains_key(allocation_id))
                .map(|allocation_id| self.release(allocation_id))
                .into_iter()
                .collect(),
            "optimization_failed" if ours("to_provider") => id("allocation_id")
                .and_then(|allocation_id| self.drop_holding(allocation_id))
                .map(|allocation_id| Notice::MovedAway {
                    allocation_id,
                    to_provider: text("from_provider").unwrap_or_default().to_owned(),
                })
                .into_iter()
                .collect(),
            "allocation_moved" if ours("from_provider") => id("allocation_id")
                .and_then(|allocation_id| self.drop_holding(allocation_id))
                .map(|allocation_id| Notice::MovedAway {
                    allocation_id,
                    to_provider: text("to_provider").unwrap_or_default().to_owned(),
                })
                .into_iter()
                .collect(),
            // A preempted allocation is let go of like a released one, and
            // its release confirmed, whether it was requeued or released.
            "allocation_released" | "allocation_preempted" if ours("provider_id") => {
                id("allocation_id").map(|id| self.release(id)).into_iter().collect()
            }
            "allocation_expired" if ours("provider_id") => id("allocation_id")
                .and_then(|allocation_id| self.drop_holding(allocation_id))
                .map(|allocation_id| Notice::Expired { allocation_id })
                .into_iter()
                .collect(),
            "allocation_confirmed" if ours("provider_id") => id("allocation_id")
                .and_then(|allocation_id| self.mark_confirmed(allocation_id))
                .into_iter()
                .collect(),
            "deallocation_confirmed" if ours("provider_id") => id("allocation_id")
                .and_then(|allocation_id| self.mark_released(allocation_id))
                .into_iter()
                .collect(),
            "provider_failed" if ours("provider_id") => vec![Notice::ProviderFailed {
                provider_id: self.provider_id.clone(),
            }],
            "provider_recovered" if ours("provider_id") => vec![Notice::ProviderRecovered {
                provider_id: self.provider_id.clone(),
            }],
            "provider_deregistered" if ours("provider_id") => vec![Notice::ProviderDeregistered {
                provider_id: self.provider_id.clone(),
            }],
            _ => Vec::new(),
        }
    }

    /// Resynchronises with the table: `active` are the records placed on
    /// this provider now, `releasing` the ids of every record awaiting a
    /// release confirmation (on any provider: the table does not say which).
    pub fn adopt(&mut self, active: &[api::AllocationReply], releasing: &[Uuid]) -> Vec<Notice> {
        let mut notices = Vec::new();
        let mut seen = BTreeSet::new();
        let provider_id = self.provider_id.clone();
        for reply in active.iter().filter(|reply| reply.provider_id == provider_id) {
            let Ok(allocation_id) = Uuid::parse_str(&reply.allocation_id) else {
                continue;
            };
            seen.insert(allocation_id);
            let confirmed = reply.state() == api::RequestState::Monitoring;
            if self.holdings.contains_key(&allocation_id) {
                match confirmed {
                    true => notices.extend(self.mark_confirmed(allocation_id)),
                    false => {
                        self.owed.insert(allocation_id, Confirmation::Allocation);
                    }
                }
                continue;
            }
            let holding = Holding {
                request_id: Uuid::parse_str(&reply.request_id).ok(),
                requester_id: reply.request.as_ref().map(|request| request.requester_id.clone()),
                namespace: reply
                    .request
                    .as_ref()
                    .map(|request| request.namespace.clone())
                    .filter(|namespace| !namespace.is_empty())
                    .unwrap_or_else(|| "default".to_owned()),
                grants: reply
                    .grants
                    .iter()
                    .map(|grant| UnitGrant {
                        resource_id: grant.resource_id.clone().into(),
                        kind: grant.kind.clone().into(),
                        amount: grant.amount,
                    })
                    .collect(),
                confirmed,
            };
            notices.push(placed_notice(allocation_id, &holding, None));
            if !confirmed {
                self.owed.insert(allocation_id, Confirmation::Allocation);
            }
            self.holdings.insert(allocation_id, holding);
        }
        let gone: Vec<Uuid> = self.holdings.keys().filter(|id| !seen.contains(id)).copied().collect();
        for allocation_id in gone {
            self.drop_holding(allocation_id);
            notices.push(Notice::Gone { allocation_id });
        }
        for allocation_id in releasing {
            if self.owed.get(allocation_id) != Some(&Confirmation::Deallocation) {
                self.owed.insert(*allocation_id, Confirmation::Deallocation);
                self.probes.insert(*allocation_id);
            }
        }
        notices
    }

    /// The table recorded `confirmation` of `allocation_id`.
    pub fn confirmed(&mut self, allocation_id: Uuid, confirmation: Confirmation) -> Option<Notice> {
        match confirmation {
            Confirmation::Allocation => self.mark_confirmed(allocation_id),
            Confirmation::Deallocation => self.mark_released(allocation_id),
        }
    }

    /// The table refused `confirmation` of `allocation_id` for good (it is
    /// another provider's, or no longer in that state): stop owing it.
    pub fn refused(&mut self, allocation_id: Uuid, confirmation: Confirmation, reason: String) -> Option<Notice> {
        if self.owed.get(&allocation_id) != Some(&confirmation) {
            return None;
        }
        self.owed.remove(&allocation_id);
        if self.probes.remove(&allocation_id) {
            return None;
        }
        Some(Notice::Refused {
            allocation_id,
            confirmation: confirmation_name(confirmation).to_owned(),
            reason,
        })
    }

    fn place(&mut self, event: &Value, moved_from: Option<String>) -> Vec<Notice> {
        let text = |field: &str| event.get(field).and_then(Value::as_str);
        let Some(allocation_id) = text("allocation_id").and_then(|id| Uuid::parse_str(id).ok()) else {
            return Vec::new();
        };
        if self.holdings.contains_key(&allocation_id) {
            return Vec::new();
        }
        let grants: Vec<UnitGrant> = event
            .get("grants")
            .and_then(|grants| serde_json::from_value(grants.clone()).ok())
            .unwrap_or_default();
        let holding = Holding {
            request_id: text("request_id").and_then(|id| Uuid::parse_str(id).ok()),
            requester_id: text("requester_id").map(str::to_owned),
            namespace: text("namespace").unwrap_or("default").to_owned(),
            grants,
            confirmed: false,
        };
        let notice = placed_notice(allocation_id, &holding, moved_from);
        self.holdings.insert(allocation_id, holding);
        self.owed.insert(allocation_id, Confirmation::Allocation);
        vec![notice]
    }

    fn release(&mut self, allocation_id: Uuid) -> Notice {
        self.holdings.remove(&allocation_id);
        self.probes.remove(&allocation_id);
        self.owed.insert(allocation_id, Confirmation::Deallocation);
        Notice::Released { allocation_id }
    }

    /// Forgets a holding and any confirmation owed for it; `None` if it was
    /// not held.
    fn drop_holding(&mut self, allocation_id: Uuid) -> Option<Uuid> {
        if self.owed.get(&allocation_id) == Some(&Confirmation::Allocation) {
            self.owed.remove(&allocation_id);
        }
        self.holdings.remove(&allocation_id).map(|_| allocation_id)
    }

    fn mark_confirmed(&mut self, allocation_id: Uuid) -> Option<Notice> {
        let holding = self.holdings.get_mut(&allocation_id)?;
        if self.owed.get(&allocation_id) == Some(&Confirmation::Allocation) {
            self.owed.remove(&allocation_id);
        }
        if holding.confirmed {
            return None;
        }
        holding.confirmed = true;
        Some(Notice::Confirmed { allocation_id })
    }

    fn mark_released(&mut self, allocation_id: Uuid) -> Option<Notice> {
        if self.owed.get(&allocation_id) != Some(&Confirmation::Deallocation) {
            return None;
        }
        self.owed.remove(&allocation_id);
        self.probes.remove(&allocation_id);
        Some(Notice::ReleaseConfirmed { allocation_id })
    }
}

/// How a confirmation is named in notices.
pub fn confirmation_name(confirmation: Confirmation) -> &'static str {
    match confirmation {
        Confirmation::Allocation => "allocation confirmation",
        Confirmation::Deallocation => "release confirmation",
    }
}

fn placed_notice(allocation_id: Uuid, holding: &Holding, moved_from: Option<String>) -> Notice {
    Notice::Placed {
        allocation_id,
        request_id: holding.request_id,
        requester_id: holding.requester_id.clone(),
        namespace: holding.namespace.clone(),
        grants: holding.grants.clone(),
        moved_from,
    }
}

#[cfg(test)]
#[path = "ledger_test.rs"]
mod tests;
