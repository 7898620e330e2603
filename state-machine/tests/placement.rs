//! Placement: exclusive and divisible units, best fit and spread with their
//! tie-breaks, and constraints (provider, labels, pinned units).

mod common;

use common::*;
use qm_state_machine::ResourceState::Allocated;
use qm_state_machine::{
    AllocationRequest, AllocationStatus, ConstraintSet, Constraints, PlacementPolicy, RequestRecord, RequestState, Sharing, UnitGrant,
};

/// Where a record sits: its provider and grants.
fn placed(record: &RequestRecord) -> (String, Vec<UnitGrant>) {
    let placement = record
        .placement
        .as_ref()
        .unwrap_or_else(|| panic!("{} is {:?}, not placed", record.request.request_id, record.state));
    (placement.provider_id.to_string(), placement.grants.to_vec())
}

fn spread(request: AllocationRequest) -> AllocationRequest {
    AllocationRequest {
        placement: PlacementPolicy::Spread,
        ..request
    }
}

#[test]
fn exclusive_units_are_held_one_allocation_each() {
    let mut t = Table::with_providers(vec![provider("node_1", cores("", 4))]);

    // --- two cores each: the lower ids first
    let first = request(1, &[("cpu_cores", 2)]);
    let expected = t.expect(vec![
        core("node_1", "cpu_1", Allocated),
        core("node_1", "cpu_2", Allocated),
        granted(
            &first,
            "node_1",
            vec![grant("cpu_1", "cpu_cores", 1), grant("cpu_2", "cpu_cores", 1)],
        ),
    ]);
    assert_eq!(expected, t.allocate(&first).events);
    let second = t.allocate_record(&request(2, &[("cpu_cores", 2)]));
    assert_eq!(
        (
            "node_1".into(),
            vec![grant("cpu_3", "cpu_cores", 1), grant("cpu_4", "cpu_cores", 1)]
        ),
        placed(&second)
    );

    // --- no core left: the third waits
    let third = request(3, &[("cpu_cores", 1)]);
    assert_eq!(t.expect(vec![queued(&third, INSUFFICIENT)]), t.allocate(&third).events);
}

#[test]
fn an_exclusive_unit_is_held_whole_even_when_less_is_asked() {
    let mut t = Table::with_providers(vec![provider("gpu_node", vec![shared("gpu_1", "gpu", 4, Sharing::Exclusive)])]);

    // --- one of four: the whole unit is held
    let first = request(1, &[("gpu", 1)]);
    let expected = t.expect(vec![
        status("gpu_node", "gpu_1", "gpu", Allocated, 4, 4),
        granted(&first, "gpu_node", vec![grant("gpu_1", "gpu", 4)]),
    ]);
    assert_eq!(expected, t.allocate(&first).events);

    // --- nothing is left for a second
    assert_eq!(RequestState::Queued, t.allocate_record(&request(2, &[("gpu", 1)])).state);
    assert_eq!(0, t.table.usage().by_kind["gpu"].free);
}

#[test]
fn a_divisible_unit_is_carved_until_full() {
    let mut t = Table::with_providers(vec![provider("node_1", vec![unit("vol_1", "storage_gb", 500)])]);

    // --- 100 then 400 out of 500, both from the same unit
    let first = request(1, &[("storage_gb", 100)]);
    let expected = t.expect(vec![
        status("node_1", "vol_1", "storage_gb", Allocated, 100, 500),
        granted(&first, "node_1", vec![grant("vol_1", "storage_gb", 100)]),
    ]);
    assert_eq!(expected, t.allocate(&first).events);
    let second = t.allocate_record(&request(2, &[("storage_gb", 400)]));
    assert_eq!(("node_1".into(), vec![grant("vol_1", "storage_gb", 400)]), placed(&second));
    assert_eq!(2, t.table.provider("node_1").unwrap().resources["vol_1"].holders.len());

    // --- full: one more GB waits
    assert_eq!(RequestState::Queued, t.allocate_record(&request(3, &[("storage_gb", 1)])).state);
}

