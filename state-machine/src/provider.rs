//! Providers and the units they offer.
//!
//! # Units: exclusive or divisible
//!
//! Every resource a provider registers is one *unit* with a kind and a capacity.
//! Its [`Sharing`] says how allocations use it:
//!
//! * **exclusive**: one allocation holds the whole unit (a CPU core, a GPU, a
//!   memory block). A request for 2 `cpu_cores` gets two exclusive units of
//!   capacity 1; a unit of capacity 4 counts as 4 towards the request and is
//!   held whole even if the request asked for less.
//! * **divisible**: allocations carve amounts out of its capacity until it is
//!   full (a storage volume carved into GB).
//!
//! When a registration does not say, a unit of capacity 1 is exclusive and a
//! larger one divisible, which matches the protocol's examples (`cpu_1`,
//! `block_1`, `vol_1`).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub use holders::Holders;
pub use units::{Units, UnitsIter};

use crate::error::InvalidArgument;
use crate::limits::{PROVIDER_ADDRESS_LEN_MAX, RESOURCES_PER_PROVIDER_MAX};
use crate::name::Name;
use crate::record::UnitGrant;
use crate::request::{check_id, check_labels, check_quantity, PlacementPolicy};

/// How allocations share one unit; see the module docs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Sharing {
    Exclusive,
    Divisible,
}

/// One resource in a registration document.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceSpec {
    pub resource_id: String,
    pub kind: String,
    /// Signed so that a negative capacity is reported as such, naming the field.
    pub capacity: i64,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Absent: exclusive when the capacity is 1, divisible otherwise.
    #[serde(default)]
    pub sharing: Option<Sharing>,
}

/// The registration document: `{"provider_id", "labels", "resources": [...]}`,
/// optionally with `"address"` and `"port"`.
/// Also the log command's payload once [`ProviderRegistration::validate`] has
/// normalised it (sharing resolved, resources sorted by id).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProviderRegistration {
    pub provider_id: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub resources: Vec<ResourceSpec>,
    /// The provider runs an agent that confirms each allocation and release
    /// (the protocol's AllocationConfirmed / DeallocationConfirmed). Without
    /// one, grants go straight to `monitoring` and releases to `idle`.
    #[serde(default)]
    pub confirms_allocations: bool,
    /// Where the provider's host is reached (a host name or an IP address),
    /// for the service catalog (`resource_providers`' ServiceAddress); the
    /// table never dials it.
    #[serde(default)]
    pub address: Option<String>,
    /// With `address`: the port that goes with it in the catalog.
    #[serde(default)]
    pub port: Option<u16>,
}

impl ProviderRegistration {
    /// Checks every field and returns the normalised registration.
    pub fn validate(mut self) -> Result<ProviderRegistration, InvalidArgument> {
        check_id("provider_id", &self.provider_id)?;
        check_labels("labels", &self.labels)?;
        if let Some(address) = &self.address {
            check_address("address", address)?;
        }
        match self.port {
            Some(0) => return Err(InvalidArgument::new("port", "must be between 1 and 65535")),
            Some(_) if self.address.is_none() => return Err(InvalidArgument::new("port", "needs an address to go with it")),
            _ => {}
        }
        if self.resources.is_empty() {
            return Err(InvalidArgument::new("resources", "must list at least one resource"));
        }
        if self.resources.len() > RESOURCES_PER_PROVIDER_MAX {
            return Err(InvalidArgument::new(
                "resources",
                format!(
                    "has {} resources, at most {RESOURCES_PER_PROVIDER_MAX} are allowed",
                    self.resources.len()
                ),
            ));
        }
        for (position, resource) in self.resources.iter_mut().enumerate() {
            let field = format!("resources[{position}]");
            check_id(&format!("{field}.resource_id"), &resource.resource_id)?;
            check_id(&format!("{field}.kind"), &resource.kind)?;
            check_quantity(&format!("{field}.capacity"), resource.capacity as i128)?;
            check_labels(&format!("{field}.labels"), &resource.labels)?;
            resource.sharing.get_or_insert(if resource.capacity == 1 {
                Sharing::Exclusive
            } else {
                Sharing::Divisible
            });
        }
        self.resources.sort_by(|a, b| a.resource_id.cmp(&b.resource_id));
        if let Some(pair) = self.resources.windows(2).find(|pair| pair[0].resource_id == pair[1].resource_id) {
            return Err(InvalidArgument::new(
                "resources",
                format!("resource_id {} appears twice", pair[0].resource_id),
            ));
        }
        Ok(self)
    }
}

