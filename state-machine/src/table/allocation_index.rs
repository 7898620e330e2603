//! [`AllocationIndex`]: allocation id → request id, for point look-ups only.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};

use uuid::Uuid;

use crate::record::allocation_id_for;

/// Resolves an allocation id to the request id it was derived from, with
/// `get`, `insert` and `remove` and no way to walk it: nothing can depend on
/// a hash table's order (the table's rule against iterating a `HashMap`),
/// and what each call returns is what a `BTreeMap` of the pairs would
/// return, whatever the hasher.
///
/// Why a hash table: the index is large and only ever asked about one id at
/// a time, where a hash table beats a B-tree (BENCHMARKS.md, "The table's
/// indexes"). Why this layout: an allocation id is derived from its request
/// id ([`allocation_id_for`]), so an entry need not hold both. Each entry is
/// the allocation id's first 32 bits (the key) and the request id, 20 bytes
/// where a pair of ids took 32 (BENCHMARKS.md, "Fewer bytes per record");
/// a look-up derives the allocation id of the request id it finds and
/// compares it with the one asked for. Allocation ids that share their
/// first 32 bits (about a hundred pairs among a million ids) cannot share
/// the key: the smallest of them sits in the hash table and the others in
/// `overflow`, a B-tree by whole allocation id, so however many a client
/// made collide (it would have to search SHA-1 for them), each costs a
/// B-tree step, not a longer probe. The smallest-in-the-table rule keeps the
/// layout canonical: equal contents compare equal (the rebuilt index of
/// `assert_invariants` against the one kept in step), whatever order the
/// entries came in.
///
/// A fixed hasher lets whoever picks the keys make them collide in the hash
/// table's buckets, so keys must be ids a client cannot pick: allocation ids
/// are SHA-1 of the request id, and the dedupe window bounds what a crafted
/// run of collisions could cost (measured in "The table's indexes").
#[derive(Clone, Default, PartialEq, Eq)]
pub(crate) struct AllocationIndex {
    /// First 32 bits of an allocation id → its request id, for the smallest
    /// allocation id with those bits.
    by_prefix: HashMap<u32, Uuid, BuildHasherDefault<PrefixHasher>>,
    /// Allocation id → request id, for the others sharing a prefix.
    overflow: BTreeMap<Uuid, Uuid>,
}

/// The key an allocation id is filed under in the hash table.
fn prefix_of(allocation_id: Uuid) -> u32 {
    (allocation_id.as_u128() >> 96) as u32
}

/// The allocation ids with the prefix `prefix`, as a range of the overflow.
fn prefix_range(prefix: u32) -> std::ops::RangeInclusive<Uuid> {
    let first = u128::from(prefix) << 96;
    Uuid::from_u128(first)..=Uuid::from_u128(first | (u128::MAX >> 32))
}

impl AllocationIndex {
    /// The request id of `allocation_id`, if it is indexed.
    pub(crate) fn get(&self, allocation_id: Uuid) -> Option<Uuid> {
        match self.by_prefix.get(&prefix_of(allocation_id)) {
            Some(&request_id) if allocation_id_for(request_id) == allocation_id => Some(request_id),
            // Not in the hash table: a colliding one or none at all.
            Some(_) => self.overflow.get(&allocation_id).copied(),
            None => None,
        }
    }

    /// Indexes `allocation_id` as `request_id`'s, which it must derive from.
    pub(crate) fn insert(&mut self, allocation_id: Uuid, request_id: Uuid) {
        debug_assert_eq!(
            allocation_id_for(request_id),
            allocation_id,
            "an allocation id is derived from its request id"
        );
        let prefix = prefix_of(allocation_id);
        let Some(held) = self.by_prefix.get_mut(&prefix) else {
            self.by_prefix.insert(prefix, request_id);
            return;
        };
        let held_allocation = allocation_id_for(*held);
        if allocation_id < held_allocation {
            // The smallest sits in the hash table: the one there moves over.
            self.overflow.insert(held_allocation, *held);
            *held = request_id;
        } else if allocation_id > held_allocation {
            self.overflow.insert(allocation_id, request_id);
        }
    }

    /// Forgets `allocation_id`, `request_id`'s (which it must derive
    /// from), if it is indexed.
    pub(crate) fn remove(&mut self, allocation_id: Uuid, request_id: Uuid) {
        debug_assert_eq!(
            allocation_id_for(request_id),
            allocation_id,
            "an allocation id is derived from its request id"
        );
        let prefix = prefix_of(allocation_id);
        let Some(&held) = self.by_prefix.get(&prefix) else {
            return;
        };
        // The request ids compared, not the allocation ids: no SHA-1.
        if held != request_id {
            self.overflow.remove(&allocation_id);
            return;
        }
        // The next smallest with the same prefix, if any, takes its place.
        let next = self
            .overflow
            .range(prefix_range(prefix))
            .next()
            .map(|(id, request)| (*id, *request));
        match next {
            Some((next_allocation, next_request)) => {
                self.overflow.remove(&next_allocation);
                self.by_prefix.insert(prefix, next_request);
            }
            None => {
                self.by_prefix.remove(&prefix);
            }
        }
    }
}

