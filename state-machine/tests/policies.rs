//! Capability policies in the table: set (each set a new revision, from one
//! counter so a deleted and re-set policy never repeats one), delete,
//! bindings held by one policy only, and the allocate under a grant, whose
//! total per holder apply checks exactly.

mod common;

use std::collections::BTreeMap;

use common::*;
use qm_state_machine::policy::{Binding, Capability, CapabilityPolicy, PolicyGrant, PolicySpec, POLICY_BINDINGS_MAX};
use qm_state_machine::{
    AllocationRequest, AllocationTable, Command, CommandError, CommandResponse, Event, EventKind, InvalidArgument, OnPreemption,
    PreemptionSetting, RequestState,
};

fn spec(name: &str, max_held: &[(&str, u64)], bindings: Vec<Binding>) -> PolicySpec {
    PolicySpec {
        name: name.to_owned(),
        capability: Capability {
            kinds: Some(["cpu_cores".to_owned()].into()),
            max_held: max_held.iter().map(|(kind, n)| (kind.to_string(), *n)).collect(),
            ..Capability::default()
        },
        bindings: bindings.into_iter().collect(),
    }
}

fn cert(name: &str) -> Binding {
    Binding::CertName(name.to_owned())
}

fn stored(spec: &PolicySpec, revision: u64) -> CapabilityPolicy {
    CapabilityPolicy {
        name: spec.name.clone(),
        revision,
        capability: spec.capability.clone(),
        bindings: spec.bindings.clone(),
    }
}

fn grant(policy: Option<(&str, u64)>, holder: &str, max_held: &[(&str, u64)], may_preempt: bool) -> PolicyGrant {
    PolicyGrant {
        policy: policy.map(|(name, revision)| (name.to_owned(), revision)),
        holder: holder.to_owned(),
        max_held: max_held.iter().map(|(kind, n)| (kind.to_string(), *n)).collect::<BTreeMap<_, _>>(),
        may_preempt,
    }
}

fn under(request: &AllocationRequest, grant: &PolicyGrant) -> Command {
    Command::AllocateUnderPolicy {
        request: request.clone(),
        on_preemption: OnPreemption::Requeue,
        movable: false,
        grant: grant.clone(),
    }
}

#[test]
fn each_set_is_a_new_revision_and_a_delete_forgets() {
    let mut t = Table::new();
    let team_a = spec("team-a", &[("cpu_cores", 4)], vec![cert("alice")]);

    // --- set twice: revisions 1 then 2
    assert_eq!(
        Ok(CommandResponse::CapabilityPolicy(stored(&team_a, 1))),
        t.apply(Command::SetPolicy(team_a.clone())).result
    );
    assert_eq!(
        Ok(CommandResponse::CapabilityPolicy(stored(&team_a, 2))),
        t.apply(Command::SetPolicy(team_a.clone())).result
    );
    assert_eq!(Some(&stored(&team_a, 2)), t.table.capability_policy("team-a"));

    // --- delete, again (a no-op), then set: revision 3, never 1 again
    let deleted = |existed| {
        Ok(CommandResponse::PolicyDeleted {
            name: "team-a".to_owned(),
            existed,
        })
    };
    assert_eq!(deleted(true), t.apply(Command::DeletePolicy { name: "team-a".into() }).result);
    assert_eq!(deleted(false), t.apply(Command::DeletePolicy { name: "team-a".into() }).result);
    assert_eq!(None, t.table.capability_policy("team-a"));
    assert_eq!(
        Ok(CommandResponse::CapabilityPolicy(stored(&team_a, 3))),
        t.apply(Command::SetPolicy(team_a.clone())).result
    );
}

