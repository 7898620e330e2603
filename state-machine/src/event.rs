//! Events: what changed, numbered by a revision that only grows.
//!
//! Watchers resume from a revision; the table keeps the most recent
//! [`TableConfig::event_history_max`](crate::TableConfig) events, in the
//! snapshot too, so any replica can serve a resume after a failover.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::policy::Binding;
use crate::provider::Scheduling;
use crate::quota::PreemptionSetting;
use crate::record::{UnitGrant, EVENT_ID_PREFIX};

/// The protocol's `resource_status.status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResourceState {
    Available,
    Allocated,
    Failed,
}

impl ResourceState {
    pub fn as_str(self) -> &'static str {
        match self {
            ResourceState::Available => "available",
            ResourceState::Allocated => "allocated",
            ResourceState::Failed => "failed",
        }
    }
}

/// The event id of `revision`: a version 8 (custom) uuid whose first half is
/// a fixed prefix (`EVENT_ID_PREFIX`) and whose second half is the revision. Not a name-based
/// (SHA-1) uuid: a revision is a counter no caller controls, so hashing it
/// buys nothing, and hashing one per event was a sixth of a replica's apply
/// time. The variant bits take the top two bits of the revision, which stay
/// zero below 2^62 revisions.
pub fn event_id_for(revision: u64) -> Uuid {
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&EVENT_ID_PREFIX.to_be_bytes());
    bytes[8..].copy_from_slice(&revision.to_be_bytes());
    Uuid::new_v8(bytes)
}

/// One change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Strictly increasing across the table's whole life, never reused.
    pub revision: u64,
    /// A uuid made of a fixed prefix and the revision: the same on every
    /// replica, different for every revision.
    pub event_id: Uuid,
    /// The leader's time stamped on the command that caused it.
    pub at_ms: u64,
    pub kind: EventKind,
}

impl Event {
    pub fn new(revision: u64, at_ms: u64, kind: EventKind) -> Event {
        Event {
            revision,
            event_id: event_id_for(revision),
            at_ms,
            kind,
        }
    }

    /// The namespace an event belongs to, for per-namespace watches; `None`
    /// for provider-level events, which every watcher may see.
    pub fn namespace(&self) -> Option<&str> {
        match &self.kind {
            EventKind::AllocationGranted { namespace, .. }
            | EventKind::RequestQueued { namespace, .. }
            | EventKind::RequestRejected { namespace, .. }
            | EventKind::RequestCancelled { namespace, .. }
            | EventKind::AllocationReleased { namespace, .. }
            | EventKind::AllocationExpired { namespace, .. }
            | EventKind::AllocationMoved { namespace, .. }
            | EventKind::AllocationConfirmed { namespace, .. }
            | EventKind::DeallocationConfirmed { namespace, .. }
            | EventKind::LeaseRenewed { namespace, .. }
            | EventKind::AllocationMoving { namespace, .. }
            | EventKind::OptimizationFailed { namespace, .. }
            | EventKind::MoveTargetReady { namespace, .. } => Some(namespace),
            EventKind::ReleasedMatching { namespace, .. } => namespace.as_deref(),
            EventKind::AllocationPreempted { namespace, .. }
            | EventKind::QuotaSet { namespace, .. }
            | EventKind::QuotaDeleted { namespace } => Some(namespace),
            EventKind::PreemptionSet { namespace, .. } => namespace.as_deref(),
            _ => None,
        }
    }

