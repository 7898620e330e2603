//! Reading a table written at snapshot format version 5.
//!
//! bincode is not self-describing: a field added to a record shifts every
//! byte after it, so a new build cannot read an old snapshot through the
//! current types. The types below are the version-5 layout of every
//! serialized type that has changed since, frozen as they were (leaf types
//! that have not changed are shared with the current build); each converts
//! into the current type, giving a new field the value that means "as the
//! old build behaved". Nothing here is ever written: a table read from
//! version 5 is written at the current version by its next snapshot.
//!
//! When a later version changes a type again, freeze that version the same
//! way in its own module, and keep this one: every earlier format stays
//! readable (README, *Format versions and compatibility*).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use serde::Deserialize;
use uuid::Uuid;

use super::cursors::Cursor;
use super::moves::MoveCounts;
use super::record_map::RecordMap;
use super::{AllocationTable, Indexes, LeaseRefresh};
use crate::error::SnapshotError;
use crate::event::{Event, EventKind, ResourceState};
use crate::limits::TableConfig;
use crate::provider::{Provider, ProviderStatus, Scheduling, Units};
use crate::quota::{OnPreemption, PreemptionSetting};
use crate::record::{check_derived_ids, AllocationStatus, Placement, Rare, RequestRecord, RequestState, UnitGrant};
use crate::request::{AllocationRequest, Constraints, PlacementPolicy, Requirement};
use crate::time::OptionalMillis;

/// The snapshot format version this module reads.
pub(super) const VERSION: u32 = 5;

#[derive(Deserialize)]
pub(super) struct AllocationTableV5 {
    config: TableConfigV5,
    clock_ms: u64,
    revision: u64,
    next_arrival_seq: u64,
    providers: BTreeMap<String, ProviderV5>,
    requests: BTreeMap<Uuid, RequestRecordV5>,
    history: VecDeque<EventV5>,
    cursors: BTreeMap<String, Cursor>,
    evacuating: BTreeMap<String, String>,
    lease_refresh: Option<LeaseRefresh>,
}

/// Version 5's event; its `AllocationMoved` had no reason yet.
#[derive(Deserialize)]
struct EventV5 {
    revision: u64,
    event_id: Uuid,
    at_ms: u64,
    kind: EventKindV5,
}

