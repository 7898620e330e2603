//! [`Holders`]: who holds how much of one unit.

use std::collections::BTreeMap;
use std::fmt;
use std::num::NonZeroU64;

use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use uuid::Uuid;

/// Allocation id → amount held, ordered by id: a `BTreeMap<Uuid, u64>` in
/// everything but its memory. Most units are exclusive, held by one
/// allocation at most, and a B-tree with one entry allocates a whole leaf of
/// eleven (280 bytes per held unit, a quarter of a million-allocation
/// table: BENCHMARKS.md, "Memory and disk"); one holder is kept inline, and
/// a map is made only for a second. 24 bytes: the one holder's amount is a
/// `NonZeroU64`, whose zero tells the other case (none, or a map) apart, a
/// unit's 8 bytes of every million (BENCHMARKS.md, "Session 15"). Always in
/// its canonical form (inline exactly when there is one holder and its
/// amount is not zero, which no grant is), so that equal contents compare
/// equal; encodes as the map did, so the snapshot is unchanged.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Holders(Inner);

// The box is the point: `Option<Box<_>>` is 8 bytes, a map 24.
#[allow(clippy::box_collection)]
#[derive(Clone, PartialEq, Eq)]
enum Inner {
    /// One holder, of a positive amount.
    One(Uuid, NonZeroU64),
    /// None (`None`), or a map: of two holders or more, or of one that holds
    /// zero.
    Other(Option<Box<BTreeMap<Uuid, u64>>>),
}

impl Default for Inner {
    fn default() -> Inner {
        Inner::Other(None)
    }
}

impl Inner {
    /// The canonical form of `map`'s entries.
    fn of_map(mut map: BTreeMap<Uuid, u64>) -> Inner {
        match map.len() {
            0 => Inner::Other(None),
            1 => {
                let (held_by, held) = map.pop_first().expect("one entry");
                match NonZeroU64::new(held) {
                    Some(held) => Inner::One(held_by, held),
                    None => Inner::Other(Some(Box::new(BTreeMap::from([(held_by, held)])))),
                }
            }
            _ => Inner::Other(Some(Box::new(map))),
        }
    }
}

impl Holders {
    pub fn new() -> Holders {
        Holders::default()
    }

    pub fn len(&self) -> usize {
        match &self.0 {
            Inner::One(..) => 1,
            Inner::Other(None) => 0,
            Inner::Other(Some(map)) => map.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        matches!(self.0, Inner::Other(None))
    }

    pub fn get(&self, id: &Uuid) -> Option<u64> {
        match &self.0 {
            Inner::One(held_by, amount) => (held_by == id).then_some(amount.get()),
            Inner::Other(None) => None,
            Inner::Other(Some(map)) => map.get(id).copied(),
        }
    }

    pub fn contains_key(&self, id: &Uuid) -> bool {
        self.get(id).is_some()
    }

    /// As `BTreeMap::insert`: the amount `id` held before, if any.
    pub fn insert(&mut self, id: Uuid, amount: u64) -> Option<u64> {
        match (&mut self.0, NonZeroU64::new(amount)) {
            (Inner::Other(None), Some(amount)) => {
                self.0 = Inner::One(id, amount);
                None
            }
            (Inner::One(held_by, held), Some(amount)) if *held_by == id => Some(std::mem::replace(held, amount).get()),
            (Inner::Other(Some(map)), _) => {
                let previous = map.insert(id, amount);
                // Replacing a lone zero with an amount makes it one holder.
                if map.len() == 1 {
                    self.0 = Inner::of_map(std::mem::take(map));
                }
                previous
            }
            (Inner::One(held_by, held), _) => {
                let mut map = BTreeMap::from([(*held_by, held.get())]);
                let previous = map.insert(id, amount);
                self.0 = Inner::of_map(map);
                previous
            }
            (Inner::Other(None), None) => {
                self.0 = Inner::of_map(BTreeMap::from([(id, amount)]));
                None
            }
        }
    }

    /// As `BTreeMap::remove`.
    pub fn remove(&mut self, id: &Uuid) -> Option<u64> {
        match &mut self.0 {
            Inner::One(held_by, held) if held_by == id => {
                let held = held.get();
                self.0 = Inner::Other(None);
                Some(held)
            }
            Inner::One(..) | Inner::Other(None) => None,
            Inner::Other(Some(map)) => {
                let removed = map.remove(id);
                if map.len() <= 1 {
                    self.0 = Inner::of_map(std::mem::take(map));
                }
                removed
            }
        }
    }

    /// Every holder with its amount, in id order.
    pub fn iter(&self) -> impl Iterator<Item = (&Uuid, u64)> + '_ {
        let (one, many) = match &self.0 {
            Inner::One(held_by, held) => (Some((held_by, held.get())), None),
            Inner::Other(None) => (None, None),
            Inner::Other(Some(map)) => (None, Some(map.iter().map(|(id, amount)| (id, *amount)))),
        };
        one.into_iter().chain(many.into_iter().flatten())
    }

