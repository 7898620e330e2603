//! [`AgentError`]: why an agent could not start or stop cleanly.

use qm_state_machine::InvalidArgument;

use super::inventory::InventoryError;
use qm_client::Error;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The agent's own settings are wrong.
    #[error("invalid {}: {}", .0.field, .0.reason)]
    Config(InvalidArgument),
    /// What to offer could not be worked out.
    #[error(transparent)]
    Inventory(#[from] InventoryError),
    /// The cluster refused the registration, or no replica took it in time.
    #[error("cannot register {provider_id}: {source}")]
    Register { provider_id: String, source: Error },
    /// The deregistration on shutdown did not go through.
    #[error("cannot deregister {provider_id}: {source}")]
    Deregister { provider_id: String, source: Error },
}
