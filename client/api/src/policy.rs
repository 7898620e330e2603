//! Capability policies on the wire: the table's [`CapabilityPolicy`] ⇄
//! its message, in one place for the replica, the CLI and the HTTP API.

use std::collections::{BTreeMap, HashMap};

use qm_state_machine::policy::{Binding, Capability, CapabilityPolicy, PolicySpec, ProviderScope};
use qm_state_machine::InvalidArgument;

use crate::proto::api;

pub fn policy_to_proto(policy: &CapabilityPolicy) -> api::CapabilityPolicy {
    let capability = &policy.capability;
    api::CapabilityPolicy {
        name: policy.name.clone(),
        revision: policy.revision,
        kinds_limited: capability.kinds.is_some(),
        kinds: capability.kinds.iter().flatten().cloned().collect(),
        providers_limited: capability.providers.ids.is_some(),
        provider_ids: capability.providers.ids.iter().flatten().cloned().collect(),
        provider_labels: capability.providers.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        max_per_request: to_hash_map(&capability.max_per_request),
        max_held: to_hash_map(&capability.max_held),
        priority_max: capability.priority_max,
        may_preempt: capability.may_preempt,
        bindings: policy.bindings.iter().map(binding_to_proto).collect(),
    }
}

/// The policy a `SetPolicy` carries, its bindings checked for shape (the
/// table checks the rest when applied, and the API before proposing).
pub fn spec_from_proto(policy: &api::CapabilityPolicy) -> Result<PolicySpec, InvalidArgument> {
    let policy = policy_from_proto(policy)?;
    let spec = PolicySpec {
        name: policy.name,
        capability: policy.capability,
        bindings: policy.bindings,
    };
    spec.check()?;
    Ok(spec)
}

/// A policy as a replica answered it (not checked: for showing).
pub fn policy_from_proto(policy: &api::CapabilityPolicy) -> Result<CapabilityPolicy, InvalidArgument> {
    let capability = Capability {
        kinds: policy.kinds_limited.then(|| policy.kinds.iter().cloned().collect()),
        providers: ProviderScope {
            ids: policy.providers_limited.then(|| policy.provider_ids.iter().cloned().collect()),
            labels: policy.provider_labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        },
        max_per_request: to_btree_map(&policy.max_per_request),
        max_held: to_btree_map(&policy.max_held),
        priority_max: policy.priority_max,
        may_preempt: policy.may_preempt,
    };
    let bindings = policy.bindings.iter().map(binding_from_proto).collect::<Result<_, _>>()?;
    Ok(CapabilityPolicy {
        name: policy.name.clone(),
        revision: policy.revision,
        capability,
        bindings,
    })
}

/// A binding on the wire.
pub fn binding_to_proto(binding: &Binding) -> api::PolicyBinding {
    match binding {
        Binding::CertName(name) => api::PolicyBinding {
            cert_name: name.clone(),
            ..Default::default()
        },
        Binding::Role { role, namespace } => api::PolicyBinding {
            cert_name: String::new(),
            role: role.clone(),
            namespace: namespace.clone().unwrap_or_default(),
        },
    }
}

/// A binding from the wire, its shape checked (names are checked by the table).
pub fn binding_from_proto(binding: &api::PolicyBinding) -> Result<Binding, InvalidArgument> {
    match (binding.cert_name.is_empty(), binding.role.is_empty()) {
        (false, true) if binding.namespace.is_empty() => Ok(Binding::CertName(binding.cert_name.clone())),
        (true, false) => Ok(Binding::Role {
            role: binding.role.clone(),
            namespace: (!binding.namespace.is_empty()).then(|| binding.namespace.clone()),
        }),
        _ => Err(InvalidArgument::new(
            "bindings",
            "each binding names either cert_name, or role (with a namespace for resource_consumer if wanted)",
        )),
    }
}

fn to_hash_map(map: &BTreeMap<String, u64>) -> HashMap<String, u64> {
    map.iter().map(|(kind, amount)| (kind.clone(), *amount)).collect()
}

fn to_btree_map(map: &HashMap<String, u64>) -> BTreeMap<String, u64> {
    map.iter().map(|(kind, amount)| (kind.clone(), *amount)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_policy_round_trips() {
        let policy = CapabilityPolicy {
            name: "team-a".into(),
            revision: 7,
            capability: Capability {
                kinds: Some(["cpu_cores".to_owned()].into()),
                providers: ProviderScope {
                    ids: None,
                    labels: [("zone".to_owned(), "a".to_owned())].into(),
                },
                max_per_request: [("cpu_cores".to_owned(), 4)].into(),
                max_held: [("cpu_cores".to_owned(), 8)].into(),
                priority_max: Some(5),
                may_preempt: false,
            },
            bindings: [
                Binding::CertName("alice".into()),
                Binding::Role {
                    role: "resource_consumer".into(),
                    namespace: Some("team-a".into()),
                },
            ]
            .into(),
        };
        let spec = spec_from_proto(&policy_to_proto(&policy)).unwrap();
        assert_eq!(
            (&policy.name, &policy.capability, &policy.bindings),
            (&spec.name, &spec.capability, &spec.bindings)
        );
    }
}