#[test]
fn a_binding_belongs_to_one_policy_and_the_most_specific_wins() {
    let mut t = Table::new();
    let consumers = Binding::Role {
        role: "resource_consumer".into(),
        namespace: Some("team-a".into()),
    };
    let any_consumer = Binding::Role {
        role: "resource_consumer".into(),
        namespace: None,
    };
    t.apply(Command::SetPolicy(spec("team-a", &[], vec![consumers.clone()])))
        .result
        .unwrap();
    t.apply(Command::SetPolicy(spec("everyone", &[], vec![any_consumer])))
        .result
        .unwrap();
    t.apply(Command::SetPolicy(spec("alice", &[], vec![cert("alice")]))).result.unwrap();

    // --- a binding already held is refused, and the table is unchanged (Table::apply checks)
    assert_eq!(
        Err(CommandError::InvalidArgument(InvalidArgument::new(
            "bindings",
            "role resource_consumer in namespace team-a is already bound to policy \"team-a\""
        ))),
        t.apply(Command::SetPolicy(spec("other", &[], vec![consumers]))).result
    );

    // --- certificate name, then role and namespace, then role alone
    let bound = |name: &str, namespace: &str| {
        t.table
            .policy_for(name, "resource_consumer", Some(namespace))
            .map(|policy| policy.name.clone())
    };
    assert_eq!(Some("alice".to_owned()), bound("alice", "team-a"));
    assert_eq!(Some("team-a".to_owned()), bound("bob", "team-a"));
    assert_eq!(Some("everyone".to_owned()), bound("bob", "team-b"));
    assert_eq!(None, t.table.policy_for("ops", "admin", None));
}

#[test]
fn apply_holds_a_holder_to_its_total_exactly() {
    let mut t = Table::with_providers(vec![provider("node_1", cores("", 8))]);
    let team_a = spec("team-a", &[("cpu_cores", 4)], vec![cert("alice")]);
    t.apply(Command::SetPolicy(team_a)).result.unwrap();
    let alice = grant(Some(("team-a", 1)), "alice", &[("cpu_cores", 4)], true);

    // --- 3, then 1: the total is reached
    let three = request(1, &[("cpu_cores", 3)]);
    let one = request(2, &[("cpu_cores", 1)]);
    assert_eq!(RequestState::Monitoring, record_of(t.apply(under(&three, &alice))).state);
    assert_eq!(RequestState::Monitoring, record_of(t.apply(under(&one, &alice))).state);
    assert_eq!(4, t.table.held_by("alice", "cpu_cores"));

    // --- one more is refused at apply, naming the capability; nothing changes
    let more = request(3, &[("cpu_cores", 1)]);
    assert_eq!(
        Err(CommandError::CapabilityDenied {
            capability: "max_held".to_owned(),
            detail: "alice holding 5 cpu_cores not allowed (at most 4; it holds 4 and asks for 1 more)".to_owned(),
        }),
        t.apply(under(&more, &alice)).result
    );

    // --- a resend of a granted request answers its record, not a refusal
    assert_eq!(RequestState::Monitoring, record_of(t.apply(under(&one, &alice))).state);

    // --- another holder has its own total
    let bob = grant(Some(("team-a", 1)), "bob", &[("cpu_cores", 4)], true);
    assert_eq!(RequestState::Monitoring, record_of(t.apply(under(&more, &bob))).state);

    // --- a release gives back: alice may take one more
    t.release(id(2));
    assert_eq!(3, t.table.held_by("alice", "cpu_cores"));
    assert_eq!(
        RequestState::Monitoring,
        record_of(t.apply(under(&request(4, &[("cpu_cores", 1)]), &alice))).state
    );

    // --- the totals survive a snapshot (derived again from the charges)
    let restored = AllocationTable::from_snapshot_bytes(&t.table.to_snapshot_bytes()).unwrap();
    assert_eq!(4, restored.held_by("alice", "cpu_cores"));
    assert_eq!(1, restored.held_by("bob", "cpu_cores"));
    assert_eq!(t.table, restored);
}

#[test]
fn a_grant_checked_against_an_older_revision_is_refused() {
    let mut t = Table::with_providers(vec![provider("node_1", cores("", 8))]);
    let team_a = spec("team-a", &[], vec![cert("alice")]);
    t.apply(Command::SetPolicy(team_a.clone())).result.unwrap();
    t.apply(Command::SetPolicy(team_a)).result.unwrap();
    let stale = grant(Some(("team-a", 1)), "alice", &[], true);
    assert_eq!(
        Err(CommandError::PolicyChanged {
            policy: "team-a".to_owned(),
            checked_revision: 1,
            current_revision: Some(2),
        }),
        t.apply(under(&request(1, &[("cpu_cores", 1)]), &stale)).result
    );
    t.apply(Command::DeletePolicy { name: "team-a".into() }).result.unwrap();
    let current = grant(Some(("team-a", 2)), "alice", &[], true);
    assert_eq!(
        Err(CommandError::PolicyChanged {
            policy: "team-a".to_owned(),
            checked_revision: 2,
            current_revision: None,
        }),
        t.apply(under(&request(1, &[("cpu_cores", 1)]), &current)).result
    );
}