/// Version 5's event kinds, in their order (the variant index is encoded).
#[derive(Deserialize)]
enum EventKindV5 {
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
    AllocationMoved {
        request_id: Uuid,
        allocation_id: Uuid,
        namespace: String,
        from_provider: String,
        to_provider: String,
        grants: Vec<UnitGrant>,
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
    LeasesRefreshed {
        leases: u64,
    },
    ReleasedMatching {
        namespace: Option<String>,
        requester_id: Option<String>,
        provider_id: Option<String>,
        released: u64,
        cancelled: u64,
        next: Option<Uuid>,
    },
}

#[derive(Deserialize)]
struct TableConfigV5 {
    dedupe_window_ms: u64,
    finished_requests_max: usize,
    evictions_per_command_max: usize,
    placement_candidates_max: usize,
    queue_examined_per_free_max: usize,
    queue_len_max: usize,
    expirations_per_tick_max: usize,
    event_history_max: usize,
    evacuations_per_command_max: usize,
    lease_refreshes_per_command_max: usize,
}

#[derive(Deserialize)]
struct ProviderV5 {
    provider_id: String,
    labels: BTreeMap<String, String>,
    status: ProviderStatus,
    confirms_allocations: bool,
    /// Encoded as today's units (a map of ids to units).
    resources: Units,
    registered_at_ms: u64,
    address: Option<String>,
    port: Option<u16>,
}

#[derive(Deserialize)]
struct RequestRecordV5 {
    request: AllocationRequestV5,
    response_id: Uuid,
    allocation_id: Uuid,
    state: RequestState,
    status: AllocationStatus,
    placement: Option<Placement>,
    lease_expires_at_ms: OptionalMillis,
    reason: Option<String>,
    arrival_seq: u64,
    submitted_at_ms: u64,
    updated_at_ms: u64,
    finished_at_ms: OptionalMillis,
    first_granted_at_ms: OptionalMillis,
}

#[derive(Deserialize)]
struct AllocationRequestV5 {
    request_id: Uuid,
    requester_id: String,
    namespace: String,
    requirements: Vec<Requirement>,
    priority: i64,
    deadline_ms: OptionalMillis,
    lease_ttl_ms: OptionalMillis,
    constraints: Constraints,
    placement: PlacementPolicy,
}

impl AllocationTableV5 {
    /// Refuses records whose response or allocation ids are not those
    /// their request ids derive: the current record keeps neither and
    /// derives both (`RequestRecord::allocation_id`).
    pub(super) fn check_derived_ids(&self) -> Result<(), SnapshotError> {
        for record in self.requests.values() {
            check_derived_ids(record.request.request_id, record.response_id, record.allocation_id)
                .map_err(|reason| SnapshotError::Inconsistent { reason })?;
        }
        Ok(())
    }
}

impl From<AllocationTableV5> for AllocationTable {
    fn from(old: AllocationTableV5) -> AllocationTable {
        // In id order already: a BTreeMap's.
        let requests = old
            .requests
            .into_iter()
            .map(|(id, record)| (id, Arc::new(RequestRecord::from(record))))
            .collect();
        AllocationTable {
            config: old.config.into(),
            clock_ms: old.clock_ms,
            revision: old.revision,
            next_arrival_seq: old.next_arrival_seq,
            providers: old
                .providers
                .into_iter()
                .map(|(id, provider)| (id, Arc::new(Provider::from(provider))))
                .collect(),
            requests: RecordMap::from_sorted(requests),
            history: old.history.into_iter().map(Event::from).collect(),
            cursors: old.cursors,
            evacuating: old.evacuating,
            lease_refresh: old.lease_refresh,
            // Version 5 had no live moves...
            last_plan_at_ms: None,
            move_counts: MoveCounts::default(),
            // ... and neither quotas nor preemption.
            cluster_preemption: PreemptionSetting::Off,
            namespaces: BTreeMap::new(),
            release_awaited: BTreeMap::new(),
            awaited_by: BTreeMap::new(),
            freed_namespaces: BTreeSet::new(),
            // Nor capability policies (version 7).
            policies: BTreeMap::new(),
            policy_revision: 0,
            policy_holders: BTreeMap::new(),
            held_by_holder: BTreeMap::new(),
            preemption_withheld: false,
            index: Indexes::default(),
            pending_events: Vec::new(),
        }
    }
}

impl From<TableConfigV5> for TableConfig {
    fn from(old: TableConfigV5) -> TableConfig {
        let defaults = TableConfig::default();
        TableConfig {
            dedupe_window_ms: old.dedupe_window_ms,
            finished_requests_max: old.finished_requests_max,
            evictions_per_command_max: old.evictions_per_command_max,
            placement_candidates_max: old.placement_candidates_max,
            queue_examined_per_free_max: old.queue_examined_per_free_max,
            queue_len_max: old.queue_len_max,
            expirations_per_tick_max: old.expirations_per_tick_max,
            event_history_max: old.event_history_max,
            evacuations_per_command_max: old.evacuations_per_command_max,
            lease_refreshes_per_command_max: old.lease_refreshes_per_command_max,
            // Knobs of live moves, which version 5 did not make: the defaults.
            moves_per_plan_max: defaults.moves_per_plan_max,
            move_confirm_timeout_ms: defaults.move_confirm_timeout_ms,
            move_cooldown_ms: defaults.move_cooldown_ms,
            plan_cooldown_ms: defaults.plan_cooldown_ms,
            fragmentation_mark_permille: defaults.fragmentation_mark_permille,
            plan_providers_examined_max: defaults.plan_providers_examined_max,
        }
    }
}

impl From<ProviderV5> for Provider {
    fn from(old: ProviderV5) -> Provider {
        Provider {
            provider_id: old.provider_id.into(),
            labels: old.labels,
            status: old.status,
            confirms_allocations: old.confirms_allocations,
            resources: old.resources,
            registered_at_ms: old.registered_at_ms,
            address: old.address,
            port: old.port,
            scheduling: Scheduling::Open,
            // Derived; rebuilt with the table's indexes.
            kinds: BTreeMap::new(),
        }
    }
}

impl From<RequestRecordV5> for RequestRecord {
    fn from(old: RequestRecordV5) -> RequestRecord {
        RequestRecord {
            request: old.request.into(),
            state: old.state,
            status: old.status,
            placement: old.placement,
            lease_expires_at_ms: old.lease_expires_at_ms,
            arrival_seq: old.arrival_seq,
            submitted_at_ms: old.submitted_at_ms,
            updated_at_ms: old.updated_at_ms,
            first_granted_at_ms: old.first_granted_at_ms,
            // What every allocation did before it could choose: back to the queue.
            on_preemption: OnPreemption::Requeue,
            // Version 5 moved nothing: every allocation pinned, none moving.
            movable: false,
            rare: Rare {
                reason: old.reason.map(String::into_boxed_str),
                finished_at_ms: old.finished_at_ms,
                moving: None,
                last_moved_at_ms: OptionalMillis::NONE,
            }
            .boxed(),
        }
    }
}

impl From<AllocationRequestV5> for AllocationRequest {
    fn from(old: AllocationRequestV5) -> AllocationRequest {
        AllocationRequest {
            request_id: old.request_id,
            requester_id: old.requester_id.into(),
            namespace: old.namespace.into(),
            requirements: old.requirements.into(),
            priority: old.priority,
            deadline_ms: old.deadline_ms,
            lease_ttl_ms: old.lease_ttl_ms,
            constraints: old.constraints,
            placement: old.placement,
        }
    }
}

impl From<EventV5> for Event {
    fn from(old: EventV5) -> Event {
        Event {
            revision: old.revision,
            event_id: old.event_id,
            at_ms: old.at_ms,
            kind: old.kind.into(),
        }
    }
}

impl From<EventKindV5> for EventKind {
    fn from(old: EventKindV5) -> EventKind {
        match old {
            EventKindV5::ResourceStatus {
                provider_id,
                resource_id,
                kind,
                status,
                used,
                capacity,
            } => EventKind::ResourceStatus {
                provider_id,
                resource_id,
                kind,
                status,
                used,
                capacity,
            },
            EventKindV5::ProviderRegistered { provider_id, resources } => EventKind::ProviderRegistered { provider_id, resources },
            EventKindV5::ProviderUpdated { provider_id, resources } => EventKind::ProviderUpdated { provider_id, resources },
            EventKindV5::ProviderDeregistered { provider_id } => EventKind::ProviderDeregistered { provider_id },
            EventKindV5::ProviderFailed { provider_id } => EventKind::ProviderFailed { provider_id },
            EventKindV5::ProviderRecovered { provider_id } => EventKind::ProviderRecovered { provider_id },
            EventKindV5::AllocationGranted {
                request_id,
                allocation_id,
                requester_id,
                namespace,
                provider_id,
                grants,
            } => EventKind::AllocationGranted {
                request_id,
                allocation_id,
                requester_id,
                namespace,
                provider_id,
                grants,
            },
            EventKindV5::RequestQueued {
                request_id,
                requester_id,
                namespace,
                reason,
            } => EventKind::RequestQueued {
                request_id,
                requester_id,
                namespace,
                reason,
            },
            EventKindV5::RequestRejected {
                request_id,
                requester_id,
                namespace,
                reason,
            } => EventKind::RequestRejected {
                request_id,
                requester_id,
                namespace,
                reason,
            },
            EventKindV5::RequestCancelled { request_id, namespace } => EventKind::RequestCancelled { request_id, namespace },
            EventKindV5::AllocationReleased {
                request_id,
                allocation_id,
                namespace,
                provider_id,
            } => EventKind::AllocationReleased {
                request_id,
                allocation_id,
                namespace,
                provider_id,
            },
            EventKindV5::AllocationExpired {
                request_id,
                allocation_id,
                namespace,
                provider_id,
            } => EventKind::AllocationExpired {
                request_id,
                allocation_id,
                namespace,
                provider_id,
            },
            EventKindV5::AllocationMoved {
                request_id,
                allocation_id,
                namespace,
                from_provider,
                to_provider,
                grants,
            } => EventKind::AllocationMoved {
                request_id,
                allocation_id,
                namespace,
                from_provider,
                to_provider,
                grants,
                // Version 5 moved allocations only off failed or
                // deregistered providers and did not say which.
                reason: "provider_failed".to_owned(),
            },
            EventKindV5::AllocationConfirmed {
                allocation_id,
                namespace,
                provider_id,
            } => EventKind::AllocationConfirmed {
                allocation_id,
                namespace,
                provider_id,
            },
            EventKindV5::DeallocationConfirmed {
                allocation_id,
                namespace,
                provider_id,
            } => EventKind::DeallocationConfirmed {
                allocation_id,
                namespace,
                provider_id,
            },
            EventKindV5::LeaseRenewed {
                allocation_id,
                namespace,
                expires_at_ms,
            } => EventKind::LeaseRenewed {
                allocation_id,
                namespace,
                expires_at_ms,
            },
            EventKindV5::LeasesRefreshed { leases } => EventKind::LeasesRefreshed { leases },
            EventKindV5::ReleasedMatching {
                namespace,
                requester_id,
                provider_id,
                released,
                cancelled,
                next,
            } => EventKind::ReleasedMatching {
                namespace,
                requester_id,
                provider_id,
                released,
                cancelled,
                next,
            },
        }
    }
}
