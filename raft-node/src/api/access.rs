//! Access to single records for a scoped [`Caller`]: a write or a
//! confirmation about a record the caller may not see is answered exactly as
//! for an id that does not exist, and never proposed.

use qm_state_machine::CommandError;
use tonic::Status;
use uuid::Uuid;

use super::status;
use crate::consensus::Node;
use crate::security::Caller;

/// `Ok` if `caller` may see the record with `id` (a request or allocation
/// id); `NOT_FOUND`, as the table answers for an unknown id, if it does not
/// exist or is another namespace's or provider's. An unscoped caller is not
/// checked: the table answers it.
///
/// A record not found is looked for again after a read barrier, so that one
/// the leader has committed but not applied yet is not refused.
pub async fn require_visible(node: &Node, caller: &Caller, id: Uuid) -> Result<(), Status> {
    if !caller.is_scoped() {
        return Ok(());
    }
    let visible = || node.with_table(|table| table.get(id).map(|record| caller.sees(record)));
    match visible().await {
        Some(true) => return Ok(()),
        Some(false) => return Err(not_found(id)),
        None => node.read_barrier(false).await?,
    }
    match visible().await {
        Some(true) => Ok(()),
        Some(false) | None => Err(not_found(id)),
    }
}

/// The table's answer for an id it does not know.
pub fn not_found(id: Uuid) -> Status {
    status::command_error(&CommandError::NotFound { id })
}
