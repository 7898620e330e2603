//! A validated allocation request: what the log carries and the table places.
//!
//! [`crate::protocol::ResourceRequest`] is the protocol's lenient JSON shape;
//! [`ResourceRequest::validate`](crate::protocol::ResourceRequest::validate)
//! turns it into an [`AllocationRequest`] or an [`InvalidArgument`] naming the
//! field. Only validated requests reach the log, and apply checks them again so
//! that a replica never trusts its input.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::InvalidArgument;
use crate::limits::*;
use crate::name::Name;
use crate::time::OptionalMillis;

/// The namespace a request lands in when it names none.
pub const DEFAULT_NAMESPACE: &str = "default";

/// How a request chooses among providers that can hold it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PlacementPolicy {
    /// The provider with the least free capacity that still fits (of the
    /// request's scarcest kind): packs providers tightly, leaves big holes free.
    #[default]
    BestFit,
    /// The provider with the most free capacity: spreads load.
    Spread,
}

/// One kind and how much of it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Requirement {
    pub kind: Name,
    pub quantity: u64,
}

/// What a request asks for, sorted by kind: read as a slice of
/// [`Requirement`]s (`request.requirements.iter()`, `.len()`). Almost every
/// request asks for one kind, and a vector of one took 24 bytes on the heap
/// beside its 24 inline in every record a table keeps (BENCHMARKS.md,
/// "Fewer bytes per record"): one is held inline here, and more in a boxed
/// slice of exactly their length, behind one more box so that the whole is
/// 16 bytes (the one requirement's size: the other case fits beside the
/// name's never-null pointer, which tells the two apart). Compares, hashes,
/// prints and encodes as the vector it replaces (a sequence in serde), so
/// the log and the snapshot are unchanged.
#[derive(Clone)]
pub struct Requirements(RequirementsInner);

#[derive(Clone)]
enum RequirementsInner {
    One(Requirement),
    /// None, or two or more.
    #[allow(clippy::redundant_allocation)] // the outer box is one pointer; see above
    Many(Box<Box<[Requirement]>>),
}

impl Default for Requirements {
    fn default() -> Requirements {
        Requirements(RequirementsInner::Many(Box::default()))
    }
}

impl From<Vec<Requirement>> for Requirements {
    fn from(mut requirements: Vec<Requirement>) -> Requirements {
        match requirements.len() {
            1 => Requirements(RequirementsInner::One(requirements.pop().expect("one"))),
            _ => Requirements(RequirementsInner::Many(Box::new(requirements.into_boxed_slice()))),
        }
    }
}

impl FromIterator<Requirement> for Requirements {
    fn from_iter<I: IntoIterator<Item = Requirement>>(requirements: I) -> Requirements {
        Requirements::from(requirements.into_iter().collect::<Vec<_>>())
    }
}

impl std::ops::Deref for Requirements {
    type Target = [Requirement];

    fn deref(&self) -> &[Requirement] {
        match &self.0 {
            RequirementsInner::One(requirement) => std::slice::from_ref(requirement),
            RequirementsInner::Many(requirements) => requirements,
        }
    }
}

/// Changes the requirements in place, never their number.
impl std::ops::DerefMut for Requirements {
    fn deref_mut(&mut self) -> &mut [Requirement] {
        match &mut self.0 {
            RequirementsInner::One(requirement) => std::slice::from_mut(requirement),
            RequirementsInner::Many(requirements) => requirements,
        }
    }
}

impl<'a> IntoIterator for &'a Requirements {
    type Item = &'a Requirement;
    type IntoIter = std::slice::Iter<'a, Requirement>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl<'a> IntoIterator for &'a mut Requirements {
    type Item = &'a mut Requirement;
    type IntoIter = std::slice::IterMut<'a, Requirement>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter_mut()
    }
}

impl PartialEq for Requirements {
    fn eq(&self, other: &Requirements) -> bool {
        **self == **other
    }
}

impl Eq for Requirements {}

