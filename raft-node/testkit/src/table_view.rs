//! A table as a replica serves it, and as a table in memory would answer:
//! the two sides tests compare after a restore or when opening fixtures.

use qm_api::convert::{provider_to_proto, reply_from_record, usage_to_proto};
use qm_api::proto::api::{self, quartermaster_client::QuartermasterClient, ListRequest};
use qm_state_machine::{AllocationTable, ListFilter};

/// Every record, the providers and the monitor's view.
pub type TableView = (Vec<api::AllocationReply>, Vec<api::ProviderInfo>, api::SystemStateReply);

/// What the replica at `addr` serves of its table, read locally (`stale`),
/// without the leader's memory of heartbeats.
pub async fn served_by(addr: &str) -> TableView {
    let mut api = QuartermasterClient::connect(format!("http://{addr}")).await.expect("connect");
    let records = api
        .list(ListRequest {
            stale: true,
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner()
        .records;
    let providers = api
        .list_providers(api::ListProvidersRequest {
            stale: true,
            ..Default::default()
        })
        .await
        .expect("providers")
        .into_inner()
        .providers
        .into_iter()
        .map(without_liveness)
        .collect();
    let state = api
        .system_state(api::SystemStateRequest {
            stale: true,
            ..Default::default()
        })
        .await
        .expect("state")
        .into_inner();
    (records, providers, state)
}

/// What `table` would serve, in the same form as [`served_by`].
pub fn expected_from(table: &AllocationTable) -> TableView {
    let records = table.list(&ListFilter::default()).into_iter().map(reply_from_record).collect();
    let providers = table.providers().map(provider_to_proto).map(without_liveness).collect();
    (records, providers, usage_to_proto(&table.usage()))
}

/// A provider's static view: what the table holds, not the leader's memory.
fn without_liveness(provider: api::ProviderInfo) -> api::ProviderInfo {
    api::ProviderInfo {
        allocations: 0,
        last_heartbeat_ms: None,
        ..provider
    }
}
