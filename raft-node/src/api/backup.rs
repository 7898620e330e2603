//! `SnapshotSave`: a backup of the whole table, from the leader, while the
//! cluster keeps serving.
//!
//! Linearizable: the read barrier confirms this replica leads and waits for
//! everything committed before the call to be applied, so the copy holds
//! every write acknowledged before the call began. The table is held still
//! only for [`AllocationTable::snapshot_copy`](qm_state_machine::AllocationTable::snapshot_copy)
//! (a copy of pointers); encoding and checksumming run on a blocking thread.

use std::pin::Pin;

use futures::Stream;
use qm_api::backup::{self, BackupHeader, BACKUP_CHUNK_BYTES};
use qm_api::proto::api::SnapshotChunk;
use qm_state_machine::table::SNAPSHOT_FORMAT_VERSION;
use tonic::Status;
use tracing::info;

use crate::consensus::Node;

pub type SnapshotSaveStream = Pin<Box<dyn Stream<Item = Result<SnapshotChunk, Status>> + Send + 'static>>;

pub async fn save(node: &Node) -> Result<SnapshotSaveStream, Status> {
    node.read_barrier(false).await?;
    let (copy, header) = {
        let state = node.state.read().await;
        let applied = state.last_applied();
        let header = BackupHeader {
            snapshot_format_version: SNAPSHOT_FORMAT_VERSION,
            revision: state.table().revision(),
            applied_index: applied.map_or(0, |log_id| log_id.index),
            applied_term: applied.map_or(0, |log_id| log_id.leader_id.term),
            created_by: node.id,
            created_at_ms: crate::clock::now_ms(),
            cluster_id: node.identity.get().unwrap_or_default(),
            members: state
                .last_membership()
                .membership()
                .nodes()
                .map(|(id, member)| (*id, member.addr.clone()))
                .collect(),
        };
        (state.table().snapshot_copy(), header)
    };
    let file = tokio::task::spawn_blocking(move || backup::encode(&header, &copy.to_snapshot_bytes()))
        .await
        .map_err(|error| Status::internal(format!("encoding the backup failed: {error}")))?;
    let total_bytes = file.len() as u64;
    info!(operation_type = "snapshot_save", bytes = total_bytes, "backup sent");
    let chunks: Vec<Result<SnapshotChunk, Status>> = file
        .chunks(BACKUP_CHUNK_BYTES)
        .map(|data| {
            Ok(SnapshotChunk {
                data: data.to_vec(),
                total_bytes,
            })
        })
        .collect();
    Ok(Box::pin(futures::stream::iter(chunks)))
}
