//! [`ProviderClients`]: one client per provider of the workload. On a TLS
//! run each presents its own provider's certificate, because a replica lets
//! a `resource_provider` register, heartbeat or deregister only as the
//! provider id its certificate names; without TLS they are plain clients.

use std::collections::BTreeMap;
use std::time::Duration;

use qm_client::{Client, ClientConfig, HeartbeatLoop};

use crate::credentials::Credentials;
use crate::error::JepsenError;

/// The providers' clients, by provider id.
pub struct ProviderClients {
    clients: BTreeMap<String, Client>,
}

impl ProviderClients {
    /// A client for each of `provider_ids`, reaching the replicas as `base`
    /// says, with the provider's certificate from `credentials`.
    pub fn new(provider_ids: &[String], base: &ClientConfig, credentials: &Credentials) -> Result<ProviderClients, JepsenError> {
        let clients = provider_ids
            .iter()
            .map(|id| {
                let config = ClientConfig {
                    tls: credentials.provider(id),
                    ..base.clone()
                };
                let client = Client::new(config).map_err(|error| JepsenError::Setup {
                    reason: format!("the client of provider {id}: {error}"),
                })?;
                Ok((id.clone(), client))
            })
            .collect::<Result<_, JepsenError>>()?;
        Ok(ProviderClients { clients })
    }

    /// The client that acts as `provider_id`.
    ///
    /// # Panics
    /// If there is none: the providers are fixed before the run starts, so
    /// asking for another one is a harness bug.
    pub fn client(&self, provider_id: &str) -> &Client {
        self.clients
            .get(provider_id)
            .unwrap_or_else(|| panic!("no client for provider {provider_id:?}"))
    }

    /// Heartbeats every provider through its own client until the loops are dropped.
    pub fn heartbeat_loops(&self, interval: Duration) -> Vec<HeartbeatLoop> {
        self.clients
            .iter()
            .map(|(id, client)| client.heartbeat_loop(id, interval))
            .collect()
    }
}
