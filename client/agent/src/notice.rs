//! [`Notice`]: what an agent tells its operator, one line each: a sentence
//! (`Display`) or a JSON object with an `event` field (`Serialize`).

use std::collections::BTreeMap;
use std::fmt;

use qm_state_machine::UnitGrant;
use serde::Serialize;
use uuid::Uuid;

/// Something the agent did or learned.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Notice {
    /// The provider is registered (again, after the cluster forgot it).
    Registered {
        provider_id: String,
        /// `host` or the inventory file.
        origin: String,
        resources: u64,
        capacity: BTreeMap<String, u64>,
        again: bool,
    },
    /// An allocation was placed on this provider's units; the agent confirms it.
    Placed {
        allocation_id: Uuid,
        #[serde(skip_serializing_if = "Option::is_none")]
        request_id: Option<Uuid>,
        #[serde(skip_serializing_if = "Option::is_none")]
        requester_id: Option<String>,
        namespace: String,
        grants: Vec<UnitGrant>,
        /// Set when it was moved here off a failed or removed provider.
        #[serde(skip_serializing_if = "Option::is_none")]
        moved_from: Option<String>,
    },
    /// The protocol's AllocationConfirmed is recorded: the units are handed over.
    Confirmed { allocation_id: Uuid },
    /// The requester released an allocation (or its lease ended); the agent
    /// confirms the release.
    Released { allocation_id: Uuid },
    /// The protocol's DeallocationConfirmed is recorded: the units are back.
    ReleaseConfirmed { allocation_id: Uuid },
    /// Moved to another provider (this one was declared failed or removed).
    MovedAway { allocation_id: Uuid, to_provider: String },
    /// Its lease expired; the units are back without a confirmation.
    Expired { allocation_id: Uuid },
    /// It ended while the agent was not watching (found when resynchronising).
    Gone { allocation_id: Uuid },
    /// The table refused a confirmation: the allocation is no longer here or
    /// no longer in the state the confirmation is for.
    Refused {
        allocation_id: Uuid,
        confirmation: String,
        reason: String,
    },
    /// The cluster declared this provider failed.
    ProviderFailed { provider_id: String },
    /// The cluster counts this provider as active again.
    ProviderRecovered { provider_id: String },
    /// Someone removed this provider from the cluster.
    ProviderDeregistered { provider_id: String },
    /// What the agent holds now; printed after every change.
    Holds {
        allocations: usize,
        unconfirmed: usize,
        used: BTreeMap<String, u64>,
        capacity: BTreeMap<String, u64>,
    },
    /// Something went wrong that the agent works around (it keeps going).
    Warning { message: String },
    /// The provider was removed on shutdown.
    Deregistered { provider_id: String },
}

impl fmt::Display for Notice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Notice::Registered {
                provider_id,
                origin,
                resources,
                capacity,
                again,
            } => {
                let verb = if *again { "registered again" } else { "registered" };
                write!(
                    f,
                    "{verb} {provider_id} from {origin}: {resources} units ({})",
                    kinds(capacity, None)
                )
            }
            Notice::Placed {
                allocation_id,
                requester_id,
                namespace,
                grants,
                moved_from,
                ..
            } => {
                write!(f, "placed {allocation_id}")?;
                if let Some(requester) = requester_id {
                    write!(f, " for {requester}")?;
                }
                write!(f, " ({namespace}): {}", units(grants))?;
                if let Some(from) = moved_from {
                    write!(f, ", moved from {from}")?;
                }
                write!(f, "; confirming")
            }
            Notice::Confirmed { allocation_id } => write!(f, "confirmed {allocation_id}: the units are handed over"),
            Notice::Released { allocation_id } => write!(f, "released {allocation_id}; confirming the release"),
            Notice::ReleaseConfirmed { allocation_id } => write!(f, "release of {allocation_id} confirmed: the units are back"),
            Notice::MovedAway {
                allocation_id,
                to_provider,
            } => write!(f, "moved {allocation_id} away to {to_provider}"),
            Notice::Expired { allocation_id } => write!(f, "lease of {allocation_id} expired: the units are back"),
            Notice::Gone { allocation_id } => write!(f, "{allocation_id} ended while not watching"),
            Notice::Refused {
                allocation_id,
                confirmation,
                reason,
            } => write!(f, "{confirmation} of {allocation_id} refused: {reason}"),
            Notice::ProviderFailed { provider_id } => {
                write!(f, "the cluster declared {provider_id} failed; its allocations are moved elsewhere")
            }
            Notice::ProviderRecovered { provider_id } => write!(f, "the cluster counts {provider_id} as active again"),
            Notice::ProviderDeregistered { provider_id } => write!(f, "{provider_id} was removed from the cluster"),
            Notice::Holds {
                allocations,
                unconfirmed,
                used,
                capacity,
            } => {
                write!(f, "holds {allocations} allocation(s)")?;
                if *unconfirmed > 0 {
                    write!(f, " ({unconfirmed} unconfirmed)")?;
                }
                write!(f, ": {}", kinds(capacity, Some(used)))
            }
            Notice::Warning { message } => write!(f, "warning: {message}"),
            Notice::Deregistered { provider_id } => write!(f, "deregistered {provider_id}"),
        }
    }
}

