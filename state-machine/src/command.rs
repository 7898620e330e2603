//! Commands: the log entries the table applies, and what they answer.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::{CommandError, InvalidArgument};
use crate::event::Event;
use crate::limits::ID_LEN_MAX;
use crate::policy::{Binding, CapabilityPolicy, PolicyGrant, PolicySpec};
use crate::provider::{ProviderRegistration, ProviderStatus, Scheduling};
use crate::quota::{NamespacePolicy, OnPreemption, PreemptionSetting};
use crate::record::{RequestRecord, UnitGrant};
use crate::request::AllocationRequest;
use crate::table::Cursor;

/// A command with the leader's clock reading. Time enters the table only
/// here; the table never goes backwards (it keeps the largest `now_ms` seen),
/// so a new leader with a slower clock cannot un-expire anything.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StampedCommand {
    pub now_ms: u64,
    pub command: Command,
}

impl StampedCommand {
    pub fn new(now_ms: u64, command: Command) -> Self {
        StampedCommand { now_ms, command }
    }
}

/// Everything that can change the table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Register a new provider, or update one already registered (labels
    /// replaced, units added or removed if free). A failed provider that
    /// registers again is back.
    RegisterProvider(ProviderRegistration),
    /// Move its allocations elsewhere (or queue them), then forget it.
    DeregisterProvider {
        provider_id: String,
    },
    Allocate(AllocationRequest),
    /// Release by allocation id or request id; cancels a queued request.
    /// Releasing again answers the same record.
    Release {
        id: Uuid,
    },
    /// Extend a lease by its TTL from now; takes either id.
    RenewLease {
        id: Uuid,
    },
    /// Expire leases and reject queued requests whose deadlines passed.
    Tick,
    /// Proposed by the leader when a provider misses heartbeats.
    ProviderFailed {
        provider_id: String,
    },
    /// Proposed by the leader when a failed provider heartbeats again.
    ProviderRecovered {
        provider_id: String,
    },
    /// Proposed once by a new leader: every lease gets a fresh full TTL, so
    /// renewals lost during the election do not expire anything.
    RefreshLeases,
    /// The provider's agent confirms an allocation placed on it.
    ConfirmAllocation {
        allocation_id: Uuid,
        provider_id: String,
    },
    /// The provider's agent confirms it let go of a released allocation.
    ConfirmDeallocation {
        allocation_id: Uuid,
        provider_id: String,
    },
    /// A consumer of the event history (the broker bridge) takes or keeps
    /// the named cursor and moves it up to `revision`; see
    /// [`crate::table::Cursor`]. Appended last: entries already in a log
    /// keep their encoding.
    AdvanceCursor {
        name: String,
        holder: String,
        revision: u64,
        hold_ms: u64,
    },
    /// Releases active allocations and cancels queued requests that match
    /// `filter`, in request-id order after `after`, at most
    /// [`crate::limits::BULK_RELEASE_PER_COMMAND_MAX`] of them; the answer's
    /// `next` says where the following entry continues (`None`: done).
    /// Appended last: entries already in a log keep their encoding.
    ReleaseMatching {
        filter: ReleaseFilter,
        after: Option<Uuid>,
    },
    /// Sets `namespace`'s quota: kind → the most its active allocations may
    /// ask for. Replaces the whole quota (kinds not named are unbounded).
    /// Appended last: entries already in a log keep their encoding.
    SetQuota {
        namespace: String,
        limits: BTreeMap<String, u64>,
    },
    /// Lifts every limit of `namespace`'s quota; deleting none is a no-op.
    DeleteQuota {
        namespace: String,
    },
    /// Sets who may preempt: for the whole cluster (`namespace` `None`,
    /// `setting` required), or for one namespace's requests (`setting`
    /// `None`: follow the cluster's), along with whether the namespace's own
    /// allocations may be preempted (`preemptible`, ignored for the cluster).
    SetPreemption {
        namespace: Option<String>,
        setting: Option<PreemptionSetting>,
        preemptible: bool,
    },
    /// [`Command::Allocate`] with what happens to the allocation if a
    /// preemptor takes it (an `Allocate` requeues it). A separate command,
    /// not a new request field, so that allocate entries already in a log
    /// keep their encoding.
    AllocateWith {
        request: AllocationRequest,
        on_preemption: OnPreemption,
    },
    /// An operator cordons (`true`: no new placements, what is there stays)
    /// or uncordons (`false`: open again, which also ends a drain) a
    /// provider. Appended last: entries already in a log keep their encoding.
    CordonProvider {
        provider_id: String,
        cordon: bool,
    },
    /// [`Command::Allocate`] for a request that allows its allocation to be
    /// moved make-before-break (the request's `"movable": true`). A
    /// variant of its own rather than a field of [`AllocationRequest`], so
    /// that entries already in a log keep their encoding.
    AllocateMovable(AllocationRequest),
    /// An operator asks for an optimization plan now (`qm optimize`): it is
    /// computed and its moves begin in this apply, whatever the plan
    /// cooldown. Appended last.
    Optimize,
    /// An operator drains a provider: no new placements, its movable
    /// allocations move elsewhere make-before-break, and `deadline_after_ms`
    /// from now whatever is left is moved as if the provider left (or
    /// queued). Appended last.
    DrainProvider {
        provider_id: String,
        deadline_after_ms: u64,
    },
    /// An admin sets a capability policy (replacing one of the same name,
    /// with a new revision). Appended last.
    SetPolicy(PolicySpec),
    /// An admin deletes a capability policy; deleting none is a no-op.
    DeletePolicy {
        name: String,
    },
    /// An allocate (plain, with its `on_preemption`, or movable) that the
    /// API checked against the caller's capability: apply checks the
    /// policy's revision and the holder's total again, exactly. Appended last.
    AllocateUnderPolicy {
        request: AllocationRequest,
        on_preemption: OnPreemption,
        movable: bool,
        grant: PolicyGrant,
    },
    /// [`Command::Allocate`] with every option a request may carry. Only
    /// for options no older variant expresses (movable and released on
    /// preemption together): [`Command::allocate`] picks the oldest
    /// variant that carries them, so a log written during a rolling
    /// upgrade stays readable by the replicas not yet upgraded where it
    /// can. Appended last.
    AllocateWithOptions {
        request: AllocationRequest,
        options: AllocateOptions,
    },
    /// An admin binds one identity to an existing policy, read and written
    /// in one apply (not a `SetPolicy` of a copy read before, which loses
    /// one of two binds made at once). Binding what the policy holds
    /// already changes nothing. Appended last.
    BindPolicy {
        name: String,
        binding: Binding,
    },
    /// An admin unbinds one identity from a policy; unbinding what it does
    /// not hold changes nothing. Appended last.
    UnbindPolicy {
        name: String,
        binding: Binding,
    },
}

