//! What the table remembers about one request, and the protocol states.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::name::Name;
use crate::provider::{Resource, Sharing};
use crate::quota::OnPreemption;
use crate::request::AllocationRequest;
use crate::time::OptionalMillis;

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
    /// Sorted by resource id. A boxed slice: a placement's grants never
    /// change, and the vector's capacity field was 8 bytes of every record
    /// (encoded as the vector was, a sequence).
    pub grants: Box<[UnitGrant]>,
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
///
/// Its response and allocation ids are derived from the request id
/// ([`Self::response_id`], [`Self::allocation_id`]), not kept: 32 bytes of
/// every record a table holds (BENCHMARKS.md, "Fewer bytes per record").
/// The encoding still carries them, as it always did (`EncodedRecord`),
/// and decoding refuses a record whose ids are not its request id's.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "EncodedRecord")]
pub struct RequestRecord {
    pub request: AllocationRequest,
    pub state: RequestState,
    pub status: AllocationStatus,
    /// Current placement while active; the last one after release or expiry.
    pub placement: Option<Placement>,
    pub lease_expires_at_ms: OptionalMillis,
    /// Order among requests of the same priority in the queue.
    pub arrival_seq: u64,
    pub submitted_at_ms: u64,
    pub updated_at_ms: u64,
    /// When the request was first granted. Its deadline binds only before
    /// this: an allocation queued again because its provider failed met its
    /// deadline already and waits to be re-placed, never rejected for it.
    pub first_granted_at_ms: OptionalMillis,
    /// What happens to the allocation if a preemptor takes its units.
    pub on_preemption: OnPreemption,
    /// The requester allows it to be moved to another provider
    /// make-before-break (optimization, drain). Pinned (false) by default.
    pub movable: bool,
    /// The fields few live records set (see [`Rare`]): read through
    /// [`Self::rare`] and its shorthands, changed through [`Self::rare_mut`].
    /// `None` exactly when they are all unset, so equal records compare equal.
    pub(crate) rare: Option<Box<Rare>>,
}

/// What a live allocation almost never carries, kept apart: a record of
/// the million a table may hold is a fixed part, and this box only for the
/// records that were queued with a reason, have finished, or move. Inline,
/// these took 40 of every record's bytes (BENCHMARKS.md, "Where a million
/// allocations' bytes go"); their place in the encoding is unchanged.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rare {
    /// Why it was queued, rejected, or ended (`released`, `lease_expired`, ...).
    /// Never changed in place, so a boxed `str` (encoded as the string).
    pub reason: Option<Box<str>>,
    /// Set once the request is finished; the dedupe window counts from here.
    pub finished_at_ms: OptionalMillis,
    /// The move under way, in state `optimization`. Boxed: few records
    /// move at a time (a box encodes as what it holds).
    pub moving: Option<Box<Move>>,
    /// When its last move ended: it is not moved again within
    /// [`crate::TableConfig::move_cooldown_ms`].
    pub last_moved_at_ms: OptionalMillis,
}

/// What [`RequestRecord::rare`] reads when the record has none of it.
static NOTHING_RARE: Rare = Rare {
    reason: None,
    finished_at_ms: OptionalMillis::NONE,
    moving: None,
    last_moved_at_ms: OptionalMillis::NONE,
};

impl Rare {
    fn is_unset(&self) -> bool {
        *self == NOTHING_RARE
    }

    /// Boxed, or `None` when nothing is set: the record's canonical form.
    pub(crate) fn boxed(self) -> Option<Box<Rare>> {
        (!self.is_unset()).then(|| Box::new(self))
    }
}

/// [`RequestRecord::rare_mut`]'s handle: on drop, drops the box again if
/// everything in it is unset.
pub struct RareMut<'a>(&'a mut Option<Box<Rare>>);

impl std::ops::Deref for RareMut<'_> {
    type Target = Rare;

    fn deref(&self) -> &Rare {
        self.0.as_deref().expect("made when the handle was")
    }
}

impl std::ops::DerefMut for RareMut<'_> {
    fn deref_mut(&mut self) -> &mut Rare {
        self.0.as_deref_mut().expect("made when the handle was")
    }
}

impl Drop for RareMut<'_> {
    fn drop(&mut self) {
        if self.0.as_deref().is_some_and(Rare::is_unset) {
            *self.0 = None;
        }
    }
}

