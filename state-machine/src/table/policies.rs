//! Capability policies in the table: setting and deleting them, binding
//! and unbinding one identity at a time (atomically, at apply), each with
//! its event (`policy_set`, `policy_deleted`, `policy_bound`,
//! `policy_unbound`), finding an identity's, and the allocate that carries a [`PolicyGrant`] — re-checked
//! here, at apply, where the total an identity holds is exact.
//!
//! An identity's total counts its **live** requests (queued or active)
//! allocated under a grant with totals to keep: counting the queued ones
//! too means that a queued request granted later can never take the
//! identity past its cap, with no check needed at that later time. Each
//! such request's holder is kept (`policy_holders`, state) until the
//! request finishes; the per-holder sums are derived from it.

use std::borrow::Cow;
use std::collections::BTreeMap;

use uuid::Uuid;

use super::AllocationTable;
use crate::command::{ApplyResult, CommandResponse};
use crate::error::{CommandError, InvalidArgument, SnapshotError};
use crate::event::EventKind;
use crate::policy::{Binding, CapabilityPolicy, PolicyGrant, PolicySpec, POLICIES_MAX, POLICY_BINDINGS_MAX};
use crate::quota::OnPreemption;
use crate::request::{check_id, AllocationRequest};

impl AllocationTable {
    pub(super) fn set_policy(&mut self, spec: &PolicySpec) -> ApplyResult {
        spec.check()?;
        if !self.policies.contains_key(&spec.name) && self.policies.len() >= POLICIES_MAX {
            return Err(InvalidArgument::new("name", format!("{POLICIES_MAX} policies exist already; delete some first")).into());
        }
        // One identity, one policy at each rank: a binding already held by
        // another policy is refused rather than silently shadowed.
        for other in self.policies.values().filter(|other| other.name != spec.name) {
            if let Some(taken) = spec.bindings.intersection(&other.bindings).next() {
                return Err(InvalidArgument::new("bindings", format!("{taken} is already bound to policy {:?}", other.name)).into());
            }
        }
        self.policy_revision += 1;
        let policy = CapabilityPolicy {
            name: spec.name.clone(),
            revision: self.policy_revision,
            capability: spec.capability.clone(),
            bindings: spec.bindings.clone(),
        };
        self.policies.insert(spec.name.clone(), policy.clone());
        self.emit(EventKind::PolicySet {
            name: policy.name.clone(),
            revision: policy.revision,
            bindings: policy.bindings.len() as u64,
        });
        Ok(CommandResponse::CapabilityPolicy(policy))
    }

    pub(super) fn delete_policy(&mut self, name: &str) -> ApplyResult {
        check_id("name", name)?;
        let existed = self.policies.remove(name).is_some();
        if existed {
            self.emit(EventKind::PolicyDeleted { name: name.to_owned() });
        }
        Ok(CommandResponse::PolicyDeleted {
            name: name.to_owned(),
            existed,
        })
    }

    /// Adds `binding` to the policy `name`, read and changed in this one
    /// apply. Refused as `set_policy` refuses: a binding another policy
    /// holds, more than [`POLICY_BINDINGS_MAX`]. One the policy holds
    /// already changes nothing (no new revision, no event).
    pub(super) fn bind_policy(&mut self, name: &str, binding: &Binding) -> ApplyResult {
        check_id("name", name)?;
        binding.check()?;
        let Some(policy) = self.policies.get(name) else {
            return Err(CommandError::UnknownPolicy { name: name.to_owned() });
        };
        if policy.bindings.contains(binding) {
            return Ok(CommandResponse::CapabilityPolicy(policy.clone()));
        }
        if let Some(other) = self.policies.values().find(|other| other.bindings.contains(binding)) {
            return Err(InvalidArgument::new("bindings", format!("{binding} is already bound to policy {:?}", other.name)).into());
        }
        if policy.bindings.len() >= POLICY_BINDINGS_MAX {
            return Err(InvalidArgument::new("bindings", format!("policy {name:?} has {POLICY_BINDINGS_MAX} bindings already")).into());
        }
        self.change_bindings(name, binding, true)
    }

    /// Takes `binding` from the policy `name`; one it does not hold
    /// changes nothing.
    pub(super) fn unbind_policy(&mut self, name: &str, binding: &Binding) -> ApplyResult {
        check_id("name", name)?;
        binding.check()?;
        let Some(policy) = self.policies.get(name) else {
            return Err(CommandError::UnknownPolicy { name: name.to_owned() });
        };
        if !policy.bindings.contains(binding) {
            return Ok(CommandResponse::CapabilityPolicy(policy.clone()));
        }
        self.change_bindings(name, binding, false)
    }

    /// Adds (`bound`) or takes `binding` from the existing policy `name`,
    /// with a new revision: an allocate checked against the bindings
    /// before is checked again (`CommandError::PolicyChanged`).
    fn change_bindings(&mut self, name: &str, binding: &Binding, bound: bool) -> ApplyResult {
        self.policy_revision += 1;
        let revision = self.policy_revision;
        let policy = self.policies.get_mut(name).expect("the caller found the policy");
        policy.revision = revision;
        if bound {
            policy.bindings.insert(binding.clone());
        } else {
            policy.bindings.remove(binding);
        }
        let policy = policy.clone();
        let (name, binding) = (name.to_owned(), binding.clone());
        self.emit(match bound {
            true => EventKind::PolicyBound { name, revision, binding },
            false => EventKind::PolicyUnbound { name, revision, binding },
        });
        Ok(CommandResponse::CapabilityPolicy(policy))
    }

