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

use std::time::{Duration, Instant};

use qm_api::proto::api::{ReleaseMatchingReply, ReleaseMatchingRequest};
use qm_api::wire::BULK_RELEASE_ENTRIES_PER_CALL_MAX;
use qm_state_machine::{Command, CommandResponse, ReleaseFilter};
use tonic::Status;
use tracing::info;

use super::status::{invalid_argument, parse_uuid};
use crate::consensus::Node;
use crate::security::Caller;

/// How long one call goes on proposing entries before it answers with
/// `next`: half a client's default attempt timeout (2 s). Entries of 1,024
/// releases commit in tens of milliseconds on a quiet replica, but in a
/// table of a million on a loaded machine 32 of them took longer than the
/// attempt timeout, and the call was cut off with its outcome unknown. With
/// the budget a slow call answers its progress instead.
pub const BULK_RELEASE_CALL_BUDGET: Duration = Duration::from_millis(1_000);

/// Whether a call that has proposed `entries` entries over `elapsed` answers
/// now (the table not done yet): at `entries_max`, or once the budget is
/// spent; never before its first entry, so every call moves forward.
fn answers_now(entries: u64, entries_max: u64, elapsed: Duration) -> bool {
    entries >= entries_max || (entries > 0 && elapsed >= BULK_RELEASE_CALL_BUDGET)
}

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
    let started = Instant::now();
    let mut reply = ReleaseMatchingReply::default();
    while !answers_now(reply.entries, entries_max, started.elapsed()) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_answers_at_its_entry_bound_or_once_its_budget_is_spent_but_never_before_its_first_entry() {
        let quick = Duration::from_millis(1);
        assert!(!answers_now(0, 32, quick));
        assert!(!answers_now(31, 32, quick));
        assert!(answers_now(32, 32, quick));
        assert!(!answers_now(0, 32, BULK_RELEASE_CALL_BUDGET * 10));
        assert!(answers_now(1, 32, BULK_RELEASE_CALL_BUDGET));
        assert!(!answers_now(1, 32, BULK_RELEASE_CALL_BUDGET - quick));
    }
}
