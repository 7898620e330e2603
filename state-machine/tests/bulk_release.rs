//! Bulk release by filter: by namespace, by requester, by provider; bad
//! filters refused with the field named and nothing changed; a bulk release
//! larger than one entry continued across entries, identically on two
//! replicas.

mod common;

use common::*;
use qm_state_machine::limits::{BULK_RELEASE_EXAMINED_PER_COMMAND_MAX, BULK_RELEASE_PER_COMMAND_MAX};
use qm_state_machine::ResourceState::{Allocated, Available};
use qm_state_machine::{
    AllocationRequest, AllocationTable, Command, CommandError, CommandResponse, EventKind, ProviderRegistration, ReleaseFilter,
    RequestState, StampedCommand, TableConfig,
};
use uuid::Uuid;

fn owned(n: u128, namespace: &str, requester: &str) -> AllocationRequest {
    AllocationRequest {
        namespace: namespace.to_owned().into(),
        requester_id: requester.to_owned().into(),
        ..request(n, &[("cpu_cores", 1)])
    }
}

fn filter(namespace: Option<&str>, requester_id: Option<&str>, provider_id: Option<&str>) -> ReleaseFilter {
    ReleaseFilter {
        namespace: namespace.map(str::to_owned),
        requester_id: requester_id.map(str::to_owned),
        provider_id: provider_id.map(str::to_owned),
    }
}

fn matching(filter: ReleaseFilter) -> Command {
    Command::ReleaseMatching { filter, after: None }
}

fn summary(filter: &ReleaseFilter, released: u64, cancelled: u64) -> EventKind {
    EventKind::ReleasedMatching {
        namespace: filter.namespace.clone(),
        requester_id: filter.requester_id.clone(),
        provider_id: filter.provider_id.clone(),
        released,
        cancelled,
        next: None,
    }
}

/// `node_1` with one core, `node_2` with one core: ids 1 (team_a/alice) on
/// node_1, 2 (team_b/bob) on node_2, 3 (team_a/carol) queued.
fn two_namespaces() -> (Table, [AllocationRequest; 3]) {
    let mut t = Table::with_providers(vec![provider("node_1", cores("a", 1)), provider("node_2", cores("b", 1))]);
    let requests = [owned(1, "team_a", "alice"), owned(2, "team_b", "bob"), owned(3, "team_a", "carol")];
    for request in &requests {
        t.allocate(request);
    }
    assert_eq!(RequestState::Queued, t.record(id(3)).state);
    (t, requests)
}

#[test]
fn by_namespace_releases_and_cancels_that_namespace_only() {
    let (mut t, [alice, bob, carol]) = two_namespaces();
    let wanted = filter(Some("team_a"), None, None);
    let expected = t.expect(vec![
        core("node_1", "acpu_1", Available),
        released(&alice, "node_1"),
        EventKind::RequestCancelled {
            request_id: carol.request_id,
            namespace: "team_a".into(),
        },
        summary(&wanted, 1, 1),
    ]);
    let applied = t.apply(matching(wanted));
    assert_eq!(
        (
            Ok(CommandResponse::ReleasedMatching {
                released: 1,
                cancelled: 1,
                next: None
            }),
            expected
        ),
        (applied.result, applied.events)
    );
    assert_eq!(
        (RequestState::Idle, RequestState::Monitoring, RequestState::Idle),
        (
            t.record(alice.request_id).state,
            t.record(bob.request_id).state,
            t.record(carol.request_id).state
        )
    );
}

#[test]
fn by_requester_releases_that_requester_only() {
    let (mut t, [alice, _, carol]) = two_namespaces();
    let wanted = filter(Some("team_a"), Some("alice"), None);
    let applied = t.apply(matching(wanted.clone()));
    assert_eq!(
        (
            Ok(CommandResponse::ReleasedMatching {
                released: 1,
                cancelled: 0,
                next: None
            }),
            vec![
                core("node_1", "acpu_1", Available),
                released(&alice, "node_1"),
                // The freed core goes to carol, who was waiting in the queue.
                core("node_1", "acpu_1", Allocated),
                granted(&carol, "node_1", vec![grant("acpu_1", "cpu_cores", 1)]),
                summary(&wanted, 1, 0),
            ]
        ),
        (applied.result, kinds(&applied.events))
    );
    assert_eq!(RequestState::Monitoring, t.record(carol.request_id).state);
}

