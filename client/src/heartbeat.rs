//! [`HeartbeatLoop`]: keeps a provider marked alive from the background.

use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;
use tracing::debug;

use crate::client::Client;
use crate::error::Error;
use crate::proto::api;

/// Sends a heartbeat every interval until dropped. A heartbeat no replica
/// answered is simply sent again at the next tick; a refused one (bad
/// provider id) stops the loop, and [`HeartbeatLoop::stopped`] says why.
#[derive(Debug)]
pub struct HeartbeatLoop {
    provider_id: String,
    last_reply: watch::Receiver<Option<api::HeartbeatReply>>,
    /// `Some` until [`HeartbeatLoop::stopped`] takes it.
    task: Option<JoinHandle<Error>>,
}

impl HeartbeatLoop {
    pub(crate) fn start(client: Client, provider_id: String, interval: Duration) -> HeartbeatLoop {
        assert!(!interval.is_zero(), "a heartbeat interval must be positive");
        let (sender, last_reply) = watch::channel(None);
        let task = tokio::spawn(beat_until_refused(client, provider_id.clone(), interval, sender));
        HeartbeatLoop {
            provider_id,
            last_reply,
            task: Some(task),
        }
    }

    pub fn provider_id(&self) -> &str {
        &self.provider_id
    }

    /// The newest answer from the leader; `known: false` means the provider
    /// must register (again) before its heartbeats count.
    pub fn last_reply(&self) -> Option<api::HeartbeatReply> {
        self.last_reply.borrow().clone()
    }

    /// Waits until the loop stops on its own, and returns why.
    pub async fn stopped(mut self) -> Error {
        let task = self.task.take().expect("the task is taken only here, by value");
        match task.await {
            Ok(error) => error,
            Err(join_error) => std::panic::resume_unwind(join_error.into_panic()),
        }
    }
}

impl Drop for HeartbeatLoop {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

async fn beat_until_refused(
    client: Client,
    provider_id: String,
    interval: Duration,
    last_reply: watch::Sender<Option<api::HeartbeatReply>>,
) -> Error {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        match client.heartbeat(&provider_id, Vec::new()).await {
            Ok(reply) => {
                last_reply.send_replace(Some(reply));
            }
            Err(error @ (Error::Unavailable { .. } | Error::Unknown { .. })) => {
                debug!(provider_id = %provider_id, error = %error, "heartbeat did not go through; sending again next interval");
            }
            Err(error) => return error,
        }
    }
}

// Defined here rather than in client.rs so that client.rs needs nothing of
// this module: the dependency goes one way.
impl Client {
    /// Heartbeats for `provider_id` every `interval` in the background until
    /// the returned handle is dropped.
    pub fn heartbeat_loop(&self, provider_id: &str, interval: Duration) -> HeartbeatLoop {
        HeartbeatLoop::start(self.clone(), provider_id.to_owned(), interval)
    }
}