/// What a request asks for beyond its [`AllocationRequest`]: kept on its
/// record, not in the request, so that older log entries keep decoding.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllocateOptions {
    /// It may be moved to another provider make-before-break.
    pub movable: bool,
    /// What happens to it if a preemptor takes its units.
    pub on_preemption: OnPreemption,
}

impl Command {
    /// The allocate command for `request` with `options`, in the oldest
    /// variant that carries them.
    pub fn allocate(request: AllocationRequest, options: AllocateOptions) -> Command {
        match options {
            AllocateOptions {
                movable: false,
                on_preemption: OnPreemption::Requeue,
            } => Command::Allocate(request),
            AllocateOptions {
                movable: true,
                on_preemption: OnPreemption::Requeue,
            } => Command::AllocateMovable(request),
            AllocateOptions {
                movable: false,
                on_preemption,
            } => Command::AllocateWith { request, on_preemption },
            options => Command::AllocateWithOptions { request, options },
        }
    }
}

/// What a bulk release takes: every live (queued or active) request that
/// matches all the fields given. At least one is required; a requester id
/// needs its namespace (requester ids are scoped by namespace).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseFilter {
    pub namespace: Option<String>,
    pub requester_id: Option<String>,
    /// Only allocations placed on this provider (queued requests are on none).
    pub provider_id: Option<String>,
}

impl ReleaseFilter {
    /// Refuses a filter that matches everything or names a bad id.
    pub fn check(&self) -> Result<(), InvalidArgument> {
        let fields = [
            ("namespace", &self.namespace),
            ("requester_id", &self.requester_id),
            ("provider_id", &self.provider_id),
        ];
        for (field, value) in fields {
            if let Some(value) = value {
                if value.is_empty() || value.len() > ID_LEN_MAX {
                    return Err(InvalidArgument::new(field, format!("must be 1..={ID_LEN_MAX} bytes when given")));
                }
            }
        }
        if self.namespace.is_none() && self.requester_id.is_none() && self.provider_id.is_none() {
            return Err(InvalidArgument::new(
                "filter",
                "give namespace, requester_id (with namespace) or provider_id: a bulk release of everything is refused",
            ));
        }
        if self.requester_id.is_some() && self.namespace.is_none() {
            return Err(InvalidArgument::new(
                "requester_id",
                "needs namespace: requester ids are scoped by namespace",
            ));
        }
        Ok(())
    }

