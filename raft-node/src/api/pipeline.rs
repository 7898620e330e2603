//! The `Pipeline` stream: Allocate, Release and RenewLease multiplexed on one
//! long-lived HTTP/2 stream, one message each way per call.
//!
//! Why: at 256 calls in flight, tonic and h2's per-call work (a stream opened
//! and closed, request headers decoded, response headers and trailers
//! encoded, a task per stream) was over half of the leader's CPU, more than
//! Raft, the log and the table together (BENCHMARKS.md, finding 15). On the
//! stream a call costs its two protobuf messages.
//!
//! Each call runs as its own task through the very function its unary call
//! runs (`requests::allocate`, `release`, `renew_lease`), so validation,
//! namespace scoping, leader checks and answers are the same, and calls from
//! one stream join the proposer's batches like any others. Answers go back in
//! the order calls finish, tagged with the caller's `call_id`; a refusal is a
//! [`CallStatus`] carrying what the unary status would have (code, message,
//! metadata such as the leader hint), so the client treats both alike.
//!
//! The stream is admitted once (`Call::Pipeline`, consumers only) and each
//! call on it is authorized again as itself, and audited as itself. At most
//! [`PIPELINE_CALLS_IN_FLIGHT_MAX`] calls of one stream run at once; past
//! that the stream is not read, and HTTP/2 flow control holds the client.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use qm_api::proto::api::pipelined_call::Call as PipelinedRequest;
use qm_api::proto::api::pipelined_reply::Outcome;
use qm_api::proto::api::{AllocationReply, CallStatus, PipelinedCall, PipelinedReply};
use qm_state_machine::InvalidArgument;
use tokio::sync::{mpsc, Semaphore};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};

use crate::api::audited::{self, CallIds};
use crate::api::requests;
use crate::api::status::invalid_argument;
use crate::consensus::Node;
use crate::security::audit::{AuditLog, Transport};
use crate::security::{Call, Caller, Guard};

/// Calls of one stream running at once at most; also the answers buffered
/// for a client that reads slowly.
pub const PIPELINE_CALLS_IN_FLIGHT_MAX: usize = 4_096;

pub type PipelineStream = Pin<Box<dyn Stream<Item = Result<PipelinedReply, Status>> + Send + 'static>>;

/// Serves one admitted stream until the client closes its side (then the
/// calls still running are answered and the stream ends) or goes away.
pub fn serve(node: Arc<Node>, guard: Guard, audit: Arc<AuditLog>, caller: Caller, mut calls: Streaming<PipelinedCall>) -> PipelineStream {
    let (answers, answered) = mpsc::channel(PIPELINE_CALLS_IN_FLIGHT_MAX);
    let caller = Arc::new(caller);
    tokio::spawn(async move {
        let in_flight = Arc::new(Semaphore::new(PIPELINE_CALLS_IN_FLIGHT_MAX));
        loop {
            let Ok(permit) = in_flight.clone().acquire_owned().await else {
                return;
            };
            let next = tokio::select! {
                next = calls.message() => next,
                // The client is gone: stop reading. Calls already running
                // finish (their commands may already be in the log).
                () = answers.closed() => return,
            };
            match next {
                Ok(Some(call)) => {
                    let (node, guard, audit, caller, answers) =
                        (node.clone(), guard.clone(), audit.clone(), caller.clone(), answers.clone());
                    tokio::spawn(async move {
                        let answer = answer(&node, &guard, &audit, &caller, call).await;
                        let _ = answers.send(Ok(answer)).await;
                        drop(permit);
                    });
                }
                Ok(None) => return,
                // A message that does not decode ends the stream with its status.
                Err(status) => {
                    let _ = answers.send(Err(status)).await;
                    return;
                }
            }
        }
    });
    Box::pin(ReceiverStream::new(answered))
}

/// Runs one call as its unary twin would and wraps the outcome.
async fn answer(node: &Node, guard: &Guard, audit: &AuditLog, caller: &Caller, call: PipelinedCall) -> PipelinedReply {
    let outcome = match call.call {
        Some(request) => {
            let (audited_call, ids) = match &request {
                PipelinedRequest::Allocate(request) => (Call::Allocate, request.call_ids()),
                PipelinedRequest::Release(request) => (Call::Release, request.call_ids()),
                PipelinedRequest::RenewLease(request) => (Call::RenewLease, request.call_ids()),
            };
            let outcome = run(node, guard, caller, request).await;
            audited::record(audit, Transport::GrpcPipeline, audited_call, caller, None, ids, &outcome);
            outcome
        }
        None => Err(invalid_argument(&InvalidArgument::new(
            "call",
            "is required: one of allocate, release, renew_lease",
        ))),
    };
    PipelinedReply {
        call_id: call.call_id,
        outcome: Some(match outcome {
            Ok(reply) => Outcome::Reply(reply),
            Err(status) => Outcome::Status(call_status(&status)),
        }),
    }
}

/// Authorizes the call as itself, then runs the unary call's function.
async fn run(node: &Node, guard: &Guard, caller: &Caller, request: PipelinedRequest) -> Result<AllocationReply, Status> {
    match request {
        PipelinedRequest::Allocate(request) => {
            guard.authorize(caller, Call::Allocate)?;
            requests::allocate(node, caller, request).await
        }
        PipelinedRequest::Release(request) => {
            guard.authorize(caller, Call::Release)?;
            requests::release(node, caller, request).await
        }
        PipelinedRequest::RenewLease(request) => {
            guard.authorize(caller, Call::RenewLease)?;
            requests::renew_lease(node, caller, request).await
        }
    }
}

/// A status as a message: its code, message and text metadata (the leader
/// hint, the invalid field).
pub fn call_status(status: &Status) -> CallStatus {
    let metadata = status
        .metadata()
        .clone()
        .into_headers()
        .iter()
        .filter_map(|(name, value)| Some((name.as_str().to_owned(), value.to_str().ok()?.to_owned())))
        .collect();
    CallStatus {
        code: status.code() as i32,
        message: status.message().to_owned(),
        metadata,
    }
}