    /// Every policy, in name order.
    pub fn policies(&self) -> impl Iterator<Item = &CapabilityPolicy> {
        self.policies.values()
    }

    pub fn capability_policy(&self, name: &str) -> Option<&CapabilityPolicy> {
        self.policies.get(name)
    }

    /// The policy bound to an identity, most specific binding first:
    /// certificate name, then role and namespace, then role alone. `None`:
    /// no policy is bound, the role's rules alone apply.
    pub fn policy_for(&self, cert_name: &str, role: &str, namespace: Option<&str>) -> Option<&CapabilityPolicy> {
        // `set_policy` keeps each binding in one policy, so the best rank is unique.
        self.policies
            .values()
            .filter_map(|policy| policy.binding_rank(cert_name, role, namespace).map(|rank| (rank, policy)))
            .max_by_key(|(rank, _)| *rank)
            .map(|(_, policy)| policy)
    }

    /// What `holder`'s live requests allocated under grants ask for of `kind`.
    pub fn held_by(&self, holder: &str, kind: &str) -> u64 {
        self.held_by_holder
            .get(holder)
            .and_then(|kinds| kinds.get(kind))
            .copied()
            .unwrap_or(0)
    }

    /// An allocate the API checked against a policy: the policy must still
    /// be the revision checked, and the holder's total must stay within
    /// the grant's caps; then it is an ordinary allocate (without
    /// preemption if the grant withholds it), charged to the holder.
    pub(super) fn allocate_under_policy(
        &mut self,
        request: Cow<'_, AllocationRequest>,
        on_preemption: OnPreemption,
        movable: bool,
        grant: &PolicyGrant,
    ) -> ApplyResult {
        request.check()?;
        // A resend answers what the first one got, whatever changed since.
        if self.requests.contains_key(&request.request_id) {
            return self.allocate(request, on_preemption, movable);
        }
        check_id("grant.holder", &grant.holder)?;
        if let Some((name, revision)) = &grant.policy {
            let current = self.policies.get(name).map(|policy| policy.revision);
            if current != Some(*revision) {
                return Err(CommandError::PolicyChanged {
                    policy: name.clone(),
                    checked_revision: *revision,
                    current_revision: current,
                });
            }
        }
        for requirement in &request.requirements {
            let Some(&cap) = grant.max_held.get(&*requirement.kind) else {
                continue;
            };
            let held = self.held_by(&grant.holder, &requirement.kind);
            if held.saturating_add(requirement.quantity) > cap {
                return Err(CommandError::CapabilityDenied {
                    capability: "max_held".to_owned(),
                    detail: format!(
                        "{} holding {} {} not allowed (at most {cap}; it holds {held} and asks for {} more)",
                        grant.holder,
                        held + requirement.quantity,
                        requirement.kind,
                        requirement.quantity
                    ),
                });
            }
        }
        let request_id = request.request_id;
        self.preemption_withheld = !grant.may_preempt;
        let result = self.allocate(request, on_preemption, movable);
        self.preemption_withheld = false;
        let response = result?;
        let record = &self.requests[&request_id];
        if !grant.max_held.is_empty() && !record.state.is_finished() {
            let request = record.request.clone();
            self.policy_holders.insert(request_id, grant.holder.clone());
            self.charge(&grant.holder, &request);
        }
        Ok(response)
    }

    /// Counts a live request toward its holder's totals.
    fn charge(&mut self, holder: &str, request: &AllocationRequest) {
        let kinds = self.held_by_holder.entry(holder.to_owned()).or_default();
        for requirement in &request.requirements {
            // Saturating: a restored table's quantities are not trusted.
            let held = kinds.entry(requirement.kind.to_string()).or_insert(0);
            *held = held.saturating_add(requirement.quantity);
        }
    }

    /// A charged request finished: its holder's totals give it back.
    pub(super) fn uncharge_finished(&mut self, request: &AllocationRequest) {
        let Some(holder) = self.policy_holders.remove(&request.request_id) else {
            return;
        };
        let kinds = self.held_by_holder.get_mut(&holder).expect("a charged holder has totals");
        for requirement in &request.requirements {
            let held = kinds.get_mut(&*requirement.kind).expect("a charged kind is counted");
            *held = held
                .checked_sub(requirement.quantity)
                .expect("a holder gives back only what it was charged");
            if *held == 0 {
                kinds.remove(&*requirement.kind);
            }
        }
        if kinds.is_empty() {
            self.held_by_holder.remove(&holder);
        }
    }

    /// A restored table's `policy_holders` name only requests it holds (the
    /// totals are rebuilt from those requests).
    pub(super) fn check_policy_holders(&self) -> Result<(), SnapshotError> {
        match self
            .policy_holders
            .keys()
            .find(|request_id| !self.requests.contains_key(request_id))
        {
            Some(request_id) => Err(SnapshotError::Inconsistent {
                reason: format!("a policy holder is charged for request {request_id}, which the table does not hold"),
            }),
            None => Ok(()),
        }
    }

    /// The per-holder totals from `policy_holders`, after a restore.
    pub(super) fn rebuild_held_by_holder(&mut self) {
        self.held_by_holder = BTreeMap::new();
        let charged: Vec<(Uuid, String)> = self.policy_holders.iter().map(|(id, holder)| (*id, holder.clone())).collect();
        for (request_id, holder) in charged {
            let request = self.requests[&request_id].request.clone();
            self.charge(&holder, &request);
        }
    }
}