    /// The event's type as a stable snake_case name.
    pub fn type_name(&self) -> &'static str {
        match &self.kind {
            EventKind::ResourceStatus { .. } => "resource_status",
            EventKind::ProviderRegistered { .. } => "provider_registered",
            EventKind::ProviderUpdated { .. } => "provider_updated",
            EventKind::ProviderDeregistered { .. } => "provider_deregistered",
            EventKind::ProviderFailed { .. } => "provider_failed",
            EventKind::ProviderRecovered { .. } => "provider_recovered",
            EventKind::AllocationGranted { .. } => "allocation_granted",
            EventKind::RequestQueued { .. } => "request_queued",
            EventKind::RequestRejected { .. } => "request_rejected",
            EventKind::RequestCancelled { .. } => "request_cancelled",
            EventKind::AllocationReleased { .. } => "allocation_released",
            EventKind::AllocationExpired { .. } => "allocation_expired",
            EventKind::AllocationMoved { .. } => "allocation_moved",
            EventKind::AllocationConfirmed { .. } => "allocation_confirmed",
            EventKind::DeallocationConfirmed { .. } => "deallocation_confirmed",
            EventKind::LeaseRenewed { .. } => "lease_renewed",
            EventKind::LeasesRefreshed { .. } => "leases_refreshed",
            EventKind::ReleasedMatching { .. } => "released_matching",
            EventKind::QuotaSet { .. } => "quota_set",
            EventKind::QuotaDeleted { .. } => "quota_deleted",
            EventKind::PreemptionSet { .. } => "preemption_set",
            EventKind::AllocationPreempted { .. } => "allocation_preempted",
            EventKind::ProviderScheduling { .. } => "provider_scheduling",
            EventKind::OptimizationNeeded { .. } => "optimization_needed",
            EventKind::AllocationMoving { .. } => "allocation_moving",
            EventKind::OptimizationFailed { .. } => "optimization_failed",
            EventKind::MoveTargetReady { .. } => "move_target_ready",
            EventKind::OptimizationComplete { .. } => "optimization_complete",
            EventKind::PolicySet { .. } => "policy_set",
            EventKind::PolicyDeleted { .. } => "policy_deleted",
            EventKind::PolicyBound { .. } => "policy_bound",
            EventKind::PolicyUnbound { .. } => "policy_unbound",
        }
    }
}

