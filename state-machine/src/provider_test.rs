//! Unit tests of `provider.rs`: normalising registrations and picking units.

use std::collections::BTreeMap;

use uuid::Uuid;

use super::*;

fn spec(resource_id: &str, kind: &str, capacity: i64) -> ResourceSpec {
    ResourceSpec {
        resource_id: resource_id.into(),
        kind: kind.into(),
        capacity,
        labels: BTreeMap::new(),
        sharing: None,
    }
}

fn provider_with(resources: Vec<ResourceSpec>) -> Provider {
    let registration = ProviderRegistration {
        provider_id: "node_1".into(),
        labels: BTreeMap::new(),
        resources,
        confirms_allocations: false,
        address: None,
        port: None,
    };
    Provider::new(&registration.validate().unwrap(), 0, None)
}

fn picked(grants: Option<Vec<UnitGrant>>) -> Vec<(String, u64)> {
    grants
        .expect("fits")
        .into_iter()
        .map(|grant| (grant.resource_id.to_string(), grant.amount))
        .collect()
}

#[test]
fn validate_sorts_units_and_resolves_sharing_from_capacity() {
    let registration = ProviderRegistration {
        provider_id: "node_1".into(),
        labels: BTreeMap::new(),
        resources: vec![spec("vol_1", "storage_gb", 500), spec("cpu_1", "cpu_cores", 1)],
        confirms_allocations: false,
        address: None,
        port: None,
    };
    let resolved: Vec<(String, Option<Sharing>)> = registration
        .validate()
        .unwrap()
        .resources
        .into_iter()
        .map(|r| (r.resource_id, r.sharing))
        .collect();
    assert_eq!(
        vec![
            ("cpu_1".into(), Some(Sharing::Exclusive)),
            ("vol_1".into(), Some(Sharing::Divisible))
        ],
        resolved
    );
}

#[test]
fn an_address_and_port_are_checked_and_a_port_needs_an_address() {
    let with = |address: Option<&str>, port: Option<u16>| {
        ProviderRegistration {
            provider_id: "node_1".into(),
            labels: BTreeMap::new(),
            resources: vec![spec("cpu_1", "cpu_cores", 1)],
            confirms_allocations: false,
            address: address.map(str::to_owned),
            port,
        }
        .validate()
        .map_err(|error| error.field)
    };
    assert!(with(Some("node-1.example.org"), Some(9100)).is_ok());
    assert!(with(Some("fd00::1"), None).is_ok());
    assert!(with(None, None).is_ok());
    assert_eq!(Err("port".to_owned()), with(None, Some(9100)));
    assert_eq!(Err("port".to_owned()), with(Some("10.0.0.1"), Some(0)));
    assert_eq!(Err("address".to_owned()), with(Some(""), None));
    assert_eq!(Err("address".to_owned()), with(Some("a b"), None));
    assert_eq!(Err("address".to_owned()), with(Some("http://x/"), None));
    assert_eq!(Err("address".to_owned()), with(Some(&"a".repeat(254)), None));
}

#[test]
fn kind_totals_follow_holds_and_releases() {
    let mut provider = provider_with(vec![
        spec("cpu_1", "cpu_cores", 1),
        spec("cpu_2", "cpu_cores", 1),
        spec("vol_1", "storage_gb", 100),
    ]);
    let allocation = Uuid::from_u128(1);
    let grants = vec![
        UnitGrant {
            resource_id: "cpu_1".into(),
            kind: "cpu_cores".into(),
            amount: 1,
        },
        UnitGrant {
            resource_id: "vol_1".into(),
            kind: "storage_gb".into(),
            amount: 30,
        },
    ];

    // --- held: free drops, the amounts before are reported per kind
    assert_eq!(
        vec![("cpu_cores".to_owned(), 2), ("storage_gb".to_owned(), 100)],
        provider.hold(allocation, &grants)
    );
    assert_eq!((1, 70), (provider.free_of("cpu_cores"), provider.free_of("storage_gb")));

    // --- released: back to full, and equal to totals rebuilt from the units
    provider.unhold(allocation, &grants);
    let mut rebuilt = provider.clone();
    rebuilt.rebuild_kinds();
    assert_eq!(
        (2, 100, &rebuilt.kinds),
        (provider.free_of("cpu_cores"), provider.free_of("storage_gb"), &provider.kinds)
    );
}

#[test]
fn pick_units_prefers_one_unit_then_the_largest_free_first() {
    let provider = provider_with(vec![
        spec("vol_a", "storage_gb", 30),
        spec("vol_b", "storage_gb", 80),
        spec("vol_c", "storage_gb", 50),
    ]);
    let pick = |quantity, policy| picked(provider.pick_units("storage_gb", quantity, &[], policy));

    assert_eq!(vec![("vol_c".to_owned(), 40)], pick(40, PlacementPolicy::BestFit));
    assert_eq!(vec![("vol_b".to_owned(), 40)], pick(40, PlacementPolicy::Spread));
    assert_eq!(
        vec![("vol_b".to_owned(), 80), ("vol_c".to_owned(), 20)],
        pick(100, PlacementPolicy::BestFit)
    );
    assert_eq!(None, provider.pick_units("storage_gb", 161, &[], PlacementPolicy::BestFit));
    assert_eq!(None, provider.pick_units("gpu", 1, &[], PlacementPolicy::BestFit));
}

