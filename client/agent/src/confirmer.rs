//! [`Confirmer`]: the agent's watch on the cluster. It learns from the event
//! stream which allocations are placed on (or taken off) its units, keeps the
//! [`Ledger`], and sends the confirmations the ledger owes.
//!
//! ```text
//!  resync: SystemState.revision = r, List(provider = us), List(state = deallocation) ──▶ ledger.adopt
//!  Watch(from r + 1) ──events──▶ ledger.apply_event ──▶ notices, owed confirmations ──▶ Confirm(...)
//!     │ a replica fails: WatchStream resumes on another from the last revision seen
//!     │ every replica fails for a while: a new watch from the last revision seen
//!     ▼ the revision is compacted away: resync, then watch again
//! ```
//!
//! A confirmation that no replica took (no leader just then) stays owed and
//! is sent again every `confirm_retry_interval_ms`; one the table refuses
//! (the allocation moved on, or was released first) is dropped.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::{mpsc, watch};
use tokio::time::MissedTickBehavior;
use tracing::debug;
use uuid::Uuid;

use super::ledger::{confirmation_name, Ledger};
use super::notice::Notice;
use qm_client::client::{Client, Consistency};
use qm_client::proto::api;
use qm_client::Error;
use qm_client::WatchStream;

/// Records awaiting a release confirmation read per resync; the state is
/// transient (agents confirm within a heartbeat), so a page is plenty.
pub const RESYNC_RELEASES_MAX: u32 = 1_000;
/// Pause before watching again when the last watch failed on every
/// replica or could not resume (so a lasting refusal is not a busy loop).
pub const REWATCH_PAUSE_MS: u64 = 1_000;

pub(super) struct Confirmer {
    pub client: Client,
    pub provider_id: String,
    pub ledger: Ledger,
    /// Capacity per kind, for the `holds` notices.
    pub capacity: BTreeMap<String, u64>,
    pub retry_interval: Duration,
    /// The last revision applied to the ledger.
    pub last_revision: u64,
    pub held: watch::Sender<BTreeMap<String, u64>>,
    pub notices: mpsc::Sender<Notice>,
}

/// How one watch ended.
enum WatchEnded {
    /// Every replica failed; watching again from the last revision resumes it.
    Unavailable(Error),
    /// The watch cannot resume (its revision is compacted): resync first.
    Lost(Error),
}

impl Confirmer {
    /// Watches and confirms until the task is aborted.
    pub async fn run(mut self) {
        let mut synced = false;
        loop {
            if !synced {
                match self.resync().await {
                    Ok(()) => synced = true,
                    Err(error) => {
                        self.warn(format!("cannot read this provider's allocations ({error}); trying again"))
                            .await;
                        tokio::time::sleep(Duration::from_millis(REWATCH_PAUSE_MS)).await;
                        continue;
                    }
                }
            }
            let mut events = self.client.watch(self.last_revision + 1, None);
            match self.follow(&mut events).await {
                WatchEnded::Unavailable(error) => {
                    debug!(%error, last_revision = self.last_revision, "watch failed on every replica; watching again");
                    tokio::time::sleep(Duration::from_millis(REWATCH_PAUSE_MS)).await;
                }
                WatchEnded::Lost(error) => {
                    self.warn(format!("the watch cannot resume ({error}); reading the allocations again"))
                        .await;
                    synced = false;
                    tokio::time::sleep(Duration::from_millis(REWATCH_PAUSE_MS)).await;
                }
            }
        }
    }

    /// Reads the table's view of this provider (at revision `r` or later) and
    /// continues from `r`: events after `r` may repeat what the view shows,
    /// which the ledger takes as no news.
    async fn resync(&mut self) -> Result<(), Error> {
        let revision = self.client.system_state(Consistency::Linearizable).await?.revision;
        let active = self
            .client
            .list(api::ListRequest {
                provider_id: self.provider_id.clone(),
                ..Default::default()
            })
            .await?;
        let releasing: Vec<Uuid> = self
            .client
            .list(api::ListRequest {
                state: api::RequestState::Deallocation as i32,
                limit: RESYNC_RELEASES_MAX,
                ..Default::default()
            })
            .await?
            .iter()
            .filter_map(|record| Uuid::parse_str(&record.allocation_id).ok())
            .collect();
        let before = self.ledger.holds(&self.capacity);
        let notices = self.ledger.adopt(&active, &releasing);
        self.last_revision = revision;
        self.tell_all(notices).await;
        self.send_owed().await;
        self.publish(before).await;
        Ok(())
    }

    /// Applies events as they come, and retries owed confirmations.
    async fn follow(&mut self, events: &mut WatchStream) -> WatchEnded {
        let mut retries = tokio::time::interval(self.retry_interval);
        retries.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                event = events.next() => match event {
                    Some(Ok(event)) => self.apply(event).await,
                    Some(Err(error @ Error::Unavailable { .. })) => return WatchEnded::Unavailable(error),
                    Some(Err(error)) => return WatchEnded::Lost(error),
                    None => return WatchEnded::Unavailable(Error::Unavailable {
                        attempts: 0,
                        last_cause: "the watch ended".to_owned(),
                    }),
                },
                _ = retries.tick() => {
                    if !self.ledger.owed().is_empty() {
                        let before = self.ledger.holds(&self.capacity);
                        self.send_owed().await;
                        self.publish(before).await;
                    }
                }
            }
        }
    }

    async fn apply(&mut self, event: api::EventMessage) {
        self.last_revision = event.revision;
        let json: serde_json::Value = match serde_json::from_str(&event.json) {
            Ok(json) => json,
            Err(error) => {
                debug!(revision = event.revision, %error, "an event without readable JSON; skipped");
                return;
            }
        };
        let before = self.ledger.holds(&self.capacity);
        let notices = self.ledger.apply_event(&json);
        if notices.is_empty() {
            return;
        }
        self.tell_all(notices).await;
        self.send_owed().await;
        self.publish(before).await;
    }

    /// Sends every owed confirmation, oldest allocation id first; stops at the
    /// first one no replica took (the others would wait just as long).
    async fn send_owed(&mut self) {
        for (allocation_id, confirmation) in self.ledger.owed() {
            let answer = self
                .client
                .confirm(&allocation_id.to_string(), &self.provider_id, confirmation)
                .await;
            let notice = match answer {
                Ok(_) => self.ledger.confirmed(allocation_id, confirmation),
                Err(error @ (Error::Conflict { .. } | Error::NotFound { .. } | Error::InvalidArgument { .. })) => {
                    self.ledger.refused(allocation_id, confirmation, error.to_string())
                }
                Err(error) => {
                    debug!(%allocation_id, %error, "{} not taken; retrying", confirmation_name(confirmation));
                    break;
                }
            };
            self.tell_all(notice).await;
        }
    }

    /// Shares the units held with the heartbeat task and prints a `holds`
    /// line when what is held (or confirmed) changed since `before`.
    async fn publish(&mut self, before: Notice) {
        self.held.send_replace(self.ledger.held_units());
        let now = self.ledger.holds(&self.capacity);
        if now != before {
            self.tell_all([now]).await;
        }
    }

    async fn warn(&self, message: String) {
        self.tell_all([Notice::Warning { message }]).await;
    }

    async fn tell_all(&self, notices: impl IntoIterator<Item = Notice>) {
        for notice in notices {
            // The receiver is gone only when the agent is stopping.
            let _ = self.notices.send(notice).await;
        }
    }
}