#[test]
fn an_amount_larger_than_any_unit_spans_units_largest_first() {
    let mut t = Table::with_providers(vec![provider(
        "node_1",
        vec![
            unit("vol_1", "storage_gb", 100),
            unit("vol_2", "storage_gb", 100),
            unit("vol_3", "storage_gb", 40),
        ],
    )]);

    // --- 150: vol_1 whole (equal to vol_2, lower id), then 50 of vol_2
    let record = t.allocate_record(&request(1, &[("storage_gb", 150)]));
    assert_eq!(
        (
            "node_1".into(),
            vec![grant("vol_1", "storage_gb", 100), grant("vol_2", "storage_gb", 50)]
        ),
        placed(&record)
    );

    // --- 60: vol_2 (50 free) and vol_3 (40) cannot fit it alone; largest first: vol_2 then 10 of vol_3
    let record = t.allocate_record(&request(2, &[("storage_gb", 60)]));
    assert_eq!(
        (
            "node_1".into(),
            vec![grant("vol_2", "storage_gb", 50), grant("vol_3", "storage_gb", 10)]
        ),
        placed(&record)
    );
}

#[test]
fn within_a_provider_best_fit_takes_the_tightest_unit_and_spread_the_roomiest() {
    let units = vec![
        unit("vol_a", "storage_gb", 100),
        unit("vol_b", "storage_gb", 50),
        unit("vol_c", "storage_gb", 50),
    ];
    let mut t = Table::with_providers(vec![provider("node_1", units)]);

    // --- best fit: 40 goes to a 50 unit, the lower id of the two
    let record = t.allocate_record(&request(1, &[("storage_gb", 40)]));
    assert_eq!(("node_1".into(), vec![grant("vol_b", "storage_gb", 40)]), placed(&record));

    // --- spread: 10 goes to the 100 unit
    let record = t.allocate_record(&spread(request(2, &[("storage_gb", 10)])));
    assert_eq!(("node_1".into(), vec![grant("vol_a", "storage_gb", 10)]), placed(&record));
}

#[test]
fn spread_breaks_ties_between_units_towards_the_lower_id() {
    let mut t = Table::with_providers(vec![provider(
        "node_1",
        vec![unit("vol_a", "storage_gb", 50), unit("vol_b", "storage_gb", 50)],
    )]);

    // --- equal free amounts: vol_a, then vol_b (now the roomier), then vol_a again
    let picks: Vec<qm_state_machine::Name> = (1..=3)
        .map(|n| {
            placed(&t.allocate_record(&spread(request(n, &[("storage_gb", 10)])))).1[0]
                .resource_id
                .clone()
        })
        .collect();
    assert_eq!(vec!["vol_a", "vol_b", "vol_a"], picks);
}

#[test]
fn best_fit_picks_the_provider_with_the_least_free_that_fits() {
    let mut t = Table::with_providers(vec![
        provider("node_a", cores("a", 4)),
        provider("node_b", cores("b", 2)),
        provider("node_c", cores("c", 3)),
        provider("node_d", cores("d", 2)),
    ]);

    // --- 2 cores: node_b and node_d both have exactly 2; the lower id wins
    assert_eq!("node_b", placed(&t.allocate_record(&request(1, &[("cpu_cores", 2)]))).0);
    // --- 3 cores: node_c has exactly 3
    assert_eq!("node_c", placed(&t.allocate_record(&request(2, &[("cpu_cores", 3)]))).0);
    // --- 2 cores again: node_d (2) beats node_a (4)
    assert_eq!("node_d", placed(&t.allocate_record(&request(3, &[("cpu_cores", 2)]))).0);
    // --- 3 cores: only node_a is left
    assert_eq!("node_a", placed(&t.allocate_record(&request(4, &[("cpu_cores", 3)]))).0);
}

#[test]
fn spread_picks_the_provider_with_the_most_free_and_the_lower_id_on_ties() {
    let mut t = Table::with_providers(vec![
        provider("node_a", cores("a", 2)),
        provider("node_b", cores("b", 3)),
        provider("node_c", cores("c", 3)),
    ]);

    // --- node_b and node_c both have 3: node_b; then node_c has the most; then all have 2: node_a
    let picks: Vec<String> = (1..=3)
        .map(|n| placed(&t.allocate_record(&spread(request(n, &[("cpu_cores", 1)])))).0)
        .collect();
    assert_eq!(vec!["node_b", "node_c", "node_a"], picks);
}

