//! Quotas and preemption on the wire: the table's namespace rules, usage
//! and previews ⇄ their messages. Kept apart from [`crate::convert`] so
//! that the messages of one feature change in one place.

use std::collections::{BTreeMap, HashMap};

use qm_state_machine::{InvalidArgument, NamespacePolicy, NamespaceUsage, PreemptionSetting, Preview, PreviewOutcome};

use crate::proto::api;

pub fn setting_to_proto(setting: PreemptionSetting) -> api::PreemptionSetting {
    match setting {
        PreemptionSetting::Off => api::PreemptionSetting {
            enabled: false,
            from_priority: 0,
        },
        PreemptionSetting::FromPriority(from_priority) => api::PreemptionSetting {
            enabled: true,
            from_priority,
        },
    }
}

pub fn setting_from_proto(setting: &api::PreemptionSetting) -> PreemptionSetting {
    match setting.enabled {
        true => PreemptionSetting::FromPriority(setting.from_priority),
        false => PreemptionSetting::Off,
    }
}

/// A quota as `SetQuota` carries it, checked by the table when applied.
pub fn limits_from_proto(limits: &HashMap<String, u64>) -> BTreeMap<String, u64> {
    limits.iter().map(|(kind, limit)| (kind.clone(), *limit)).collect()
}

fn to_hash_map(map: &BTreeMap<String, u64>) -> HashMap<String, u64> {
    map.iter().map(|(kind, amount)| (kind.clone(), *amount)).collect()
}

pub fn usage_to_proto(usage: &NamespaceUsage) -> api::NamespaceQuota {
    api::NamespaceQuota {
        namespace: usage.namespace.clone(),
        quota: to_hash_map(&usage.quota),
        held: to_hash_map(&usage.held),
        queued: usage.queued,
        preemption: usage.preemption.map(setting_to_proto),
        never_preempted: !usage.preemptible,
    }
}

pub fn usage_from_proto(quota: &api::NamespaceQuota) -> NamespaceUsage {
    NamespaceUsage {
        namespace: quota.namespace.clone(),
        held: limits_from_proto(&quota.held),
        quota: limits_from_proto(&quota.quota),
        queued: quota.queued,
        preemption: quota.preemption.as_ref().map(setting_from_proto),
        preemptible: !quota.never_preempted,
    }
}

/// A namespace's rules after a change; `held` and `queued` from the table.
pub fn policy_reply(namespace: Option<NamespaceUsage>, cluster: PreemptionSetting) -> api::NamespacePolicyReply {
    api::NamespacePolicyReply {
        namespace: namespace.as_ref().map(usage_to_proto),
        cluster_preemption: Some(setting_to_proto(cluster)),
    }
}

/// The usage line of a namespace with `policy`, holding and queueing nothing.
pub fn usage_of_policy(namespace: &str, policy: &NamespacePolicy) -> NamespaceUsage {
    NamespaceUsage {
        namespace: namespace.to_owned(),
        held: BTreeMap::new(),
        quota: policy.quota.clone(),
        queued: 0,
        preemption: policy.preemption,
        preemptible: policy.preemptible,
    }
}

pub fn preview_to_proto(preview: &Preview) -> api::PreviewReply {
    let status = match preview.outcome {
        PreviewOutcome::Allocated => api::AllocationStatus::Allocated,
        PreviewOutcome::Queued => api::AllocationStatus::Queued,
        PreviewOutcome::Rejected => api::AllocationStatus::Rejected,
    };
    let placement = preview.placement.as_ref();
    api::PreviewReply {
        status: status as i32,
        reason: preview.reason.clone().unwrap_or_default(),
        provider_id: placement
            .map(|placement| placement.provider_id.clone())
            .unwrap_or_default()
            .to_string(),
        grants: placement
            .map(|placement| {
                placement
                    .grants
                    .iter()
                    .map(|grant| api::UnitGrant {
                        resource_id: grant.resource_id.to_string(),
                        kind: grant.kind.to_string(),
                        amount: grant.amount,
                    })
                    .collect()
            })
            .unwrap_or_default(),
        victims: preview
            .victims
            .iter()
            .map(|victim| api::PreemptionVictim {
                request_id: victim.request_id.to_string(),
                allocation_id: victim.allocation_id.to_string(),
                namespace: victim.namespace.clone(),
                priority: victim.priority,
                provider_id: victim.provider_id.clone(),
                units: victim.units,
            })
            .collect(),
    }
}

/// Parses `kind=amount` pairs (`qm quota set team_a cpu_cores=64 gpu=4`).
pub fn parse_limits<'a>(pairs: impl IntoIterator<Item = &'a str>) -> Result<BTreeMap<String, u64>, InvalidArgument> {
    let mut limits = BTreeMap::new();
    for pair in pairs {
        let Some((kind, amount)) = pair.split_once('=') else {
            return Err(InvalidArgument::new("limits", format!("{pair:?} is not kind=amount")));
        };
        let amount: u64 = amount
            .parse()
            .map_err(|_| InvalidArgument::new(format!("limits.{kind}"), format!("{amount:?} is not a whole number")))?;
        if limits.insert(kind.to_owned(), amount).is_some() {
            return Err(InvalidArgument::new(format!("limits.{kind}"), "is given twice"));
        }
    }
    Ok(limits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_namespace_round_trips() {
        let usage = NamespaceUsage {
            namespace: "team_a".to_owned(),
            held: BTreeMap::from([("gpu".to_owned(), 2)]),
            quota: BTreeMap::from([("gpu".to_owned(), 4), ("cpu_cores".to_owned(), 64)]),
            queued: 3,
            preemption: Some(PreemptionSetting::FromPriority(-5)),
            preemptible: false,
        };
        assert_eq!(usage, usage_from_proto(&usage_to_proto(&usage)));
        for setting in [PreemptionSetting::Off, PreemptionSetting::FromPriority(7)] {
            assert_eq!(setting, setting_from_proto(&setting_to_proto(setting)));
        }
    }

    #[test]
    fn limits_parse_from_kind_equals_amount() {
        assert_eq!(
            Ok(BTreeMap::from([("cpu_cores".to_owned(), 64), ("gpu".to_owned(), 4)])),
            parse_limits(["cpu_cores=64", "gpu=4"])
        );
        assert_eq!(Some("limits".to_owned()), parse_limits(["gpu"]).err().map(|invalid| invalid.field));
        assert_eq!(
            Some("limits.gpu".to_owned()),
            parse_limits(["gpu=-1"]).err().map(|invalid| invalid.field)
        );
        assert_eq!(
            Some("limits.gpu".to_owned()),
            parse_limits(["gpu=1", "gpu=2"]).err().map(|invalid| invalid.field)
        );
    }
}
