//! Namespace rules: setting quotas and preemption, checking a request
//! against its namespace's quota, and what each namespace holds.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::AllocationTable;
use crate::command::{ApplyResult, CommandResponse};
use crate::error::InvalidArgument;
use crate::event::EventKind;
use crate::quota::{check_quota, check_room, NamespacePolicy, PreemptionSetting};
use crate::request::{check_id, AllocationRequest};

/// The rules of a namespace no command has named.
static UNSET_POLICY: NamespacePolicy = NamespacePolicy {
    quota: BTreeMap::new(),
    preemption: None,
    preemptible: true,
};

/// One namespace's use against its quota, for `qm quota`, `qm state` and metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamespaceUsage {
    pub namespace: String,
    /// Kind → what the namespace's active allocations asked for in total.
    pub held: BTreeMap<String, u64>,
    /// Kind → the most they may ask for; kinds not named are unbounded.
    pub quota: BTreeMap<String, u64>,
    /// Requests of the namespace waiting in the queue (for any reason).
    pub queued: u64,
    pub preemption: Option<PreemptionSetting>,
    pub preemptible: bool,
}

impl AllocationTable {
    pub(super) fn set_quota(&mut self, namespace: &str, limits: &BTreeMap<String, u64>) -> ApplyResult {
        check_quota(namespace, limits)?;
        check_room(&self.namespaces, namespace)?;
        let mut policy = self.policy(namespace).clone();
        policy.quota = limits.clone();
        self.emit(EventKind::QuotaSet {
            namespace: namespace.to_owned(),
            limits: limits.clone(),
        });
        self.store_policy(namespace, policy);
        // A raised quota lets the namespace's waiting requests in.
        self.freed_namespaces.insert(namespace.to_owned());
        self.examine_queue();
        Ok(self.policy_response(Some(namespace)))
    }

    pub(super) fn delete_quota(&mut self, namespace: &str) -> ApplyResult {
        check_id("namespace", namespace)?;
        if !self.policy(namespace).quota.is_empty() {
            let mut policy = self.policy(namespace).clone();
            policy.quota.clear();
            self.emit(EventKind::QuotaDeleted {
                namespace: namespace.to_owned(),
            });
            self.store_policy(namespace, policy);
            self.freed_namespaces.insert(namespace.to_owned());
            self.examine_queue();
        }
        Ok(self.policy_response(Some(namespace)))
    }

    pub(super) fn set_preemption(&mut self, namespace: Option<&str>, setting: Option<PreemptionSetting>, preemptible: bool) -> ApplyResult {
        match namespace {
            None => {
                let Some(setting) = setting else {
                    return Err(InvalidArgument::new("setting", "the cluster's setting is required (off or a priority)").into());
                };
                self.cluster_preemption = setting;
            }
            Some(namespace) => {
                check_id("namespace", namespace)?;
                check_room(&self.namespaces, namespace)?;
                let mut policy = self.policy(namespace).clone();
                policy.preemption = setting;
                policy.preemptible = preemptible;
                self.store_policy(namespace, policy);
            }
        }
        self.emit(EventKind::PreemptionSet {
            namespace: namespace.map(str::to_owned),
            setting,
            preemptible: namespace.is_none() || preemptible,
        });
        Ok(self.policy_response(namespace))
    }

    /// The rules of `namespace` (the defaults if none were set).
    pub fn policy(&self, namespace: &str) -> &NamespacePolicy {
        self.namespaces.get(namespace).unwrap_or(&UNSET_POLICY)
    }

    /// The cluster-wide preemption setting.
    pub fn cluster_preemption(&self) -> PreemptionSetting {
        self.cluster_preemption
    }

    /// Whether a request of `namespace` at `priority` may preempt.
    pub(super) fn may_preempt(&self, request: &AllocationRequest) -> bool {
        self.policy(&request.namespace)
            .preemption
            .unwrap_or(self.cluster_preemption)
            .allows(request.priority)
    }

    fn store_policy(&mut self, namespace: &str, policy: NamespacePolicy) {
        match policy.is_unset() {
            true => self.namespaces.remove(namespace),
            false => self.namespaces.insert(namespace.to_owned(), policy),
        };
    }

    fn policy_response(&self, namespace: Option<&str>) -> CommandResponse {
        CommandResponse::Policy {
            namespace: namespace.map(str::to_owned),
            policy: namespace.map_or_else(NamespacePolicy::unset, |namespace| self.policy(namespace).clone()),
            cluster_preemption: self.cluster_preemption,
        }
    }

    /// What `namespace`'s active allocations asked for of `kind`.
    pub fn held(&self, namespace: &str, kind: &str) -> u64 {
        self.index
            .held
            .get(namespace)
            .and_then(|kinds| kinds.get(kind))
            .copied()
            .unwrap_or(0)
    }

    /// Why `request` alone could never fit its namespace's quota, if so.
    pub(super) fn quota_never_fits(&self, request: &AllocationRequest) -> Option<String> {
        let quota = &self.policy(&request.namespace).quota;
        request.requirements.iter().find_map(|requirement| {
            let limit = *quota.get(&*requirement.kind)?;
            (requirement.quantity > limit).then(|| {
                format!(
                    "quota_exceeded: asks for {} {}, more than namespace {}'s whole quota of {limit}",
                    requirement.quantity, requirement.kind, request.namespace
                )
            })
        })
    }

    /// Why granting `request` now would take its namespace past its quota, if so.
    pub(super) fn quota_shortfall(&self, request: &AllocationRequest) -> Option<String> {
        let quota = &self.policy(&request.namespace).quota;
        if quota.is_empty() {
            return None;
        }
        request.requirements.iter().find_map(|requirement| {
            let limit = *quota.get(&*requirement.kind)?;
            let held = self.held(&request.namespace, &requirement.kind);
            (held + requirement.quantity > limit).then(|| {
                format!(
                    "quota_exceeded: namespace {} holds {held} of its {limit} {} and asks for {} more",
                    request.namespace, requirement.kind, requirement.quantity
                )
            })
        })
    }

    /// Notes that `namespace` just gave back quota, so that the command's
    /// queue examination also walks that namespace's own queue.
    pub(super) fn note_quota_freed(&mut self, namespace: &str) {
        if !self.policy(namespace).quota.is_empty() && !self.freed_namespaces.contains(namespace) {
            self.freed_namespaces.insert(namespace.to_owned());
        }
    }

    /// Every namespace that holds something, waits for something or has
    /// rules, in name order.
    pub fn namespace_usage(&self) -> Vec<NamespaceUsage> {
        let mut names: Vec<&String> = self
            .index
            .held
            .keys()
            .chain(self.index.queue_by_namespace.keys())
            .chain(self.namespaces.keys())
            .collect();
        names.sort_unstable();
        names.dedup();
        names
            .into_iter()
            .map(|namespace| {
                let policy = self.policy(namespace);
                NamespaceUsage {
                    namespace: namespace.clone(),
                    held: self.index.held.get(namespace).cloned().unwrap_or_default(),
                    quota: policy.quota.clone(),
                    queued: self.index.queue_by_namespace.get(namespace).map_or(0, |queue| queue.len() as u64),
                    preemption: policy.preemption,
                    preemptible: policy.preemptible,
                }
            })
            .collect()
    }
}
