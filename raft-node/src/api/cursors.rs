//! `AdvanceCursor`: a named cursor into the event history, kept in the log
//! so that whichever bridge process runs next resumes where the last one
//! got to (`qm_state_machine::Cursor`).
//!
//! With TLS a consumer's cursors live under its namespace
//! (`<namespace>.<name>`), so a bridge of one namespace can neither read nor
//! take another's.

use qm_api::proto::api::{AdvanceCursorRequest, CursorReply};
use qm_state_machine::{Command, CommandResponse};
use tonic::Status;

use crate::consensus::Node;
use crate::security::Caller;

pub async fn advance(node: &Node, caller: &Caller, call: AdvanceCursorRequest) -> Result<CursorReply, Status> {
    let name = match caller.namespace() {
        Some(namespace) => format!("{namespace}.{}", call.name),
        None => call.name,
    };
    node.require_leader()?;
    let command = Command::AdvanceCursor {
        name,
        holder: call.holder.clone(),
        revision: call.revision,
        hold_ms: call.hold_ms,
    };
    match node.propose(command).await? {
        CommandResponse::Cursor(cursor) => Ok(CursorReply {
            held_by_caller: cursor.holder == call.holder,
            name: cursor.name,
            holder: cursor.holder,
            revision: cursor.revision,
            held_until_ms: cursor.held_until_ms,
        }),
        other => Err(Status::internal(format!("the table answered a cursor advance with {other:?}"))),
    }
}
