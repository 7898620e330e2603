//! The event stream: every event from a revision on, then live.
//!
//! Events are always read from the table's history, in revision order; a
//! change notification only says "look again". So a watcher that falls
//! behind, or a replica that installs a snapshot, never skips or repeats an
//! event: the stream continues from the last revision it sent. A watcher
//! more than the history's length behind gets `OUT_OF_RANGE` (compacted),
//! as etcd's watch does.
//!
//! With TLS a consumer watches its own namespace (whatever it asks for) and
//! a provider the events about allocations placed on it; provider-level
//! events are seen by every watcher, as `ListProviders` is.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use qm_api::convert;
use qm_api::proto::api::{EventMessage, WatchRequest};
use qm_state_machine::EventsError;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use crate::consensus::Node;
use crate::security::Caller;

/// Events buffered per watcher before the sender waits for the client.
pub const WATCH_BUFFER_EVENTS: usize = 1024;
/// Even without a notification, a watcher looks at the history this often
/// (covers snapshot installs, which replace the table without events).
pub const WATCH_POLL_INTERVAL_MS: u64 = 500;

pub type WatchStream = Pin<Box<dyn Stream<Item = Result<EventMessage, Status>> + Send + 'static>>;

pub fn watch(node: Arc<Node>, caller: Caller, call: WatchRequest) -> Result<WatchStream, Status> {
    let namespace = caller.namespace_for(&call.namespace)?;
    let namespace = (!namespace.is_empty()).then_some(namespace);
    let (sender, receiver) = mpsc::channel(WATCH_BUFFER_EVENTS);
    let mut changes = node.state.subscribe();
    tokio::spawn(async move {
        let mut next = match call.from_revision {
            0 => node.with_table(|table| table.revision()).await + 1,
            from => from,
        };
        loop {
            // One read of the table: the events to send and the last revision
            // looked at (filtered-out ones included), so nothing is skipped.
            let batch: Result<(Vec<EventMessage>, Option<u64>), EventsError> = node
                .with_table(|table| {
                    let mut last_seen = None;
                    let mut messages = Vec::new();
                    for event in table.events_from(next)? {
                        last_seen = Some(event.revision);
                        let in_namespace = namespace.is_none() || event.namespace().is_none() || event.namespace() == namespace.as_deref();
                        if in_namespace && caller.sees_event(event) {
                            messages.push(convert::event_to_proto(event));
                        }
                    }
                    Ok((messages, last_seen))
                })
                .await;
            match batch {
                Err(compacted) => {
                    let _ = sender.send(Err(Status::out_of_range(compacted.to_string()))).await;
                    return;
                }
                Ok((messages, last_seen)) => {
                    for message in messages {
                        if sender.send(Ok(message)).await.is_err() {
                            return;
                        }
                    }
                    if let Some(last_seen) = last_seen {
                        next = last_seen + 1;
                    }
                }
            }
            // Wait for a change (or the poll interval), whichever is first.
            tokio::select! {
                _ = changes.changed() => {}
                _ = tokio::time::sleep(Duration::from_millis(WATCH_POLL_INTERVAL_MS)) => {}
                _ = sender.closed() => return,
            }
        }
    });
    Ok(Box::pin(ReceiverStream::new(receiver)))
}
