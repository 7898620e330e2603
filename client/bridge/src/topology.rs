//! The broker objects the bridge declares, all durable, so that they, and
//! the messages in them, outlive a broker restart:
//!
//! ```text
//!  requester ──publish resource_request.<ns> / resource_release.<ns>──▶ resource_management (topic)
//!                                                                          │ resource_request.# , resource_release.#
//!                                                                          ▼
//!                                                    <queue> (default resource_management.requests)
//!                                                          │ rejected without requeue
//!                                                          ▼
//!                             resource_management.dlx (fanout) ──▶ resource_management.dead_letters
//!  bridge ──publish each event, persistent──▶ resource_events (fanout) ──▶ every subscriber's own queue
//!  bridge ──publish the reply──▶ "" (default exchange), routing key = the request's reply_to
//! ```
//!
//! Declaring is idempotent: several bridges declare the same objects with
//! the same arguments, in any order.

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, ExchangeKind};

use crate::messages::{RELEASE_KEY, REQUEST_KEY};

/// The protocol's topic exchange of requests.
pub const MANAGEMENT_EXCHANGE: &str = "resource_management";
/// The protocol's fanout exchange of events.
pub const EVENTS_EXCHANGE: &str = "resource_events";
/// Where rejected requests go: declared by the bridge, never deleted.
pub const DEAD_LETTER_EXCHANGE: &str = "resource_management.dlx";
/// The queue bound to the dead-letter exchange, so a dead letter is kept
/// until someone reads it.
pub const DEAD_LETTER_QUEUE: &str = "resource_management.dead_letters";
/// The bridges' shared request queue, unless told otherwise.
pub const DEFAULT_REQUEST_QUEUE: &str = "resource_management.requests";

fn durable_exchange() -> ExchangeDeclareOptions {
    ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    }
}

/// Declares every exchange and queue of the diagram, and the bindings.
pub async fn declare(channel: &Channel, request_queue: &str) -> lapin::Result<()> {
    channel
        .exchange_declare(
            MANAGEMENT_EXCHANGE.into(),
            ExchangeKind::Topic,
            durable_exchange(),
            FieldTable::default(),
        )
        .await?;
    channel
        .exchange_declare(
            EVENTS_EXCHANGE.into(),
            ExchangeKind::Fanout,
            durable_exchange(),
            FieldTable::default(),
        )
        .await?;
    channel
        .exchange_declare(
            DEAD_LETTER_EXCHANGE.into(),
            ExchangeKind::Fanout,
            durable_exchange(),
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_declare(DEAD_LETTER_QUEUE.into(), QueueDeclareOptions::durable(), FieldTable::default())
        .await?;
    channel
        .queue_bind(
            DEAD_LETTER_QUEUE.into(),
            DEAD_LETTER_EXCHANGE.into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let mut arguments = FieldTable::default();
    arguments.insert("x-dead-letter-exchange".into(), AMQPValue::LongString(DEAD_LETTER_EXCHANGE.into()));
    channel
        .queue_declare(request_queue.into(), QueueDeclareOptions::durable(), arguments)
        .await?;
    for key in [REQUEST_KEY, RELEASE_KEY] {
        channel
            .queue_bind(
                request_queue.into(),
                MANAGEMENT_EXCHANGE.into(),
                format!("{key}.#").into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    Ok(())
}
