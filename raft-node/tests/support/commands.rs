//! Table commands for storage tests that apply entries directly.

use std::collections::BTreeMap;

use qm_state_machine::{AllocationRequest, Command, Constraints, PlacementPolicy, ProviderRegistration, Requirement, ResourceSpec};
use uuid::Uuid;

/// Registers `provider_id` with `cores` exclusive CPU cores.
pub fn provider(provider_id: &str, cores: usize) -> Command {
    let registration = ProviderRegistration {
        provider_id: provider_id.to_string(),
        labels: BTreeMap::new(),
        resources: (0..cores)
            .map(|core| ResourceSpec {
                resource_id: format!("cpu_{core}"),
                kind: "cpu_cores".to_string(),
                capacity: 1,
                labels: BTreeMap::new(),
                sharing: None,
            })
            .collect(),
        confirms_allocations: false,
        address: None,
        port: None,
    };
    Command::RegisterProvider(registration.validate().expect("a valid registration"))
}

/// Allocates `cores` CPU cores under request id `request`.
pub fn allocate(request: u128, cores: u64) -> Command {
    Command::Allocate(AllocationRequest {
        request_id: Uuid::from_u128(request),
        requester_id: "requester".to_string().into(),
        namespace: "default".to_string().into(),
        requirements: vec![Requirement {
            kind: "cpu_cores".to_string().into(),
            quantity: cores,
        }]
        .into(),
        priority: 0,
        deadline_ms: None.into(),
        lease_ttl_ms: None.into(),
        constraints: Constraints::default(),
        placement: PlacementPolicy::BestFit,
    })
}
