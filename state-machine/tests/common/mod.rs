//! Shared builders for the integration tests: providers, requests, the
//! events the table is expected to emit, and a table that checks its
//! invariants after every command.

#![allow(dead_code)]

use std::collections::BTreeMap;

use qm_state_machine::record::allocation_id_for;
use qm_state_machine::request::DEFAULT_NAMESPACE;
use qm_state_machine::{
    AllocationRequest, AllocationTable, Applied, Command, CommandResponse, ConstraintSet, Constraints, Event, EventKind, PlacementPolicy,
    ProviderRegistration, ProviderStatus, RequestRecord, Requirement, ResourceSpec, ResourceState, Sharing, StampedCommand, TableConfig,
    UnitGrant,
};
use uuid::Uuid;

pub mod histories;

/// 2024-03-15T05:46:40Z: an arbitrary leader clock reading to start from.
pub const T0: u64 = 1_710_481_600_000;

/// A readable request id: `id(7)` is `00000000-0000-0000-0000-000000000007`.
pub fn id(n: u128) -> Uuid {
    Uuid::from_u128(n)
}

/// One resource of a registration; sharing resolved by the table's default
/// (capacity 1 exclusive, larger divisible).
pub fn unit(resource_id: &str, kind: &str, capacity: i64) -> ResourceSpec {
    ResourceSpec {
        resource_id: resource_id.to_owned(),
        kind: kind.to_owned(),
        capacity,
        labels: BTreeMap::new(),
        sharing: None,
    }
}

/// A unit with its sharing stated explicitly.
pub fn shared(resource_id: &str, kind: &str, capacity: i64, sharing: Sharing) -> ResourceSpec {
    ResourceSpec {
        sharing: Some(sharing),
        ..unit(resource_id, kind, capacity)
    }
}

/// `count` exclusive CPU cores named `{prefix}cpu_1..`.
pub fn cores(prefix: &str, count: usize) -> Vec<ResourceSpec> {
    (1..=count).map(|n| unit(&format!("{prefix}cpu_{n}"), "cpu_cores", 1)).collect()
}

pub fn provider(provider_id: &str, resources: Vec<ResourceSpec>) -> ProviderRegistration {
    ProviderRegistration {
        provider_id: provider_id.to_owned(),
        labels: BTreeMap::new(),
        resources,
        confirms_allocations: false,
        address: None,
        port: None,
    }
}

pub fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(key, value)| (key.to_string(), value.to_string())).collect()
}

/// A request from `agent_1` in the default namespace, priority 0, no deadline,
/// no lease, no constraints, best fit. Requirements must be given sorted by kind.
pub fn request(n: u128, requirements: &[(&str, u64)]) -> AllocationRequest {
    AllocationRequest {
        request_id: id(n),
        requester_id: "agent_1".to_owned().into(),
        namespace: DEFAULT_NAMESPACE.to_owned().into(),
        requirements: requirements
            .iter()
            .map(|(kind, quantity)| Requirement {
                kind: kind.to_string().into(),
                quantity: *quantity,
            })
            .collect(),
        priority: 0,
        deadline_ms: None.into(),
        lease_ttl_ms: None.into(),
        constraints: Constraints::default(),
        placement: PlacementPolicy::BestFit,
    }
}

pub fn on_provider(provider_id: &str) -> Constraints {
    Constraints::new(ConstraintSet {
        provider_id: Some(provider_id.to_owned()),
        ..ConstraintSet::default()
    })
}

pub fn grant(resource_id: &str, kind: &str, amount: u64) -> UnitGrant {
    UnitGrant {
        resource_id: resource_id.to_owned().into(),
        kind: kind.to_owned().into(),
        amount,
    }
}

// --- expected events

pub fn status(provider_id: &str, resource_id: &str, kind: &str, status: ResourceState, used: u64, capacity: u64) -> EventKind {
    EventKind::ResourceStatus {
        provider_id: provider_id.to_owned(),
        resource_id: resource_id.to_owned(),
        kind: kind.to_owned(),
        status,
        used,
        capacity,
    }
}

/// `resource_status` of an exclusive core of capacity 1.
pub fn core(provider_id: &str, resource_id: &str, state: ResourceState) -> EventKind {
    let used = u64::from(state == ResourceState::Allocated);
    status(provider_id, resource_id, "cpu_cores", state, used, 1)
}

pub fn granted(request: &AllocationRequest, provider_id: &str, grants: Vec<UnitGrant>) -> EventKind {
    EventKind::AllocationGranted {
        request_id: request.request_id,
        allocation_id: allocation_id_for(request.request_id),
        requester_id: request.requester_id.to_string(),
        namespace: request.namespace.to_string(),
        provider_id: provider_id.to_owned(),
        grants,
    }
}

pub fn moved(request: &AllocationRequest, from: &str, to: &str, grants: Vec<UnitGrant>, reason: &str) -> EventKind {
    EventKind::AllocationMoved {
        request_id: request.request_id,
        allocation_id: allocation_id_for(request.request_id),
        namespace: request.namespace.to_string(),
        from_provider: from.to_owned(),
        to_provider: to.to_owned(),
        grants,
        reason: reason.to_owned(),
    }
}

pub fn queued(request: &AllocationRequest, reason: &str) -> EventKind {
    EventKind::RequestQueued {
        request_id: request.request_id,
        requester_id: request.requester_id.to_string(),
        namespace: request.namespace.to_string(),
        reason: reason.to_owned(),
    }
}

