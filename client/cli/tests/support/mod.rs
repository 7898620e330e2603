//! Builders shared by the paging tests (`paging.rs`, `paging_at_scale.rs`).

use std::collections::HashMap;

use qm_client::convert::{registration_from_proto, request_from_proto};
use qm_client::proto::api;

/// `node_NNN` with `units` memory units `mem_0..` of `capacity_gb` each.
pub fn memory_provider(n: usize, units: usize, capacity_gb: i64) -> qm_state_machine::ProviderRegistration {
    registration_from_proto(&api::RegisterProviderRequest {
        provider_id: format!("node_{n:03}"),
        resources: (0..units)
            .map(|unit| api::ResourceSpec {
                resource_id: format!("mem_{unit}"),
                kind: "memory_gb".into(),
                capacity: capacity_gb,
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    })
    .expect("registration")
}

/// A new request for 1 GB of memory.
pub fn one_gb() -> qm_state_machine::ResourceRequest {
    request_from_proto(&api::ResourceRequest {
        request_id: uuid::Uuid::new_v4().to_string(),
        requester_id: "pager".into(),
        resource_requirements: HashMap::from([("memory_gb".to_owned(), 1)]),
        priority: 1,
        ..Default::default()
    })
    .expect("request")
}