/// A host name or an IP address (v4 or v6, without brackets): at most
/// [`PROVIDER_ADDRESS_LEN_MAX`] bytes of letters, digits, `.`, `-`, `_` and
/// `:`, so that it can be printed and put in a URL as it is.
fn check_address(field: &str, address: &str) -> Result<(), InvalidArgument> {
    if address.is_empty() {
        return Err(InvalidArgument::new(field, "must not be empty (leave it out instead)"));
    }
    if address.len() > PROVIDER_ADDRESS_LEN_MAX {
        return Err(InvalidArgument::new(
            field,
            format!("is {} bytes long, at most {PROVIDER_ADDRESS_LEN_MAX} are allowed", address.len()),
        ));
    }
    if !address
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':'))
    {
        return Err(InvalidArgument::new(
            field,
            "must be a host name or an IP address (letters, digits, '.', '-', '_', ':')",
        ));
    }
    Ok(())
}

/// Whether a provider's units can be placed on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProviderStatus {
    Active,
    /// Stopped heartbeating (or was declared failed); its units are offered to
    /// nobody until it comes back.
    Failed,
}

/// Whether new allocations may be placed on an active provider: an
/// operator's `qm provider cordon` stops new placements (what is there
/// stays), a drain also moves its movable allocations away. A failed
/// provider keeps its scheduling, so it is still cordoned when it returns.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scheduling {
    /// Placements welcome.
    #[default]
    Open,
    /// No new placements; its allocations stay.
    Cordoned,
    /// No new placements; movable allocations move elsewhere make-before-break,
    /// and at `deadline_ms` the rest are moved as if the provider left.
    Draining { deadline_ms: u64 },
}

impl Scheduling {
    /// The wire name: `open`, `cordoned` or `draining`.
    pub fn as_str(self) -> &'static str {
        match self {
            Scheduling::Open => "open",
            Scheduling::Cordoned => "cordoned",
            Scheduling::Draining { .. } => "draining",
        }
    }
}

/// One unit as the table tracks it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resource {
    /// Shared with every grant on the unit (see [`Name`]).
    pub resource_id: Name,
    /// Shared with the provider's other units of the kind and their grants.
    pub kind: Name,
    pub capacity: u64,
    pub labels: UnitLabels,
    pub sharing: Sharing,
    /// Amount held by each allocation on this unit. An exclusive unit has at
    /// most one holder, holding its whole capacity.
    pub holders: Holders,
}

/// A unit's labels: a [`BTreeMap`], read through this as if it were one
/// (`resource.labels.get("zone")`). Almost no unit carries labels, yet the
/// empty map took 24 bytes of every unit a table holds (a million units
/// for a million one-unit slots, BENCHMARKS.md, "Fewer bytes per record");
/// none is a null pointer here. Compares, prints and encodes as the map it
/// holds, so the log and the snapshot are unchanged.
// The box is the point: `None` is 8 bytes where an empty map is 24.
#[allow(clippy::box_collection)]
#[derive(Clone, Default)]
pub struct UnitLabels(Option<Box<BTreeMap<String, String>>>);

/// What [`UnitLabels`] stands for when a unit has none.
static NO_LABELS: BTreeMap<String, String> = BTreeMap::new();

impl UnitLabels {
    /// Boxes `labels` only if there are any.
    pub fn new(labels: BTreeMap<String, String>) -> UnitLabels {
        UnitLabels((!labels.is_empty()).then(|| Box::new(labels)))
    }
}

impl From<BTreeMap<String, String>> for UnitLabels {
    fn from(labels: BTreeMap<String, String>) -> UnitLabels {
        UnitLabels::new(labels)
    }
}

