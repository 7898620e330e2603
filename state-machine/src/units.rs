//! [`Units`]: a provider's units, looked up by id.

use std::fmt;
use std::ops::Index;

use serde::de::{Error, MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::Resource;
use crate::limits::RESOURCES_PER_PROVIDER_MAX;
use crate::name::Name;

/// A provider's units sorted by id, found by binary search: a
/// `BTreeMap<Name, Resource>` in everything but its memory. A unit set
/// changes only as a whole (a registration replaces it), so a boxed slice
/// is enough, and it keeps neither the map's copy of each id as a key nor
/// its nodes' slack: ~15 bytes of each of the 1.25 million units of
/// `scripts/scale.sh`'s table (BENCHMARKS.md, "Where a million allocations'
/// bytes go"). Encodes as the map did (the units by id, each under its own
/// id), so the snapshot is unchanged.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Units(Box<[Resource]>);

impl Units {
    /// The units in id order; of units with the same id, the last one
    /// (as inserting them into a map one by one would keep).
    pub fn from_units(units: impl IntoIterator<Item = Resource>) -> Units {
        let mut units: Vec<Resource> = units.into_iter().collect();
        // Stable: units with the same id keep their order, so the last is last.
        units.sort_by(|a, b| a.resource_id.cmp(&b.resource_id));
        let mut kept: Vec<Resource> = Vec::with_capacity(units.len());
        for unit in units {
            match kept.last_mut() {
                Some(last) if last.resource_id == unit.resource_id => *last = unit,
                _ => kept.push(unit),
            }
        }
        Units(kept.into_boxed_slice())
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn position(&self, resource_id: &str) -> Option<usize> {
        self.0.binary_search_by(|unit| unit.resource_id.as_str().cmp(resource_id)).ok()
    }

    pub fn get(&self, resource_id: &str) -> Option<&Resource> {
        self.position(resource_id).map(|position| &self.0[position])
    }

    /// The unit, to change what it holds: its id must stay (the order
    /// depends on it).
    pub fn get_mut(&mut self, resource_id: &str) -> Option<&mut Resource> {
        self.position(resource_id).map(|position| &mut self.0[position])
    }

    pub fn contains_key(&self, resource_id: &str) -> bool {
        self.position(resource_id).is_some()
    }

    /// Every unit with its id, in id order, as the map's `iter` gave them.
    pub fn iter(&self) -> UnitsIter<'_> {
        self.0.iter().map(with_id)
    }

    pub fn keys(&self) -> impl Iterator<Item = &Name> + '_ {
        self.0.iter().map(|unit| &unit.resource_id)
    }

    pub fn values(&self) -> std::slice::Iter<'_, Resource> {
        self.0.iter()
    }

    /// Each unit, to change what it holds (see [`Units::get_mut`]).
    pub fn values_mut(&mut self) -> std::slice::IterMut<'_, Resource> {
        self.0.iter_mut()
    }
}

fn with_id(unit: &Resource) -> (&Name, &Resource) {
    (&unit.resource_id, unit)
}

/// [`Units::iter`]'s iterator.
pub type UnitsIter<'a> = std::iter::Map<std::slice::Iter<'a, Resource>, fn(&'a Resource) -> (&'a Name, &'a Resource)>;

impl<'a> IntoIterator for &'a Units {
    type Item = (&'a Name, &'a Resource);
    type IntoIter = UnitsIter<'a>;

    fn into_iter(self) -> UnitsIter<'a> {
        self.iter()
    }
}

impl Index<&str> for Units {
    type Output = Resource;

    /// As the map's: panics when there is no such unit.
    fn index(&self, resource_id: &str) -> &Resource {
        self.get(resource_id)
            .unwrap_or_else(|| panic!("no unit {resource_id:?} on this provider"))
    }
}

/// As the map it stands for.
impl fmt::Debug for Units {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

/// As a map of resource ids to units: the bytes of the `BTreeMap` it replaced.
impl Serialize for Units {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.len()))?;
        for (resource_id, unit) in self.iter() {
            map.serialize_entry(resource_id, unit)?;
        }
        map.end()
    }
}

/// A unit filed under an id other than its own is refused: a table built by
/// commands never holds one, and the units are found by their own ids.
impl<'de> Deserialize<'de> for Units {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Units, D::Error> {
        struct Entries;

        impl<'de> Visitor<'de> for Entries {
            type Value = Units;

            fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
                formatter.write_str("a map of resource ids to units")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Units, A::Error> {
                // The length comes from the input: trust it only so far.
                let mut units = Vec::with_capacity(map.size_hint().unwrap_or(0).min(RESOURCES_PER_PROVIDER_MAX));
                while let Some((resource_id, unit)) = map.next_entry::<Name, Resource>()? {
                    if resource_id != unit.resource_id {
                        return Err(A::Error::custom(format_args!(
                            "unit {:?} is filed under another id, {resource_id:?}",
                            unit.resource_id.as_str()
                        )));
                    }
                    units.push(unit);
                }
                Ok(Units::from_units(units))
            }
        }

        deserializer.deserialize_map(Entries)
    }
}
