//! Capability policies in the table: set (each set a new revision, from one
//! counter so a deleted and re-set policy never repeats one), delete,
//! bindings held by one policy only, and the allocate under a grant, whose
//! total per holder apply checks exactly.

mod common;

use std::collections::BTreeMap;

use common::*;
use qm_state_machine::policy::{Binding, Capability, CapabilityPolicy, PolicyGrant, PolicySpec};
use qm_state_machine::{
    AllocationRequest, AllocationTable, Command, CommandError, CommandResponse, InvalidArgument, OnPreemption, PreemptionSetting,
    RequestState,
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
