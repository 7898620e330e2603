//! [`Beat`]: the agent's heartbeat task. Every interval it measures the
//! units ([`MetricsCollector`]) and sends a heartbeat through the client,
//! which finds the leader and follows failovers. A leader that does not know
//! the provider (someone deregistered it) gets the registration again: an
//! agent offers its units for as long as it runs.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tokio::time::MissedTickBehavior;
use tracing::debug;

use super::inventory::Inventory;
use super::metrics::MetricsCollector;
use super::notice::Notice;
use qm_client::client::Client;
use qm_client::Error;

pub(super) struct Beat {
    pub client: Client,
    pub inventory: Inventory,
    pub interval: Duration,
    pub collector: MetricsCollector,
    /// What the agent holds per unit, kept by the confirmer.
    pub held: watch::Receiver<BTreeMap<String, u64>>,
    pub notices: mpsc::Sender<Notice>,
}

impl Beat {
    /// Heartbeats until the task is aborted.
    pub async fn run(mut self) {
        let provider_id = self.inventory.registration.provider_id.clone();
        let mut ticks = tokio::time::interval(self.interval);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        // The registration just now counts as the first sign of life.
        ticks.tick().await;
        let mut failing = false;
        loop {
            ticks.tick().await;
            let held = self.held.borrow().clone();
            let metrics = self.collector.sample(&held, Instant::now());
            match self.client.heartbeat(&provider_id, metrics).await {
                Ok(reply) if !reply.known => {
                    failing = false;
                    self.register_again().await;
                }
                Ok(_) => failing = false,
                Err(error) => {
                    debug!(provider_id = %provider_id, %error, "heartbeat did not go through");
                    if !failing {
                        failing = true;
                        self.tell(Notice::Warning {
                            message: format!("a heartbeat did not go through ({error}); trying again every interval"),
                        });
                    }
                }
            }
        }
    }

    async fn register_again(&self) {
        let registration = &self.inventory.registration;
        let notice = match self.client.register_provider(registration).await {
            Ok(reply) => Notice::Registered {
                provider_id: registration.provider_id.clone(),
                origin: self.inventory.origin.clone(),
                resources: reply.resources,
                capacity: self.inventory.capacity_by_kind(),
                again: true,
            },
            Err(error) => Notice::Warning {
                message: registration_failed(&registration.provider_id, &error),
            },
        };
        self.tell(notice);
    }

    /// Heartbeats never wait for the reader of the notices: a stalled
    /// terminal must not get the provider declared failed. A warning that
    /// finds the buffer full is dropped.
    fn tell(&self, notice: Notice) {
        if let Err(mpsc::error::TrySendError::Full(notice)) = self.notices.try_send(notice) {
            debug!(%notice, "notice buffer full; notice dropped");
        }
    }
}

fn registration_failed(provider_id: &str, error: &Error) -> String {
    format!("the cluster no longer knows {provider_id} and registering it again failed ({error}); trying again next heartbeat")
}