    pub fn keys(&self) -> impl Iterator<Item = &Uuid> + '_ {
        self.iter().map(|(id, _)| id)
    }

    pub fn values(&self) -> impl Iterator<Item = u64> + '_ {
        self.iter().map(|(_, amount)| amount)
    }
}

impl<'a> IntoIterator for &'a Holders {
    type Item = (&'a Uuid, u64);
    type IntoIter = Box<dyn Iterator<Item = (&'a Uuid, u64)> + 'a>;

    fn into_iter(self) -> Self::IntoIter {
        Box::new(self.iter())
    }
}

impl FromIterator<(Uuid, u64)> for Holders {
    fn from_iter<I: IntoIterator<Item = (Uuid, u64)>>(entries: I) -> Holders {
        let mut holders = Holders::new();
        for (id, amount) in entries {
            holders.insert(id, amount);
        }
        holders
    }
}

/// As the map it stands for.
impl fmt::Debug for Holders {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

/// As a map in id order: the bytes of a `BTreeMap<Uuid, u64>`.
impl Serialize for Holders {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.len()))?;
        for (id, amount) in self.iter() {
            map.serialize_entry(id, &amount)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for Holders {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Holders, D::Error> {
        struct Entries;

        impl<'de> Visitor<'de> for Entries {
            type Value = Holders;

            fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
                formatter.write_str("a map of allocation ids to amounts")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Holders, A::Error> {
                // As a `BTreeMap` reads it: a repeated id keeps its last amount.
                let mut holders = Holders::new();
                while let Some((id, amount)) = map.next_entry()? {
                    holders.insert(id, amount);
                }
                Ok(holders)
            }
        }

        deserializer.deserialize_map(Entries)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u128) -> Uuid {
        Uuid::from_u128(n.wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835))
    }

    #[test]
    fn answers_encodes_and_decodes_as_a_btree_map() {
        let config = bincode::config::standard();
        let mut holders = Holders::new();
        let mut map = BTreeMap::new();
        // Grows to many, shrinks back through one to none, with repeats;
        // then zero amounts (which no grant holds, but a map can), alone
        // and beside others.
        let steps: Vec<(bool, u128, u64)> = (0..6)
            .map(|n| (true, n, n as u64 + 1))
            .chain([(true, 2, 9), (false, 7, 0)])
            .chain((0..6).map(|n| (false, (n * 5) % 6, 0)))
            .chain([(false, 1, 0), (true, 3, 4), (true, 3, 5)])
            .chain([(true, 3, 0), (true, 3, 6), (true, 3, 0), (true, 4, 2), (false, 4, 0), (false, 3, 0)])
            .chain([
                (true, 5, 0),
                (true, 6, 1),
                (false, 6, 0),
                (true, 5, 3),
                (true, 6, 0),
                (false, 5, 0),
                (false, 6, 0),
            ])
            .collect();
        for (insert, n, amount) in steps {
            if insert {
                assert_eq!(map.insert(id(n), amount), holders.insert(id(n), amount));
            } else {
                assert_eq!(map.remove(&id(n)), holders.remove(&id(n)));
            }
            assert_eq!(map.len(), holders.len());
            assert_eq!(map.is_empty(), holders.is_empty());
            assert_eq!(
                map.iter().map(|(id, amount)| (id, *amount)).collect::<Vec<_>>(),
                holders.iter().collect::<Vec<_>>()
            );
            for probe in 0..8 {
                assert_eq!(map.get(&id(probe)).copied(), holders.get(&id(probe)));
            }
            let bytes = bincode::serde::encode_to_vec(&holders, config).unwrap();
            assert_eq!(bincode::serde::encode_to_vec(&map, config).unwrap(), bytes);
            let (decoded, _): (Holders, usize) = bincode::serde::decode_from_slice(&bytes, config).unwrap();
            assert_eq!(holders, decoded, "canonical, so equal contents compare equal");
            assert_eq!(holders, map.iter().map(|(id, amount)| (*id, *amount)).collect::<Holders>());
            assert_eq!(format!("{map:?}"), format!("{holders:?}"));
        }
        assert!(holders.is_empty(), "every step undone: {holders:?}");
    }

    #[test]
    fn one_holder_fits_in_24_bytes() {
        assert_eq!(24, std::mem::size_of::<Holders>());
    }
}
