//! [`DurableFlush`]: the one way a write here becomes durable.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use super::StorageError;

/// Flushes sled and then fdatasyncs its data file.
///
/// sled 0.34.7's `flush` writes its buffers and, on Linux, calls
/// `sync_file_range`, which persists the written pages but neither the file's
/// metadata (its length grows with the log) nor the drive's volatile cache.
/// `fdatasync` on the same inode covers both; after sled's own sync it has
/// little data left to write. The fd is opened read-only and never locked, so
/// it does not disturb sled's `flock` on the same file.
#[derive(Clone)]
pub struct DurableFlush {
    db: sled::Db,
    data_file: Arc<File>,
}

impl DurableFlush {
    /// `data_dir` is the directory sled was opened on; sled 0.34 keeps all of
    /// its log in `<data_dir>/db`.
    pub(crate) fn new(db: sled::Db, data_dir: &Path) -> Result<DurableFlush, StorageError> {
        let data_file = File::open(data_dir.join("db")).map_err(StorageError::Sync)?;
        Ok(DurableFlush {
            db,
            data_file: Arc::new(data_file),
        })
    }

    /// Makes every write made so far durable. Runs on the blocking pool:
    /// both calls wait for the disk.
    pub async fn flush(&self) -> std::io::Result<()> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.flush_blocking())
            .await
            .map_err(|join_error| std::io::Error::other(format!("flush task failed: {join_error}")))?
    }

    /// As [`Self::flush`], for callers already off the async runtime.
    pub fn flush_blocking(&self) -> std::io::Result<()> {
        self.db.flush().map_err(std::io::Error::from)?;
        self.data_file.sync_data()
    }
}
