//! [`DurableFlush`]: the one way a write here becomes durable.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::error::StorageError;

/// Makes every write made so far durable, covering what sled 0.34.7's own
/// `flush` leaves out:
///
/// 1. **Blob files.** sled stores any value or page larger than a quarter of
///    a segment (about 128 KiB with the default 512 KiB segments; a page of
///    16 medium entries gets there) in its own file under `blobs/`, written
///    but never fsynced, while the fsynced log points at it. Each new or
///    grown blob file is fsynced, then the `blobs/` directory, *before* the
///    log flush, so the pointer never becomes durable ahead of the data.
/// 2. **sled's flush**: writes its buffers and, on Linux, calls
///    `sync_file_range` on its data file, which persists the written pages
///    but neither the file's metadata (its length grows with the log) nor
///    the drive's volatile cache.
/// 3. **`fdatasync` of the data file**, which covers both. The fd is opened
///    read-only and never locked, so it does not disturb sled's `flock`.
///
/// What remains: a blob that sled writes for *another* thread between steps
/// 1 and 2 may be pointed at durably before it is fsynced (by that thread's
/// own flush, a moment later); a power loss in that window can leave sled
/// unable to read that page. A process crash (`kill -9`) loses nothing
/// flushed: the kernel has every byte.
#[derive(Clone)]
pub struct DurableFlush {
    inner: Arc<Inner>,
}

struct Inner {
    db: sled::Db,
    /// Named in every error, so that a full or failing disk is named too.
    data_dir: PathBuf,
    data_file: File,
    blobs_dir: PathBuf,
    /// Blob file name → length when it was last fsynced. A blob is fsynced
    /// again if its length changed (it was still being written when listed).
    synced_blobs: Mutex<BTreeMap<String, u64>>,
}

impl DurableFlush {
    /// `data_dir` is the directory sled was opened on; sled 0.34 keeps its
    /// log in `<data_dir>/db` and large values in `<data_dir>/blobs/`. The
    /// directory itself is fsynced once, so that those entries are durable.
    pub(crate) fn new(db: sled::Db, data_dir: &Path) -> Result<DurableFlush, StorageError> {
        let data_file = File::open(data_dir.join("db")).map_err(StorageError::Sync)?;
        sync_dir(data_dir).map_err(StorageError::Sync)?;
        let inner = Inner {
            db,
            data_dir: data_dir.to_path_buf(),
            data_file,
            blobs_dir: data_dir.join("blobs"),
            synced_blobs: Mutex::new(BTreeMap::new()),
        };
        Ok(DurableFlush { inner: Arc::new(inner) })
    }

    /// Makes every write made so far durable. Runs on the blocking pool: it
    /// waits for the disk.
    pub async fn flush(&self) -> io::Result<()> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.flush_blocking())
            .await
            .map_err(|join_error| io::Error::other(format!("flush task failed: {join_error}")))?
    }

    /// As [`Self::flush`], for callers already off the async runtime. An
    /// error names the data dir, and keeps the disk's own error (its kind,
    /// and its text with the OS error number) for the caller and
    /// [`crate::storage::fault`].
    pub fn flush_blocking(&self) -> io::Result<()> {
        self.flush_steps().map_err(|error| {
            io::Error::new(
                error.kind(),
                format!("flushing data dir {}: {error}", self.inner.data_dir.display()),
            )
        })
    }

    fn flush_steps(&self) -> io::Result<()> {
        self.sync_new_blobs()?;
        self.inner.db.flush().map_err(io::Error::from)?;
        self.inner.data_file.sync_data()
    }

    /// fsyncs blob files that are new or grew since the last call, then the
    /// blobs directory. Usually there are none, and this is one `readdir`.
    fn sync_new_blobs(&self) -> io::Result<()> {
        let mut synced = self.inner.synced_blobs.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let listing = match std::fs::read_dir(&self.inner.blobs_dir) {
            Ok(listing) => listing,
            // sled creates the directory on open; absent means no blobs.
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(error) => return Err(error),
        };
        let mut present = BTreeMap::new();
        let mut synced_any = false;
        for dir_entry in listing {
            let dir_entry = dir_entry?;
            let name = dir_entry.file_name().to_string_lossy().into_owned();
            let len = match dir_entry.metadata() {
                Ok(metadata) => metadata.len(),
                // sled removed it (garbage collection) since the listing.
                Err(error) if error.kind() == io::ErrorKind::NotFound => continue,
                Err(error) => return Err(error),
            };
            if synced.get(&name) != Some(&len) {
                match File::open(dir_entry.path()) {
                    Ok(file) => file.sync_all()?,
                    Err(error) if error.kind() == io::ErrorKind::NotFound => continue,
                    Err(error) => return Err(error),
                }
                synced_any = true;
            }
            present.insert(name, len);
        }
        if synced_any {
            sync_dir(&self.inner.blobs_dir)?;
        }
        // Forget blobs sled has removed, so the map stays as small as the dir.
        *synced = present;
        Ok(())
    }

    /// How many blob files are known to be fsynced; for tests.
    #[cfg(test)]
    fn synced_blob_count(&self) -> usize {
        self.inner.synced_blobs.lock().map(|synced| synced.len()).unwrap_or(0)
    }
}

/// fsync of a directory makes its entries (created, renamed files) durable.
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    /// A value over sled's inline limit lands in a blob file, which the
    /// flush fsyncs and then remembers.
    #[tokio::test]
    async fn flush_syncs_the_blob_files_sled_writes() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (db, flush) = crate::storage::db::open_db(dir.path()).expect("sled opens");
        let big_value_bytes = 512 * 1024;
        db.insert(b"big", vec![7u8; big_value_bytes]).expect("insert");

        flush.flush().await.expect("flush");

        let blobs = std::fs::read_dir(dir.path().join("blobs")).expect("blobs dir").count();
        assert!(blobs >= 1, "sled 0.34 stores a {big_value_bytes}-byte value as a blob file");
        assert_eq!(blobs, flush.synced_blob_count());
        drop(db);
        drop(flush);
    }
}