    /// Whether `record`'s request matches (its placement is not looked at).
    pub(crate) fn matches_owner(&self, record: &RequestRecord) -> bool {
        let request = &record.request;
        self.namespace.as_ref().is_none_or(|namespace| request.namespace == *namespace)
            && self
                .requester_id
                .as_ref()
                .is_none_or(|requester| request.requester_id == *requester)
    }
}

impl Command {
    /// The operation's name for logs and metrics.
    pub fn operation_type(&self) -> &'static str {
        match self {
            Command::RegisterProvider(_) => "register_provider",
            Command::DeregisterProvider { .. } => "deregister_provider",
            Command::Allocate(_) => "allocate",
            Command::Release { .. } => "release",
            Command::RenewLease { .. } => "renew_lease",
            Command::Tick => "tick",
            Command::ProviderFailed { .. } => "provider_failed",
            Command::ProviderRecovered { .. } => "provider_recovered",
            Command::RefreshLeases => "refresh_leases",
            Command::ConfirmAllocation { .. } => "confirm_allocation",
            Command::ConfirmDeallocation { .. } => "confirm_deallocation",
            Command::AdvanceCursor { .. } => "advance_cursor",
            Command::ReleaseMatching { .. } => "release_matching",
            Command::SetQuota { .. } => "set_quota",
            Command::DeleteQuota { .. } => "delete_quota",
            Command::SetPreemption { .. } => "set_preemption",
            Command::AllocateWith { .. } => "allocate",
            Command::CordonProvider { cordon: true, .. } => "cordon_provider",
            Command::CordonProvider { cordon: false, .. } => "uncordon_provider",
            Command::AllocateMovable(_) => "allocate",
            Command::AllocateWithOptions { .. } => "allocate",
            Command::Optimize => "optimize",
            Command::DrainProvider { .. } => "drain_provider",
            Command::SetPolicy(_) => "set_policy",
            Command::DeletePolicy { .. } => "delete_policy",
            Command::AllocateUnderPolicy { .. } => "allocate",
            Command::BindPolicy { .. } => "bind_policy",
            Command::UnbindPolicy { .. } => "unbind_policy",
        }
    }
}

/// One move of an optimization plan: the allocation, from where, to which units.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedMove {
    pub request_id: Uuid,
    pub allocation_id: Uuid,
    pub namespace: String,
    pub from_provider: String,
    pub to_provider: String,
    pub grants: Vec<UnitGrant>,
}

/// An allocation a drain cannot move now, and why (`pinned`, `no_room`, ...).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unmovable {
    pub allocation_id: Uuid,
    pub reason: String,
}

/// A successful command's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandResponse {
    /// Allocate, release, renew and confirmations answer with the request's record.
    Request(Arc<RequestRecord>),
    Provider {
        provider_id: String,
        status: ProviderStatus,
        resources: u64,
    },
    ProviderRemoved {
        provider_id: String,
    },
    Ticked {
        expired: u64,
        rejected: u64,
    },
    LeasesRefreshed {
        leases: u64,
    },
    /// The cursor after an advance; held by someone else when its holder
    /// is not the caller.
    Cursor(Cursor),
    /// One entry of a bulk release: how many it released and cancelled,
    /// and the request id the next entry continues after (`None`: done).
    ReleasedMatching {
        released: u64,
        cancelled: u64,
        next: Option<Uuid>,
    },
    /// A namespace's rules after a quota or preemption command (the
    /// cluster's setting when `namespace` is `None`).
    Policy {
        namespace: Option<String>,
        policy: NamespacePolicy,
        cluster_preemption: PreemptionSetting,
    },
    /// The moves an optimization plan began (empty: nothing improves).
    Plan(Vec<PlannedMove>),
    /// A drain began (or was asked again): the moves under way off the
    /// provider, and what cannot move now and why (a full cluster says so
    /// instead of waiting).
    Drain {
        provider_id: String,
        deadline_ms: u64,
        moving: Vec<PlannedMove>,
        cannot_move: Vec<Unmovable>,
    },
    /// A provider's scheduling after a cordon, uncordon or drain.
    Scheduling {
        provider_id: String,
        scheduling: Scheduling,
    },
    /// A capability policy after it was set (with its new revision).
    CapabilityPolicy(CapabilityPolicy),
    /// A capability policy was deleted (`existed`: there was one to delete).
    PolicyDeleted {
        name: String,
        existed: bool,
    },
}

impl CommandResponse {
    pub fn request(&self) -> Option<&RequestRecord> {
        match self {
            CommandResponse::Request(record) => Some(record),
            _ => None,
        }
    }
}

/// The answer a replica gives for one applied entry.
pub type ApplyResult = Result<CommandResponse, CommandError>;

/// One applied command: its answer and the events it emitted, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    pub result: ApplyResult,
    pub events: Vec<Event>,
}