#[test]
fn all_kinds_of_a_request_go_to_one_provider() {
    let mut t = Table::with_providers(vec![
        provider(
            "node_a",
            vec![
                unit("acpu_1", "cpu_cores", 1),
                unit("acpu_2", "cpu_cores", 1),
                unit("amem_1", "memory_gb", 2),
            ],
        ),
        provider(
            "node_b",
            vec![
                unit("bcpu_1", "cpu_cores", 1),
                unit("bcpu_2", "cpu_cores", 1),
                unit("bcpu_3", "cpu_cores", 1),
                unit("bmem_1", "memory_gb", 8),
            ],
        ),
    ]);

    // --- node_a is the best fit for cores but lacks memory; node_b holds both
    let wanted = request(1, &[("cpu_cores", 2), ("memory_gb", 4)]);
    let expected = t.expect(vec![
        core("node_b", "bcpu_1", Allocated),
        core("node_b", "bcpu_2", Allocated),
        status("node_b", "bmem_1", "memory_gb", Allocated, 4, 8),
        granted(
            &wanted,
            "node_b",
            vec![
                grant("bcpu_1", "cpu_cores", 1),
                grant("bcpu_2", "cpu_cores", 1),
                grant("bmem_1", "memory_gb", 4),
            ],
        ),
    ]);
    assert_eq!(expected, t.allocate(&wanted).events);
}

#[test]
fn a_provider_constraint_overrides_best_fit() {
    let mut t = Table::with_providers(vec![provider("node_a", cores("a", 1)), provider("node_b", cores("b", 4))]);

    // --- node_a would fit tighter, but the request names node_b
    let pinned = AllocationRequest {
        constraints: on_provider("node_b"),
        ..request(1, &[("cpu_cores", 1)])
    };
    assert_eq!("node_b", placed(&t.allocate_record(&pinned)).0);

    // --- a constraint on a failed provider waits for it, even with room elsewhere
    t.apply(qm_state_machine::Command::ProviderFailed {
        provider_id: "node_b".into(),
    });
    let waiting = AllocationRequest {
        constraints: on_provider("node_b"),
        ..request(2, &[("cpu_cores", 1)])
    };
    assert_eq!(RequestState::Queued, t.allocate_record(&waiting).state);
    assert_eq!(
        RequestState::Queued,
        t.record(id(1)).state,
        "an allocation pinned to a failed provider can only queue"
    );
}

#[test]
fn label_constraints_select_providers_and_wait_for_one() {
    let mut gpu_zone = provider("node_b", cores("b", 4));
    gpu_zone.labels = labels(&[("tier", "fast"), ("zone", "eu")]);
    let mut t = Table::with_providers(vec![provider("node_a", cores("a", 1)), gpu_zone]);

    // --- only node_b carries zone=eu
    let in_eu = AllocationRequest {
        constraints: Constraints::new(ConstraintSet {
            labels: labels(&[("zone", "eu")]),
            ..ConstraintSet::default()
        }),
        ..request(1, &[("cpu_cores", 1)])
    };
    assert_eq!("node_b", placed(&t.allocate_record(&in_eu)).0);

    // --- nobody carries zone=us: the request waits rather than being rejected
    let in_us = AllocationRequest {
        constraints: Constraints::new(ConstraintSet {
            labels: labels(&[("zone", "us")]),
            ..ConstraintSet::default()
        }),
        ..request(2, &[("cpu_cores", 1)])
    };
    assert_eq!(t.expect(vec![queued(&in_us, INSUFFICIENT)]), t.allocate(&in_us).events);

    // --- a provider with the label arrives and takes it
    let mut us = provider("node_c", cores("c", 1));
    us.labels = labels(&[("zone", "us")]);
    t.register(us);
    assert_eq!("node_c", placed(&t.record(id(2))).0);
}

#[test]
fn pinned_units_act_as_a_lock() {
    let mut t = Table::with_providers(vec![provider("node_1", cores("", 4))]);
    let lock = |n: u128| AllocationRequest {
        constraints: Constraints::new(ConstraintSet {
            resource_ids: vec!["cpu_3".into()],
            ..ConstraintSet::clone(&on_provider("node_1"))
        }),
        ..request(n, &[("cpu_cores", 1)])
    };

    // --- the first holder gets exactly cpu_3, though cpu_1 is free
    assert_eq!(
        ("node_1".into(), vec![grant("cpu_3", "cpu_cores", 1)]),
        placed(&t.allocate_record(&lock(1)))
    );

    // --- the second waits for it
    assert_eq!(RequestState::Queued, t.allocate_record(&lock(2)).state);

    // --- released: the waiter gets it in the same command
    let expected = t.expect(vec![
        core("node_1", "cpu_3", qm_state_machine::ResourceState::Available),
        released(&lock(1), "node_1"),
        core("node_1", "cpu_3", Allocated),
        granted(&lock(2), "node_1", vec![grant("cpu_3", "cpu_cores", 1)]),
    ]);
    assert_eq!(expected, t.release(id(1)).events);
}

