//! What the table remembers about one request, and the protocol states.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::name::Name;
use crate::provider::{Resource, Sharing};
use crate::quota::OnPreemption;
use crate::request::AllocationRequest;

/// The protocol's request states. `request_processing` is passed through
/// inside a single apply, so a request is never seen in it; the others are
/// where a request rests between commands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestState {
    /// Waiting for capacity, in the queue.
    Queued,
    /// Units are reserved; the provider's agent has not confirmed yet.
    Allocation,
    /// Held and in use.
    Monitoring,
    /// Released; the provider's agent has not confirmed the release yet.
    /// The units are already free for others.
    Deallocation,
    /// Released, expired or cancelled: nothing is held.
    Idle,
    /// Rejected: it will never be placed.
    Error,
    /// Held and in use while it moves make-before-break to another provider
    /// ([`Move`]): the target's units are reserved as well as the source's
    /// until the target's agent confirms; then the source's are released.
    /// Appended last: records already encoded keep their layout.
    Optimization,
}

impl RequestState {
    /// The protocol's name of the state.
    pub fn as_str(self) -> &'static str {
        match self {
            RequestState::Queued => "queued",
            RequestState::Allocation => "allocation",
            RequestState::Monitoring => "monitoring",
            RequestState::Deallocation => "deallocation",
            RequestState::Idle => "idle",
            RequestState::Error => "error",
            RequestState::Optimization => "optimization",
        }
    }

    /// Holds units now.
    pub fn is_active(self) -> bool {
        matches!(
            self,
            RequestState::Allocation | RequestState::Monitoring | RequestState::Optimization
        )
    }

    /// Will never hold units again; eligible to be forgotten after the dedupe window.
    pub fn is_finished(self) -> bool {
        matches!(self, RequestState::Deallocation | RequestState::Idle | RequestState::Error)
    }
}

/// The protocol's `allocation_response.status`: the decision on the request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AllocationStatus {
    Allocated,
    Queued,
    Rejected,
}

impl AllocationStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            AllocationStatus::Allocated => "allocated",
            AllocationStatus::Queued => "queued",
            AllocationStatus::Rejected => "rejected",
        }
    }
}

/// An amount of one unit held by an allocation.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct UnitGrant {
    /// The unit's own copy (shared, see [`Name`]).
    pub resource_id: Name,
    /// The unit's own copy.
    pub kind: Name,
    pub amount: u64,
}

impl UnitGrant {
    /// What an allocation wanting `wanted` more gets from `resource`: an
    /// exclusive unit whole, a divisible one up to its free amount.
    pub fn take(resource: &Resource, wanted: u64) -> UnitGrant {
        let amount = match resource.sharing {
            Sharing::Exclusive => resource.capacity,
            Sharing::Divisible => wanted.min(resource.free()),
        };
        UnitGrant {
            resource_id: resource.resource_id.clone(),
            kind: resource.kind.clone(),
            amount,
        }
    }
}

/// Where an allocation sits.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Placement {
    /// The provider's own copy (shared, see [`Name`]).
    pub provider_id: Name,
    /// Sorted by resource id.
    pub grants: Vec<UnitGrant>,
    pub granted_at_ms: u64,
}

/// Why an allocation moves make-before-break.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MoveReason {
    /// A plan that packs allocations onto fewer providers (`qm optimize`,
    /// a stranded queued request, fragmentation past the mark).
    Optimization,
    /// Its provider is being drained (`qm provider drain`).
    Drain,
}

impl MoveReason {
    pub fn as_str(self) -> &'static str {
        match self {
            MoveReason::Optimization => "optimization",
            MoveReason::Drain => "drain",
        }
    }
}

/// A move under way (the record is in [`RequestState::Optimization`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Move {
    pub reason: MoveReason,
    /// Where it was when the move began.
    pub from: Placement,
    /// The units reserved for it on the target provider.
    pub to: Placement,
    /// Past this, a target that has not confirmed is given up (the move is
    /// rolled back), and a source that has not confirmed its release is no
    /// longer waited for (its units are free already).
    pub deadline_ms: u64,
    /// The target's agent confirmed: the record's placement is `to` now and
    /// `from`'s units are free; the source's agent confirming the release
    /// ends the move.
    pub target_confirmed: bool,
}

/// Everything known about one request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestRecord {
    pub request: AllocationRequest,
    /// Derived from the request id, so every replica answers with the same id.
    pub response_id: Uuid,
    /// Derived from the request id; release and renew accept either id.
    pub allocation_id: Uuid,
    pub state: RequestState,
    pub status: AllocationStatus,
    /// Current placement while active; the last one after release or expiry.
    pub placement: Option<Placement>,
    pub lease_expires_at_ms: Option<u64>,
    /// Why it was queued, rejected, or ended (`released`, `lease_expired`, ...).
    pub reason: Option<String>,
    /// Order among requests of the same priority in the queue.
    pub arrival_seq: u64,
    pub submitted_at_ms: u64,
    pub updated_at_ms: u64,
    /// Set once the request is finished; the dedupe window counts from here.
    pub finished_at_ms: Option<u64>,
    /// When the request was first granted. Its deadline binds only before
    /// this: an allocation queued again because its provider failed met its
    /// deadline already and waits to be re-placed, never rejected for it.
    #[serde(default)]
    pub first_granted_at_ms: Option<u64>,
    /// What happens to the allocation if a preemptor takes its units.
    #[serde(default)]
    pub on_preemption: OnPreemption,
    /// The requester allows it to be moved to another provider
    /// make-before-break (optimization, drain). Pinned (false) by default.
    #[serde(default)]
    pub movable: bool,
    /// The move under way, in state `optimization`. Boxed: few records
    /// move at a time, and inline it made every record 120 bytes larger
    /// (a box encodes as what it holds, so the snapshot is unchanged).
    #[serde(default)]
    pub moving: Option<Box<Move>>,
    /// When its last move ended: it is not moved again within
    /// [`crate::TableConfig::move_cooldown_ms`].
    #[serde(default)]
    pub last_moved_at_ms: Option<u64>,
}

/// Namespaces for deriving ids: fixed, so ids agree across replicas and builds.
pub(crate) const RESPONSE_ID_NAMESPACE: Uuid = Uuid::from_u128(0x6a1b_7c0e_4f4d_4c55_9a1d_3e51_0000_0001);
pub(crate) const ALLOCATION_ID_NAMESPACE: Uuid = Uuid::from_u128(0x6a1b_7c0e_4f4d_4c55_9a1d_3e51_0000_0002);
/// The first half of every event id (see [`crate::event::event_id_for`]).
pub(crate) const EVENT_ID_PREFIX: u64 = 0x6a1b_7c0e_4f4d_8c55;

/// The allocation id a request gets: a name-based (v5) uuid of the request id.
pub fn allocation_id_for(request_id: Uuid) -> Uuid {
    Uuid::new_v5(&ALLOCATION_ID_NAMESPACE, request_id.as_bytes())
}

/// The response id a request gets.
pub fn response_id_for(request_id: Uuid) -> Uuid {
    Uuid::new_v5(&RESPONSE_ID_NAMESPACE, request_id.as_bytes())
}

impl RequestRecord {
    /// The deadline that still binds: the request's, until it is first granted.
    pub fn pending_deadline_ms(&self) -> Option<u64> {
        self.request.deadline_ms.filter(|_| self.first_granted_at_ms.is_none())
    }
}
