//! [`PipelineSlot`]: the `Pipeline` stream to one replica, on which this
//! client's allocate, release and renew calls share one HTTP/2 stream.
//!
//! ```text
//!  callers ──(call_id, call)──▶ mpsc ──▶ request stream ─────▶ replica
//!     ▲                                                           │
//!     └── oneshot, found by call_id ◀── reader task ◀── reply stream
//! ```
//!
//! A unary call opens and closes an HTTP/2 stream, with request headers,
//! response headers and trailers; on the stream a call is one message each
//! way, which costs both ends far less CPU at high load (BENCHMARKS.md,
//! finding 15). What a caller sees does not change: a refusal comes back as
//! the status the unary call would have returned (code, message and
//! metadata, so leader hints and invalid fields read the same), and the
//! retry loop in `client.rs` handles both alike.
//!
//! The stream is opened on the first call to a replica and kept; when it
//! breaks (the replica stops, the connection drops) every call waiting on
//! it fails with the transport's error, exactly as unary calls in flight on
//! that connection would, and the next call opens a new one. Every replica
//! serves `Pipeline` (no version without it shipped); `pipeline_writes:
//! false` (`qm --no-pipeline`) sends each write as its own call instead.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::{MetadataKey, MetadataValue};
use tonic::transport::Channel;
use tonic::{Code, Status, Streaming};

use crate::proto::api::pipelined_call::Call as PipelinedRequest;
use crate::proto::api::pipelined_reply::Outcome;
use crate::proto::api::quartermaster_client::QuartermasterClient;
use crate::proto::api::{AllocationReply, CallStatus, PipelinedCall, PipelinedReply};

/// Calls queued for the request stream at most; past this, callers wait
/// (the replica reads at most `PIPELINE_CALLS_IN_FLIGHT_MAX` at once).
pub const PIPELINE_QUEUE_CALLS_MAX: usize = 4_096;

type Answer = Result<AllocationReply, Status>;

/// The pipeline to one replica, opened on first use. Shared by the clones
/// of a [`Replica`](crate::replicas::Replica).
#[derive(Debug, Default)]
pub(crate) struct PipelineSlot {
    state: Mutex<SlotState>,
    /// Held while a stream is being opened, so concurrent first calls open one.
    opening: tokio::sync::Mutex<()>,
}

#[derive(Debug, Default)]
enum SlotState {
    #[default]
    Closed,
    Open(Arc<Pipeline>),
}

impl PipelineSlot {
    /// The open pipeline, opening one if there is none (or the last broke).
    /// `Err`: the stream could not be opened, as a unary call would fail.
    /// `client` makes the stub to open it on, only when one is opened.
    pub(crate) async fn get_or_open(&self, client: impl FnOnce() -> QuartermasterClient<Channel>) -> Result<Arc<Pipeline>, Status> {
        if let Some(current) = self.current() {
            return Ok(current);
        }
        let _opening = self.opening.lock().await;
        if let Some(current) = self.current() {
            return Ok(current);
        }
        let pipeline = Pipeline::open(client()).await?;
        *self.lock() = SlotState::Open(pipeline.clone());
        Ok(pipeline)
    }

    /// The live pipeline, if there is one.
    fn current(&self) -> Option<Arc<Pipeline>> {
        match &*self.lock() {
            SlotState::Open(pipeline) if !pipeline.is_broken() => Some(pipeline.clone()),
            SlotState::Open(_) | SlotState::Closed => None,
        }
    }

    fn lock(&self) -> MutexGuard<'_, SlotState> {
        // Every change is one assignment: a poisoned lock is still consistent.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// One open stream. Dropping the last handle ends the request stream; the
/// replica then answers what is in flight and closes its side.
#[derive(Debug)]
pub(crate) struct Pipeline {
    calls: mpsc::Sender<PipelinedCall>,
    waiting: Arc<Waiting>,
}

/// The calls sent and not yet answered; shared with the reader task, which
/// must not keep the request stream open.
#[derive(Debug, Default)]
struct Waiting {
    calls: Mutex<WaitingCalls>,
}

#[derive(Debug, Default)]
struct WaitingCalls {
    next_call_id: u64,
    by_call_id: HashMap<u64, oneshot::Sender<Answer>>,
    /// Why the stream ended, once it has: later calls fail at once with it.
    broken: Option<Status>,
}

impl Waiting {
    fn lock(&self) -> MutexGuard<'_, WaitingCalls> {
        // Each change is a map insert or remove: poisoning leaves it consistent.
        self.calls.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Pipeline {
    async fn open(mut client: QuartermasterClient<Channel>) -> Result<Arc<Pipeline>, Status> {
        let (calls, queued) = mpsc::channel(PIPELINE_QUEUE_CALLS_MAX);
        let replies = client.pipeline(ReceiverStream::new(queued)).await?.into_inner();
        let waiting = Arc::new(Waiting::default());
        tokio::spawn(read_replies(replies, waiting.clone()));
        Ok(Arc::new(Pipeline { calls, waiting }))
    }

    fn is_broken(&self) -> bool {
        self.waiting.lock().broken.is_some()
    }

    /// Sends `call` and waits for its answer. Dropping the future (the
    /// attempt timed out) forgets the call; its answer is then ignored.
    pub(crate) async fn call(&self, call: PipelinedRequest) -> Answer {
        let (reply, answer) = oneshot::channel();
        let call_id = {
            let mut waiting = self.waiting.lock();
            if let Some(broken) = &waiting.broken {
                return Err(broken.clone());
            }
            let call_id = waiting.next_call_id;
            waiting.next_call_id += 1;
            waiting.by_call_id.insert(call_id, reply);
            call_id
        };
        let _forget = ForgetOnDrop {
            waiting: &self.waiting,
            call_id,
        };
        let sent = self.calls.send(PipelinedCall { call_id, call: Some(call) }).await;
        if sent.is_err() {
            return Err(stream_ended("the pipeline's request stream is closed"));
        }
        answer
            .await
            .unwrap_or_else(|_| Err(stream_ended("the pipeline ended without answering this call")))
    }
}

/// Removes an unanswered call from the waiting map when its caller stops waiting.
struct ForgetOnDrop<'a> {
    waiting: &'a Waiting,
    call_id: u64,
}

impl Drop for ForgetOnDrop<'_> {
    fn drop(&mut self) {
        self.waiting.lock().by_call_id.remove(&self.call_id);
    }
}