#[test]
fn by_provider_releases_what_is_placed_on_it() {
    let (mut t, [alice, bob, carol]) = two_namespaces();
    let wanted = filter(None, None, Some("node_2"));
    let applied = t.apply(matching(wanted.clone()));
    assert_eq!(
        (
            Ok(CommandResponse::ReleasedMatching {
                released: 1,
                cancelled: 0,
                next: None
            }),
            vec![core("node_2", "bcpu_1", Available), released(&bob, "node_2")]
        ),
        (applied.result, kinds(&applied.events)[..2].to_vec())
    );
    // Carol, queued, takes bob's freed core; alice keeps hers.
    assert_eq!(
        (RequestState::Monitoring, RequestState::Monitoring),
        (t.record(alice.request_id).state, t.record(carol.request_id).state)
    );

    // --- again: nothing left to release, an answer all the same
    let applied = t.apply(matching(filter(None, None, Some("node_2"))));
    assert_eq!(
        Ok(CommandResponse::ReleasedMatching {
            released: 1,
            cancelled: 0,
            next: None
        }),
        applied.result,
        "carol is on node_2 now"
    );
    let applied = t.apply(matching(filter(None, None, Some("node_9"))));
    assert_eq!(
        Ok(CommandResponse::ReleasedMatching {
            released: 0,
            cancelled: 0,
            next: None
        }),
        applied.result,
        "an unknown provider holds nothing"
    );
}

#[test]
fn a_bad_filter_is_refused_naming_the_field_and_changes_nothing() {
    let (mut t, _) = two_namespaces();
    let field = |result: Result<CommandResponse, CommandError>| result.err().and_then(|error| error.field().map(str::to_owned));
    // (The harness checks that the table and its snapshot are unchanged.)
    let cases = [
        (filter(None, None, None), "filter"),
        (filter(None, Some("alice"), None), "requester_id"),
        (filter(Some(""), None, None), "namespace"),
        (filter(None, None, Some(&"p".repeat(129))), "provider_id"),
    ];
    for (bad, expected) in cases {
        assert_eq!(Some(expected.to_owned()), field(t.apply(matching(bad)).result));
    }
}

/// Registers `providers` providers of `cores` cores each and fills them.
fn full_table(providers: usize, cores_each: usize) -> (AllocationTable, u64) {
    let mut table = AllocationTable::new(TableConfig::default());
    let mut now = T0;
    let mut apply = |table: &mut AllocationTable, command: Command| {
        now += 1;
        let applied = table.apply(&StampedCommand::new(now, command));
        assert!(applied.result.is_ok(), "{:?}", applied.result);
    };
    for p in 0..providers {
        let registration: ProviderRegistration = provider(&format!("node_{p:03}"), cores(&format!("p{p}"), cores_each));
        apply(&mut table, Command::RegisterProvider(registration));
    }
    for n in 1..=(providers * cores_each) as u128 {
        // Spread over the id space, as random request ids are.
        let n = n.wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835);
        let namespace = if n % 7 == 0 { "other" } else { "bench" };
        apply(&mut table, Command::Allocate(owned(n, namespace, "loader")));
    }
    (table, now)
}

/// Applies bulk-release entries as the API does, each after the previous
/// one's `next`, until one answers `None`. Returns (released, entries).
fn release_all(table: &mut AllocationTable, mut now: u64, wanted: &ReleaseFilter) -> (u64, usize) {
    let (mut total, mut entries, mut after) = (0, 0, None::<Uuid>);
    loop {
        now += 1;
        let command = Command::ReleaseMatching {
            filter: wanted.clone(),
            after,
        };
        let applied = table.apply(&StampedCommand::new(now, command));
        entries += 1;
        let Ok(CommandResponse::ReleasedMatching { released, next, .. }) = applied.result else {
            panic!("{:?}", applied.result);
        };
        assert!(released as usize <= BULK_RELEASE_PER_COMMAND_MAX);
        total += released;
        if next.is_none() {
            return (total, entries);
        }
        assert!(next > after, "each entry moves forward");
        after = next;
    }
}

#[test]
fn a_large_bulk_release_continues_across_entries_identically_on_two_replicas() {
    // --- 3,000 allocations on 30 providers, a seventh of them in another namespace
    let (mut replica_a, now) = full_table(30, 100);
    let mut replica_b = replica_a.clone();
    let others = replica_a.active_allocations()
        - replica_a
            .list(&qm_state_machine::ListFilter {
                namespace: Some("bench".into()),
                ..Default::default()
            })
            .len();

    // --- release namespace `bench` on both
    let wanted = filter(Some("bench"), None, None);
    let (released_a, entries_a) = release_all(&mut replica_a, now, &wanted);
    let (released_b, entries_b) = release_all(&mut replica_b, now, &wanted);

    // --- every `bench` allocation gone, the others kept, in more than one entry
    assert_eq!((3_000 - others) as u64, released_a);
    assert_eq!(others, replica_a.active_allocations());
    assert!(entries_a >= 3, "{entries_a} entries for {released_a} releases");
    assert_eq!((released_a, entries_a), (released_b, entries_b));
    assert_eq!(replica_a.to_snapshot_bytes(), replica_b.to_snapshot_bytes());
    replica_a.assert_invariants();
}

#[test]
fn an_entry_stops_after_examining_its_bound_of_records() {
    // --- more records than one entry examines, none of which matches
    let (mut table, now) = full_table(5, 3_300);
    assert!(table.requests_len() > BULK_RELEASE_EXAMINED_PER_COMMAND_MAX);
    let wanted = filter(Some("nobody"), None, None);
    let (released, entries) = release_all(&mut table, now, &wanted);
    assert_eq!((0, 2), (released, entries));
}