impl std::hash::Hash for Requirements {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        (**self).hash(state)
    }
}

impl std::fmt::Debug for Requirements {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        (**self).fmt(f)
    }
}

impl Serialize for Requirements {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        (**self).serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Requirements {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Requirements, D::Error> {
        Vec::<Requirement>::deserialize(deserializer).map(Requirements::from)
    }
}

/// Where a request may be placed: a [`ConstraintSet`], read through this
/// as if it were one (`request.constraints.provider_id`). Almost every
/// request sets none, and the set inline took 72 bytes of every record a
/// table keeps (BENCHMARKS.md, "Where a million allocations' bytes go");
/// an empty set is a null pointer here, and only a request that sets one
/// pays for a box. Compares, hashes, prints and encodes as the set it holds,
/// so the log and the snapshot are unchanged.
#[derive(Clone, Default)]
pub struct Constraints(Option<Box<ConstraintSet>>);

/// What [`Constraints`] stands for when none is set.
static NO_CONSTRAINTS: ConstraintSet = ConstraintSet {
    provider_id: None,
    labels: BTreeMap::new(),
    resource_ids: Vec::new(),
};

impl Constraints {
    /// Boxes `set` only if it constrains anything.
    pub fn new(set: ConstraintSet) -> Constraints {
        Constraints((set != NO_CONSTRAINTS).then(|| Box::new(set)))
    }
}

impl From<ConstraintSet> for Constraints {
    fn from(set: ConstraintSet) -> Constraints {
        Constraints::new(set)
    }
}

impl std::ops::Deref for Constraints {
    type Target = ConstraintSet;

    fn deref(&self) -> &ConstraintSet {
        self.0.as_deref().unwrap_or(&NO_CONSTRAINTS)
    }
}

/// Boxes on the first change (a set changed back to empty stays boxed;
/// equality and encoding look only at the set).
impl std::ops::DerefMut for Constraints {
    fn deref_mut(&mut self) -> &mut ConstraintSet {
        self.0.get_or_insert_with(Default::default)
    }
}

impl PartialEq for Constraints {
    fn eq(&self, other: &Constraints) -> bool {
        **self == **other
    }
}

impl Eq for Constraints {}

impl std::hash::Hash for Constraints {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        (**self).hash(state)
    }
}

impl std::fmt::Debug for Constraints {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        (**self).fmt(f)
    }
}

impl Serialize for Constraints {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        (**self).serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Constraints {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Constraints, D::Error> {
        ConstraintSet::deserialize(deserializer).map(Constraints::new)
    }
}

/// Where a request may be placed. All given conditions must hold.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ConstraintSet {
    /// Only this provider.
    pub provider_id: Option<String>,
    /// The provider must carry every one of these labels with these values.
    pub labels: BTreeMap<String, String>,
    /// Only these units of the provider may be used (needs `provider_id`).
    /// Pinning one unit makes it a lock-like register: the fault-injection
    /// suite's `register` workload is built on this.
    pub resource_ids: Vec<String>,
}

/// A request that passed validation. Requirements are sorted by kind and
/// unique, so equal requests compare and encode equal.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AllocationRequest {
    pub request_id: Uuid,
    /// The table keeps one copy per owner, shared by the owner's records
    /// (see [`Name`]).
    pub requester_id: Name,
    pub namespace: Name,
    pub requirements: Requirements,
    /// Higher is more urgent.
    pub priority: i64,
    /// A queued request still waiting at this time is rejected. (Both times
    /// an [`OptionalMillis`]: 8 bytes of every record where an `Option<u64>`
    /// took 16, encoded as the `Option<u64>`.)
    pub deadline_ms: OptionalMillis,
    /// An allocation not renewed within this many milliseconds expires.
    pub lease_ttl_ms: OptionalMillis,
    pub constraints: Constraints,
    pub placement: PlacementPolicy,
}