#[test]
fn pick_units_stays_within_pinned_units_in_id_order() {
    let provider = provider_with((1..=4).map(|n| spec(&format!("cpu_{n}"), "cpu_cores", 1)).collect());
    let pinned = vec!["cpu_4".to_owned(), "cpu_2".to_owned(), "gpu_9".to_owned()];

    assert_eq!(
        vec![("cpu_2".to_owned(), 1)],
        picked(provider.pick_units("cpu_cores", 1, &pinned, PlacementPolicy::BestFit))
    );
    assert_eq!(
        vec![("cpu_2".to_owned(), 1), ("cpu_4".to_owned(), 1)],
        picked(provider.pick_units("cpu_cores", 2, &pinned, PlacementPolicy::Spread))
    );
    assert_eq!(None, provider.pick_units("cpu_cores", 3, &pinned, PlacementPolicy::BestFit));
}

proptest::proptest! {
    /// The indexed pick over `free_units` chooses exactly what a scan over
    /// every unit of the kind chooses (the pinned path, given every unit),
    /// whatever the units hold, and the index stays equal to one rebuilt
    /// from the units.
    #[test]
    fn indexed_pick_matches_a_scan_of_every_unit(
        capacities in proptest::collection::vec(1i64..6, 1..12),
        holds in proptest::collection::vec((0usize..12, 1u64..6), 0..16),
        quantity in 1u64..12,
        spread in proptest::bool::ANY,
    ) {
        let mut provider = provider_with(
            capacities.iter().enumerate().map(|(n, capacity)| spec(&format!("unit_{n:02}"), "slot", *capacity)).collect(),
        );
        for (n, (unit, wanted)) in holds.into_iter().enumerate() {
            let Some(resource) = provider.resources.get(format!("unit_{:02}", unit % capacities.len()).as_str()) else { continue };
            if resource.free() == 0 {
                continue;
            }
            let grant = UnitGrant::take(resource, wanted);
            provider.hold(Uuid::from_u128(n as u128 + 1), &[grant]);
        }
        let policy = if spread { PlacementPolicy::Spread } else { PlacementPolicy::BestFit };
        let every_unit: Vec<String> = provider.resources.keys().map(String::from).collect();

        proptest::prop_assert_eq!(
            provider.pick_pinned_units("slot", quantity, &every_unit, policy),
            provider.pick_units("slot", quantity, &[], policy)
        );
        let mut rebuilt = provider.clone();
        rebuilt.rebuild_kinds();
        proptest::prop_assert_eq!(&rebuilt.kinds, &provider.kinds);
    }
}

#[test]
fn units_encode_as_before_and_decode_sharing_their_ids_with_their_keys() {
    // --- a provider with an unlabelled unit, a labelled one and a holder
    let mut labelled = spec("gpu_0", "gpu", 1);
    labelled.labels = BTreeMap::from([("model".to_owned(), "a100".to_owned())]);
    let mut provider = provider_with(vec![spec("cpu_1", "cpu_cores", 1), labelled]);
    let grant = provider.pick_units("gpu", 1, &[], PlacementPolicy::BestFit).unwrap();
    provider.hold(Uuid::from_u128(7), &grant);
    assert!(provider.resources.iter().all(|(key, unit)| key.shares_with(&unit.resource_id)));

    // --- encoded as the map of strings to units with a map of labels was
    #[derive(Serialize)]
    struct UnitAsItWas {
        resource_id: String,
        kind: String,
        capacity: u64,
        labels: BTreeMap<String, String>,
        sharing: Sharing,
        holders: BTreeMap<Uuid, u64>,
    }
    let as_it_was: BTreeMap<String, UnitAsItWas> = provider
        .resources
        .iter()
        .map(|(key, unit)| {
            let unit_as_it_was = UnitAsItWas {
                resource_id: unit.resource_id.to_string(),
                kind: unit.kind.to_string(),
                capacity: unit.capacity,
                labels: (*unit.labels).clone(),
                sharing: unit.sharing,
                holders: unit.holders.iter().map(|(id, amount)| (*id, amount)).collect(),
            };
            (key.to_string(), unit_as_it_was)
        })
        .collect();
    let config = bincode::config::standard();
    let units = bincode::serde::encode_to_vec(&provider.resources, config).unwrap();
    assert_eq!(bincode::serde::encode_to_vec(&as_it_was, config).unwrap(), units);
    assert_eq!(
        serde_json::to_string(&as_it_was).unwrap(),
        serde_json::to_string(&provider.resources).unwrap()
    );
    assert_eq!(Some(&"a100".to_owned()), provider.resources["gpu_0"].labels.get("model"));

    // --- decoded: each key is its unit's own copy of the id
    let bytes = bincode::serde::encode_to_vec(&provider, config).unwrap();
    let (decoded, _): (Provider, usize) = bincode::serde::decode_from_slice(&bytes, config).unwrap();
    let decoded_units: Vec<_> = decoded
        .resources
        .iter()
        .map(|(key, unit)| (key.shares_with(&unit.resource_id), unit))
        .collect();
    assert_eq!(
        provider.resources.values().map(|unit| (true, unit)).collect::<Vec<_>>(),
        decoded_units
    );
}
