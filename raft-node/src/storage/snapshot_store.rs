//! [`SnapshotStore`]: the latest snapshot of the table, durable in sled.
//!
//! The `table_snapshot` tree holds one snapshot: key `meta` is a
//! [`SnapshotRecord`] (openraft's meta and the data's length) and key `data`
//! the table bytes. A save writes both in one atomic batch, so a reader sees
//! the old snapshot or the new one, never a mix.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::durable::DurableFlush;
use super::{codec, StorageError, SNAPSHOT_TREE};
use crate::types::SnapshotMeta;

const KEY_META: &[u8] = b"meta";
const KEY_DATA: &[u8] = b"data";

/// What the `meta` key holds.
#[derive(Debug, Serialize, Deserialize)]
struct SnapshotRecord {
    meta: SnapshotMeta,
    /// Checked against the data read back, so a damaged tree is reported
    /// rather than restored into a wrong table.
    data_bytes: u64,
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
        if let Some(stored) = self.read_record()? {
            if stored.meta.last_log_id >= meta.last_log_id {
                return Ok(SaveOutcome::KeptNewer);
            }
        }
        let record = SnapshotRecord {
            meta,
            data_bytes: data.len() as u64,
        };
        let mut batch = sled::Batch::default();
        batch.insert(KEY_META, codec::encode(&record));
        batch.insert(KEY_DATA, data);
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
    let data = tree.get(KEY_DATA)?.map(|data| data.to_vec()).unwrap_or_default();
    if data.len() as u64 != record.data_bytes {
        return Err(StorageError::Decode {
            what: "snapshot data",
            reason: format!("{} bytes stored, the record says {}", data.len(), record.data_bytes),
        });
    }
    Ok(Some(StoredSnapshot { meta: record.meta, data }))
}

#[cfg(test)]
mod tests {
    use openraft::testing::log_id;

    use super::*;

    fn meta_at(index: u64) -> SnapshotMeta {
        SnapshotMeta {
            last_log_id: Some(log_id(1, 1, index)),
            last_membership: Default::default(),
            snapshot_id: index.to_string(),
        }
    }

    /// openraft builds snapshots concurrently with installing one, so a build
    /// of an older state can finish last; it must not replace the newer one.
    #[tokio::test]
    async fn an_older_snapshot_never_replaces_a_newer_one() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (db, flush) = crate::storage::open_db(dir.path()).expect("sled opens");
        let store = SnapshotStore::open(&db, flush).expect("snapshot tree opens");
        let big = vec![10; 300 * 1024];

        // --- a newer snapshot, large enough for sled to keep it as a blob file
        assert_eq!(SaveOutcome::Saved, store.save(meta_at(10), big.clone()).await.expect("save"));

        // --- an older one arriving later is refused, the newer one kept whole
        assert_eq!(SaveOutcome::KeptNewer, store.save(meta_at(5), vec![5; 10]).await.expect("save"));
        let stored = store.load().await.expect("load").expect("a snapshot is stored");
        assert_eq!((meta_at(10), big), (stored.meta, stored.data));

        // --- a newer one replaces it
        assert_eq!(SaveOutcome::Saved, store.save(meta_at(12), vec![12; 10]).await.expect("save"));
        let stored = store.load().await.expect("load").expect("a snapshot is stored");
        assert_eq!((meta_at(12), vec![12; 10]), (stored.meta, stored.data));
    }
}
