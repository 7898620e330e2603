//! Capability policies at the API edge: the caller's effective capability
//! (its bound policy, narrowed by its certificate's capability URI), and
//! the check of an allocate against it before anything is proposed.
//!
//! ```text
//!  Caller::Anyone (TLS off)                 ─▶ no check: the default policy allows everything
//!  Caller::Authenticated(identity)
//!     policy_for(cert name > role+namespace > role)  ∩  identity.capability (URI)
//!        neither                            ─▶ no check: the role's rules alone, as before policies
//!        some capability ─▶ kinds, max_per_request, priority_max (the request alone)
//!                        ─▶ providers: the request's constraints narrowed to the scope
//!                        ─▶ preempt: refused if the dry run would preempt
//!                        ─▶ max_held: against the table now (apply checks it again, exactly)
//!                        ─▶ Command::AllocateUnderPolicy { grant: policy name + revision, holder, caps }
//! ```
//!
//! A refusal is `PERMISSION_DENIED` naming the capability and the policy;
//! nothing is proposed, so the applied index does not move. The two checks
//! that the table could see change between this check and apply — the
//! policy itself and the holder's total — are made again at apply
//! (`qm_state_machine::table`'s `allocate_under_policy`), which refuses
//! with the same capability named (or `PolicyChanged`, to be retried).

use qm_state_machine::policy::{Capability, Missing, PolicyGrant};
use qm_state_machine::{AllocationRequest, AllocationTable, PreviewOutcome};
use tonic::Status;
use tracing::warn;

use super::caller::Caller;

/// The capability in force for a caller, and where it comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Effective {
    /// The bound policy's name and revision (`None`: the URI alone).
    pub policy: Option<(String, u64)>,
    /// Whether a capability URI narrowed it.
    pub narrowed_by_uri: bool,
    pub capability: Capability,
    /// Whose totals the caller's requests count toward: its certificate name.
    pub holder: String,
}

impl Effective {
    /// `by policy "team-a"`, `by the certificate's capability URI`, or both.
    fn source(&self) -> String {
        match (&self.policy, self.narrowed_by_uri) {
            (Some((name, _)), false) => format!("by policy {name:?}"),
            (Some((name, _)), true) => format!("by policy {name:?} narrowed by the certificate's capability URI"),
            (None, _) => "by the certificate's capability URI".to_owned(),
        }
    }

    fn refuse(&self, caller: &Caller, missing: &Missing) -> Status {
        let message = missing.message(&self.source());
        warn!(status = "permission_denied", caller = %caller.describe(), reason = %message, "allocate refused by capability");
        Status::permission_denied(message)
    }
}

/// The capability in force for `caller`; `None` when nothing narrows the
/// role's rules (TLS off, or no policy bound and no URI).
pub fn effective(table: &AllocationTable, caller: &Caller) -> Result<Option<Effective>, Status> {
    let Caller::Authenticated(identity) = caller else {
        return Ok(None);
    };
    let policy = table.policy_for(&identity.name, identity.role.as_str(), identity.namespace.as_deref());
    let uri =
        match &identity.capability {
            Some(uri) => Some(Capability::parse_uri(uri).map_err(|invalid| {
                Status::permission_denied(format!("{identity}: the certificate's capability URI is refused: {invalid}"))
            })?),
            None => None,
        };
    if policy.is_none() && uri.is_none() {
        return Ok(None);
    }
    let base = policy.map_or_else(Capability::unrestricted, |policy| policy.capability.clone());
    Ok(Some(Effective {
        policy: policy.map(|policy| (policy.name.clone(), policy.revision)),
        narrowed_by_uri: uri.is_some(),
        capability: match &uri {
            Some(uri) => base.intersect(uri),
            None => base,
        },
        holder: identity.name.clone(),
    }))
}

/// Checks `request` against `caller`'s capability and narrows its
/// constraints to the providers allowed. `None`: nothing to check, an
/// ordinary allocate; otherwise the grant the command carries.
pub fn check_allocate(table: &AllocationTable, caller: &Caller, request: &mut AllocationRequest) -> Result<Option<PolicyGrant>, Status> {
    let Some(effective) = effective(table, caller)? else {
        return Ok(None);
    };
    let capability = &effective.capability;
    let refuse = |missing: Missing| effective.refuse(caller, &missing);
    capability.check_request(request).map_err(refuse)?;
    capability.scope_request(request).map_err(refuse)?;
    // A provider named outright must match the selector now; placement
    // holds it to the selector's labels from here on (they are in the
    // request's constraints).
    if let Some(named) = &request.constraints.provider_id {
        if let Some(provider) = table.provider(named) {
            if let Some((key, value)) = capability
                .providers
                .labels
                .iter()
                .find(|(key, value)| provider.labels.get(*key) != Some(*value))
            {
                return Err(refuse(Missing {
                    capability: "providers",
                    asked: format!("provider {named}"),
                    limit: Some(format!("the selector is {key}={value}")),
                }));
            }
        }
    }
    if !capability.may_preempt && table.get(request.request_id).is_none() {
        if let Ok(preview) = table.preview(request) {
            if preview.outcome == PreviewOutcome::Allocated && !preview.victims.is_empty() {
                return Err(refuse(Missing {
                    capability: "preempt",
                    asked: format!("preempting {} allocation(s)", preview.victims.len()),
                    limit: Some(format!("priority {} would preempt; this identity may not", request.priority)),
                }));
            }
        }
    }
    if table.get(request.request_id).is_none() {
        for requirement in &request.requirements {
            let Some(&cap) = capability.max_held.get(&*requirement.kind) else {
                continue;
            };
            let held = table.held_by(&effective.holder, &requirement.kind);
            if held.saturating_add(requirement.quantity) > cap {
                return Err(refuse(Missing {
                    capability: "max_held",
                    asked: format!("{} holding {} {}", effective.holder, held + requirement.quantity, requirement.kind),
                    limit: Some(format!("at most {cap}; it holds {held} and asks for {} more", requirement.quantity)),
                }));
            }
        }
    }
    Ok(Some(PolicyGrant {
        policy: effective.policy.clone(),
        holder: effective.holder.clone(),
        max_held: capability.max_held.clone(),
        may_preempt: capability.may_preempt,
    }))
}

/// Checks a dry run the same way (nothing is charged or proposed).
pub fn check_preview(table: &AllocationTable, caller: &Caller, request: &mut AllocationRequest) -> Result<(), Status> {
    check_allocate(table, caller, request).map(|_| ())
}
