//! Events out: every event of the table, in revision order, published
//! persistent to `resource_events`, at least once and without gaps.
//!
//! The place reached is a named cursor in the cluster's own log
//! (`AdvanceCursor`), saved only up to a revision the broker has confirmed;
//! a bridge that starts (this one again, or another on another host) resumes
//! from the revision after it. So a crash, a broker restart or a leader
//! failover costs at most a second's events published twice, never one
//! missed; consumers dedupe by `message_id` (or `x-qm-revision`).
//!
//! Of several bridges, the one holding the cursor publishes; the others
//! stand by and take over once its hold lapses (`--cursor-hold`).
//!
//! ```text
//!  claim cursor (revision C) ──▶ watch from C+1 ──▶ batch ──publish, persistent──▶ resource_events
//!        ▲                                            │ all confirmed
//!        └─ lost the hold: stand by ◀── save C' ◀─────┘ (every --cursor-save-interval)
//!  watch: revision compacted ──▶ publish resync_required (system state at R) ──▶ save R, watch from R+1
//! ```

use std::sync::Arc;

use futures::{FutureExt, StreamExt};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection};
use qm_client::convert::usage_from_proto;
use qm_client::proto::api;
use qm_client::{Client, Consistency, Error};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::messages;
use crate::metrics::Metrics;
use crate::topology::EVENTS_EXCHANGE;
use crate::BridgeConfig;

/// Events published before their confirms are awaited together.
pub const PUBLISH_BATCH_MAX: usize = 256;
/// AMQP `delivery_mode` of a message the broker writes to disk.
const PERSISTENT: u8 = 2;
/// Message header carrying the event's revision.
pub const REVISION_HEADER: &str = "x-qm-revision";

/// Why publishing stopped.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("broker: {0}")]
    Broker(#[from] lapin::Error),
    #[error("the broker did not confirm revision {revision}")]
    NotConfirmed { revision: u64 },
}

/// Publishes events whenever this bridge holds the cursor; returns only
/// when the broker fails (the caller reconnects).
pub async fn publish(
    connection: &Connection,
    client: &Client,
    config: &Arc<BridgeConfig>,
    metrics: &Arc<Metrics>,
) -> Result<(), PublishError> {
    let channel = connection.create_channel().await?;
    channel.confirm_select(ConfirmSelectOptions::default()).await?;
    let publisher = Publisher {
        channel,
        client,
        config,
        metrics,
    };
    loop {
        let cursor = match publisher.claim(0).await {
            Some(cursor) if cursor.held_by_caller => cursor,
            held_elsewhere => {
                metrics.holds_cursor.set(0);
                if let Some(cursor) = held_elsewhere {
                    debug!(holder = %cursor.holder, "cursor held by another bridge; standing by");
                }
                tokio::time::sleep(config.cursor_hold / 3).await;
                continue;
            }
        };
        info!(cursor = %config.cursor, revision = cursor.revision, "holding the cursor; publishing events");
        metrics.holds_cursor.set(1);
        publisher.run_from(cursor.revision).await?;
        metrics.holds_cursor.set(0);
    }
}

struct Publisher<'a> {
    channel: Channel,
    client: &'a Client,
    config: &'a Arc<BridgeConfig>,
    metrics: &'a Arc<Metrics>,
}

