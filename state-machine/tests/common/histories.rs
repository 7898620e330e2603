//! What the property tests (`properties.rs`, `quota_properties.rs`) share:
//! the check of every unit against the records after each step, the
//! resource builder, and the number of cases.

use std::collections::BTreeMap;

use qm_state_machine::{AllocationTable, ListFilter, Name, ProviderStatus, RequestState, ResourceSpec, Sharing};
use uuid::Uuid;

/// A unit of `capacity` of `kind`.
pub fn spec(resource_id: &str, kind: &str, capacity: i64, sharing: Option<Sharing>) -> ResourceSpec {
    ResourceSpec {
        resource_id: resource_id.to_owned(),
        kind: kind.to_owned(),
        capacity,
        labels: BTreeMap::new(),
        sharing,
    }
}

/// Every unit within its capacity, an exclusive one in one allocation at
/// most, and every record's grants exactly the units that name it (a
/// move's target too, until it confirms); nothing else holds units.
pub fn check_units(table: &AllocationTable) {
    let records = table.list(&ListFilter::default());
    let mut holdings: BTreeMap<Uuid, Vec<(Name, Name, u64)>> = BTreeMap::new();
    for provider in table.providers() {
        for resource in provider.resources.values() {
            let used: u64 = resource.holders.values().sum();
            assert!(
                used <= resource.capacity,
                "{}/{} holds {used} of {}",
                provider.provider_id,
                resource.resource_id,
                resource.capacity
            );
            if resource.sharing == Sharing::Exclusive {
                assert!(
                    resource.holders.len() <= 1,
                    "exclusive {}/{} is in {} allocations",
                    provider.provider_id,
                    resource.resource_id,
                    resource.holders.len()
                );
            }
            for (allocation_id, amount) in &resource.holders {
                holdings
                    .entry(*allocation_id)
                    .or_default()
                    .push((provider.provider_id.clone(), resource.resource_id.clone(), amount));
            }
        }
    }
    let mut active = 0;
    for record in &records {
        let held = holdings.remove(&record.allocation_id()).unwrap_or_default();
        match record.state {
            RequestState::Allocation | RequestState::Monitoring | RequestState::Optimization => {
                active += 1;
                let placement = record.placement.as_ref().expect("an active allocation has a placement");
                let provider = table.provider(&placement.provider_id).expect("placed on a registered provider");
                // On a failed provider only while its evacuation goes on.
                assert!(
                    provider.status == ProviderStatus::Active || table.evacuations_pending() > 0,
                    "{} is on failed {} and nothing is being evacuated",
                    record.request.request_id,
                    provider.provider_id
                );
                let mut granted: Vec<(Name, Name, u64)> = placement
                    .grants
                    .iter()
                    .map(|g| (placement.provider_id.clone(), g.resource_id.clone(), g.amount))
                    .collect();
                // A move's target holds its units too until it confirms.
                if let Some(moving) = record.moving().filter(|moving| !moving.target_confirmed) {
                    granted.extend(
                        moving
                            .to
                            .grants
                            .iter()
                            .map(|g| (moving.to.provider_id.clone(), g.resource_id.clone(), g.amount)),
                    );
                    granted.sort();
                }
                let mut held = held;
                held.sort();
                assert_eq!(granted, held, "{}: grants and units disagree", record.request.request_id);
            }
            RequestState::Queued => {
                assert_eq!(None, record.placement, "queued {} has a placement", record.request.request_id);
                assert!(held.is_empty(), "queued {} holds {held:?}", record.request.request_id);
            }
            _ => assert!(held.is_empty(), "finished {} holds {held:?}", record.request.request_id),
        }
    }
    assert!(holdings.is_empty(), "units held by unknown allocations: {holdings:?}");
    assert_eq!(active, table.active_allocations());
}

/// Cases per property: `PROPTEST_CASES` or 96, so the suite stays quick.
pub fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|cases| cases.parse().ok())
        .unwrap_or(96)
}
