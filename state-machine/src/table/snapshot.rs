//! The whole table to bytes and back (bincode 2, standard configuration).
//!
//! Only the state is encoded; the indexes are rebuilt on restore, which keeps
//! snapshots small and proves on every restore that they are derivable.

use std::collections::{BTreeMap, BTreeSet};

use super::{snapshot_v5, snapshot_v6, AllocationTable, Indexes};
use crate::error::SnapshotError;

/// Bumped whenever the encoded layout changes. A build reads its own version,
/// version 7 (the same types), and versions 5 and 6 (through the frozen
/// types of `snapshot_v5` and `snapshot_v6`), and refuses
/// any other rather than misreading it.
/// Version 2 added `RequestRecord::first_granted_at_ms`; version 3 the
/// table's named cursors; version 4 the providers' address and port;
/// version 5 the failed providers still being evacuated, a lease refresh
/// in progress and their bounds in `TableConfig` (bounded evacuation and
/// lease refresh); version 6 namespace quotas and preemption (the
/// cluster's preemption setting, the namespaces' rules, the releases
/// preemptors await, `RequestRecord::on_preemption`), and the providers'
/// scheduling (cordon, drain), live moves (`RequestRecord::movable`,
/// `moving`, `last_moved_at_ms`, the plan's clock and counts, their knobs
/// in `TableConfig`) and the move's reason in `EventKind::AllocationMoved`;
/// version 7 capability policies (the policies with their bindings, the
/// policy revision counter, and the holders of live requests allocated
/// under a grant), and `EventKind::OptimizationComplete` in the history;
/// version 8 the policy events in the history (`EventKind::PolicySet`,
/// `PolicyDeleted`, `PolicyBound`, `PolicyUnbound`).
///
/// Version 8 only appended variants to `EventKind`: every version 7 table
/// encodes to the same bytes in version 8's types, so version 7 is read by
/// them, with no frozen copy. The version still moved on because a
/// version 8 history may hold an event a version 7 build cannot decode:
/// with the number unchanged, that build would take the snapshot for its
/// own and fail on it midway, instead of refusing it up front as newer
/// (`SnapshotError::NewerVersion`), and replicas announcing the same
/// table format would not be told apart during a rolling upgrade.
pub const SNAPSHOT_FORMAT_VERSION: u32 = 8;

/// The previous version, whose layout version 8's types read unchanged.
const SNAPSHOT_FORMAT_VERSION_7: u32 = 7;

/// The string contents one snapshot decode may claim, in total. bincode
/// allocates a string's claimed length before reading it, so a corrupt
/// snapshot claiming 2^60 bytes would abort the replica instead of being
/// refused (found by fuzzing: `fuzz/corpus/snapshot`). A genuine snapshot's
/// strings are smaller than the snapshot itself; 4 GiB leaves room for ten
/// million allocations. A claim below it is reserved (virtual memory, not
/// touched) until the read past the end of the bytes fails.
pub const SNAPSHOT_DECODED_BYTES_MAX: usize = 4 << 30;

/// Room reserved per remembered request when writing a snapshot; a request
/// with a few grants encodes in about 300 bytes.
const SNAPSHOT_BYTES_PER_REQUEST_ESTIMATE: usize = 512;
/// Room reserved per registered unit (about 25 bytes, plus its holders).
const SNAPSHOT_BYTES_PER_UNIT_ESTIMATE: usize = 64;
/// Room reserved per event in the history.
const SNAPSHOT_BYTES_PER_EVENT_ESTIMATE: usize = 256;

/// Appends to a vector whose capacity was reserved up front.
struct VecWriter(Vec<u8>);

impl bincode::enc::write::Writer for VecWriter {
    fn write(&mut self, bytes: &[u8]) -> Result<(), bincode::error::EncodeError> {
        self.0.extend_from_slice(bytes);
        Ok(())
    }
}