impl Publisher<'_> {
    /// Takes, keeps or just reads the cursor, saving `revision`; `None`
    /// when the cluster cannot answer now.
    async fn claim(&self, revision: u64) -> Option<api::CursorReply> {
        match self
            .client
            .advance_cursor(&self.config.cursor, &self.config.holder, revision, self.config.cursor_hold)
            .await
        {
            Ok(cursor) => {
                if cursor.held_by_caller {
                    self.metrics.cursor_revision.set(cursor.revision as i64);
                }
                Some(cursor)
            }
            Err(error) => {
                warn!(%error, "cannot save the event cursor now");
                None
            }
        }
    }

    /// Publishes from `cursor + 1` while the hold lasts. `Ok` when the hold
    /// was lost; an error when the broker failed.
    async fn run_from(&self, mut cursor: u64) -> Result<(), PublishError> {
        'watch: loop {
            let mut events = self.client.watch(cursor + 1, None);
            let mut confirmed = cursor;
            let mut next_save = Instant::now() + self.config.cursor_save_interval;
            loop {
                let first = tokio::select! {
                    event = events.next() => event,
                    _ = tokio::time::sleep_until(next_save) => None,
                };
                let mut batch = Vec::new();
                match first {
                    Some(Ok(event)) => batch.push(event),
                    Some(Err(Error::Server {
                        code: tonic::Code::OutOfRange,
                        ..
                    })) => {
                        cursor = self.resync(confirmed).await?;
                        continue 'watch;
                    }
                    Some(Err(error)) => {
                        // The watch gave up (every replica failing): try again.
                        warn!(%error, "the event stream failed; resuming from the cursor");
                        tokio::time::sleep(self.config.cursor_save_interval).await;
                        cursor = confirmed;
                        continue 'watch;
                    }
                    None => {}
                }
                while batch.len() < PUBLISH_BATCH_MAX {
                    match events.next().now_or_never() {
                        Some(Some(Ok(event))) => batch.push(event),
                        _ => break,
                    }
                }
                if let Some(last) = self.publish_batch(&batch).await? {
                    confirmed = last;
                }
                if Instant::now() >= next_save {
                    next_save = Instant::now() + self.config.cursor_save_interval;
                    match self.claim(confirmed).await {
                        Some(saved) if !saved.held_by_caller => {
                            info!(holder = %saved.holder, "another bridge took the cursor; standing by");
                            return Ok(());
                        }
                        Some(_) => self.measure_lag(confirmed).await,
                        None => {}
                    }
                }
            }
        }
    }

    /// Publishes a batch and waits for the broker to confirm all of it; the
    /// last revision, confirmed.
    async fn publish_batch(&self, batch: &[api::EventMessage]) -> Result<Option<u64>, PublishError> {
        let mut confirms = Vec::with_capacity(batch.len());
        for event in batch {
            let confirm = self
                .channel
                .basic_publish(
                    EVENTS_EXCHANGE.into(),
                    "".into(),
                    BasicPublishOptions::default(),
                    &messages::event_body(event),
                    self.properties(event.revision, &event.r#type),
                )
                .await?;
            self.metrics.events_published.inc();
            confirms.push((event.revision, confirm));
        }
        let mut last = None;
        for (revision, confirm) in confirms {
            if !confirm.await?.is_ack() {
                return Err(PublishError::NotConfirmed { revision });
            }
            self.metrics.events_confirmed.inc();
            last = Some(revision);
        }
        Ok(last)
    }

    fn properties(&self, revision: u64, kind: &str) -> BasicProperties {
        let mut headers = FieldTable::default();
        headers.insert(REVISION_HEADER.into(), AMQPValue::LongLongInt(revision as i64));
        BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(PERSISTENT)
            .with_message_id(messages::event_message_id(&self.config.cluster_name, revision).to_string().into())
            .with_type(kind.into())
            .with_headers(headers)
    }

    /// The cluster no longer keeps the events after `cursor`: says so with
    /// a `resync_required` message carrying the system state, and returns
    /// the revision that state is at, to go on from.
    async fn resync(&self, cursor: u64) -> Result<u64, PublishError> {
        let state = loop {
            match self.client.system_state(Consistency::Linearizable).await {
                Ok(state) => break state,
                Err(error) => {
                    warn!(%error, "cannot read the system state for a resync; retrying");
                    tokio::time::sleep(self.config.cursor_save_interval).await;
                }
            }
        };
        let revision = state.revision;
        let state_json = match usage_from_proto(&state) {
            Ok(usage) => serde_json::to_value(usage).expect("usage always encodes"),
            Err(error) => serde_json::json!({ "error": error.to_string() }),
        };
        warn!(
            cursor,
            revision, "events after the cursor were compacted; publishing resync_required"
        );
        let body = messages::resync_body(&self.config.cluster_name, cursor, revision, state_json);
        let confirm = self
            .channel
            .basic_publish(
                EVENTS_EXCHANGE.into(),
                "".into(),
                BasicPublishOptions::default(),
                &body,
                self.properties(revision, "resync_required")
                    .with_message_id(format!("resync-{}-{cursor}-{revision}", self.config.cluster_name).into()),
            )
            .await?
            .await?;
        if !confirm.is_ack() {
            return Err(PublishError::NotConfirmed { revision });
        }
        self.metrics.resyncs.inc();
        self.claim(revision).await;
        Ok(revision)
    }

    async fn measure_lag(&self, confirmed: u64) {
        if let Ok(state) = self.client.system_state(Consistency::Stale).await {
            self.metrics.cursor_lag.set(state.revision.saturating_sub(confirmed) as i64);
        }
    }
}
