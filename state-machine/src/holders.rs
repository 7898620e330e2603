//! [`Holders`]: who holds how much of one unit.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use uuid::Uuid;

/// Allocation id → amount held, ordered by id: a `BTreeMap<Uuid, u64>` in
/// everything but its memory. Most units are exclusive, held by one
/// allocation at most, and a B-tree with one entry allocates a whole leaf of
/// eleven (280 bytes per held unit, a quarter of a million-allocation
/// table: BENCHMARKS.md, "Memory and disk"); one holder is kept inline, and
/// a map is made only for a second. Always in its canonical form (a map only
/// with two entries or more), so that equal contents compare equal; encodes
/// as the map did, so the snapshot is unchanged.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Holders(Inner);

#[derive(Clone, Default, PartialEq, Eq)]
enum Inner {
    #[default]
    Empty,
    One(Uuid, u64),
    /// Two entries or more.
    Many(BTreeMap<Uuid, u64>),
}

impl Holders {
    pub fn new() -> Holders {
        Holders::default()
    }

    pub fn len(&self) -> usize {
        match &self.0 {
            Inner::Empty => 0,
            Inner::One(..) => 1,
            Inner::Many(map) => map.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        matches!(self.0, Inner::Empty)
    }

    pub fn get(&self, id: &Uuid) -> Option<&u64> {
        match &self.0 {
            Inner::Empty => None,
            Inner::One(held_by, amount) => (held_by == id).then_some(amount),
            Inner::Many(map) => map.get(id),
        }
    }

    pub fn contains_key(&self, id: &Uuid) -> bool {
        self.get(id).is_some()
    }

    /// As `BTreeMap::insert`: the amount `id` held before, if any.
    pub fn insert(&mut self, id: Uuid, amount: u64) -> Option<u64> {
        match &mut self.0 {
            Inner::Empty => {
                self.0 = Inner::One(id, amount);
                None
            }
            Inner::One(held_by, held) if *held_by == id => Some(std::mem::replace(held, amount)),
            Inner::One(held_by, held) => {
                self.0 = Inner::Many(BTreeMap::from([(*held_by, *held), (id, amount)]));
                None
            }
            Inner::Many(map) => map.insert(id, amount),
        }
    }

    /// As `BTreeMap::remove`.
    pub fn remove(&mut self, id: &Uuid) -> Option<u64> {
        match &mut self.0 {
            Inner::Empty => None,
            Inner::One(held_by, held) if held_by == id => {
                let held = *held;
                self.0 = Inner::Empty;
                Some(held)
            }
            Inner::One(..) => None,
            Inner::Many(map) => {
                let removed = map.remove(id);
                if map.len() == 1 {
                    let (held_by, held) = map.pop_first().expect("one entry left");
                    self.0 = Inner::One(held_by, held);
                }
                removed
            }
        }
    }

    /// Every holder with its amount, in id order.
    pub fn iter(&self) -> impl Iterator<Item = (&Uuid, &u64)> + '_ {
        let (one, many) = match &self.0 {
            Inner::Empty => (None, None),
            Inner::One(held_by, held) => (Some((held_by, held)), None),
            Inner::Many(map) => (None, Some(map.iter())),
        };
        one.into_iter().chain(many.into_iter().flatten())
    }

    pub fn keys(&self) -> impl Iterator<Item = &Uuid> + '_ {
        self.iter().map(|(id, _)| id)
    }

    pub fn values(&self) -> impl Iterator<Item = &u64> + '_ {
        self.iter().map(|(_, amount)| amount)
    }
}

impl<'a> IntoIterator for &'a Holders {
    type Item = (&'a Uuid, &'a u64);
    type IntoIter = Box<dyn Iterator<Item = (&'a Uuid, &'a u64)> + 'a>;

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
            map.serialize_entry(id, amount)?;
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
        // Grows to many, shrinks back through one to none, with repeats.
        let steps: Vec<(bool, u128, u64)> = (0..6)
            .map(|n| (true, n, n as u64 + 1))
            .chain([(true, 2, 9), (false, 7, 0)])
            .chain((0..6).map(|n| (false, (n * 5) % 6, 0)))
            .chain([(false, 1, 0), (true, 3, 4), (true, 3, 5)])
            .collect();
        for (insert, n, amount) in steps {
            if insert {
                assert_eq!(map.insert(id(n), amount), holders.insert(id(n), amount));
            } else {
                assert_eq!(map.remove(&id(n)), holders.remove(&id(n)));
            }
            assert_eq!(map.len(), holders.len());
            assert_eq!(map.is_empty(), holders.is_empty());
            assert_eq!(map.iter().collect::<Vec<_>>(), holders.iter().collect::<Vec<_>>());
            for probe in 0..8 {
                assert_eq!(map.get(&id(probe)), holders.get(&id(probe)));
            }
            let bytes = bincode::serde::encode_to_vec(&holders, config).unwrap();
            assert_eq!(bincode::serde::encode_to_vec(&map, config).unwrap(), bytes);
            let (decoded, _): (Holders, usize) = bincode::serde::decode_from_slice(&bytes, config).unwrap();
            assert_eq!(holders, decoded, "canonical, so equal contents compare equal");
            assert_eq!(holders, map.iter().map(|(id, amount)| (*id, *amount)).collect::<Holders>());
            assert_eq!(format!("{map:?}"), format!("{holders:?}"));
        }
    }
}