impl AllocationRequest {
    /// Checks every field against the limits; the same check the API runs
    /// before proposing, repeated at apply time.
    pub fn check(&self) -> Result<(), InvalidArgument> {
        check_id("requester_id", &self.requester_id)?;
        check_id("namespace", &self.namespace)?;
        if self.requirements.is_empty() {
            return Err(InvalidArgument::new("resource_requirements", "must name at least one kind"));
        }
        if self.requirements.len() > REQUIREMENT_KINDS_MAX {
            return Err(InvalidArgument::new(
                "resource_requirements",
                format!("has {} kinds, at most {REQUIREMENT_KINDS_MAX} are allowed", self.requirements.len()),
            ));
        }
        for pair in self.requirements.windows(2) {
            if pair[0].kind >= pair[1].kind {
                return Err(InvalidArgument::new("resource_requirements", "kinds must be sorted and unique"));
            }
        }
        for requirement in &self.requirements {
            let field = check_key("resource_requirements", &requirement.kind)?;
            check_quantity(&field, requirement.quantity as i128)?;
        }
        if let Some(ttl) = self.lease_ttl_ms.get() {
            if !(LEASE_TTL_MS_MIN..=LEASE_TTL_MS_MAX).contains(&ttl) {
                return Err(InvalidArgument::new(
                    "lease_ttl_ms",
                    format!("must be between {LEASE_TTL_MS_MIN} and {LEASE_TTL_MS_MAX}"),
                ));
            }
        }
        self.constraints.check()
    }
}

impl ConstraintSet {
    fn check(&self) -> Result<(), InvalidArgument> {
        if let Some(provider_id) = &self.provider_id {
            check_id("constraints.provider_id", provider_id)?;
        }
        check_labels("constraints.labels", &self.labels)?;
        if !self.resource_ids.is_empty() && self.provider_id.is_none() {
            return Err(InvalidArgument::new("constraints.resource_ids", "needs constraints.provider_id"));
        }
        if self.resource_ids.len() > PINNED_UNITS_MAX {
            return Err(InvalidArgument::new(
                "constraints.resource_ids",
                format!("pins {} units, at most {PINNED_UNITS_MAX} are allowed", self.resource_ids.len()),
            ));
        }
        for resource_id in &self.resource_ids {
            check_id("constraints.resource_ids", resource_id)?;
        }
        // A unit pinned twice would count twice towards what the pinned units
        // could ever hold, and a request that can never fit would wait forever.
        let mut sorted: Vec<&String> = self.resource_ids.iter().collect();
        sorted.sort_unstable();
        if let Some(pair) = sorted.windows(2).find(|pair| pair[0] == pair[1]) {
            return Err(InvalidArgument::new("constraints.resource_ids", format!("lists {} twice", pair[0])));
        }
        Ok(())
    }
}

/// An identifier: non-empty, at most [`ID_LEN_MAX`] bytes, printable, no spaces.
pub fn check_id(field: &str, value: &str) -> Result<(), InvalidArgument> {
    if value.is_empty() {
        return Err(InvalidArgument::new(field, "is required and must not be empty"));
    }
    if value.len() > ID_LEN_MAX {
        return Err(InvalidArgument::new(
            field,
            format!("is {} bytes long, at most {ID_LEN_MAX} are allowed", value.len()),
        ));
    }
    if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(InvalidArgument::new(field, "must not contain spaces or control characters"));
    }
    Ok(())
}

/// A map key that must be an identifier (a kind, a label key). Returns the
/// entry's field path, `parent.key`. A bad key is reported against `parent`
/// alone, so that an error never echoes megabytes of bad input back.
pub fn check_key(parent: &str, key: &str) -> Result<String, InvalidArgument> {
    let problem = if key.is_empty() {
        "an empty key".to_owned()
    } else if key.len() > ID_LEN_MAX {
        format!("a key {} bytes long, at most {ID_LEN_MAX} are allowed", key.len())
    } else if key.chars().any(|c| c.is_whitespace() || c.is_control()) {
        format!("the key {key:?}, which contains spaces or control characters")
    } else {
        return Ok(format!("{parent}.{key}"));
    };
    Err(InvalidArgument::new(parent, format!("has {problem}")))
}

