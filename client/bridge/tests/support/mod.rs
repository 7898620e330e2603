//! What the bridge tests share: an AMQP requester of the test's own (lapin,
//! none of the bridge's code), waiting for the bridge's topology, reading
//! the dead-letter queue, time bounds.

#![allow(dead_code)] // each test file uses its own part

use std::path::Path;
use std::time::Duration;

use futures::StreamExt;
use lapin::options::{BasicConsumeOptions, BasicGetOptions, BasicPublishOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, Consumer};
use serde_json::Value;
use uuid::Uuid;

/// Every test's whole run, at most.
pub const TEST_TIME_MAX: Duration = Duration::from_secs(180);
/// A reply not received by then is a failure.
pub const REPLY_WAIT_MAX: Duration = Duration::from_secs(30);

pub fn logs_in(dir: &Path) -> String {
    let mut text = String::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        text.push_str(&format!("--- {}\n", entry.path().display()));
        text.push_str(&std::fs::read_to_string(entry.path()).unwrap_or_default());
    }
    text
}

pub async fn bounded<T>(test: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(TEST_TIME_MAX, test)
        .await
        .unwrap_or_else(|_| panic!("the test did not finish within {TEST_TIME_MAX:?}"))
}

/// Waits until a bridge has declared the request queue (a message published
/// before would have no queue to go to).
/// `logs` says what the bridges printed, should none declare it.
pub async fn wait_for_topology(connection: &Connection, logs: impl Fn() -> String) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let channel = connection.create_channel().await.unwrap();
        let passive = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        if channel
            .queue_declare("resource_management.requests".into(), passive, FieldTable::default())
            .await
            .is_ok()
        {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no bridge declared the request queue:\n{}",
            logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A requester: a reply queue of its own, and calls matched by correlation id.
pub struct Requester {
    channel: Channel,
    reply_to: String,
    replies: Consumer,
}

impl Requester {
    pub async fn new(connection: &Connection) -> Requester {
        let channel = connection.create_channel().await.unwrap();
        let queue = channel
            .queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        let replies = channel
            .basic_consume(
                queue.name().clone(),
                "".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        Requester {
            channel,
            reply_to: queue.name().to_string(),
            replies,
        }
    }

    pub async fn send(&self, routing_key: &str, body: &[u8], correlation_id: &str) {
        let properties = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_reply_to(self.reply_to.as_str().into())
            .with_correlation_id(correlation_id.into());
        self.channel
            .basic_publish(
                "resource_management".into(),
                routing_key.into(),
                BasicPublishOptions::default(),
                body,
                properties,
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }

    /// The next reply, with its correlation id.
    pub async fn reply(&mut self) -> (String, Value) {
        let delivery = tokio::time::timeout(REPLY_WAIT_MAX, self.replies.next())
            .await
            .expect("a reply within the wait")
            .expect("the reply queue is open")
            .expect("a delivery");
        let correlation = delivery
            .properties
            .correlation_id()
            .as_ref()
            .map(|id| id.to_string())
            .unwrap_or_default();
        (correlation, serde_json::from_slice(&delivery.data).expect("the reply is JSON"))
    }

    pub async fn call(&mut self, routing_key: &str, body: &[u8]) -> Value {
        let correlation_id = Uuid::new_v4().to_string();
        self.send(routing_key, body, &correlation_id).await;
        let (correlation, reply) = self.reply().await;
        assert_eq!(correlation, correlation_id, "the reply carries the request's correlation id");
        reply
    }
}

/// Every message in the dead-letter queue now, as bodies.
pub async fn dead_letters(connection: &Connection) -> Vec<String> {
    let channel = connection.create_channel().await.unwrap();
    let mut bodies = Vec::new();
    while let Some(message) = channel
        .basic_get("resource_management.dead_letters".into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
    {
        bodies.push(String::from_utf8_lossy(&message.delivery.data).into_owned());
    }
    bodies
}