/// A [`RequestRecord`] as it is encoded: its fields in their order, with
/// the two derived ids after the request. Decoded into, then checked and
/// turned into a record; a record encodes through [`EncodedRecordRef`],
/// the same fields borrowed, so the bytes are those of the record that kept
/// the ids (snapshot format 8 and before).
#[derive(Deserialize)]
#[serde(rename = "RequestRecord")]
struct EncodedRecord {
    request: AllocationRequest,
    response_id: Uuid,
    allocation_id: Uuid,
    state: RequestState,
    status: AllocationStatus,
    placement: Option<Placement>,
    lease_expires_at_ms: OptionalMillis,
    reason: Option<Box<str>>,
    arrival_seq: u64,
    submitted_at_ms: u64,
    updated_at_ms: u64,
    finished_at_ms: OptionalMillis,
    #[serde(default)]
    first_granted_at_ms: OptionalMillis,
    #[serde(default)]
    on_preemption: OnPreemption,
    #[serde(default)]
    movable: bool,
    #[serde(default)]
    moving: Option<Box<Move>>,
    #[serde(default)]
    last_moved_at_ms: OptionalMillis,
}

/// [`EncodedRecord`], borrowed from a record to encode it.
#[derive(Serialize)]
#[serde(rename = "RequestRecord")]
struct EncodedRecordRef<'a> {
    request: &'a AllocationRequest,
    response_id: Uuid,
    allocation_id: Uuid,
    state: RequestState,
    status: AllocationStatus,
    placement: &'a Option<Placement>,
    lease_expires_at_ms: OptionalMillis,
    reason: &'a Option<Box<str>>,
    arrival_seq: u64,
    submitted_at_ms: u64,
    updated_at_ms: u64,
    finished_at_ms: OptionalMillis,
    first_granted_at_ms: OptionalMillis,
    on_preemption: OnPreemption,
    movable: bool,
    moving: &'a Option<Box<Move>>,
    last_moved_at_ms: OptionalMillis,
}

impl Serialize for RequestRecord {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        EncodedRecordRef {
            request: &self.request,
            response_id: self.response_id(),
            allocation_id: self.allocation_id(),
            state: self.state,
            status: self.status,
            placement: &self.placement,
            lease_expires_at_ms: self.lease_expires_at_ms,
            reason: &self.rare().reason,
            arrival_seq: self.arrival_seq,
            submitted_at_ms: self.submitted_at_ms,
            updated_at_ms: self.updated_at_ms,
            finished_at_ms: self.finished_at_ms(),
            first_granted_at_ms: self.first_granted_at_ms,
            on_preemption: self.on_preemption,
            movable: self.movable,
            moving: &self.rare().moving,
            last_moved_at_ms: self.rare().last_moved_at_ms,
        }
        .serialize(serializer)
    }
}

impl TryFrom<EncodedRecord> for RequestRecord {
    type Error = String;

    /// Refuses ids that are not the request id's: this build would answer
    /// with the derived ones, and every build derived them the same way.
    fn try_from(encoded: EncodedRecord) -> Result<RequestRecord, String> {
        check_derived_ids(encoded.request.request_id, encoded.response_id, encoded.allocation_id)?;
        Ok(RequestRecord {
            request: encoded.request,
            state: encoded.state,
            status: encoded.status,
            placement: encoded.placement,
            lease_expires_at_ms: encoded.lease_expires_at_ms,
            arrival_seq: encoded.arrival_seq,
            submitted_at_ms: encoded.submitted_at_ms,
            updated_at_ms: encoded.updated_at_ms,
            first_granted_at_ms: encoded.first_granted_at_ms,
            on_preemption: encoded.on_preemption,
            movable: encoded.movable,
            rare: Rare {
                reason: encoded.reason,
                finished_at_ms: encoded.finished_at_ms,
                moving: encoded.moving,
                last_moved_at_ms: encoded.last_moved_at_ms,
            }
            .boxed(),
        })
    }
}