impl AllocationTable {
    /// The table's state without its indexes, to encode with
    /// [`Self::to_snapshot_bytes`] once the original is free to change
    /// again. Quick whatever the table's size: records are shared, not
    /// copied (a record that changes while shared is copied then), so a
    /// replica holds its table still for a copy of pointers rather than for
    /// the whole encoding. The copy encodes to the same bytes as the table.
    pub fn snapshot_copy(&self) -> AllocationTable {
        AllocationTable {
            config: self.config.clone(),
            clock_ms: self.clock_ms,
            revision: self.revision,
            next_arrival_seq: self.next_arrival_seq,
            providers: self.providers.clone(),
            requests: self.requests.clone(),
            history: self.history.clone(),
            cursors: self.cursors.clone(),
            evacuating: self.evacuating.clone(),
            lease_refresh: self.lease_refresh.clone(),
            cluster_preemption: self.cluster_preemption,
            namespaces: self.namespaces.clone(),
            release_awaited: self.release_awaited.clone(),
            awaited_by: BTreeMap::new(),
            freed_namespaces: BTreeSet::new(),
            last_plan_at_ms: self.last_plan_at_ms,
            move_counts: self.move_counts.clone(),
            policies: self.policies.clone(),
            policy_revision: self.policy_revision,
            policy_holders: self.policy_holders.clone(),
            held_by_holder: BTreeMap::new(),
            preemption_withheld: false,
            index: Indexes::default(),
            pending_events: Vec::new(),
        }
    }

    pub fn to_snapshot_bytes(&self) -> Vec<u8> {
        // Reserved generously up front: a vector grown by doubling copied
        // hundreds of megabytes over and over for a large table. Pages never
        // written are never touched, so the slack costs address space only.
        let estimate = SNAPSHOT_BYTES_PER_REQUEST_ESTIMATE * self.requests.len()
            + SNAPSHOT_BYTES_PER_UNIT_ESTIMATE * self.providers.values().map(|provider| provider.resources.len()).sum::<usize>()
            + SNAPSHOT_BYTES_PER_EVENT_ESTIMATE * self.history.len()
            + 4096;
        let mut writer = VecWriter(Vec::with_capacity(estimate));
        bincode::serde::encode_into_writer((SNAPSHOT_FORMAT_VERSION, self), &mut writer, bincode::config::standard())
            .expect("the table always encodes: every field has a serde representation");
        writer.0
    }

    pub fn from_snapshot_bytes(bytes: &[u8]) -> Result<AllocationTable, SnapshotError> {
        let config = bincode::config::standard().with_limit::<SNAPSHOT_DECODED_BYTES_MAX>();
        let decode_error = |error: bincode::error::DecodeError| SnapshotError::Decode(error.to_string());
        // The version first, alone, so a snapshot of another layout is named as such.
        let (version, version_len): (u32, usize) = bincode::serde::decode_from_slice(bytes, config).map_err(decode_error)?;
        if version > SNAPSHOT_FORMAT_VERSION {
            return Err(SnapshotError::NewerVersion {
                found: version,
                expected: SNAPSHOT_FORMAT_VERSION,
            });
        }
        let rest = &bytes[version_len..];
        // Whether every name is already the one copy of it (decoded by
        // `decode_sharing`); an older layout's conversion makes copies.
        let (mut table, table_len, names_shared): (AllocationTable, usize, bool) =
            if version == SNAPSHOT_FORMAT_VERSION || version == SNAPSHOT_FORMAT_VERSION_7 {
                // Borrowed from the slice: each name is looked up as it lies
                // in the bytes, and only a name not seen before is allocated.
                let (table, len) =
                    crate::name::decode_sharing(|| bincode::serde::borrow_decode_from_slice(rest, config)).map_err(decode_error)?;
                (table, len, true)
            } else if version == snapshot_v5::VERSION {
                let (old, len): (snapshot_v5::AllocationTableV5, usize) =
                    bincode::serde::decode_from_slice(rest, config).map_err(decode_error)?;
                old.check_derived_ids()?;
                (old.into(), len, false)
            } else if version == snapshot_v6::VERSION {
                let (old, len): (snapshot_v6::AllocationTableV6, usize) =
                    bincode::serde::decode_from_slice(rest, config).map_err(decode_error)?;
                (old.into(), len, false)
            } else {
                return Err(SnapshotError::Version {
                    found: version,
                    expected: SNAPSHOT_FORMAT_VERSION,
                });
            };
        let trailing = bytes.len() - version_len - table_len;
        if trailing != 0 {
            return Err(SnapshotError::Trailing { trailing });
        }
        table.check_references()?;
        table.rebuild_indexes();
        if !names_shared {
            table.share_names();
        }
        Ok(table)
    }

    /// What the index rebuild takes on trust, checked first: a snapshot
    /// from a corrupt disk or a faulty peer is refused, not a panic
    /// (found by the `snapshot` fuzz target: a policy holder charged for a
    /// request the table does not hold).
    fn check_references(&self) -> Result<(), SnapshotError> {
        self.check_policy_holders()
    }
}
