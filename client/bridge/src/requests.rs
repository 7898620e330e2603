//! Requests in: each message on the request queue becomes one call to the
//! cluster, and its answer the protocol's `allocation_response` on the
//! message's `reply_to`.
//!
//! A message is acknowledged only once its reply is confirmed by the
//! broker, so a bridge killed at any point leaves the message to be
//! delivered again; the cluster's idempotency key (`request_id`) makes the
//! second call answer the first allocation instead of allocating twice.
//!
//! ```text
//!  delivery ──parse──▶ bad: reply rejected (naming the field) ─▶ reject, no requeue ─▶ resource_management.dlx
//!      │
//!      └──▶ allocate / release ──▶ answered: reply, confirmed ─▶ ack
//!                              ──▶ refused: reply rejected ─▶ dead-letter
//!                              ──▶ no leader, outcome unknown: wait (backoff) ─▶ requeue
//! ```

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions, BasicRejectOptions, ConfirmSelectOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection};
use qm_client::convert::response_from_reply;
use qm_client::proto::api;
use qm_client::{Client, Error};
use serde_json::Value;
use tokio::sync::Mutex;
use tracing::{debug, warn};

use crate::messages::{self, Action, RoutingKey};
use crate::metrics::Metrics;
use crate::BridgeConfig;

/// Longest wait before a request is put back for another try; the wait
/// doubles from [`REQUEUE_DELAY_MIN`] while the cluster keeps failing.
pub const REQUEUE_DELAY_MAX: Duration = Duration::from_secs(5);
/// First wait before a request is put back.
pub const REQUEUE_DELAY_MIN: Duration = Duration::from_millis(100);

/// What becomes of one delivery once the cluster has answered (or not).
#[derive(Debug)]
enum Disposition {
    /// Answered: acknowledge.
    Ack,
    /// Refused or unreadable: reject without requeue, to the dead-letter exchange.
    DeadLetter,
    /// The cluster could not take it now: requeue after a wait.
    Requeue,
}

/// The reply to send (if any) and what to do with the message then.
struct Outcome {
    reply: Option<Value>,
    disposition: Disposition,
}

impl Outcome {
    fn refused(reply: Value) -> Outcome {
        Outcome {
            reply: Some(reply),
            disposition: Disposition::DeadLetter,
        }
    }
}

