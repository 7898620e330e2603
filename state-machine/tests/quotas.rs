//! Namespace quotas: a namespace's active allocations never ask for more of
//! a kind than its quota; a request past it waits (`quota_exceeded`) or,
//! if it alone is larger, is rejected; releases re-examine the namespace's
//! own queue; lowering a quota holds new grants and takes nothing away.

mod common;

use std::collections::BTreeMap;

use common::*;
use qm_state_machine::ResourceState::{Allocated, Available};
use qm_state_machine::{
    AllocationRequest, AllocationStatus, Command, CommandError, CommandResponse, EventKind, InvalidArgument, NamespacePolicy,
    PreemptionSetting, RequestState, TableConfig,
};

fn in_namespace(namespace: &str, request: AllocationRequest) -> AllocationRequest {
    AllocationRequest {
        namespace: namespace.to_owned().into(),
        ..request
    }
}

fn limits(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
    pairs.iter().map(|(kind, limit)| (kind.to_string(), *limit)).collect()
}

fn set_quota(t: &mut Table, namespace: &str, pairs: &[(&str, u64)]) -> qm_state_machine::Applied {
    t.apply(Command::SetQuota {
        namespace: namespace.to_owned(),
        limits: limits(pairs),
    })
}

#[test]
fn a_quota_is_reached_exactly_and_never_passed() {
    let mut t = Table::with_providers(vec![provider("node_1", cores("", 8))]);

    // --- team_a may hold 4 cores
    let expected = t.expect(vec![EventKind::QuotaSet {
        namespace: "team_a".to_owned(),
        limits: limits(&[("cpu_cores", 4)]),
    }]);
    let applied = set_quota(&mut t, "team_a", &[("cpu_cores", 4)]);
    assert_eq!(expected, applied.events);
    assert_eq!(
        Ok(CommandResponse::Policy {
            namespace: Some("team_a".to_owned()),
            policy: NamespacePolicy {
                quota: limits(&[("cpu_cores", 4)]),
                ..NamespacePolicy::unset()
            },
            cluster_preemption: PreemptionSetting::Off,
        }),
        applied.result
    );

    // --- 3 then 1: the quota is reached, not passed
    let three = in_namespace("team_a", request(1, &[("cpu_cores", 3)]));
    let one = in_namespace("team_a", request(2, &[("cpu_cores", 1)]));
    assert_eq!(RequestState::Monitoring, t.allocate_record(&three).state);
    assert_eq!(RequestState::Monitoring, t.allocate_record(&one).state);
    assert_eq!(4, t.table.held("team_a", "cpu_cores"));

    // --- one more core waits, though node_1 has 4 free
    let waiting = in_namespace("team_a", request(3, &[("cpu_cores", 1)]));
    let reason = "quota_exceeded: namespace team_a holds 4 of its 4 cpu_cores and asks for 1 more";
    let expected = t.expect(vec![queued(&waiting, reason)]);
    let applied = t.allocate(&waiting);
    assert_eq!(expected, applied.events);
    let record = record_of(applied);
    assert_eq!(
        (RequestState::Queued, AllocationStatus::Queued, Some(reason)),
        (record.state, record.status, record.reason())
    );

    // --- five cores could never fit the quota: rejected at once
    let too_big = in_namespace("team_a", request(4, &[("cpu_cores", 5)]));
    let reason = "quota_exceeded: asks for 5 cpu_cores, more than namespace team_a's whole quota of 4";
    let expected = t.expect(vec![rejected(&too_big, reason)]);
    assert_eq!(expected, t.allocate(&too_big).events);

    // --- another namespace is not bounded by team_a's quota
    let other = in_namespace("team_b", request(5, &[("cpu_cores", 4)]));
    assert_eq!(RequestState::Monitoring, t.allocate_record(&other).state);
    assert_eq!(4, t.table.held("team_b", "cpu_cores"));

    // --- a core of team_a comes back: the waiting request takes it in the same command
    let expected = t.expect(vec![
        core("node_1", "cpu_4", Available),
        released(&one, "node_1"),
        core("node_1", "cpu_4", Allocated),
        granted(&waiting, "node_1", vec![grant("cpu_4", "cpu_cores", 1)]),
    ]);
    assert_eq!(expected, t.release(id(2)).events);
    assert_eq!(4, t.table.held("team_a", "cpu_cores"));
}