#[test]
fn requests_that_can_never_fit_are_rejected_at_once() {
    let mut t = Table::with_providers(vec![provider("node_1", cores("", 2)), provider("node_2", cores("x", 3))]);

    // --- a kind nobody offers
    let gpu = request(1, &[("gpu", 1)]);
    assert_eq!(
        t.expect(vec![rejected(&gpu, "unknown_kind: no provider offers gpu")]),
        t.allocate(&gpu).events
    );
    let record = t.record(id(1));
    assert_eq!((RequestState::Error, AllocationStatus::Rejected), (record.state, record.status));

    // --- more than the largest provider has
    let huge = request(2, &[("cpu_cores", 4)]);
    let reason = "insufficient_capacity: no provider could ever hold 4 cpu_cores (the largest has 3)";
    assert_eq!(t.expect(vec![rejected(&huge, reason)]), t.allocate(&huge).events);

    // --- more than the named provider has
    let named = AllocationRequest {
        constraints: on_provider("node_1"),
        ..request(3, &[("cpu_cores", 3)])
    };
    let reason = "insufficient_capacity: provider node_1 can never hold 3 cpu_cores (it has 2 in the allowed units)";
    assert_eq!(t.expect(vec![rejected(&named, reason)]), t.allocate(&named).events);

    // --- more than the pinned units hold
    let pinned = AllocationRequest {
        constraints: Constraints::new(ConstraintSet {
            resource_ids: vec!["cpu_1".into()],
            ..ConstraintSet::clone(&on_provider("node_1"))
        }),
        ..request(4, &[("cpu_cores", 2)])
    };
    let reason = "insufficient_capacity: provider node_1 can never hold 2 cpu_cores (it has 1 in the allowed units)";
    assert_eq!(t.expect(vec![rejected(&pinned, reason)]), t.allocate(&pinned).events);
}

#[test]
fn a_failed_providers_capacity_still_counts_as_possible() {
    let mut t = Table::with_providers(vec![provider("node_1", cores("", 4))]);
    t.apply(qm_state_machine::Command::ProviderFailed {
        provider_id: "node_1".into(),
    });

    // --- 4 cores could fit once node_1 is back: queued, not rejected
    assert_eq!(RequestState::Queued, t.allocate_record(&request(1, &[("cpu_cores", 4)])).state);
}

#[test]
fn placement_examines_a_bounded_number_of_candidates() {
    // Cores on three providers, memory on four: cores are the scarcer kind, so
    // the walk anchors on them and meets node_a and node_b before node_c.
    let registrations = || {
        vec![
            provider("node_a", cores("a", 1)),
            provider("node_b", cores("b", 1)),
            provider("node_c", vec![unit("ccpu_1", "cpu_cores", 1), unit("cmem_1", "memory_gb", 4)]),
            provider("node_d", vec![unit("dmem_1", "memory_gb", 4)]),
            provider("node_e", vec![unit("emem_1", "memory_gb", 4)]),
            provider("node_f", vec![unit("fmem_1", "memory_gb", 4)]),
        ]
    };
    let wanted = request(1, &[("cpu_cores", 1), ("memory_gb", 1)]);

    // --- with room for three candidates, node_c is found
    let mut roomy = Table::with_providers(registrations());
    assert_eq!("node_c", placed(&roomy.allocate_record(&wanted)).0);

    // --- with two, the search stops before node_c and the request waits: the price of a bounded decision
    let mut bounded = Table::with_config(qm_state_machine::TableConfig {
        placement_candidates_max: 2,
        ..Default::default()
    });
    for registration in registrations() {
        bounded.register(registration);
    }
    assert_eq!(RequestState::Queued, bounded.allocate_record(&wanted).state);
}
