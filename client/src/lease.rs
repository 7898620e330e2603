//! [`LeaseKeeper`]: renews one allocation's lease in the background.

use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};
use tracing::debug;

use crate::client::Client;
use crate::error::Error;

/// Renews a lease every interval until dropped. A renewal that fails because
/// no replica answered is tried again at the next tick; one the table refuses
/// (the allocation is gone, released, expired, or has no lease) stops the
/// keeper, and [`LeaseKeeper::stopped`] says why.
#[derive(Debug)]
pub struct LeaseKeeper {
    id: String,
    expires_at_ms: watch::Receiver<Option<u64>>,
    /// `Some` until [`LeaseKeeper::stopped`] takes it.
    task: Option<JoinHandle<Error>>,
}

impl LeaseKeeper {
    pub(crate) fn start(client: Client, id: String, interval: Duration) -> LeaseKeeper {
        assert!(!interval.is_zero(), "a lease renewal interval must be positive");
        let (sender, expires_at_ms) = watch::channel(None);
        let task = tokio::spawn(renew_until_refused(client, id.clone(), interval, sender));
        LeaseKeeper {
            id,
            expires_at_ms,
            task: Some(task),
        }
    }

    /// The allocation (or request) id being renewed.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// When the lease expires according to the newest successful renewal
    /// (ms since the Unix epoch, the leader's clock); `None` before the first.
    pub fn expires_at_ms(&self) -> Option<u64> {
        *self.expires_at_ms.borrow()
    }

    /// Waits until the keeper stops on its own, and returns why: the table
    /// refused a renewal. Runs forever while renewals keep succeeding.
    pub async fn stopped(mut self) -> Error {
        let task = self.task.take().expect("the task is taken only here, by value");
        match task.await {
            Ok(error) => error,
            Err(join_error) => std::panic::resume_unwind(join_error.into_panic()),
        }
    }
}

impl Drop for LeaseKeeper {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

async fn renew_until_refused(client: Client, id: String, interval: Duration, expires_at_ms: watch::Sender<Option<u64>>) -> Error {
    // The first renewal one interval from now: the lease was just granted.
    let mut ticks = tokio::time::interval_at(Instant::now() + interval, interval);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        match client.renew_lease(&id).await {
            Ok(reply) => {
                expires_at_ms.send_replace(reply.lease_expires_at_ms);
            }
            Err(error @ (Error::Unavailable { .. } | Error::Unknown { .. })) => {
                debug!(id = %id, error = %error, "lease renewal did not go through; trying again next interval");
            }
            Err(error) => return error,
        }
    }
}

// Defined here rather than in client.rs so that client.rs needs nothing of
// this module: the dependency goes one way.
impl Client {
    /// Renews the lease of `id` every `interval` in the background until the
    /// returned keeper is dropped, or until the allocation can no longer be
    /// renewed (see [`LeaseKeeper::stopped`]). Pick an interval well under
    /// the TTL: a renewal may need a failover.
    pub fn keep_lease_alive(&self, id: &str, interval: Duration) -> LeaseKeeper {
        LeaseKeeper::start(self.clone(), id.to_owned(), interval)
    }
}
