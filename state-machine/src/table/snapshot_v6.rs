//! Reading a table written at snapshot format version 6.
//!
//! Version 7 added fields to the table itself only (capability policies,
//! the policy revision counter, the holders of requests allocated under a
//! grant), so only the top level is frozen here: every inner type encodes
//! as it did in version 6 and is shared with the current build. A table
//! read from version 6 has no policies, as the old build had none.
//! Nothing here is ever written (see `snapshot_v5` for the scheme).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use serde::Deserialize;
use uuid::Uuid;

use super::cursors::Cursor;
use super::moves::MoveCounts;
use super::record_map::RecordMap;
use super::{AllocationTable, Indexes, LeaseRefresh};
use crate::event::Event;
use crate::limits::TableConfig;
use crate::provider::Provider;
use crate::quota::{NamespacePolicy, PreemptionSetting};

/// The snapshot format version this module reads.
pub(super) const VERSION: u32 = 6;

/// The table's encoded fields at version 6, in their order.
#[derive(Deserialize)]
pub(super) struct AllocationTableV6 {
    config: TableConfig,
    clock_ms: u64,
    revision: u64,
    next_arrival_seq: u64,
    providers: BTreeMap<String, Arc<Provider>>,
    requests: RecordMap,
    history: VecDeque<Event>,
    cursors: BTreeMap<String, Cursor>,
    evacuating: BTreeMap<String, String>,
    lease_refresh: Option<LeaseRefresh>,
    cluster_preemption: PreemptionSetting,
    namespaces: BTreeMap<String, NamespacePolicy>,
    release_awaited: BTreeMap<Uuid, Vec<(Uuid, String)>>,
    last_plan_at_ms: Option<u64>,
    move_counts: MoveCounts,
}

impl From<AllocationTableV6> for AllocationTable {
    fn from(old: AllocationTableV6) -> AllocationTable {
        AllocationTable {
            config: old.config,
            clock_ms: old.clock_ms,
            revision: old.revision,
            next_arrival_seq: old.next_arrival_seq,
            providers: old.providers,
            requests: old.requests,
            history: old.history,
            cursors: old.cursors,
            evacuating: old.evacuating,
            lease_refresh: old.lease_refresh,
            cluster_preemption: old.cluster_preemption,
            namespaces: old.namespaces,
            release_awaited: old.release_awaited,
            awaited_by: BTreeMap::new(),
            freed_namespaces: BTreeSet::new(),
            last_plan_at_ms: old.last_plan_at_ms,
            move_counts: old.move_counts,
            // Version 6 had no capability policies.
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