/// A quantity or capacity: a whole number from 1 to [`QUANTITY_MAX`].
pub fn check_quantity(field: &str, value: i128) -> Result<u64, InvalidArgument> {
    if value <= 0 {
        return Err(InvalidArgument::new(field, format!("must be positive, got {value}")));
    }
    if value > QUANTITY_MAX as i128 {
        return Err(InvalidArgument::new(
            field,
            format!("is {value}, at most {QUANTITY_MAX} is allowed"),
        ));
    }
    Ok(value as u64)
}

/// Labels: at most [`LABELS_MAX`], keys are identifiers, values bounded.
pub fn check_labels(field: &str, labels: &BTreeMap<String, String>) -> Result<(), InvalidArgument> {
    if labels.len() > LABELS_MAX {
        return Err(InvalidArgument::new(
            field,
            format!("has {} labels, at most {LABELS_MAX} are allowed", labels.len()),
        ));
    }
    for (key, value) in labels {
        let key_field = check_key(field, key)?;
        if value.len() > LABEL_VALUE_LEN_MAX {
            return Err(InvalidArgument::new(
                key_field,
                format!("value is {} bytes long, at most {LABEL_VALUE_LEN_MAX} are allowed", value.len()),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_key_names_the_entry_or_only_the_parent() {
        assert_eq!(
            Ok("resource_requirements.gpu".to_owned()),
            check_key("resource_requirements", "gpu")
        );
        let long = "k".repeat(ID_LEN_MAX + 1);
        let expected = InvalidArgument::new(
            "labels",
            format!("has a key {} bytes long, at most {ID_LEN_MAX} are allowed", ID_LEN_MAX + 1),
        );
        assert_eq!(Err(expected), check_key("labels", &long));
        assert_eq!(Err(InvalidArgument::new("labels", "has an empty key")), check_key("labels", ""));
    }

    #[test]
    fn check_quantity_accepts_one_to_the_limit() {
        assert_eq!(Ok(1), check_quantity("q", 1));
        assert_eq!(Ok(QUANTITY_MAX), check_quantity("q", QUANTITY_MAX as i128));
        for bad in [0, -1, QUANTITY_MAX as i128 + 1] {
            assert_eq!(Some("q".to_owned()), check_quantity("q", bad).err().map(|invalid| invalid.field));
        }
    }

    #[test]
    fn requirements_encode_compare_and_print_as_the_vector() {
        let config = bincode::config::standard();
        let requirement = |kind: &str, quantity| Requirement {
            kind: kind.into(),
            quantity,
        };
        for vector in [
            vec![],
            vec![requirement("gpu", 1)],
            vec![requirement("cpu", 2), requirement("gpu", 1)],
        ] {
            let requirements = Requirements::from(vector.clone());
            assert_eq!(vector.as_slice(), &*requirements);
            let bytes = bincode::serde::encode_to_vec(&requirements, config).unwrap();
            assert_eq!(bincode::serde::encode_to_vec(&vector, config).unwrap(), bytes);
            assert_eq!(
                serde_json::to_string(&vector).unwrap(),
                serde_json::to_string(&requirements).unwrap()
            );
            assert_eq!(format!("{vector:?}"), format!("{requirements:?}"));
            let (decoded, _): (Requirements, usize) = bincode::serde::decode_from_slice(&bytes, config).unwrap();
            assert_eq!(requirements, decoded);
            assert_eq!(requirements, vector.iter().cloned().collect::<Requirements>());
        }
        let mut one = Requirements::from(vec![requirement("gpu", 1)]);
        one[0].quantity = 3;
        assert_eq!(Requirements::from(vec![requirement("gpu", 3)]), one);
        assert_ne!(Requirements::default(), one);
    }
}