impl std::ops::Deref for UnitLabels {
    type Target = BTreeMap<String, String>;

    fn deref(&self) -> &BTreeMap<String, String> {
        self.0.as_deref().unwrap_or(&NO_LABELS)
    }
}

impl PartialEq for UnitLabels {
    fn eq(&self, other: &UnitLabels) -> bool {
        **self == **other
    }
}

impl Eq for UnitLabels {}

impl std::fmt::Debug for UnitLabels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        (**self).fmt(f)
    }
}

impl Serialize for UnitLabels {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        (**self).serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for UnitLabels {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<UnitLabels, D::Error> {
        BTreeMap::deserialize(deserializer).map(UnitLabels::new)
    }
}

impl Resource {
    pub fn used(&self) -> u64 {
        self.holders.values().sum()
    }

    /// What a new allocation could still take from this unit.
    pub fn free(&self) -> u64 {
        match self.sharing {
            Sharing::Exclusive if self.holders.is_empty() => self.capacity,
            Sharing::Exclusive => 0,
            Sharing::Divisible => self.capacity - self.used(),
        }
    }
}

/// Capacity and free amount of one kind on one provider. Derived from the
/// units, kept so a placement check is a map look-up, not a scan.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KindTotals {
    pub capacity: u64,
    pub free: u64,
    /// `(free amount, resource id)` of every unit of the kind with something
    /// free, so picking a unit is a range query instead of a walk over all of
    /// the provider's units (a provider may offer thousands of one kind).
    /// The id is the unit's own copy (see [`Name`]): a `String` here was a
    /// copy of the id per free unit and an allocation per placement.
    pub free_units: BTreeSet<(u64, Name)>,
}

/// A registered provider.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Provider {
    /// Shared with every placement on the provider (see [`Name`]).
    pub provider_id: Name,
    pub labels: BTreeMap<String, String>,
    pub status: ProviderStatus,
    pub confirms_allocations: bool,
    /// By id (see [`Units`]).
    pub resources: Units,
    pub registered_at_ms: u64,
    /// As registered; see [`ProviderRegistration::address`].
    pub address: Option<String>,
    pub port: Option<u16>,
    /// Cordoned or draining providers take no new placements.
    pub scheduling: Scheduling,
    /// Derived from `resources`; rebuilt after a snapshot is restored.
    #[serde(skip)]
    /// Its keys are the one copy of each kind its units share.
    pub kinds: BTreeMap<Name, KindTotals>,
}

impl Provider {
    /// The provider `registration` describes. Its units take their ids'
    /// and kinds' copies from `names_from`'s units of the same names (see
    /// [`Name`]): a fleet's providers mostly name their units alike
    /// (`cpu_0`..., `slot-0000`...), and a copy per provider was a string
    /// per unit, 25 bytes of every allocation of `scripts/scale.sh`'s table
    /// (BENCHMARKS.md, "Where a million allocations' bytes go"). Which copy
    /// is shared never shows.
    pub fn new(registration: &ProviderRegistration, now_ms: u64, names_from: Option<&Provider>) -> Provider {
        let units = registration.resources.iter().map(|spec| Resource::from_spec(spec, names_from));
        let mut provider = Provider {
            provider_id: registration.provider_id.clone().into(),
            labels: registration.labels.clone(),
            status: ProviderStatus::Active,
            confirms_allocations: registration.confirms_allocations,
            resources: Units::from_units(units),
            registered_at_ms: now_ms,
            address: registration.address.clone(),
            port: registration.port,
            scheduling: Scheduling::Open,
            kinds: BTreeMap::new(),
        };
        provider.rebuild_kinds();
        provider
    }

    /// Recomputes [`Provider::kinds`] from the units.
    pub fn rebuild_kinds(&mut self) {
        self.kinds.clear();
        for resource in self.resources.values_mut() {
            // Not `entry`: it would take the kind for every unit. The units
            // of a kind share the first one's copy of it.
            let totals = match self.kinds.get_key_value(resource.kind.as_str()) {
                Some((kind, _)) => {
                    resource.kind = kind.clone();
                    self.kinds.get_mut(resource.kind.as_str()).expect("just found")
                }
                None => self.kinds.entry(resource.kind.clone()).or_default(),
            };
            let free = resource.free();
            totals.capacity += resource.capacity;
            totals.free += free;
            if free > 0 {
                totals.free_units.insert((free, resource.resource_id.clone()));
            }
        }
    }