/// Sized once for all the entries, then filled.
impl FromIterator<(Uuid, Uuid)> for AllocationIndex {
    fn from_iter<I: IntoIterator<Item = (Uuid, Uuid)>>(entries: I) -> Self {
        let entries = entries.into_iter();
        let mut index = AllocationIndex {
            by_prefix: HashMap::with_capacity_and_hasher(entries.size_hint().0, Default::default()),
            overflow: BTreeMap::new(),
        };
        for (allocation_id, request_id) in entries {
            index.insert(allocation_id, request_id);
        }
        index
    }
}

/// The lengths only: listing the entries would walk them in hash order.
impl fmt::Debug for AllocationIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AllocationIndex")
            .field("by_prefix", &self.by_prefix.len())
            .field("overflow", &self.overflow.len())
            .finish()
    }
}

/// Hashes a prefix (the `u32` it is given): multiplied into both halves of
/// a 128-bit product, so the bucket (the low bits) and the tag (the top 7)
/// both depend on every bit of it. Fixed and deterministic, see
/// [`AllocationIndex`].
#[derive(Default)]
struct PrefixHasher {
    hash: u64,
}

/// An odd constant with bits spread evenly (2^64 divided by the golden ratio).
const FOLD_MULTIPLIER: u64 = 0x9e37_79b9_7f4a_7c15;

impl Hasher for PrefixHasher {
    fn write(&mut self, _bytes: &[u8]) {
        unreachable!("PrefixHasher hashes a u32 prefix only");
    }

    fn write_u32(&mut self, prefix: u32) {
        let product = u128::from(u64::from(prefix) | (u64::from(prefix) << 32)) * u128::from(FOLD_MULTIPLIER);
        self.hash = (product as u64) ^ ((product >> 64) as u64);
    }

    fn finish(&self) -> u64 {
        self.hash
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Request ids whose allocation ids share their first 32 bits with
    /// another's: found by search (about ten pairs among 300,000 ids), as a
    /// client would have to.
    fn request_ids_with_colliding_prefixes() -> Vec<Uuid> {
        let mut by_prefix: BTreeMap<u32, Vec<Uuid>> = BTreeMap::new();
        for n in 0..300_000u128 {
            let request_id = Uuid::from_u128(n.wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835));
            by_prefix
                .entry(prefix_of(allocation_id_for(request_id)))
                .or_default()
                .push(request_id);
        }
        let colliding: Vec<Uuid> = by_prefix.into_values().filter(|ids| ids.len() > 1).flatten().collect();
        assert!(colliding.len() >= 4, "the search found collisions");
        colliding
    }

    #[test]
    fn answers_as_a_btree_map_does_colliding_prefixes_included() {
        let colliding = request_ids_with_colliding_prefixes();
        let mut index = AllocationIndex::default();
        let mut tree = BTreeMap::new();
        let check = |index: &AllocationIndex, tree: &BTreeMap<Uuid, Uuid>, ids: &[Uuid], step: &str| {
            for request_id in ids {
                let allocation_id = allocation_id_for(*request_id);
                assert_eq!(tree.get(&allocation_id).copied(), index.get(allocation_id), "{step}");
                // A request id is not an allocation id.
                assert_eq!(None, index.get(*request_id), "{step}");
            }
        };

        // --- the colliding ones, largest first, so each one moves the one
        // before it out of the hash table
        for request_id in colliding.iter().rev() {
            tree.insert(allocation_id_for(*request_id), *request_id);
            index.insert(allocation_id_for(*request_id), *request_id);
        }
        check(&index, &tree, &colliding, "all colliding in");
        assert!(!index.overflow.is_empty(), "colliding prefixes go to the overflow");

        // --- others among them, inserted and removed in turn
        let mut ids: Vec<Uuid> = (0..200u128)
            .map(|n| Uuid::from_u128(n.wrapping_mul(0x2545_f491_4f6c_dd1d_9e37_79b9_7f4a_7c15)))
            .collect();
        ids.extend(&colliding);
        for (n, request_id) in ids.iter().enumerate() {
            let allocation_id = allocation_id_for(*request_id);
            if n % 3 == 0 {
                tree.remove(&allocation_id);
                index.remove(allocation_id, *request_id);
            } else {
                tree.insert(allocation_id, *request_id);
                index.insert(allocation_id, *request_id);
            }
            check(&index, &tree, &ids, &format!("step {n}"));
        }

        // --- the same contents built at once: the same layout
        let rebuilt: AllocationIndex = tree.into_iter().collect();
        assert_eq!(rebuilt, index, "the layout is canonical");
    }
}
