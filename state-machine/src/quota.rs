//! Namespace quotas and priority preemption: the settings an admin writes
//! through the log, and their validation.
//!
//! A **quota** bounds, per namespace and kind, the sum of the quantities the
//! namespace's active allocations asked for (what a request asks, as a
//! Kubernetes `ResourceQuota` counts requests: an exclusive unit larger than
//! the ask does not count its slack against the namespace). **Preemption**
//! lets a request of at least a given priority take units from allocations
//! of strictly lower priority when nothing fits otherwise; it is off unless
//! the cluster setting or the request's namespace's override turns it on.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::InvalidArgument;
use crate::limits::{NAMESPACE_POLICIES_MAX, QUOTA_KINDS_MAX, QUOTA_MAX};
use crate::request::{check_id, check_key};

/// Who may preempt: nobody, or requests of at least this priority.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PreemptionSetting {
    /// No request preempts (the default: an operator opts in).
    #[default]
    Off,
    /// A request whose priority is at least this may preempt allocations of
    /// strictly lower priority.
    FromPriority(i64),
}

impl PreemptionSetting {
    /// Whether a request of `priority` may preempt under this setting.
    pub fn allows(self, priority: i64) -> bool {
        match self {
            PreemptionSetting::Off => false,
            PreemptionSetting::FromPriority(minimum) => priority >= minimum,
        }
    }
}

/// What happens to an allocation taken by a preemptor: the request's own
/// choice, given when it is submitted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnPreemption {
    /// Back into the queue, in its old place by priority and arrival: the
    /// work resumes when capacity frees (the default).
    #[default]
    Requeue,
    /// Released for good: for work that is cheaper to resubmit than to wait.
    Release,
}

impl OnPreemption {
    pub fn as_str(self) -> &'static str {
        match self {
            OnPreemption::Requeue => "requeue",
            OnPreemption::Release => "release",
        }
    }
}

/// Everything the table keeps about one namespace's rules. A namespace with
/// no entry has no quota, follows the cluster's preemption setting and may
/// be preempted; an entry back at those defaults is dropped, so two tables
/// with the same rules encode alike.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamespacePolicy {
    /// Kind → the most the namespace's active allocations may ask for in
    /// total. A kind not named is unbounded.
    pub quota: BTreeMap<String, u64>,
    /// Overrides the cluster's setting for requests of this namespace.
    pub preemption: Option<PreemptionSetting>,
    /// Whether this namespace's allocations may be taken by a preemptor
    /// (of any namespace); `false` protects them whatever their priority.
    pub preemptible: bool,
}

impl NamespacePolicy {
    /// The policy of a namespace no command has named.
    pub fn unset() -> NamespacePolicy {
        NamespacePolicy {
            quota: BTreeMap::new(),
            preemption: None,
            preemptible: true,
        }
    }

    /// Whether this is the policy of a namespace no command has named.
    pub fn is_unset(&self) -> bool {
        *self == NamespacePolicy::unset()
    }
}

/// Checks a quota as `SetQuota` carries it.
pub fn check_quota(namespace: &str, limits: &BTreeMap<String, u64>) -> Result<(), InvalidArgument> {
    check_id("namespace", namespace)?;
    if limits.is_empty() {
        return Err(InvalidArgument::new(
            "limits",
            "must name at least one kind (to lift every limit, delete the quota)",
        ));
    }
    if limits.len() > QUOTA_KINDS_MAX {
        return Err(InvalidArgument::new(
            "limits",
            format!("has {} kinds, at most {QUOTA_KINDS_MAX} are allowed", limits.len()),
        ));
    }
    for (kind, limit) in limits {
        let field = check_key("limits", kind)?;
        if *limit > QUOTA_MAX {
            return Err(InvalidArgument::new(field, format!("is {limit}, at most {QUOTA_MAX} is allowed")));
        }
    }
    Ok(())
}

/// Refuses a new namespace entry past [`NAMESPACE_POLICIES_MAX`].
pub(crate) fn check_room(policies: &BTreeMap<String, NamespacePolicy>, namespace: &str) -> Result<(), InvalidArgument> {
    if !policies.contains_key(namespace) && policies.len() >= NAMESPACE_POLICIES_MAX {
        return Err(InvalidArgument::new(
            "namespace",
            format!("{NAMESPACE_POLICIES_MAX} namespaces already have rules; delete some first"),
        ));
    }
    Ok(())
}
