//! [`RecordMap`]: the table's requests by id, cheap to copy for a snapshot.
//!
//! A replica encodes its snapshot from a copy of the table, taken while
//! apply waits, so the copy must be cheap: the ids are split by their first
//! [`SHARD_BITS`] bits into shards, each shared (`Arc`) between the table and
//! its copies. A copy costs one pointer per shard, and a shard is copied only
//! when the table changes it while a copy still holds it. The records are
//! `Arc`s too, so a copied shard shares them. (Why and what it measured:
//! BENCHMARKS.md, "The table's indexes".)
//!
//! Shards hold contiguous ranges of ids, so walking them in order walks
//! the ids in order, and the map encodes exactly as a `BTreeMap` of the
//! same entries did (the snapshot format is unchanged).

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Bound;
use std::sync::Arc;

use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use uuid::Uuid;

use super::id_key::IdKey;
use crate::record::RequestRecord;

/// Ids are sharded by this many leading bits: 1,024 shards, so a shard of a
/// million-request table holds ~1,000 records (with random ids, as clients
/// make them), which a change copies in well under a millisecond, and a
/// walk over an empty table still visits only 1,024 empty shards. Ids that
/// share their leading bits (time-ordered ids) crowd into few shards; the
/// map stays correct, and copies of those shards cost what a copy of the
/// whole map did before.
pub const SHARD_BITS: u32 = 10;
const SHARDS: usize = 1 << SHARD_BITS;

/// Entries reserved before reading a map, whatever length a snapshot claims.
const PREALLOCATED_ENTRIES_MAX: usize = 1 << 16;

/// Keyed by [`IdKey`], which orders as the `Uuid` does (so the walk and the
/// encoding are unchanged) with an integer comparison instead of `memcmp`.
type Shard = BTreeMap<IdKey, Arc<RequestRecord>>;

/// Requests by id, ordered by id. Cloning copies one pointer per shard.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct RecordMap {
    shards: Vec<Arc<Shard>>,
    len: usize,
}

fn shard_of(id: IdKey) -> usize {
    id.leading_bits(SHARD_BITS)
}

/// `shard`, to change, copied first if a snapshot copy still shares it.
/// The copy is built at once from the entries in order, so its nodes are
/// full where the shard's, filled by inserts at random places, are about a
/// third empty: the records of a table that took its load compact, shard
/// by shard, as snapshots are taken (BENCHMARKS.md, "Where a million
/// allocations' bytes go"). Costs what the node-by-node copy did: one pass.
fn unshared(shard: &mut Arc<Shard>) -> &mut Shard {
    if Arc::get_mut(shard).is_none() {
        *shard = Arc::new(shard.iter().map(|(id, record)| (*id, Arc::clone(record))).collect());
    }
    Arc::get_mut(shard).expect("the shard is its own now")
}

impl Default for RecordMap {
    /// Every shard starts as the same empty one; a shard gets its own on its
    /// first insert (copy on write), so an empty map is one allocation.
    fn default() -> Self {
        let empty = Arc::new(Shard::new());
        RecordMap {
            shards: (0..SHARDS).map(|_| Arc::clone(&empty)).collect(),
            len: 0,
        }
    }
}

impl RecordMap {
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn get(&self, id: &Uuid) -> Option<&Arc<RequestRecord>> {
        let key = IdKey::from(*id);
        self.shards[shard_of(key)].get(&key)
    }

    pub(crate) fn contains_key(&self, id: &Uuid) -> bool {
        let key = IdKey::from(*id);
        self.shards[shard_of(key)].contains_key(&key)
    }

    /// The shard of `key`, copied first if a snapshot copy still shares it.
    fn shard_mut(&mut self, key: IdKey) -> &mut Shard {
        unshared(&mut self.shards[shard_of(key)])
    }

    pub(crate) fn insert(&mut self, id: Uuid, record: Arc<RequestRecord>) -> Option<Arc<RequestRecord>> {
        let key = IdKey::from(id);
        let previous = self.shard_mut(key).insert(key, record);
        if previous.is_none() {
            self.len += 1;
        }
        previous
    }

