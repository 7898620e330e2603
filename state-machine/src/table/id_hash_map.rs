//! [`IdHashMap`]: uuids to values by hash, for point look-ups only.

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};

use uuid::Uuid;

use super::id_key::IdKey;

/// Uuid → `V` in a hash table, with `get`, `insert` and `remove` and no way
/// to walk it: nothing can depend on a hash table's order (the table's rule
/// against iterating a `HashMap`), and what each call returns is what a
/// `BTreeMap` would return, whatever the hasher.
///
/// Why: `Indexes::allocation_to_request` is large and only ever asked about
/// one id at a time, where a hash table beats a B-tree (BENCHMARKS.md, "The
/// table's indexes"). A fixed hasher lets whoever picks the keys make them
/// collide, so keys must be ids a client cannot pick: allocation ids are
/// SHA-1 of the request id, and the dedupe window bounds what a crafted run
/// of collisions could cost (measured there too).
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct IdHashMap<V> {
    entries: HashMap<IdKey, V, BuildHasherDefault<IdHasher>>,
}

impl<V> Default for IdHashMap<V> {
    fn default() -> Self {
        IdHashMap {
            entries: HashMap::default(),
        }
    }
}

impl<V> IdHashMap<V> {
    pub(crate) fn get(&self, id: Uuid) -> Option<&V> {
        self.entries.get(&IdKey::from(id))
    }

    pub(crate) fn insert(&mut self, id: Uuid, value: V) -> Option<V> {
        self.entries.insert(IdKey::from(id), value)
    }

    pub(crate) fn remove(&mut self, id: Uuid) -> Option<V> {
        self.entries.remove(&IdKey::from(id))
    }
}

/// Sized once for all the entries, then filled.
impl<V> FromIterator<(Uuid, V)> for IdHashMap<V> {
    fn from_iter<I: IntoIterator<Item = (Uuid, V)>>(entries: I) -> Self {
        IdHashMap {
            entries: entries.into_iter().map(|(id, value)| (IdKey::from(id), value)).collect(),
        }
    }
}

/// The length only: listing the entries would walk them in hash order.
impl<V> fmt::Debug for IdHashMap<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdHashMap").field("len", &self.entries.len()).finish()
    }
}

/// Hashes an [`IdKey`] (its `u128`, the only thing it is given): the two
/// halves folded into one, then multiplied into both halves of a 128-bit
/// product, so the bucket (the low bits) and the tag (the top 7) both depend
/// on every bit of the id. Fixed and deterministic, see [`IdHashMap`]; ids
/// whose halves fold to the same value collide outright, one more reason the
/// keys must not be ids a client picks.
#[derive(Default)]
struct IdHasher {
    hash: u64,
}

/// An odd constant with bits spread evenly (2^64 divided by the golden ratio).
const FOLD_MULTIPLIER: u64 = 0x9e37_79b9_7f4a_7c15;

impl Hasher for IdHasher {
    fn write(&mut self, _bytes: &[u8]) {
        unreachable!("IdHasher hashes IdKey's u128 only");
    }

    fn write_u128(&mut self, id: u128) {
        let folded = (id as u64) ^ ((id >> 64) as u64);
        let product = u128::from(folded) * u128::from(FOLD_MULTIPLIER);
        self.hash = (product as u64) ^ ((product >> 64) as u64);
    }

    fn finish(&self) -> u64 {
        self.hash
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_as_a_btree_map_does() {
        let mut map = IdHashMap::default();
        let mut tree = std::collections::BTreeMap::new();
        for n in 0..1000u128 {
            let id = Uuid::from_u128(n.wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835));
            assert_eq!(tree.insert(id, n), map.insert(id, n));
            if n % 3 == 0 {
                assert_eq!(tree.remove(&id), map.remove(id));
            }
        }
        for n in 0..1200u128 {
            let id = Uuid::from_u128(n.wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835));
            assert_eq!(tree.get(&id), map.get(id));
        }
        let rebuilt: IdHashMap<u128> = tree.into_iter().collect();
        assert_eq!(rebuilt, map);
    }
}
