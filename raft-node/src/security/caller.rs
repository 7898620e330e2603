//! [`Caller`]: who made an admitted call, and what of the table it may see
//! and act on — namespace isolation for consumers, resource-level access for
//! providers.
//!
//! Another namespace's (or provider's) records are answered as if they did
//! not exist (`NOT_FOUND`, the same message as for an unknown id), so a
//! caller cannot learn that they do. Asking outright for another namespace
//! or provider is `PERMISSION_DENIED`: the caller knows what it asked.

use qm_api::tls::{Identity, Role};
use qm_state_machine::{Event, EventKind, RequestRecord};
use tonic::Status;
use tracing::warn;

/// The caller of one admitted RPC.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    /// TLS is off (development): every call is allowed and nothing is scoped.
    Anyone,
    /// The identity stated by the caller's certificate.
    Authenticated(Identity),
}

impl Caller {
    /// A consumer's namespace: the only one it may see and act in.
    pub fn namespace(&self) -> Option<&str> {
        match self {
            Caller::Authenticated(identity) if identity.role == Role::ResourceConsumer => identity.namespace.as_deref(),
            _ => None,
        }
    }

    /// A provider's id: the only provider it may act as, and whose
    /// allocations are the only ones it may see.
    pub fn provider(&self) -> Option<&str> {
        match self {
            Caller::Authenticated(identity) if identity.role == Role::ResourceProvider => Some(&identity.name),
            _ => None,
        }
    }

    /// Whether what this caller sees of the table is limited.
    pub fn is_scoped(&self) -> bool {
        self.namespace().is_some() || self.provider().is_some()
    }

    /// The namespace a call of this caller is about: a consumer's own (when
    /// it names none, or names its own); for anyone else what was asked.
    pub fn namespace_for(&self, requested: &str) -> Result<String, Status> {
        match self.namespace() {
            None => Ok(requested.to_owned()),
            Some(own) if requested.is_empty() || requested == own => Ok(own.to_owned()),
            Some(own) => Err(self.refuse(format!("namespace {requested:?} is not this certificate's namespace {own:?}"))),
        }
    }

    /// Refuses a provider acting as another provider.
    pub fn act_as_provider(&self, provider_id: &str) -> Result<(), Status> {
        match self.provider() {
            Some(own) if own != provider_id => Err(self.refuse(format!("may act only as provider {own:?}, not {provider_id:?}"))),
            _ => Ok(()),
        }
    }

    /// Whether this caller may see `record`: a consumer the records of its
    /// namespace, a provider the records placed on it and those moving to
    /// or from it (whose target confirms the move, and whose source
    /// confirms the release).
    pub fn sees(&self, record: &RequestRecord) -> bool {
        if let Some(namespace) = self.namespace() {
            return record.request.namespace == namespace;
        }
        if let Some(provider) = self.provider() {
            let moving = record
                .moving()
                .is_some_and(|moving| moving.from.provider_id == provider || moving.to.provider_id == provider);
            return moving || record.placement.as_ref().is_some_and(|placement| placement.provider_id == provider);
        }
        true
    }

    /// Whether this caller may see `event`. Provider-level events (no
    /// namespace) are public, as `ListProviders` is; an event about a
    /// request is seen in its namespace and by the providers it names;
    /// an event about capability policies by those who may read policies.
    pub fn sees_event(&self, event: &Event) -> bool {
        if event.kind.is_about_policies() {
            return match self {
                Caller::Anyone => true,
                Caller::Authenticated(identity) => super::Call::ListPolicies.allows(identity.role),
            };
        }
        let Some(event_namespace) = event.namespace() else { return true };
        if let Some(namespace) = self.namespace() {
            return event_namespace == namespace;
        }
        if let Some(provider) = self.provider() {
            return event_providers(&event.kind).contains(&provider);
        }
        true
    }