/// Whether an encoded record's response and allocation ids are those its
/// request id derives (the error says which is not).
pub(crate) fn check_derived_ids(request_id: Uuid, response_id: Uuid, allocation_id: Uuid) -> Result<(), String> {
    if response_id != response_id_for(request_id) {
        return Err(format!(
            "request {request_id} has response id {response_id}, not the one derived from it"
        ));
    }
    if allocation_id != allocation_id_for(request_id) {
        return Err(format!(
            "request {request_id} has allocation id {allocation_id}, not the one derived from it"
        ));
    }
    Ok(())
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
    /// The id of the answer to this request, the same on every replica.
    pub fn response_id(&self) -> Uuid {
        response_id_for(self.request.request_id)
    }

    /// The allocation's id (release and renew accept it or the request
    /// id), the same on every replica.
    pub fn allocation_id(&self) -> Uuid {
        allocation_id_for(self.request.request_id)
    }

    /// The fields few records set (all unset for most).
    pub fn rare(&self) -> &Rare {
        self.rare.as_deref().unwrap_or(&NOTHING_RARE)
    }

    /// To change [`Self::rare`]'s fields: `record.rare_mut().moving = ...`.
    pub fn rare_mut(&mut self) -> RareMut<'_> {
        self.rare.get_or_insert_with(Box::default);
        RareMut(&mut self.rare)
    }

    /// Sets why it was queued, rejected, or ended. Clearing it on a record
    /// without rare fields makes no box: a grant clears it on every
    /// allocation.
    pub fn set_reason(&mut self, reason: Option<Box<str>>) {
        if reason.is_some() || self.rare.is_some() {
            self.rare_mut().reason = reason;
        }
    }

    /// Why it was queued, rejected, or ended.
    pub fn reason(&self) -> Option<&str> {
        self.rare().reason.as_deref()
    }

    /// When it finished, once it has.
    pub fn finished_at_ms(&self) -> OptionalMillis {
        self.rare().finished_at_ms
    }

    /// The move under way, if any.
    pub fn moving(&self) -> Option<&Move> {
        self.rare().moving.as_deref()
    }

    /// The deadline that still binds: the request's, until it is first granted.
    pub fn pending_deadline_ms(&self) -> Option<u64> {
        self.request.deadline_ms.get().filter(|_| self.first_granted_at_ms.is_none())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::{Constraints, PlacementPolicy, Requirement};

    /// The record as snapshot format 8 and before declared it: the ids kept.
    #[derive(Serialize)]
    struct RecordThatKeptItsIds {
        request: AllocationRequest,
        response_id: Uuid,
        allocation_id: Uuid,
        state: RequestState,
        status: AllocationStatus,
        placement: Option<Placement>,
        lease_expires_at_ms: Option<u64>,
        reason: Option<String>,
        arrival_seq: u64,
        submitted_at_ms: u64,
        updated_at_ms: u64,
        finished_at_ms: Option<u64>,
        first_granted_at_ms: Option<u64>,
        on_preemption: OnPreemption,
        movable: bool,
        moving: Option<Box<Move>>,
        last_moved_at_ms: Option<u64>,
    }

    fn record() -> RequestRecord {
        let placement = Placement {
            provider_id: "node_1".into(),
            grants: vec![UnitGrant {
                resource_id: "gpu_0".into(),
                kind: "gpu".into(),
                amount: 1,
            }]
            .into(),
            granted_at_ms: 7,
        };
        RequestRecord {
            request: AllocationRequest {
                request_id: Uuid::from_u128(0x1234_5678_9abc_def0_1234_5678_9abc_def0),
                requester_id: "agent_1".into(),
                namespace: "default".into(),
                requirements: vec![Requirement {
                    kind: "gpu".into(),
                    quantity: 1,
                }]
                .into(),
                priority: 3,
                deadline_ms: OptionalMillis::some(9),
                lease_ttl_ms: OptionalMillis::some(60_000),
                constraints: Constraints::default(),
                placement: PlacementPolicy::Spread,
            },
            state: RequestState::Optimization,
            status: AllocationStatus::Allocated,
            placement: Some(placement.clone()),
            lease_expires_at_ms: Some(60_007).into(),
            arrival_seq: 5,
            submitted_at_ms: 6,
            updated_at_ms: 8,
            first_granted_at_ms: OptionalMillis::some(7),
            on_preemption: OnPreemption::Release,
            movable: true,
            rare: Rare {
                reason: Some("moved".into()),
                finished_at_ms: OptionalMillis::NONE,
                moving: Some(Box::new(Move {
                    reason: MoveReason::Drain,
                    from: placement.clone(),
                    to: placement,
                    deadline_ms: 11,
                    target_confirmed: false,
                })),
                last_moved_at_ms: OptionalMillis::some(4),
            }
            .boxed(),
        }
    }

    fn kept(record: &RequestRecord, response_id: Uuid, allocation_id: Uuid) -> RecordThatKeptItsIds {
        let rare = record.rare().clone();
        let record = record.clone();
        RecordThatKeptItsIds {
            request: record.request,
            response_id,
            allocation_id,
            state: record.state,
            status: record.status,
            placement: record.placement,
            lease_expires_at_ms: record.lease_expires_at_ms.get(),
            reason: rare.reason.map(String::from),
            arrival_seq: record.arrival_seq,
            submitted_at_ms: record.submitted_at_ms,
            updated_at_ms: record.updated_at_ms,
            finished_at_ms: rare.finished_at_ms.get(),
            first_granted_at_ms: record.first_granted_at_ms.get(),
            on_preemption: record.on_preemption,
            movable: record.movable,
            moving: rare.moving,
            last_moved_at_ms: rare.last_moved_at_ms.get(),
        }
    }

    #[test]
    fn encodes_as_the_record_that_kept_its_derived_ids() {
        let config = bincode::config::standard();
        let record = record();
        let request_id = record.request.request_id;
        let old = kept(&record, response_id_for(request_id), allocation_id_for(request_id));

        let bytes = bincode::serde::encode_to_vec(&record, config).unwrap();
        assert_eq!(bincode::serde::encode_to_vec(&old, config).unwrap(), bytes);
        assert_eq!(serde_json::to_string(&old).unwrap(), serde_json::to_string(&record).unwrap());
        let (decoded, _): (RequestRecord, usize) = bincode::serde::decode_from_slice(&bytes, config).unwrap();
        assert_eq!(record, decoded);
        assert_eq!(allocation_id_for(request_id), decoded.allocation_id());
        assert_eq!(response_id_for(request_id), decoded.response_id());
    }

    #[test]
    fn rare_fields_unset_again_leave_no_box() {
        let mut record = record();
        let plain = {
            let mut plain = record.clone();
            let mut rare = plain.rare_mut();
            *rare = Rare::default();
            drop(rare);
            plain
        };
        assert!(plain.rare.is_none(), "all unset: no box");
        assert_eq!(None, plain.reason());
        // Set and unset one by one: equal to the record that never had them.
        let mut again = plain.clone();
        again.rare_mut().reason = Some("queued".into());
        assert_eq!(Some("queued"), again.reason());
        assert_ne!(plain, again);
        again.rare_mut().reason = None;
        assert_eq!(plain, again);
        assert!(again.rare.is_none());
        // The same through `set_reason`, which makes no box to clear none.
        again.set_reason(None);
        assert!(again.rare.is_none());
        again.set_reason(Some("released".into()));
        assert_eq!(Some("released"), again.reason());
        again.set_reason(None);
        assert_eq!(plain, again);
        // A read through the handle keeps what is set.
        let moving = record.rare_mut().moving.clone();
        assert_eq!(moving.as_deref(), record.moving());
        assert!(record.rare.is_some());
        // Most records carry no box: a fixed part of at most 176 bytes on
        // 64-bit targets, with its `Arc` counts a 192-byte allocation.
        #[cfg(target_pointer_width = "64")]
        assert!(size_of::<RequestRecord>() <= 176, "{}", size_of::<RequestRecord>());
    }

    #[test]
    fn ids_not_derived_from_the_request_id_are_refused() {
        let config = bincode::config::standard();
        let record = record();
        let request_id = record.request.request_id;
        let other = Uuid::from_u128(42);
        for (response_id, allocation_id, named) in [
            (other, allocation_id_for(request_id), "response id"),
            (response_id_for(request_id), other, "allocation id"),
        ] {
            let bytes = bincode::serde::encode_to_vec(kept(&record, response_id, allocation_id), config).unwrap();
            let error = bincode::serde::decode_from_slice::<RequestRecord, _>(&bytes, config).unwrap_err();
            assert!(error.to_string().contains(named), "{error}");
        }
    }
}