/// `cpu_cores 2, memory_gb 8` or, with `used`, `cpu_cores 1/2, memory_gb 0/8`.
fn kinds(capacity: &BTreeMap<String, u64>, used: Option<&BTreeMap<String, u64>>) -> String {
    capacity
        .iter()
        .map(|(kind, total)| match used {
            Some(used) => format!("{kind} {}/{total}", used.get(kind).copied().unwrap_or(0)),
            None => format!("{kind} {total}"),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// `cpu_cores: cpu_0 cpu_1; storage_gb: vol_1(20)`, as `qm get` shows units:
/// by kind, the amount when it is not 1.
fn units(grants: &[UnitGrant]) -> String {
    let mut kinds: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for grant in grants {
        kinds.entry(&grant.kind).or_default().push(match grant.amount {
            1 => grant.resource_id.to_string(),
            amount => format!("{}({amount})", grant.resource_id),
        });
    }
    kinds
        .iter()
        .map(|(kind, units)| format!("{kind}: {}", units.join(" ")))
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_notice_is_a_sentence_or_a_json_object_with_its_event() {
        let allocation_id = Uuid::nil();
        let placed = Notice::Placed {
            allocation_id,
            request_id: None,
            requester_id: Some("agent_123".to_owned()),
            namespace: "default".to_owned(),
            grants: vec![
                UnitGrant {
                    resource_id: "cpu_0".to_owned().into(),
                    kind: "cpu_cores".to_owned().into(),
                    amount: 1,
                },
                UnitGrant {
                    resource_id: "vol_1".to_owned().into(),
                    kind: "storage_gb".to_owned().into(),
                    amount: 20,
                },
            ],
            moved_from: Some("agent-a".to_owned()),
        };

        assert_eq!(
            format!(
                "placed {allocation_id} for agent_123 (default): cpu_cores: cpu_0; storage_gb: vol_1(20), moved from agent-a; confirming"
            ),
            placed.to_string()
        );
        let json = serde_json::to_value(&placed).unwrap();
        assert_eq!("placed", json["event"]);
        assert_eq!("agent-a", json["moved_from"]);
        assert!(json.get("request_id").is_none());
    }

    #[test]
    fn holds_shows_used_over_capacity_per_kind() {
        let holds = Notice::Holds {
            allocations: 1,
            unconfirmed: 1,
            used: BTreeMap::from([("cpu_cores".to_owned(), 1)]),
            capacity: BTreeMap::from([("cpu_cores".to_owned(), 2), ("memory_gb".to_owned(), 8)]),
        };

        assert_eq!(
            "holds 1 allocation(s) (1 unconfirmed): cpu_cores 1/2, memory_gb 0/8",
            holds.to_string()
        );
    }
}