#[test]
fn a_grant_without_preemption_queues_instead_of_preempting() {
    let mut t = Table::with_providers(vec![provider("node_1", cores("", 2))]);
    t.apply(Command::SetPreemption {
        namespace: None,
        setting: Some(PreemptionSetting::FromPriority(10)),
        preemptible: true,
    })
    .result
    .unwrap();
    let low = request(1, &[("cpu_cores", 2)]);
    t.allocate_record(&low);
    let urgent = AllocationRequest {
        priority: 10,
        ..request(2, &[("cpu_cores", 2)])
    };
    let withheld = grant(None, "alice", &[], false);
    let record = record_of(t.apply(under(&urgent, &withheld)));
    assert_eq!(RequestState::Queued, record.state);
    assert_eq!(RequestState::Monitoring, t.record(id(1)).state, "the low-priority allocation stays");

    // --- the same request allowed to preempt takes the units
    let urgent_too = AllocationRequest {
        priority: 10,
        ..request(3, &[("cpu_cores", 2)])
    };
    let allowed = grant(None, "alice", &[], true);
    // (no agent confirms on this provider: the grant is active at once)
    assert_eq!(RequestState::Monitoring, record_of(t.apply(under(&urgent_too, &allowed))).state);
    assert_eq!(RequestState::Queued, t.record(id(1)).state, "preempted and requeued");
}

#[test]
fn policy_changes_emit_events_and_a_delete_of_none_emits_nothing() {
    let mut t = Table::new();
    let team_a = spec("team-a", &[("cpu_cores", 4)], vec![cert("alice"), cert("bob")]);

    let expected = t.expect(vec![EventKind::PolicySet {
        name: "team-a".into(),
        revision: 1,
        bindings: 2,
    }]);
    assert_eq!(expected, t.apply(Command::SetPolicy(team_a)).events);

    let expected = t.expect(vec![EventKind::PolicyDeleted { name: "team-a".into() }]);
    assert_eq!(expected, t.apply(Command::DeletePolicy { name: "team-a".into() }).events);
    assert_eq!(Vec::<Event>::new(), t.apply(Command::DeletePolicy { name: "team-a".into() }).events);
}

#[test]
fn a_bind_and_an_unbind_change_one_binding_at_apply_with_a_new_revision() {
    let mut t = Table::new();
    let team_a = spec("team-a", &[("cpu_cores", 4)], vec![cert("alice")]);
    t.apply(Command::SetPolicy(team_a.clone())).result.unwrap();
    let bind = |binding: Binding| Command::BindPolicy {
        name: "team-a".into(),
        binding,
    };
    let unbind = |binding: Binding| Command::UnbindPolicy {
        name: "team-a".into(),
        binding,
    };
    let with_bindings = |revision: u64, bindings: Vec<Binding>| {
        Ok(CommandResponse::CapabilityPolicy(CapabilityPolicy {
            bindings: bindings.into_iter().collect(),
            ..stored(&team_a, revision)
        }))
    };

    // --- two binds, as two admins would make them at once: both kept, each a revision and an event
    let expected = t.expect(vec![EventKind::PolicyBound {
        name: "team-a".into(),
        revision: 2,
        binding: cert("bob"),
    }]);
    let applied = t.apply(bind(cert("bob")));
    assert_eq!(
        (with_bindings(2, vec![cert("alice"), cert("bob")]), expected),
        (applied.result, applied.events)
    );
    let applied = t.apply(bind(cert("carol")));
    assert_eq!(with_bindings(3, vec![cert("alice"), cert("bob"), cert("carol")]), applied.result);
    assert_eq!(
        vec![EventKind::PolicyBound {
            name: "team-a".into(),
            revision: 3,
            binding: cert("carol"),
        }],
        kinds(&applied.events)
    );

    // --- binding what it holds already changes nothing: same revision, no event
    let applied = t.apply(bind(cert("bob")));
    assert_eq!(
        (with_bindings(3, vec![cert("alice"), cert("bob"), cert("carol")]), Vec::new()),
        (applied.result, applied.events)
    );

    // --- unbind: a new revision and an event; unbinding what it does not hold changes nothing
    let expected = t.expect(vec![EventKind::PolicyUnbound {
        name: "team-a".into(),
        revision: 4,
        binding: cert("alice"),
    }]);
    let applied = t.apply(unbind(cert("alice")));
    assert_eq!(
        (with_bindings(4, vec![cert("bob"), cert("carol")]), expected),
        (applied.result, applied.events)
    );
    let applied = t.apply(unbind(cert("alice")));
    assert_eq!(
        (with_bindings(4, vec![cert("bob"), cert("carol")]), Vec::new()),
        (applied.result, applied.events)
    );
    let policy_of = |name: &str| {
        t.table
            .policy_for(name, "resource_consumer", None)
            .map(|policy| policy.name.clone())
    };
    assert_eq!((Some("team-a".to_owned()), None), (policy_of("carol"), policy_of("alice")));
}

