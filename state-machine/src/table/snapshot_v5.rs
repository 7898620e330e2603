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
use super::record_map::RecordMap;
use super::{AllocationTable, Indexes, LeaseRefresh};
use crate::event::Event;
use crate::limits::TableConfig;
use crate::provider::{Provider, ProviderStatus, Resource};
use crate::quota::{OnPreemption, PreemptionSetting};
use crate::record::{AllocationStatus, Placement, RequestRecord, RequestState};
use crate::request::{AllocationRequest, Constraints, PlacementPolicy, Requirement};
use crate::time::UnixMillis;

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
    history: VecDeque<Event>,
    cursors: BTreeMap<String, Cursor>,
    evacuating: BTreeMap<String, String>,
    lease_refresh: Option<LeaseRefresh>,
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
    resources: BTreeMap<String, Resource>,
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
    lease_expires_at_ms: Option<u64>,
    reason: Option<String>,
    arrival_seq: u64,
    submitted_at_ms: u64,
    updated_at_ms: u64,
    finished_at_ms: Option<u64>,
    first_granted_at_ms: Option<u64>,
}

#[derive(Deserialize)]
struct AllocationRequestV5 {
    request_id: Uuid,
    requester_id: String,
    namespace: String,
    requirements: Vec<Requirement>,
    priority: i64,
    deadline_ms: Option<UnixMillis>,
    lease_ttl_ms: Option<u64>,
    constraints: Constraints,
    placement: PlacementPolicy,
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
            history: old.history,
            cursors: old.cursors,
            evacuating: old.evacuating,
            lease_refresh: old.lease_refresh,
            // Version 5 had neither quotas nor preemption.
            cluster_preemption: PreemptionSetting::Off,
            namespaces: BTreeMap::new(),
            release_awaited: BTreeMap::new(),
            awaited_by: BTreeMap::new(),
            freed_namespaces: BTreeSet::new(),
            index: Indexes::default(),
            pending_events: Vec::new(),
        }
    }
}

impl From<TableConfigV5> for TableConfig {
    fn from(old: TableConfigV5) -> TableConfig {
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
        }
    }
}

impl From<ProviderV5> for Provider {
    fn from(old: ProviderV5) -> Provider {
        Provider {
            provider_id: old.provider_id,
            labels: old.labels,
            status: old.status,
            confirms_allocations: old.confirms_allocations,
            resources: old.resources,
            registered_at_ms: old.registered_at_ms,
            address: old.address,
            port: old.port,
            // Derived; rebuilt with the table's indexes.
            kinds: BTreeMap::new(),
        }
    }
}

impl From<RequestRecordV5> for RequestRecord {
    fn from(old: RequestRecordV5) -> RequestRecord {
        RequestRecord {
            request: old.request.into(),
            response_id: old.response_id,
            allocation_id: old.allocation_id,
            state: old.state,
            status: old.status,
            placement: old.placement,
            lease_expires_at_ms: old.lease_expires_at_ms,
            reason: old.reason,
            arrival_seq: old.arrival_seq,
            submitted_at_ms: old.submitted_at_ms,
            updated_at_ms: old.updated_at_ms,
            finished_at_ms: old.finished_at_ms,
            first_granted_at_ms: old.first_granted_at_ms,
            // What every allocation did before it could choose: back to the queue.
            on_preemption: OnPreemption::Requeue,
        }
    }
}

impl From<AllocationRequestV5> for AllocationRequest {
    fn from(old: AllocationRequestV5) -> AllocationRequest {
        AllocationRequest {
            request_id: old.request_id,
            requester_id: old.requester_id,
            namespace: old.namespace,
            requirements: old.requirements,
            priority: old.priority,
            deadline_ms: old.deadline_ms,
            lease_ttl_ms: old.lease_ttl_ms,
            constraints: old.constraints,
            placement: old.placement,
        }
    }
}