#[test]
fn lowering_a_quota_holds_new_grants_and_takes_nothing_away() {
    let mut t = Table::with_providers(vec![provider("node_1", cores("", 8))]);
    set_quota(&mut t, "team_a", &[("cpu_cores", 4)]);
    let three = in_namespace("team_a", request(1, &[("cpu_cores", 3)]));
    let one = in_namespace("team_a", request(2, &[("cpu_cores", 1)]));
    t.allocate(&three);
    t.allocate(&one);

    // --- lowered to 2 while 4 are held: only the quota changes
    let expected = t.expect(vec![EventKind::QuotaSet {
        namespace: "team_a".to_owned(),
        limits: limits(&[("cpu_cores", 2)]),
    }]);
    assert_eq!(expected, set_quota(&mut t, "team_a", &[("cpu_cores", 2)]).events);
    assert_eq!(RequestState::Monitoring, t.record(id(1)).state);
    assert_eq!(RequestState::Monitoring, t.record(id(2)).state);
    assert_eq!(4, t.table.held("team_a", "cpu_cores"));

    // --- a new core waits; releasing one core (3 held) is not enough
    let waiting = in_namespace("team_a", request(3, &[("cpu_cores", 1)]));
    assert_eq!(RequestState::Queued, t.allocate_record(&waiting).state);
    t.release(id(2));
    assert_eq!(RequestState::Queued, t.record(id(3)).state);

    // --- releasing the three (0 held) lets it in
    t.release(id(1));
    assert_eq!(RequestState::Monitoring, t.record(id(3)).state);
    assert_eq!(1, t.table.held("team_a", "cpu_cores"));
}

#[test]
fn raising_or_deleting_a_quota_lets_waiting_requests_in() {
    let mut t = Table::with_providers(vec![provider("node_1", cores("", 8))]);
    set_quota(&mut t, "team_a", &[("cpu_cores", 1), ("gpu", 0)]);
    t.allocate(&in_namespace("team_a", request(1, &[("cpu_cores", 1)])));
    let second = in_namespace("team_a", request(2, &[("cpu_cores", 1)]));
    let third = in_namespace("team_a", request(3, &[("cpu_cores", 1)]));
    t.allocate(&second);
    t.allocate(&third);

    // --- raised to 2: one of the two waiting gets in, in the same command
    let expected = t.expect(vec![
        EventKind::QuotaSet {
            namespace: "team_a".to_owned(),
            limits: limits(&[("cpu_cores", 2)]),
        },
        core("node_1", "cpu_2", Allocated),
        granted(&second, "node_1", vec![grant("cpu_2", "cpu_cores", 1)]),
    ]);
    assert_eq!(expected, set_quota(&mut t, "team_a", &[("cpu_cores", 2)]).events);
    assert_eq!(RequestState::Queued, t.record(id(3)).state);

    // --- deleted: no limit left, the last one gets in
    let expected = t.expect(vec![
        EventKind::QuotaDeleted {
            namespace: "team_a".to_owned(),
        },
        core("node_1", "cpu_3", Allocated),
        granted(&third, "node_1", vec![grant("cpu_3", "cpu_cores", 1)]),
    ]);
    assert_eq!(
        expected,
        t.apply(Command::DeleteQuota {
            namespace: "team_a".to_owned()
        })
        .events
    );
    assert_eq!(NamespacePolicy::unset(), *t.table.policy("team_a"));

    // --- deleting it again changes nothing
    assert_eq!(
        Vec::<qm_state_machine::Event>::new(),
        t.apply(Command::DeleteQuota {
            namespace: "team_a".to_owned()
        })
        .events
    );
}