    pub(crate) fn remove(&mut self, id: &Uuid) -> Option<Arc<RequestRecord>> {
        let key = IdKey::from(*id);
        let shard = &mut self.shards[shard_of(key)];
        // Shared with a copy: copied only if there is something to remove.
        if Arc::get_mut(shard).is_none() && !shard.contains_key(&key) {
            return None;
        }
        let removed = unshared(shard).remove(&key);
        if removed.is_some() {
            self.len -= 1;
        }
        removed
    }

    /// Every entry, in id order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (Uuid, &Arc<RequestRecord>)> + '_ {
        self.shards
            .iter()
            .flat_map(|shard| shard.iter().map(|(id, record)| (id.uuid(), record)))
    }

    /// The ids after `after` (all of them for `None`), in id order.
    pub(crate) fn keys_after(&self, after: Option<Uuid>) -> impl Iterator<Item = Uuid> + '_ {
        let after = after.map(IdKey::from);
        let first_shard = after.map_or(0, shard_of);
        let lower = after.map_or(Bound::Unbounded, Bound::Excluded);
        self.shards[first_shard..].iter().enumerate().flat_map(move |(offset, shard)| {
            let lower = if offset == 0 { lower } else { Bound::Unbounded };
            shard.range((lower, Bound::Unbounded)).map(|(id, _)| id.uuid())
        })
    }

    pub(crate) fn keys(&self) -> impl Iterator<Item = Uuid> + '_ {
        self.iter().map(|(id, _)| id)
    }

    pub(crate) fn values(&self) -> impl Iterator<Item = &RequestRecord> + '_ {
        self.iter().map(|(_, record)| record.as_ref())
    }

    /// Every record, mutable, each copied first if shared (with a snapshot
    /// copy or an answer). For sharing names after a restore and for the
    /// heap measurement (`memory`).
    pub(super) fn records_mut(&mut self) -> impl Iterator<Item = &mut RequestRecord> + '_ {
        self.shards
            .iter_mut()
            .flat_map(|shard| unshared(shard).values_mut().map(Arc::make_mut))
    }

    /// Builds the map from entries already in id order (as a snapshot holds
    /// them): each shard is built at once from its run of entries.
    pub(super) fn from_sorted(entries: Vec<(Uuid, Arc<RequestRecord>)>) -> RecordMap {
        let mut shards: Vec<Shard> = (0..SHARDS).map(|_| Shard::new()).collect();
        let mut entries = entries.into_iter().map(|(id, record)| (IdKey::from(id), record)).peekable();
        while let Some(&(first, _)) = entries.peek() {
            let shard = shard_of(first);
            // Sorted input puts a shard's entries in one run; collecting a
            // sorted run builds the tree in one pass, and a repeated key
            // keeps its last value, as inserting would.
            shards[shard] = std::iter::from_fn(|| entries.next_if(|(id, _)| shard_of(*id) == shard)).collect();
        }
        let len = shards.iter().map(Shard::len).sum();
        RecordMap {
            shards: shards.into_iter().map(Arc::new).collect(),
            len,
        }
    }
}

impl std::ops::Index<&Uuid> for RecordMap {
    type Output = Arc<RequestRecord>;

    fn index(&self, id: &Uuid) -> &Arc<RequestRecord> {
        self.get(id).expect("a request id the table knows")
    }
}

impl fmt::Debug for RecordMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