/// Consumes the request queue until the connection fails; the error says why.
pub async fn serve(connection: &Connection, client: &Client, config: &Arc<BridgeConfig>, metrics: &Arc<Metrics>) -> lapin::Result<()> {
    let channel = connection.create_channel().await?;
    channel.basic_qos(config.prefetch, BasicQosOptions::default()).await?;
    channel.confirm_select(ConfirmSelectOptions::default()).await?;
    let mut consumer = channel
        .basic_consume(
            config.queue.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    // Consecutive cluster failures, for the requeue backoff: shared by the
    // handlers so a cluster without a leader slows every one of them.
    let failures = Arc::new(Mutex::new(0u32));
    while let Some(delivery) = consumer.next().await {
        let delivery = delivery?;
        let handler = Handler {
            channel: channel.clone(),
            client: client.clone(),
            config: config.clone(),
            metrics: metrics.clone(),
            failures: failures.clone(),
        };
        // At most `prefetch` deliveries are unacknowledged, so at most that
        // many handlers run at once.
        tokio::spawn(async move {
            if let Err(error) = handler.handle(delivery).await {
                // The channel is gone; the broker delivers the message again.
                debug!(%error, "a request's reply or acknowledgement failed");
            }
        });
    }
    Err(lapin::Error::from(lapin::ErrorKind::InvalidChannelState(
        lapin::ChannelState::Closed,
        "the request consumer ended",
    )))
}

struct Handler {
    channel: Channel,
    client: Client,
    config: Arc<BridgeConfig>,
    metrics: Arc<Metrics>,
    failures: Arc<Mutex<u32>>,
}

impl Handler {
    async fn handle(self, delivery: Delivery) -> lapin::Result<()> {
        if delivery.redelivered {
            self.metrics.redelivered.inc();
        }
        let key = RoutingKey::parse(delivery.routing_key.as_str());
        let action = match &key {
            Ok(RoutingKey {
                action: Action::Release, ..
            }) => "release",
            _ => "request",
        };
        let outcome = match key {
            Err(invalid) => Outcome::refused(messages::rejection(&delivery.data, &invalid)),
            Ok(key) => self.call(&key, &delivery.data).await,
        };
        if let (Some(reply), Some(reply_to)) = (&outcome.reply, delivery.properties.reply_to()) {
            let mut properties = BasicProperties::default().with_content_type("application/json".into());
            if let Some(correlation_id) = delivery.properties.correlation_id() {
                properties = properties.with_correlation_id(correlation_id.clone());
            }
            let body = serde_json::to_vec(reply).expect("a JSON value always encodes");
            let confirmation = self
                .channel
                .basic_publish("".into(), reply_to.clone(), BasicPublishOptions::default(), &body, properties)
                .await?
                .await?;
            if !confirmation.is_ack() {
                warn!(reply_to = %reply_to, "the broker refused a reply; the request stays queued");
                self.requeue_after(REQUEUE_DELAY_MIN, &delivery).await?;
                self.metrics.count_request(action, "requeued");
                return Ok(());
            }
        }
        match outcome.disposition {
            Disposition::Ack => {
                *self.failures.lock().await = 0;
                delivery.ack(BasicAckOptions::default()).await?;
                self.metrics.count_request(action, "replied");
            }
            Disposition::DeadLetter => {
                delivery.reject(BasicRejectOptions { requeue: false }).await?;
                self.metrics.dead_lettered.inc();
                self.metrics.count_request(action, "dead_lettered");
            }
            Disposition::Requeue => {
                let delay = {
                    let mut failures = self.failures.lock().await;
                    *failures = failures.saturating_add(1);
                    requeue_delay(*failures)
                };
                self.requeue_after(delay, &delivery).await?;
                self.metrics.count_request(action, "requeued");
            }
        }
        Ok(())
    }

    async fn requeue_after(&self, delay: Duration, delivery: &Delivery) -> lapin::Result<()> {
        tokio::time::sleep(delay).await;
        delivery
            .nack(BasicNackOptions {
                multiple: false,
                requeue: true,
            })
            .await
            .map(|_| ())
    }

    /// The cluster's answer to one well-routed message.
    async fn call(&self, key: &RoutingKey, body: &[u8]) -> Outcome {
        if let Some(refusal) = self.config.namespace_refusal(key.namespace.as_deref()) {
            return Outcome::refused(messages::refusal(body, Some("routing_key"), &refusal));
        }
        let answer = match key.action {
            Action::Request => match messages::parse_request(body, key.namespace.as_deref()) {
                Err(invalid) => return Outcome::refused(messages::rejection(body, &invalid)),
                Ok(request) => self.client.allocate(request).await,
            },
            Action::Release => match messages::parse_release(body) {
                Err(invalid) => return Outcome::refused(messages::rejection(body, &invalid)),
                Ok(id) => self.client.release(&id.to_string()).await,
            },
        };
        outcome_of(body, answer)
    }
}

/// How a call's result becomes a reply and a disposition.
fn outcome_of(body: &[u8], answer: Result<api::AllocationReply, Error>) -> Outcome {
    match answer {
        Ok(reply) => match response_from_reply(&reply) {
            Ok(response) => Outcome {
                reply: Some(serde_json::to_value(response).expect("a response always encodes")),
                disposition: Disposition::Ack,
            },
            // A reply this build cannot read: try again (another replica, a
            // later build) rather than lose the message.
            Err(error) => {
                warn!(%error, "the cluster's reply does not decode; requeueing");
                Outcome {
                    reply: None,
                    disposition: Disposition::Requeue,
                }
            }
        },
        Err(Error::InvalidArgument { field, reason }) => {
            Outcome::refused(messages::refusal(body, Some(&field), &format!("invalid {field}: {reason}")))
        }
        Err(error @ (Error::NotFound { .. } | Error::Conflict { .. } | Error::Rejected { .. })) => {
            Outcome::refused(messages::refusal(body, None, &error.to_string()))
        }
        Err(Error::Server {
            code: tonic::Code::PermissionDenied,
            message,
        }) => Outcome::refused(messages::refusal(body, Some("routing_key"), &message)),
        // Nothing happened, or it may have: the same request_id again is safe.
        Err(error) => {
            debug!(%error, "the cluster could not take a request now; requeueing");
            Outcome {
                reply: None,
                disposition: Disposition::Requeue,
            }
        }
    }
}

/// The wait before requeueing after `failures` consecutive cluster failures.
fn requeue_delay(failures: u32) -> Duration {
    let doubled = REQUEUE_DELAY_MIN.saturating_mul(1u32 << failures.saturating_sub(1).min(16));
    doubled.min(REQUEUE_DELAY_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_requeue_delay_doubles_up_to_its_bound() {
        assert_eq!(requeue_delay(1), REQUEUE_DELAY_MIN);
        assert_eq!(requeue_delay(2), REQUEUE_DELAY_MIN * 2);
        assert_eq!(requeue_delay(40), REQUEUE_DELAY_MAX);
    }

    #[test]
    fn refusals_are_dead_lettered_and_failures_requeued() {
        let refused = outcome_of(
            b"{}",
            Err(Error::InvalidArgument {
                field: "priority".into(),
                reason: "is required".into(),
            }),
        );
        assert!(matches!(refused.disposition, Disposition::DeadLetter));
        assert_eq!(refused.reply.unwrap()["field"], "priority");
        let unavailable = outcome_of(
            b"{}",
            Err(Error::Unavailable {
                attempts: 3,
                last_cause: "no leader".into(),
            }),
        );
        assert!(matches!(unavailable.disposition, Disposition::Requeue));
        assert!(unavailable.reply.is_none());
        let unknown = outcome_of(
            b"{}",
            Err(Error::Unknown {
                request_id: None,
                last_cause: "leader lost".into(),
            }),
        );
        assert!(matches!(unknown.disposition, Disposition::Requeue));
    }
}