    /// Whether a new allocation (or a moved one) may be placed here: active
    /// and neither cordoned nor draining.
    pub fn accepts_placements(&self) -> bool {
        self.status == ProviderStatus::Active && self.scheduling == Scheduling::Open
    }

    pub fn free_of(&self, kind: &str) -> u64 {
        self.kinds.get(kind).map_or(0, |totals| totals.free)
    }

    pub fn capacity_of(&self, kind: &str) -> u64 {
        self.kinds.get(kind).map_or(0, |totals| totals.capacity)
    }

    pub fn has_labels(&self, wanted: &BTreeMap<String, String>) -> bool {
        wanted.iter().all(|(key, value)| self.labels.get(key) == Some(value))
    }

    /// Picks units for `quantity` of `kind`, only among `allowed` when it is
    /// non-empty. Best fit within the provider: the single unit that fits most
    /// tightly, else the largest free units first so the allocation spans as
    /// few units as possible. Ties go to the lower resource id.
    pub fn pick_units(&self, kind: &str, quantity: u64, allowed: &[String], policy: PlacementPolicy) -> Option<Vec<UnitGrant>> {
        let totals = self.kinds.get(kind)?;
        if !allowed.is_empty() {
            return self.pick_pinned_units(kind, quantity, allowed, policy);
        }
        // `free_units` is ordered by (free, resource id): the first entry at
        // or above `quantity` is the tightest fit with the lowest id among
        // equals; for spread, the lowest id among the units with the most free.
        let single = match policy {
            PlacementPolicy::BestFit => totals.free_units.range((quantity, Name::default())..).next(),
            PlacementPolicy::Spread => totals
                .free_units
                .last()
                .filter(|(most_free, _)| *most_free >= quantity)
                .and_then(|(most_free, _)| totals.free_units.range((*most_free, Name::default())..).next()),
        };
        if let Some((_, resource_id)) = single {
            return Some(vec![UnitGrant::take(&self.resources[resource_id.as_str()], quantity)]);
        }
        // No unit fits alone: the largest free units first, equal amounts in
        // resource-id order, which is the order `free_units` keeps them in.
        let mut candidates: Vec<&Resource> = totals
            .free_units
            .iter()
            .map(|(_, resource_id)| &self.resources[resource_id.as_str()])
            .collect();
        candidates.sort_by_key(|resource| Reverse(resource.free()));
        Self::span_units(candidates, quantity)
    }

    /// [`Provider::pick_units`] among the units a request pins, the same rules
    /// applied to the pinned units only (few, so a scan is fine).
    fn pick_pinned_units(&self, kind: &str, quantity: u64, allowed: &[String], policy: PlacementPolicy) -> Option<Vec<UnitGrant>> {
        let mut candidates: Vec<&Resource> = allowed
            .iter()
            .filter_map(|id| self.resources.get(id.as_str()))
            .filter(|resource| resource.kind == kind && resource.free() > 0)
            .collect();
        candidates.sort_by(|a, b| a.resource_id.cmp(&b.resource_id));
        candidates.dedup_by(|a, b| a.resource_id == b.resource_id);
        let single = match policy {
            PlacementPolicy::BestFit => candidates.iter().filter(|r| r.free() >= quantity).min_by_key(|r| r.free()),
            // `max_by_key` keeps the last of equal maxima; reversing the id keeps the lower id.
            PlacementPolicy::Spread => candidates
                .iter()
                .filter(|r| r.free() >= quantity)
                .max_by_key(|r| (r.free(), Reverse(&r.resource_id))),
        };
        if let Some(resource) = single {
            return Some(vec![UnitGrant::take(resource, quantity)]);
        }
        // Stable sort: equal free amounts keep resource-id order.
        candidates.sort_by_key(|resource| Reverse(resource.free()));
        Self::span_units(candidates, quantity)
    }