    /// `PERMISSION_DENIED` for a call outside this caller's scope, logged as
    /// the guard logs a refused role.
    fn refuse(&self, why: String) -> Status {
        warn!(status = "permission_denied", caller = %self.describe(), reason = %why, "call refused");
        Status::permission_denied(format!("{}: {why}", self.describe()))
    }

    /// For messages: `resource_consumer "a" of namespace "n"`, or `anyone`.
    pub fn describe(&self) -> String {
        match self {
            Caller::Anyone => "anyone (TLS is off)".to_owned(),
            Caller::Authenticated(identity) => identity.to_string(),
        }
    }
}

/// The providers an event about a request names.
fn event_providers(kind: &EventKind) -> Vec<&str> {
    match kind {
        EventKind::AllocationGranted { provider_id, .. }
        | EventKind::AllocationReleased { provider_id, .. }
        | EventKind::AllocationExpired { provider_id, .. }
        | EventKind::AllocationConfirmed { provider_id, .. }
        | EventKind::DeallocationConfirmed { provider_id, .. }
        // The provider an allocation was preempted off: its agent lets go
        // of the units and confirms the release.
        | EventKind::AllocationPreempted { provider_id, .. } => vec![provider_id],
        EventKind::AllocationMoved {
            from_provider,
            to_provider,
            ..
        }
        | EventKind::AllocationMoving {
            from_provider,
            to_provider,
            ..
        }
        | EventKind::OptimizationFailed {
            from_provider,
            to_provider,
            ..
        }
        | EventKind::MoveTargetReady {
            from_provider,
            to_provider,
            ..
        } => vec![from_provider, to_provider],
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    fn consumer(namespace: &str) -> Caller {
        Caller::Authenticated(Identity::new(Role::ResourceConsumer, "agent", Some(namespace.into())).unwrap())
    }

    fn provider(name: &str) -> Caller {
        Caller::Authenticated(Identity::new(Role::ResourceProvider, name, None).unwrap())
    }

    fn event(kind: EventKind) -> Event {
        Event::new(1, 0, kind)
    }

    #[test]
    fn a_consumer_is_held_to_its_namespace() {
        let caller = consumer("team-a");
        assert_eq!("team-a", caller.namespace_for("").unwrap());
        assert_eq!("team-a", caller.namespace_for("team-a").unwrap());
        assert_eq!(tonic::Code::PermissionDenied, caller.namespace_for("team-b").unwrap_err().code());
        assert_eq!("team-b", Caller::Anyone.namespace_for("team-b").unwrap());
    }

    #[test]
    fn a_provider_acts_only_as_itself() {
        assert!(provider("node_1").act_as_provider("node_1").is_ok());
        assert_eq!(
            tonic::Code::PermissionDenied,
            provider("node_1").act_as_provider("node_2").unwrap_err().code()
        );
        assert!(
            consumer("a").act_as_provider("node_2").is_ok(),
            "the role check is the policy's, not this"
        );
    }

    #[test]
    fn events_are_seen_in_their_namespace_and_by_their_providers() {
        let moved = event(EventKind::AllocationMoved {
            request_id: Uuid::nil(),
            allocation_id: Uuid::nil(),
            namespace: "team-a".into(),
            from_provider: "node_1".into(),
            to_provider: "node_2".into(),
            grants: Vec::new(),
            reason: "provider_failed".into(),
        });
        let queued = event(EventKind::RequestQueued {
            request_id: Uuid::nil(),
            requester_id: "agent".into(),
            namespace: "team-a".into(),
            reason: String::new(),
        });
        let failed = event(EventKind::ProviderFailed {
            provider_id: "node_3".into(),
        });
        for (caller, sees) in [
            (consumer("team-a"), [true, true, true]),
            (consumer("team-b"), [false, false, true]),
            (provider("node_1"), [true, false, true]),
            (provider("node_2"), [true, false, true]),
            (provider("node_3"), [false, false, true]),
            (Caller::Anyone, [true, true, true]),
        ] {
            assert_eq!(
                sees,
                [caller.sees_event(&moved), caller.sees_event(&queued), caller.sees_event(&failed)],
                "{caller:?}"
            );
        }
    }

    #[test]
    fn a_preemption_is_seen_by_the_provider_it_happened_on() {
        let preempted = event(EventKind::AllocationPreempted {
            request_id: Uuid::nil(),
            allocation_id: Uuid::nil(),
            namespace: "team-a".into(),
            provider_id: "node_1".into(),
            priority: 0,
            preemptor_request_id: Uuid::nil(),
            preemptor_namespace: "ops".into(),
            preemptor_priority: 10,
            requeued: true,
        });
        assert!(provider("node_1").sees_event(&preempted));
        assert!(!provider("node_2").sees_event(&preempted));
        assert!(consumer("team-a").sees_event(&preempted));
        assert!(!consumer("ops").sees_event(&preempted));
    }

    #[test]
    fn policy_events_are_seen_by_those_who_may_read_policies() {
        let bound = event(EventKind::PolicyBound {
            name: "team-a".into(),
            revision: 2,
            binding: qm_state_machine::policy::Binding::CertName("agent".into()),
        });
        let admin = Caller::Authenticated(Identity::new(Role::Admin, "ops", None).unwrap());
        assert!(admin.sees_event(&bound));
        assert!(Caller::Anyone.sees_event(&bound));
        assert!(!consumer("team-a").sees_event(&bound));
        assert!(!provider("node_1").sees_event(&bound));
    }

    /// A record moving from node_1 to node_2 (both with agents), in the table's own terms.
    fn moving_record() -> RequestRecord {
        use qm_state_machine::{AllocationTable, Command, ProviderRegistration, ResourceRequest, ResourceSpec, StampedCommand};
        let mut table = AllocationTable::default();
        let mut apply = |command| table.apply(&StampedCommand::new(1, command)).result.expect("applied");
        for provider_id in ["node_1", "node_2"] {
            apply(Command::RegisterProvider(ProviderRegistration {
                provider_id: provider_id.into(),
                labels: Default::default(),
                resources: (1..=2)
                    .map(|n| ResourceSpec {
                        resource_id: format!("cpu_{n}"),
                        kind: "cpu_cores".into(),
                        capacity: 1,
                        labels: Default::default(),
                        sharing: None,
                    })
                    .collect(),
                confirms_allocations: true,
                address: None,
                port: None,
            }));
        }
        let mut allocation_ids = Vec::new();
        for n in 1..=2u128 {
            let request = ResourceRequest::from_json(&format!(
                r#"{{"request_id": "{}", "requester_id": "agent", "resource_requirements": {{"cpu_cores": 1}}, "priority": 0, "placement": "spread"}}"#,
                Uuid::from_u128(n)
            ))
            .unwrap()
            .validate()
            .unwrap();
            let record = apply(Command::AllocateMovable(request));
            let record = record.request().unwrap();
            let provider_id = record.placement.as_ref().unwrap().provider_id.clone();
            allocation_ids.push(record.allocation_id());
            apply(Command::ConfirmAllocation {
                allocation_id: record.allocation_id(),
                provider_id: provider_id.to_string(),
            });
        }
        apply(Command::Optimize);
        let record = table.get(allocation_ids[0]).unwrap().clone();
        assert_eq!(qm_state_machine::RequestState::Optimization, record.state);
        record
    }

    #[test]
    fn a_provider_sees_a_record_moving_to_or_from_it() {
        let record = moving_record();
        assert_eq!("node_1", record.placement.as_ref().unwrap().provider_id);
        assert!(provider("node_1").sees(&record), "the source");
        assert!(provider("node_2").sees(&record), "the target, which confirms the move");
        assert!(!provider("node_3").sees(&record));
    }
}