/// What happened.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    /// The protocol's `resource_status` event: a unit became available,
    /// allocated or failed. `used`/`capacity` give its utilization.
    ResourceStatus {
        provider_id: String,
        resource_id: String,
        kind: String,
        status: ResourceState,
        used: u64,
        capacity: u64,
    },
    ProviderRegistered {
        provider_id: String,
        resources: u64,
    },
    ProviderUpdated {
        provider_id: String,
        resources: u64,
    },
    ProviderDeregistered {
        provider_id: String,
    },
    ProviderFailed {
        provider_id: String,
    },
    ProviderRecovered {
        provider_id: String,
    },
    AllocationGranted {
        request_id: Uuid,
        allocation_id: Uuid,
        requester_id: String,
        namespace: String,
        provider_id: String,
        grants: Vec<UnitGrant>,
    },
    RequestQueued {
        request_id: Uuid,
        requester_id: String,
        namespace: String,
        reason: String,
    },
    RequestRejected {
        request_id: Uuid,
        requester_id: String,
        namespace: String,
        reason: String,
    },
    RequestCancelled {
        request_id: Uuid,
        namespace: String,
    },
    AllocationReleased {
        request_id: Uuid,
        allocation_id: Uuid,
        namespace: String,
        provider_id: String,
    },
    AllocationExpired {
        request_id: Uuid,
        allocation_id: Uuid,
        namespace: String,
        provider_id: String,
    },
    /// Re-placed off a failed or deregistered provider (`resource_failure →
    /// reallocate_resources`, reason `provider_failed` or
    /// `provider_deregistered`), or a make-before-break move that ended
    /// (reason `optimization`).
    AllocationMoved {
        request_id: Uuid,
        allocation_id: Uuid,
        namespace: String,
        from_provider: String,
        to_provider: String,
        grants: Vec<UnitGrant>,
        reason: String,
    },
    AllocationConfirmed {
        allocation_id: Uuid,
        namespace: String,
        provider_id: String,
    },
    DeallocationConfirmed {
        allocation_id: Uuid,
        namespace: String,
        provider_id: String,
    },
    LeaseRenewed {
        allocation_id: Uuid,
        namespace: String,
        expires_at_ms: u64,
    },
    /// A new leader gave every lease a fresh window.
    LeasesRefreshed {
        leases: u64,
    },
    /// One entry of a bulk release ([`crate::Command::ReleaseMatching`]),
    /// after the `allocation_released` and `request_cancelled` events of
    /// each request it took; `next` is where the following entry continues.
    ReleasedMatching {
        namespace: Option<String>,
        requester_id: Option<String>,
        provider_id: Option<String>,
        released: u64,
        cancelled: u64,
        next: Option<Uuid>,
    },
    /// A namespace's quota was set (appended last, as are the events after it).
    QuotaSet {
        namespace: String,
        limits: BTreeMap<String, u64>,
    },
    QuotaDeleted {
        namespace: String,
    },
    /// Who may preempt changed: the cluster's setting (`namespace` `None`)
    /// or a namespace's override and protection.
    PreemptionSet {
        namespace: Option<String>,
        setting: Option<PreemptionSetting>,
        preemptible: bool,
    },
    /// A preemptor took this allocation's units: it was requeued or
    /// released (`requeued`), after its own `resource_status` events and
    /// before the preemptor's `allocation_granted`.
    AllocationPreempted {
        request_id: Uuid,
        allocation_id: Uuid,
        namespace: String,
        provider_id: String,
        priority: i64,
        preemptor_request_id: Uuid,
        preemptor_namespace: String,
        preemptor_priority: i64,
        requeued: bool,
    },
    /// A provider was cordoned, uncordoned or set draining. Appended last:
    /// histories already encoded keep their layout.
    ProviderScheduling {
        provider_id: String,
        scheduling: Scheduling,
    },
    /// The protocol's `monitoring → optimization`: a plan began `moves`
    /// moves; `trigger` is `operator`, `stranded_request` or
    /// `fragmentation` (with the kind).
    OptimizationNeeded {
        trigger: String,
        moves: u64,
    },
    /// A move began: `grants` on `to_provider` are reserved for the
    /// allocation as well as its units on `from_provider`.
    AllocationMoving {
        request_id: Uuid,
        allocation_id: Uuid,
        namespace: String,
        from_provider: String,
        to_provider: String,
        grants: Vec<UnitGrant>,
        reason: String,
    },
    /// A move was rolled back: the allocation keeps its units on
    /// `from_provider`; `reason` says why (the target did not confirm in
    /// time, a provider failed, ...).
    OptimizationFailed {
        request_id: Uuid,
        allocation_id: Uuid,
        namespace: String,
        from_provider: String,
        to_provider: String,
        reason: String,
    },
    /// A move's target holds the allocation (its agent confirmed, or it has
    /// none): the units on `from_provider` are released now, and its agent
    /// confirms the release. Names both providers, so that the source's
    /// agent sees it under TLS too.
    MoveTargetReady {
        request_id: Uuid,
        allocation_id: Uuid,
        namespace: String,
        from_provider: String,
        to_provider: String,
    },
    /// The protocol's `optimization → monitoring`: the moves under way
    /// (of plans and drains) have all ended, completed or rolled back;
    /// the counts are since the table began, as in `qm state`. Appended
    /// last: histories already encoded keep their layout.
    OptimizationComplete {
        completed_total: u64,
        rolled_back_total: u64,
    },
    /// A capability policy was set, created or replaced whole
    /// (`Command::SetPolicy`), at `revision`, with this many bindings.
    /// This and the policy events after it are appended last (snapshot
    /// format 8); they are seen by admins only.
    PolicySet {
        name: String,
        revision: u64,
        bindings: u64,
    },
    /// A capability policy was deleted (deleting none emits nothing).
    PolicyDeleted {
        name: String,
    },
    /// `binding` was added to the policy (`Command::BindPolicy`), now at `revision`.
    PolicyBound {
        name: String,
        revision: u64,
        binding: Binding,
    },
    /// `binding` was taken from the policy (`Command::UnbindPolicy`), now at `revision`.
    PolicyUnbound {
        name: String,
        revision: u64,
        binding: Binding,
    },
}

impl EventKind {
    /// Whether the event is about capability policies, which only those
    /// who may read policies (admins) see on the event stream.
    pub fn is_about_policies(&self) -> bool {
        matches!(
            self,
            EventKind::PolicySet { .. } | EventKind::PolicyDeleted { .. } | EventKind::PolicyBound { .. } | EventKind::PolicyUnbound { .. }
        )
    }
}