#[test]
fn a_bind_is_refused_for_an_unknown_policy_a_taken_binding_or_a_bad_name_and_changes_nothing() {
    let mut t = Table::new();
    t.apply(Command::SetPolicy(spec("team-a", &[], vec![cert("alice")])))
        .result
        .unwrap();
    t.apply(Command::SetPolicy(spec("team-b", &[], vec![cert("bob")]))).result.unwrap();

    // (Table::apply checks that each refusal leaves the table and its snapshot unchanged.)
    assert_eq!(
        Err(CommandError::UnknownPolicy { name: "nobody".into() }),
        t.apply(Command::BindPolicy {
            name: "nobody".into(),
            binding: cert("carol"),
        })
        .result
    );
    assert_eq!(
        Err(CommandError::UnknownPolicy { name: "nobody".into() }),
        t.apply(Command::UnbindPolicy {
            name: "nobody".into(),
            binding: cert("carol"),
        })
        .result
    );
    assert_eq!(
        Err(CommandError::InvalidArgument(InvalidArgument::new(
            "bindings",
            "cert-name bob is already bound to policy \"team-b\""
        ))),
        t.apply(Command::BindPolicy {
            name: "team-a".into(),
            binding: cert("bob"),
        })
        .result
    );
    assert_eq!(
        Err(CommandError::InvalidArgument(InvalidArgument::new(
            "bindings.role",
            "\"root\" is not one of resource_manager, resource_provider, resource_consumer, admin"
        ))),
        t.apply(Command::BindPolicy {
            name: "team-a".into(),
            binding: Binding::Role {
                role: "root".into(),
                namespace: None,
            },
        })
        .result
    );
}

#[test]
fn a_policy_full_of_bindings_takes_no_more() {
    let mut t = Table::new();
    let full: Vec<Binding> = (0..POLICY_BINDINGS_MAX).map(|n| cert(&format!("holder-{n}"))).collect();
    t.apply(Command::SetPolicy(spec("team-a", &[], full))).result.unwrap();
    assert_eq!(
        Err(CommandError::InvalidArgument(InvalidArgument::new(
            "bindings",
            format!("policy \"team-a\" has {POLICY_BINDINGS_MAX} bindings already")
        ))),
        t.apply(Command::BindPolicy {
            name: "team-a".into(),
            binding: cert("one-more"),
        })
        .result
    );
}

#[test]
fn an_allocate_checked_before_an_unbind_is_checked_again() {
    let mut t = Table::with_providers(vec![provider("node_1", cores("", 8))]);
    t.apply(Command::SetPolicy(spec("team-a", &[], vec![cert("alice")])))
        .result
        .unwrap();
    // The API checked alice's allocate against revision 1; then an admin unbinds her.
    let checked = grant(Some(("team-a", 1)), "alice", &[], true);
    t.apply(Command::UnbindPolicy {
        name: "team-a".into(),
        binding: cert("alice"),
    })
    .result
    .unwrap();
    assert_eq!(
        Err(CommandError::PolicyChanged {
            policy: "team-a".to_owned(),
            checked_revision: 1,
            current_revision: Some(2),
        }),
        t.apply(under(&request(1, &[("cpu_cores", 1)]), &checked)).result
    );
}