/// Hands each reply to its caller until the stream ends, then fails every
/// call still waiting with the reason.
async fn read_replies(mut replies: Streaming<PipelinedReply>, waiting: Arc<Waiting>) {
    let ended = loop {
        match replies.message().await {
            Ok(Some(reply)) => {
                let caller = waiting.lock().by_call_id.remove(&reply.call_id);
                if let Some(caller) = caller {
                    let _ = caller.send(answer_from(reply.outcome));
                }
            }
            Ok(None) => break stream_ended("the replica closed the pipeline stream"),
            Err(status) => break status,
        }
    };
    let orphans = {
        let mut waiting = waiting.lock();
        waiting.broken = Some(ended.clone());
        std::mem::take(&mut waiting.by_call_id)
    };
    for caller in orphans.into_values() {
        let _ = caller.send(Err(ended.clone()));
    }
}

/// A pipelined answer as the unary call would have returned it.
fn answer_from(outcome: Option<Outcome>) -> Answer {
    match outcome {
        Some(Outcome::Reply(reply)) => Ok(reply),
        Some(Outcome::Status(status)) => Err(status_from(status)),
        None => Err(Status::internal("the replica sent a pipelined reply without an outcome")),
    }
}

/// The status a replica sent as a message, rebuilt with its metadata (the
/// leader hint, the invalid field). Built here but not made here: it has no
/// source, as a status read off the wire has none.
pub(crate) fn status_from(sent: CallStatus) -> Status {
    let mut status = Status::new(Code::from_i32(sent.code), sent.message);
    for (key, value) in sent.metadata {
        if let (Ok(key), Ok(value)) = (MetadataKey::from_bytes(key.as_bytes()), MetadataValue::try_from(value)) {
            status.metadata_mut().insert(key, value);
        }
    }
    status
}

/// The stream ended under a call: like a connection lost mid-call, the
/// outcome is unknown. Made here, so it carries a source, which is how the
/// retry loop tells a broken transport from a replica's answer.
fn stream_ended(why: &str) -> Status {
    Status::from_error(Box::new(io::Error::new(io::ErrorKind::ConnectionAborted, why.to_owned())))
}

#[cfg(test)]
mod tests {
    use tonic::metadata::MetadataValue;

    use super::*;

    #[test]
    fn a_sent_status_comes_back_with_its_code_message_and_metadata() {
        let mut sent = Status::unavailable("not the leader; the leader is replica 2 at 127.0.0.1:7102");
        sent.metadata_mut()
            .insert("x-qm-leader-addr", MetadataValue::from_static("127.0.0.1:7102"));
        let message = CallStatus {
            code: sent.code() as i32,
            message: sent.message().to_owned(),
            metadata: [("x-qm-leader-addr".to_owned(), "127.0.0.1:7102".to_owned())].into(),
        };

        let rebuilt = status_from(message);

        assert_eq!(sent.code(), rebuilt.code());
        assert_eq!(sent.message(), rebuilt.message());
        assert_eq!(
            Some("127.0.0.1:7102"),
            rebuilt.metadata().get("x-qm-leader-addr").and_then(|value| value.to_str().ok())
        );
        assert!(
            std::error::Error::source(&rebuilt).is_none(),
            "a replica's answer, not a local failure"
        );
    }

    #[test]
    fn metadata_that_cannot_be_a_header_is_dropped_not_fatal() {
        let message = CallStatus {
            code: Code::InvalidArgument as i32,
            message: "invalid id: is required".to_owned(),
            metadata: [
                ("Not A Header".to_owned(), "x".to_owned()),
                ("x-qm-field".to_owned(), "id".to_owned()),
            ]
            .into(),
        };

        let rebuilt = status_from(message);

        assert_eq!(Code::InvalidArgument, rebuilt.code());
        assert_eq!(1, rebuilt.metadata().len());
    }

    #[test]
    fn a_broken_stream_reads_as_a_local_transport_failure() {
        let status = stream_ended("gone");

        assert!(std::error::Error::source(&status).is_some());
    }
}
