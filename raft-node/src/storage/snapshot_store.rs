//! [`SnapshotStore`]: the latest snapshot of the table, durable in sled.
//!
//! The `table_snapshot` tree holds one snapshot: key `meta` is a
//! [`SnapshotRecord`] (openraft's meta, the data length, the chunk count) and
//! keys `data` + chunk number (u32 big-endian) hold the table bytes in chunks
//! of [`SNAPSHOT_CHUNK_BYTES`]. Chunks keep every value inline in sled's
//! fsynced data file (sled 0.34 never fsyncs the blob files it uses for large
//! values). A save is one atomic batch, so a reader sees the old snapshot or
//! the new one, never a mix.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::durable::DurableFlush;
use super::{codec, StorageError, SNAPSHOT_CHUNK_BYTES, SNAPSHOT_TREE};
use crate::types::SnapshotMeta;

const KEY_META: &[u8] = b"meta";
const CHUNK_KEY_PREFIX: &[u8] = b"data";

/// What the `meta` key holds.
#[derive(Debug, Serialize, Deserialize)]
struct SnapshotRecord {
    meta: SnapshotMeta,
    /// Checked against the chunks read back, so a damaged tree is reported
    /// rather than restored into a wrong table.
    data_bytes: u64,
    chunks: u32,
}

/// A snapshot read back from disk.
#[derive(Debug)]
pub(crate) struct StoredSnapshot {
    pub(crate) meta: SnapshotMeta,
    pub(crate) data: Vec<u8>,
}

/// Whether [`SnapshotStore::save`] replaced the stored snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SaveOutcome {
    Saved,
    /// The stored snapshot is at least as new: an equal one has the same
    /// bytes (the table is deterministic), an older one must never replace
    /// it because openraft may already have purged the log up to it.
    KeptNewer,
}

/// The latest snapshot on disk. Clones share the tree and the write lock.
#[derive(Clone)]
pub(crate) struct SnapshotStore {
    tree: sled::Tree,
    flush: DurableFlush,
    /// Makes "is it newer than the stored one?" and the write one step:
    /// openraft builds snapshots in a spawned task, concurrently with
    /// installing one received from the leader.
    write_lock: Arc<tokio::sync::Mutex<()>>,
}

impl SnapshotStore {
    pub(crate) fn open(db: &sled::Db, flush: DurableFlush) -> Result<SnapshotStore, StorageError> {
        Ok(SnapshotStore {
            tree: db.open_tree(SNAPSHOT_TREE)?,
            flush,
            write_lock: Arc::new(tokio::sync::Mutex::new(())),
        })
    }

    /// The stored snapshot, if any.
    pub(crate) async fn load(&self) -> Result<Option<StoredSnapshot>, StorageError> {
        let tree = self.tree.clone();
        tokio::task::spawn_blocking(move || load_blocking(&tree)).await?
    }

    /// Stores `data` as the latest snapshot and flushes, unless the stored one
    /// is at least as new.
    pub(crate) async fn save(&self, meta: SnapshotMeta, data: Vec<u8>) -> Result<SaveOutcome, StorageError> {
        let _write = self.write_lock.lock().await;
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.save_blocking(meta, data)).await?
    }

    fn save_blocking(&self, meta: SnapshotMeta, data: Vec<u8>) -> Result<SaveOutcome, StorageError> {
        let stored = self.read_record()?;
        if let Some(stored) = &stored {
            if stored.meta.last_log_id >= meta.last_log_id {
                return Ok(SaveOutcome::KeptNewer);
            }
        }
        let chunks = data.chunks(SNAPSHOT_CHUNK_BYTES);
        let chunk_count = u32::try_from(chunks.len()).expect("a snapshot has fewer than 2^32 chunks");
        let mut batch = sled::Batch::default();
        for (number, chunk) in (0..chunk_count).zip(chunks) {
            batch.insert(chunk_key(number), chunk);
        }
        // The previous snapshot may have had more chunks.
        for stale in chunk_count..stored.map_or(0, |stored| stored.chunks) {
            batch.remove(chunk_key(stale));
        }
        let record = SnapshotRecord {
            meta,
            data_bytes: data.len() as u64,
            chunks: chunk_count,
        };
        batch.insert(KEY_META, codec::encode(&record));
        self.tree.apply_batch(batch)?;
        // openraft purges the log up to this snapshot as soon as we return.
        self.flush.flush_blocking().map_err(StorageError::Sync)?;
        Ok(SaveOutcome::Saved)
    }

    fn read_record(&self) -> Result<Option<SnapshotRecord>, StorageError> {
        read_record(&self.tree)
    }
}

fn read_record(tree: &sled::Tree) -> Result<Option<SnapshotRecord>, StorageError> {
    match tree.get(KEY_META)? {
        Some(bytes) => Ok(Some(codec::decode(&bytes, "snapshot record")?)),
        None => Ok(None),
    }
}

fn load_blocking(tree: &sled::Tree) -> Result<Option<StoredSnapshot>, StorageError> {
    let Some(record) = read_record(tree)? else {
        return Ok(None);
    };
    let damaged = |reason: String| StorageError::Decode {
        what: "snapshot data",
        reason,
    };
    let mut data = Vec::with_capacity(usize::try_from(record.data_bytes).unwrap_or(0));
    let mut chunks = 0u32;
    // Big-endian chunk numbers: sled's key order is chunk order.
    for item in tree.scan_prefix(CHUNK_KEY_PREFIX) {
        let (key, chunk) = item?;
        if key.as_ref() != chunk_key(chunks).as_slice() {
            return Err(damaged(format!("expected chunk {chunks}, found key {:?}", key.as_ref())));
        }
        data.extend_from_slice(&chunk);
        chunks += 1;
    }
    if chunks != record.chunks || data.len() as u64 != record.data_bytes {
        return Err(damaged(format!(
            "{chunks} chunks of {} bytes stored, the record says {} chunks of {} bytes",
            data.len(),
            record.chunks,
            record.data_bytes
        )));
    }
    Ok(Some(StoredSnapshot { meta: record.meta, data }))
}

fn chunk_key(number: u32) -> Vec<u8> {
    [CHUNK_KEY_PREFIX, &number.to_be_bytes()].concat()
}
