//! [`WatchStream`]: the table's events, in revision order, across failovers.
//!
//! A background task holds one `Watch` stream on one replica. When that
//! replica fails (error, end of stream, unreachable, or paused: HTTP/2
//! keepalive pings go unanswered) the task moves to the
//! next replica and asks for `last_seen_revision + 1`, so nothing is skipped;
//! an event at or below the last revision delivered is dropped, so nothing is
//! delivered twice. Asking to start "from now" (revision 0) is turned into an
//! exact revision first (the replica's current revision + 1), so a failover
//! before the first event cannot lose events either.
//!
//! ```text
//!  replica A ──Watch(from)──▶ task ──dedupe by revision──▶ channel ──▶ WatchStream (caller)
//!      ✗ error / end           │
//!  replica B ◀──Watch(last_seen + 1)── backoff, next replica
//! ```

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::Stream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::debug;

use crate::client::{Client, ClientInner};
use crate::error::Error;
use crate::failure::Failure;
use crate::proto::api;
use crate::retry::Backoff;

/// Events buffered between the task and a slow consumer; when full the task
/// stops reading from the replica (backpressure), it never drops events.
pub const WATCH_BUFFER_EVENTS_MAX: usize = 1024;

/// A stream of events; ends with an error when it cannot go on (the revision
/// was compacted, retries ran out). Dropping it stops the background task.
#[derive(Debug)]
pub struct WatchStream {
    events: mpsc::Receiver<Result<api::EventMessage, Error>>,
    task: JoinHandle<()>,
}

impl WatchStream {
    pub(crate) fn start(inner: Arc<ClientInner>, from_revision: u64, namespace: String) -> WatchStream {
        let (sender, events) = mpsc::channel(WATCH_BUFFER_EVENTS_MAX);
        let task = tokio::spawn(
            Watcher {
                inner,
                namespace,
                next_revision: from_revision,
                sender,
            }
            .run(),
        );
        WatchStream { events, task }
    }
}

impl Stream for WatchStream {
    type Item = Result<api::EventMessage, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.events.poll_recv(cx)
    }
}

impl Drop for WatchStream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The background task's state.
struct Watcher {
    inner: Arc<ClientInner>,
    namespace: String,
    /// The first revision not delivered yet; 0 until it is resolved.
    next_revision: u64,
    sender: mpsc::Sender<Result<api::EventMessage, Error>>,
}

/// How one stream on one replica ended.
enum Ended {
    /// The consumer dropped the stream.
    ConsumerGone,
    /// A definite error: deliver it and stop.
    Final(Error),
    /// The replica failed; `progressed` when it delivered something first
    /// (so the retry budget starts over).
    Failed { cause: String, progressed: bool },
}

impl Watcher {
    async fn run(mut self) {
        let mut backoff = Backoff::from_config(&self.inner.config);
        let mut target = self.inner.replicas.first_target();
        loop {
            let cause = match self.watch_one(target).await {
                Ended::ConsumerGone => return,
                Ended::Final(error) => {
                    let _ = self.sender.send(Err(error)).await;
                    return;
                }
                Ended::Failed { cause, progressed } => {
                    if progressed {
                        backoff.reset();
                    }
                    cause
                }
            };
            // The replica may have left the cluster: read the membership again.
            self.inner.replicas.want_refresh();
            let Some(delay) = backoff.next_delay(&mut rand::thread_rng()) else {
                let attempts = backoff.retries() + 1;
                let _ = self
                    .sender
                    .send(Err(Error::Unavailable {
                        attempts,
                        last_cause: cause,
                    }))
                    .await;
                return;
            };
            target = self.inner.replicas.next_after(target);
            debug!(next = %self.inner.replicas.get(target).addr, from_revision = self.next_revision, cause = %cause, delay_ms = delay.as_millis() as u64, "watch failing over");
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = self.sender.closed() => return,
            }
        }
    }

    /// Streams from one replica until it fails or the consumer goes away.
    async fn watch_one(&mut self, target: usize) -> Ended {
        let replica = self.inner.replicas.get(target);
        let mut client = replica.client();
        let attempt_timeout = self.inner.config.attempt_timeout();
        let failed = |cause: String| Ended::Failed {
            cause: format!("{}: {cause}", replica.addr),
            progressed: false,
        };
        if self.next_revision == 0 {
            let mut request = tonic::Request::new(api::SystemStateRequest {
                stale: true,
                ..Default::default()
            });
            request.set_timeout(attempt_timeout);
            match tokio::time::timeout(attempt_timeout, client.system_state(request)).await {
                Ok(Ok(state)) => self.next_revision = state.into_inner().revision + 1,
                Ok(Err(status)) => return ended_by(&status, &replica.addr, false),
                Err(_) => return failed(format!("no system state within {} ms", attempt_timeout.as_millis())),
            }
        }
        // No grpc-timeout on the watch itself: it would end the stream. Only
        // opening it is bounded.
        let request = api::WatchRequest {
            from_revision: self.next_revision,
            namespace: self.namespace.clone(),
        };
        let mut stream = match tokio::time::timeout(attempt_timeout, client.watch(request)).await {
            Ok(Ok(response)) => response.into_inner(),
            Ok(Err(status)) => return ended_by(&status, &replica.addr, false),
            Err(_) => return failed(format!("watch not opened within {} ms", attempt_timeout.as_millis())),
        };
        let opened = Instant::now();
        let mut delivered = false;
        // A stream that delivered, or stayed up for a whole call deadline, was
        // healthy even if the table was quiet: its failure starts a new budget.
        let progressed = |delivered: bool| delivered || opened.elapsed() >= self.inner.config.request_timeout();
        loop {
            let message = tokio::select! {
                message = stream.message() => message,
                _ = self.sender.closed() => return Ended::ConsumerGone,
            };
            match message {
                Ok(Some(event)) if event.revision < self.next_revision => {
                    debug!(
                        revision = event.revision,
                        next_revision = self.next_revision,
                        "watch dropping a duplicate"
                    );
                }
                Ok(Some(event)) => {
                    self.next_revision = event.revision + 1;
                    delivered = true;
                    if self.sender.send(Ok(event)).await.is_err() {
                        return Ended::ConsumerGone;
                    }
                }
                Ok(None) => {
                    return Ended::Failed {
                        cause: format!("{}: the replica ended the stream", replica.addr),
                        progressed: progressed(delivered),
                    }
                }
                Err(status) => return ended_by(&status, &replica.addr, progressed(delivered)),
            }
        }
    }
}

fn ended_by(status: &tonic::Status, addr: &str, progressed: bool) -> Ended {
    match Failure::from_status(status) {
        Failure::Final(error) => Ended::Final(error),
        Failure::NotLeader { .. } => Ended::Failed {
            cause: format!("{addr}: {}", status.message()),
            progressed,
        },
        Failure::Retryable { cause, .. } => Ended::Failed {
            cause: format!("{addr}: {cause}"),
            progressed,
        },
    }
}

// Defined here rather than in client.rs so that client.rs needs nothing of
// this module: the dependency goes one way.
impl Client {
    /// Every event from `from_revision` on (0: only events from now on), then
    /// live ones, from any replica; on failover it resumes on another replica
    /// without gaps or duplicates. `namespace` limits allocation events to one
    /// namespace (provider events are always included).
    pub fn watch(&self, from_revision: u64, namespace: Option<&str>) -> WatchStream {
        WatchStream::start(self.inner.clone(), from_revision, namespace.unwrap_or_default().to_owned())
    }
}
