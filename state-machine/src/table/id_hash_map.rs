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
/// Why: `Indexes::allocation_to_request` holds one entry per remembered
/// request (100,000 with a full dedupe window) and is only ever asked about
/// one id at a time: an insert, a look-up and a remove per allocate+release
/// pair. As a `BTreeMap<Uuid, Uuid>` that pair cost 30,939 instructions, as
/// this map 29,058 (`examples/apply_profile.rs`). With the other indexes keyed
/// by [`IdKey`], this map saves 1,652 instructions per pair over a B-tree
/// keyed by `IdKey` and 846 over 1,024 such B-trees split by leading bits.
///
/// The price of a fixed hasher (the table has no randomness, so no
/// `RandomState`): whoever chooses the keys can make them collide, and every
/// insert, look-up or remove that meets a run of colliding keys walks it. So
/// keys must be ids a client cannot pick. Allocation ids qualify: they are
/// SHA-1 of the request id (uuid v5), so a client that wants one in a chosen
/// bucket of a 2^18-bucket table (100,000 to 200,000 entries) must try about
/// 2^18 request ids for it, some 0.1 s of SHA-1 per id and hours for
/// 100,000. What that buys it is bounded by the dedupe window: the map never
/// holds more than `finished_requests_max` (100,000) finished requests plus
/// the live and queued ones. Measured with this hasher: inserting 100,000
/// keys that share a bucket into a map of 100,000 others took 26 µs per
/// insert on average, against well under a microsecond. A command that
/// meets the crafted run slows down by about that much, on every replica
/// alike, until the crafted requests leave the window; no answer changes.
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
