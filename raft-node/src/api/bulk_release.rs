//! `ReleaseMatching`: a bulk release by namespace, requester or provider.
//!
//! The table releases at most
//! [`BULK_RELEASE_PER_COMMAND_MAX`](qm_state_machine::limits::BULK_RELEASE_PER_COMMAND_MAX)
//! requests per log entry and answers where the next entry continues; this
//! handler proposes entries one after the other until the table says it is
//! done, or until the call's `entries_max` (at most
//! [`BULK_RELEASE_ENTRIES_PER_CALL_MAX`]) entries, when it
//! answers `next` for the caller to continue. Each entry is short, so
//! heartbeats, elections and other writes interleave with a million
//! releases.
//!
//! With TLS a consumer's bulk release is held to its namespace (named or
//! not); an admin's may name any; providers may not make this call (the
//! role table, [`Call::ReleaseMatching`](crate::security::Call)).

use qm_api::proto::api::{ReleaseMatchingReply, ReleaseMatchingRequest};
use qm_api::wire::BULK_RELEASE_ENTRIES_PER_CALL_MAX;
use qm_state_machine::{Command, CommandResponse, ReleaseFilter};
use tonic::Status;
use tracing::info;

use super::status::{invalid_argument, parse_uuid};
use crate::consensus::Node;
use crate::security::Caller;

pub async fn release_matching(node: &Node, caller: &Caller, call: ReleaseMatchingRequest) -> Result<ReleaseMatchingReply, Status> {
    let non_empty = |text: &str| (!text.is_empty()).then(|| text.to_owned());
    let namespace = match caller.namespace() {
        // A consumer's bulk release is always in its namespace, named or not.
        Some(_) => Some(caller.namespace_for(&call.namespace)?),
        None => non_empty(&call.namespace),
    };
    let filter = ReleaseFilter {
        namespace,
        requester_id: non_empty(&call.requester_id),
        provider_id: non_empty(&call.provider_id),
    };
    filter.check().map_err(|invalid| invalid_argument(&invalid))?;
    let mut after = match call.after.as_str() {
        "" => None,
        text => Some(parse_uuid("after", text)?),
    };
    let entries_max = match u64::from(call.entries_max) {
        0 => BULK_RELEASE_ENTRIES_PER_CALL_MAX,
        entries => entries.min(BULK_RELEASE_ENTRIES_PER_CALL_MAX),
    };
    node.require_leader()?;
    let mut reply = ReleaseMatchingReply::default();
    while reply.entries < entries_max {
        let command = Command::ReleaseMatching {
            filter: filter.clone(),
            after,
        };
        let (released, cancelled, next) = match node.propose(command).await? {
            CommandResponse::ReleasedMatching { released, cancelled, next } => (released, cancelled, next),
            other => return Err(Status::internal(format!("the table answered a bulk release with {other:?}"))),
        };
        reply.entries += 1;
        reply.released += released;
        reply.cancelled += cancelled;
        after = next;
        if after.is_none() {
            break;
        }
    }
    reply.next = after.map(|id| id.to_string()).unwrap_or_default();
    info!(
        operation_type = "release_matching",
        caller = %caller.describe(),
        ?filter,
        released = reply.released,
        cancelled = reply.cancelled,
        entries = reply.entries,
        "bulk release answered"
    );
    Ok(reply)
}