pub fn rejected(request: &AllocationRequest, reason: &str) -> EventKind {
    EventKind::RequestRejected {
        request_id: request.request_id,
        requester_id: request.requester_id.to_string(),
        namespace: request.namespace.to_string(),
        reason: reason.to_owned(),
    }
}

pub fn released(request: &AllocationRequest, provider_id: &str) -> EventKind {
    EventKind::AllocationReleased {
        request_id: request.request_id,
        allocation_id: allocation_id_for(request.request_id),
        namespace: request.namespace.to_string(),
        provider_id: provider_id.to_owned(),
    }
}

pub fn expired(request: &AllocationRequest, provider_id: &str) -> EventKind {
    EventKind::AllocationExpired {
        request_id: request.request_id,
        allocation_id: allocation_id_for(request.request_id),
        namespace: request.namespace.to_string(),
        provider_id: provider_id.to_owned(),
    }
}

/// The reason a request gets when nothing fits now.
pub const INSUFFICIENT: &str = "insufficient_resources: no provider has enough free now";

// --- the table under test

/// An [`AllocationTable`] with a leader clock. Every command is checked: its
/// invariants after, and for a failed command, that nothing changed at all.
pub struct Table {
    pub table: AllocationTable,
    pub now_ms: u64,
}

impl Table {
    pub fn new() -> Table {
        Table::with_config(TableConfig::default())
    }

    pub fn with_config(config: TableConfig) -> Table {
        Table {
            table: AllocationTable::new(config),
            now_ms: T0,
        }
    }

    /// Registers providers, asserting each registration succeeds.
    pub fn with_providers(providers: Vec<ProviderRegistration>) -> Table {
        let mut table = Table::new();
        for registration in providers {
            table.register(registration);
        }
        table
    }

    pub fn apply(&mut self, command: Command) -> Applied {
        let before = self.table.clone();
        let snapshot_before = self.table.to_snapshot_bytes();
        let applied = self.table.apply(&StampedCommand::new(self.now_ms, command));
        self.table.assert_invariants();
        if applied.result.is_err() {
            assert_eq!(before, self.table, "a failed command changed the table");
            assert_eq!(
                snapshot_before,
                self.table.to_snapshot_bytes(),
                "a failed command changed the snapshot"
            );
            assert_eq!(Vec::<Event>::new(), applied.events, "a failed command emitted events");
        }
        applied
    }

    pub fn register(&mut self, registration: ProviderRegistration) -> Applied {
        let applied = self.apply(Command::RegisterProvider(registration));
        assert!(applied.result.is_ok(), "{:?}", applied.result);
        applied
    }

    pub fn allocate(&mut self, request: &AllocationRequest) -> Applied {
        self.apply(Command::Allocate(request.clone()))
    }

    /// Allocates and returns the record, asserting the command succeeded.
    pub fn allocate_record(&mut self, request: &AllocationRequest) -> RequestRecord {
        record_of(self.allocate(request))
    }

    pub fn release(&mut self, id: Uuid) -> Applied {
        self.apply(Command::Release { id })
    }

    pub fn tick_at(&mut self, now_ms: u64) -> Applied {
        self.now_ms = now_ms;
        self.apply(Command::Tick)
    }

    pub fn record(&self, id: Uuid) -> RequestRecord {
        self.table.get(id).cloned().unwrap_or_else(|| panic!("{id} is not in the table"))
    }

    /// The events a command applied now should emit, numbered from the next revision.
    pub fn expect(&self, kinds: Vec<EventKind>) -> Vec<Event> {
        let at_ms = self.now_ms.max(self.table.clock_ms());
        let first = self.table.revision() + 1;
        kinds
            .into_iter()
            .enumerate()
            .map(|(offset, kind)| Event::new(first + offset as u64, at_ms, kind))
            .collect()
    }

    pub fn provider_status(&self, provider_id: &str) -> ProviderStatus {
        self.table.provider(provider_id).expect("registered").status
    }
}

pub fn record_of(applied: Applied) -> RequestRecord {
    match applied.result {
        Ok(CommandResponse::Request(record)) => std::sync::Arc::unwrap_or_clone(record),
        other => panic!("expected a request record, got {other:?}"),
    }
}

/// The event kinds alone, for tests about order rather than numbering.
pub fn kinds(events: &[Event]) -> Vec<EventKind> {
    events.iter().map(|event| event.kind.clone()).collect()
}

// --- a provider to empty

/// `node_a` holds `held` one-core allocations (ids 1..=held, placed while it
/// was alone); `node_b` has exactly room for all of them. A command moves
/// at most `evacuations_per_command_max` of them off a leaving provider.
pub fn node_a_full(evacuations_per_command_max: usize, held: usize) -> Table {
    let mut t = Table::with_config(TableConfig {
        evacuations_per_command_max,
        ..TableConfig::default()
    });
    t.register(provider("node_a", cores("a", held)));
    for n in 1..=held as u128 {
        t.allocate(&request(n, &[("cpu_cores", 1)]));
    }
    t.register(provider("node_b", cores("b", held)));
    t
}

/// How many requests the table has placed on `provider_id`.
pub fn placed_on(t: &Table, provider_id: &str) -> usize {
    t.table
        .list(&qm_state_machine::ListFilter {
            provider_id: Some(provider_id.into()),
            ..Default::default()
        })
        .len()
}
