//! [`Agent`]: a running provider agent. [`Agent::start`] registers the
//! provider and starts the heartbeat task (`beat.rs`) and the watch-and-confirm
//! task (`confirmer.rs`); [`Agent::stop`] stops both and deregisters.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::debug;

use super::beat::Beat;
use super::config::AgentConfig;
use super::confirmer::Confirmer;
use super::error::AgentError;
use super::host::HostPaths;
use super::inventory::Inventory;
use super::ledger::Ledger;
use super::metrics::MetricsCollector;
use super::notice::Notice;
use qm_client::client::Client;
use qm_client::proto::api;
use qm_client::Error;

/// Notices buffered for the agent's reader; when full, the agent's tasks
/// wait for the reader (nothing is dropped).
pub const NOTICES_BUFFER_MAX: usize = 1024;
/// Longest pause between two registration attempts while no replica answers.
pub const REGISTER_PAUSE_MS_MAX: u64 = 2_000;

/// A provider agent at work; see the module docs. Dropping it stops its
/// tasks without deregistering (the cluster then declares it failed once the
/// failure window passes).
#[derive(Debug)]
pub struct Agent {
    client: Client,
    provider_id: String,
    notices: mpsc::Receiver<Notice>,
    tasks: Vec<JoinHandle<()>>,
}

impl Agent {
    /// Registers `inventory` (waiting up to `register_wait_ms` for a
    /// cluster that does not answer yet), then heartbeats and confirms in
    /// the background. Create it inside a Tokio runtime.
    pub async fn start(client: Client, inventory: Inventory, config: AgentConfig) -> Result<Agent, AgentError> {
        Agent::start_with_paths(client, inventory, config, HostPaths::default()).await
    }

    /// [`Agent::start`], reading host figures under `paths`.
    pub async fn start_with_paths(
        client: Client,
        inventory: Inventory,
        config: AgentConfig,
        paths: HostPaths,
    ) -> Result<Agent, AgentError> {
        config.validate().map_err(AgentError::Config)?;
        let provider_id = inventory.registration.provider_id.clone();
        let reply = register(&client, &inventory, config.register_wait()).await?;
        let (notices_sender, notices) = mpsc::channel(NOTICES_BUFFER_MAX);
        let capacity = inventory.capacity_by_kind();
        notices_sender
            .send(Notice::Registered {
                provider_id: provider_id.clone(),
                origin: inventory.origin.clone(),
                resources: reply.resources,
                capacity: capacity.clone(),
                again: false,
            })
            .await
            .expect("the receiver is held right here");
        let (held_sender, held) = watch::channel(BTreeMap::new());
        let beat = Beat {
            client: client.clone(),
            collector: MetricsCollector::new(&inventory, paths, Instant::now()),
            inventory,
            interval: config.heartbeat_interval(),
            held,
            notices: notices_sender.clone(),
        };
        let confirmer = Confirmer {
            client: client.clone(),
            provider_id: provider_id.clone(),
            ledger: Ledger::new(&provider_id),
            capacity,
            retry_interval: config.confirm_retry_interval(),
            last_revision: 0,
            held: held_sender,
            notices: notices_sender,
        };
        let tasks = vec![tokio::spawn(beat.run()), tokio::spawn(confirmer.run())];
        Ok(Agent {
            client,
            provider_id,
            notices,
            tasks,
        })
    }

    pub fn provider_id(&self) -> &str {
        &self.provider_id
    }

    /// The next thing the agent did or learned; waits for one.
    pub async fn next_notice(&mut self) -> Option<Notice> {
        self.notices.recv().await
    }

    /// Stops heartbeating and confirming, then deregisters the provider: its
    /// allocations are moved to other providers or queued.
    pub async fn stop(mut self) -> Result<Notice, AgentError> {
        self.abort_tasks();
        self.client
            .deregister_provider(&self.provider_id)
            .await
            .map_err(|source| AgentError::Deregister {
                provider_id: self.provider_id.clone(),
                source,
            })?;
        Ok(Notice::Deregistered {
            provider_id: self.provider_id.clone(),
        })
    }

    fn abort_tasks(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.abort_tasks();
    }
}

/// Registers, retrying with a doubling pause while no replica takes the call,
/// for at most `wait`. A refusal (bad inventory, a held unit removed) is final.
async fn register(client: &Client, inventory: &Inventory, wait: Duration) -> Result<api::ProviderReply, AgentError> {
    let registration = &inventory.registration;
    let deadline = tokio::time::Instant::now() + wait;
    let mut pause = Duration::from_millis(client.config().backoff_base_ms.max(1));
    loop {
        match client.register_provider(registration).await {
            Ok(reply) => return Ok(reply),
            Err(error @ (Error::Unavailable { .. } | Error::Unknown { .. })) if tokio::time::Instant::now() + pause < deadline => {
                debug!(provider_id = %registration.provider_id, %error, pause_ms = pause.as_millis() as u64, "registration not taken; trying again");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(REGISTER_PAUSE_MS_MAX));
            }
            Err(source) => {
                return Err(AgentError::Register {
                    provider_id: registration.provider_id.clone(),
                    source,
                })
            }
        }
    }
}