    /// Takes from `candidates` in order until `quantity` is covered; the
    /// grants in resource-id order, or `None` when they do not add up.
    fn span_units(candidates: Vec<&Resource>, quantity: u64) -> Option<Vec<UnitGrant>> {
        let mut grants = Vec::new();
        let mut remaining = quantity;
        for resource in candidates {
            let grant = UnitGrant::take(resource, remaining);
            remaining = remaining.saturating_sub(grant.amount);
            grants.push(grant);
            if remaining == 0 {
                grants.sort_by(|a, b| a.resource_id.cmp(&b.resource_id));
                return Some(grants);
            }
        }
        None
    }

    /// Records `grants` as held by `allocation_id`. Returns the kinds whose
    /// free amount changed, with the amount before, for the caller's indexes.
    pub fn hold(&mut self, allocation_id: Uuid, grants: &[UnitGrant]) -> Vec<(String, u64)> {
        self.change_units(grants, |resource, grant| {
            assert!(
                resource.free() >= grant.amount,
                "over-commit of {}: {} free, {} granted",
                resource.resource_id,
                resource.free(),
                grant.amount
            );
            let previous = resource.holders.insert(allocation_id, grant.amount);
            assert!(
                previous.is_none(),
                "allocation {allocation_id} holds {} twice",
                resource.resource_id
            );
        })
    }

    /// Frees what `allocation_id` holds under `grants`.
    pub fn unhold(&mut self, allocation_id: Uuid, grants: &[UnitGrant]) -> Vec<(String, u64)> {
        self.change_units(grants, |resource, grant| {
            let held = resource.holders.remove(&allocation_id);
            assert_eq!(
                held,
                Some(grant.amount),
                "allocation {allocation_id} did not hold {}",
                resource.resource_id
            );
        })
    }

    fn change_units(&mut self, grants: &[UnitGrant], mut change: impl FnMut(&mut Resource, &UnitGrant)) -> Vec<(String, u64)> {
        let mut before: Vec<(String, u64)> = Vec::new();
        for grant in grants {
            if !before.iter().any(|(kind, _)| *kind == grant.kind) {
                before.push((grant.kind.to_string(), self.free_of(&grant.kind)));
            }
            let resource = self
                .resources
                .get_mut(&grant.resource_id)
                .expect("grant names a unit of this provider");
            let free_before = resource.free();
            change(resource, grant);
            let free_after = resource.free();
            let totals = self.kinds.get_mut(&*grant.kind).expect("kind totals exist for every unit");
            totals.free = totals.free + free_after - free_before;
            if free_before != free_after {
                let mut entry = (free_before, grant.resource_id.clone());
                if free_before > 0 {
                    totals.free_units.remove(&entry);
                }
                if free_after > 0 {
                    entry.0 = free_after;
                    totals.free_units.insert(entry);
                }
            }
        }
        before
    }
}

impl Resource {
    /// The unit `spec` registers, with `names_from`'s copies of its id and
    /// kind where that provider has them (a new copy otherwise).
    fn from_spec(spec: &ResourceSpec, names_from: Option<&Provider>) -> Resource {
        let resource_id = names_from
            .and_then(|other| other.resources.get(&spec.resource_id))
            .map_or_else(|| Name::from(spec.resource_id.as_str()), |theirs| theirs.resource_id.clone());
        let kind = names_from
            .and_then(|other| other.kinds.get_key_value(spec.kind.as_str()))
            .map_or_else(|| Name::from(spec.kind.as_str()), |(kind, _)| kind.clone());
        Resource {
            resource_id,
            kind,
            capacity: spec.capacity as u64,
            labels: UnitLabels::new(spec.labels.clone()),
            sharing: spec.sharing.expect("validated registrations resolve sharing"),
            holders: Holders::new(),
        }
    }
}

#[path = "holders.rs"]
mod holders;
#[path = "units.rs"]
mod units;

#[cfg(test)]
#[path = "provider_test.rs"]
mod tests;