/// As a map in id order: the same bytes as a `BTreeMap` of the entries.
impl Serialize for RecordMap {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.len))?;
        for (id, record) in self.iter() {
            map.serialize_entry(&id, record)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for RecordMap {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<RecordMap, D::Error> {
        struct Entries;

        impl<'de> Visitor<'de> for Entries {
            type Value = RecordMap;

            fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
                formatter.write_str("a map of request ids to records")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RecordMap, A::Error> {
                // The length comes from the input: trust it only so far.
                let mut entries: Vec<(Uuid, Arc<RequestRecord>)> =
                    Vec::with_capacity(map.size_hint().unwrap_or(0).min(PREALLOCATED_ENTRIES_MAX));
                while let Some(entry) = map.next_entry()? {
                    entries.push(entry);
                }
                // Written in id order; sorting an input that is not (a damaged
                // or foreign snapshot) keeps the map's order right regardless.
                if !entries.is_sorted_by_key(|(id, _)| *id) {
                    entries.sort_by_key(|(id, _)| *id);
                }
                Ok(RecordMap::from_sorted(entries))
            }
        }

        deserializer.deserialize_map(Entries)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{AllocationStatus, RequestState};
    use crate::request::{AllocationRequest, Constraints, PlacementPolicy};
    use crate::time::OptionalMillis;

    fn record(n: u128) -> Arc<RequestRecord> {
        Arc::new(RequestRecord {
            request: AllocationRequest {
                request_id: Uuid::from_u128(n),
                requester_id: "requester".into(),
                namespace: "default".into(),
                requirements: Default::default(),
                priority: 0,
                deadline_ms: OptionalMillis::NONE,
                lease_ttl_ms: OptionalMillis::NONE,
                constraints: Constraints::default(),
                placement: PlacementPolicy::BestFit,
            },
            state: RequestState::Queued,
            status: AllocationStatus::Queued,
            placement: None,
            lease_expires_at_ms: OptionalMillis::NONE,
            arrival_seq: n as u64,
            submitted_at_ms: 0,
            updated_at_ms: 0,
            first_granted_at_ms: OptionalMillis::NONE,
            on_preemption: Default::default(),
            movable: false,
            rare: None,
        })
    }

    fn id(high_bits: u128, low: u128) -> Uuid {
        Uuid::from_u128((high_bits << (128 - SHARD_BITS)) | low)
    }

    #[test]
    fn a_copy_shares_shards_until_one_side_changes() {
        let mut map = RecordMap::default();
        for n in 0..8 {
            map.insert(id(n, n), record(n));
        }
        let copy = map.clone();
        assert!(Arc::ptr_eq(&map.shards[3], &copy.shards[3]));

        map.insert(id(3, 100), record(100));
        map.remove(&id(5, 5));
        assert!(!Arc::ptr_eq(&map.shards[3], &copy.shards[3]), "the changed shard was copied");
        assert!(Arc::ptr_eq(&map.shards[4], &copy.shards[4]), "the others are still shared");
        assert_eq!(8, copy.len());
        assert!(copy.contains_key(&id(5, 5)) && !copy.contains_key(&id(3, 100)));
        assert_eq!(8, map.len());
        assert!(!map.contains_key(&id(5, 5)) && map.contains_key(&id(3, 100)));

        // Removing an id that is not there copies nothing.
        let copy = map.clone();
        assert_eq!(None, map.remove(&id(7, 12345)));
        assert!(Arc::ptr_eq(&map.shards[7], &copy.shards[7]));
    }

    #[test]
    fn walks_and_encodes_in_id_order_as_a_btree_map_does() {
        let ids = [id(1023, 1), id(0, 9), id(17, 3), id(17, 2), id(0, 1), id(512, 0)];
        let mut map = RecordMap::default();
        let mut tree = BTreeMap::new();
        for (n, id) in ids.iter().enumerate() {
            map.insert(*id, record(n as u128));
            tree.insert(*id, record(n as u128));
        }
        assert_eq!(tree.keys().copied().collect::<Vec<_>>(), map.keys().collect::<Vec<_>>());

        let config = bincode::config::standard();
        let bytes = bincode::serde::encode_to_vec(&map, config).unwrap();
        assert_eq!(bincode::serde::encode_to_vec(&tree, config).unwrap(), bytes);
        let (decoded, _): (RecordMap, usize) = bincode::serde::decode_from_slice(&bytes, config).unwrap();
        assert_eq!(map, decoded);
        assert_eq!(ids.len(), decoded.len());
    }
}