#[test]
fn a_release_re_examines_its_namespace_behind_a_head_that_does_not_fit() {
    // Only one queued request is examined per free: the head of the whole queue.
    let config = TableConfig {
        queue_examined_per_free_max: 1,
        ..TableConfig::default()
    };
    let mut t = Table::with_config(config);
    t.register(provider("node_1", cores("", 4)));
    set_quota(&mut t, "team_a", &[("cpu_cores", 1)]);
    t.allocate(&in_namespace("team_a", request(1, &[("cpu_cores", 1)])));
    t.allocate(&in_namespace("team_b", request(2, &[("cpu_cores", 3)])));

    // --- team_b's urgent request heads the queue and does not fit; team_a's waits for its quota
    let head = AllocationRequest {
        priority: 9,
        ..in_namespace("team_b", request(3, &[("cpu_cores", 4)]))
    };
    assert_eq!(RequestState::Queued, t.allocate_record(&head).state);
    let waiting = in_namespace("team_a", request(4, &[("cpu_cores", 1)]));
    assert_eq!(RequestState::Queued, t.allocate_record(&waiting).state);

    // --- team_a's core comes back: the head still does not fit, team_a's own queue is walked too
    let expected = t.expect(vec![
        core("node_1", "cpu_1", Available),
        released(&in_namespace("team_a", request(1, &[("cpu_cores", 1)])), "node_1"),
        core("node_1", "cpu_1", Allocated),
        granted(&waiting, "node_1", vec![grant("cpu_1", "cpu_cores", 1)]),
    ]);
    assert_eq!(expected, t.release(id(1)).events);
    assert_eq!(RequestState::Queued, t.record(id(3)).state);
}

#[test]
fn a_quota_bounds_what_is_asked_kind_by_kind() {
    let mut t = Table::with_providers(vec![provider(
        "node_1",
        vec![unit("gpu_1", "gpu", 1), unit("gpu_2", "gpu", 1), unit("mem", "memory_gb", 64)],
    )]);
    set_quota(&mut t, "team_a", &[("gpu", 1)]);

    // --- memory is not bounded; the second gpu is
    let first = in_namespace("team_a", request(1, &[("gpu", 1), ("memory_gb", 40)]));
    assert_eq!(RequestState::Monitoring, t.allocate_record(&first).state);
    let second = in_namespace("team_a", request(2, &[("gpu", 1)]));
    assert_eq!(
        Some("quota_exceeded: namespace team_a holds 1 of its 1 gpu and asks for 1 more"),
        t.allocate_record(&second).reason()
    );
    let memory = in_namespace("team_a", request(3, &[("memory_gb", 24)]));
    assert_eq!(RequestState::Monitoring, t.allocate_record(&memory).state);
    assert_eq!(
        vec![qm_state_machine::NamespaceUsage {
            namespace: "team_a".to_owned(),
            held: limits(&[("gpu", 1), ("memory_gb", 64)]),
            quota: limits(&[("gpu", 1)]),
            queued: 1,
            preemption: None,
            preemptible: true,
        }],
        t.table.namespace_usage()
    );
}

#[test]
fn a_bad_quota_is_refused_and_changes_nothing() {
    let mut t = Table::with_providers(vec![provider("node_1", cores("", 1))]);
    let cases = [
        (String::from("team_a"), limits(&[]), "limits"),
        (String::new(), limits(&[("gpu", 1)]), "namespace"),
        (String::from("team_a"), limits(&[("bad kind", 1)]), "limits"),
        (String::from("team_a"), limits(&[("gpu", u64::MAX)]), "limits.gpu"),
    ];
    for (namespace, limits, field) in cases {
        let applied = t.apply(Command::SetQuota { namespace, limits });
        let Err(CommandError::InvalidArgument(InvalidArgument { field: named, .. })) = applied.result else {
            panic!("expected InvalidArgument, got {:?}", applied.result);
        };
        assert_eq!(field, named);
    }
    // The cluster's preemption setting cannot be left out.
    let applied = t.apply(Command::SetPreemption {
        namespace: None,
        setting: None,
        preemptible: true,
    });
    assert_eq!(Some("setting"), applied.result.as_ref().err().and_then(|error| error.field()));
}

#[test]
fn quotas_survive_a_snapshot() {
    let mut t = Table::with_providers(vec![provider("node_1", cores("", 4))]);
    set_quota(&mut t, "team_a", &[("cpu_cores", 2)]);
    t.allocate(&in_namespace("team_a", request(1, &[("cpu_cores", 2)])));
    t.allocate(&in_namespace("team_a", request(2, &[("cpu_cores", 1)])));
    let bytes = t.table.to_snapshot_bytes();
    let restored = qm_state_machine::AllocationTable::from_snapshot_bytes(&bytes).expect("restores");
    restored.assert_invariants();
    assert_eq!(t.table, restored);
    assert_eq!(t.table.namespace_usage(), restored.namespace_usage());
}
