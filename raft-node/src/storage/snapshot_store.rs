//! [`SnapshotStore`]: the latest snapshot of the table, in a file of its own.
//!
//! `<data_dir>/table.snapshot` holds [`SNAPSHOT_FILE_MAGIC`], the length of a
//! bincode [`SnapshotRecord`] (openraft's meta and the data's length) as a
//! little-endian `u64`, the record, then the table bytes. A save writes
//! `table.snapshot.tmp`, fsyncs it, renames it over `table.snapshot` and
//! fsyncs the directory, so a reader, or a restart after a crash at any
//! point, sees the old snapshot or the new one, never a mix.
//!
//! Why not in sled, where snapshots were first kept: a snapshot is tens of
//! megabytes, and sled has one log for all its trees, so every log append's
//! flush queued behind the snapshot's write. Followers then missed the
//! leader's 100 ms AppendEntries deadline, and writes stalled for most of a
//! second at every snapshot (BENCHMARKS.md). A file of its own is written
//! and fsynced beside the log, not in front of it. It also goes to the disk
//! as it is written, [`SNAPSHOT_WRITEBACK_CHUNK_BYTES`] at a time with at
//! most two chunks in the device's queue, rather than all at the final
//! fsync: the log's own flushes, which callers wait for, then never queue
//! behind tens of megabytes (they took up to 76 ms during a snapshot).

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::codec;
use super::error::StorageError;
use crate::types::SnapshotMeta;

/// Starts writing the chunk just written (`(offset, len)` of `file`) to
/// disk, then waits until the chunk before it is written. Only pacing:
/// `sync_all` afterwards is what makes the file durable, so a refusal (or
/// another OS) changes nothing.
fn pace_writeback(file: &File, chunk: (usize, usize), previous_chunk: Option<(usize, usize)>) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let range = |flags, (offset, len): (usize, usize)| {
            // SAFETY: the descriptor is open for the call's duration; the
            // call reads no memory of ours.
            unsafe { libc::sync_file_range(file.as_raw_fd(), offset as i64, len as i64, flags) };
        };
        range(libc::SYNC_FILE_RANGE_WRITE, chunk);
        if let Some(previous_chunk) = previous_chunk {
            let wait = libc::SYNC_FILE_RANGE_WAIT_BEFORE | libc::SYNC_FILE_RANGE_WRITE | libc::SYNC_FILE_RANGE_WAIT_AFTER;
            range(wait, previous_chunk);
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (file, chunk, previous_chunk);
}

/// The first bytes of a snapshot file: what it is and its format's version.
pub(crate) const SNAPSHOT_FILE_MAGIC: &[u8; 8] = b"QMSNAP01";
/// The snapshot file, and the name it is written under before the rename.
pub(crate) const SNAPSHOT_FILE: &str = "table.snapshot";
const SNAPSHOT_TEMP_FILE: &str = "table.snapshot.tmp";
/// A record is a log id, a membership and a length: anything past this is a
/// damaged file, not a reason to allocate.
const SNAPSHOT_RECORD_BYTES_MAX: u64 = 1024 * 1024;
/// Bytes of the snapshot written before the kernel is asked to write them
/// to disk (as RocksDB's `bytes_per_sync` does); the save then waits for the
/// chunk before, so the final fsync has little left to do and the device
/// never holds more than two chunks of it.
pub const SNAPSHOT_WRITEBACK_CHUNK_BYTES: usize = 1024 * 1024;

/// What precedes the table bytes.
#[derive(Debug, Serialize, Deserialize)]
struct SnapshotRecord {
    meta: SnapshotMeta,
    /// Checked against the data read back, so a damaged file is reported
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

/// The latest snapshot on disk. Clones share the directory and the write lock.
#[derive(Clone)]
pub(crate) struct SnapshotStore {
    dir: PathBuf,
    /// Makes "is it newer than the stored one?" and the write one step:
    /// openraft builds snapshots in a spawned task, concurrently with
    /// installing one received from the leader.
    write_lock: Arc<tokio::sync::Mutex<()>>,
}

impl SnapshotStore {
    /// The store of the data dir `dir`.
    pub(crate) fn open(dir: &Path) -> SnapshotStore {
        SnapshotStore {
            dir: dir.to_path_buf(),
            write_lock: Arc::new(tokio::sync::Mutex::new(())),
        }
    }

    /// The stored snapshot, if any.
    pub(crate) async fn load(&self) -> Result<Option<StoredSnapshot>, StorageError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.load_blocking()).await?
    }

    /// Stores `data` as the latest snapshot, durably, unless the stored one
    /// is at least as new. Hands `data` back: the caller serves the same
    /// bytes to openraft, and a table's snapshot is hundreds of megabytes
    /// at a million allocations, too much to copy for the write.
    pub(crate) async fn save(&self, meta: SnapshotMeta, data: Vec<u8>) -> Result<(SaveOutcome, Vec<u8>), StorageError> {
        let _write = self.write_lock.lock().await;
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.save_blocking(meta, &data).map(|outcome| (outcome, data))).await?
    }

    fn save_blocking(&self, meta: SnapshotMeta, data: &[u8]) -> Result<SaveOutcome, StorageError> {
        if let Some(stored) = self.read_record()? {
            if stored.meta.last_log_id >= meta.last_log_id {
                return Ok(SaveOutcome::KeptNewer);
            }
        }
        let record = codec::encode(&SnapshotRecord {
            meta,
            data_bytes: data.len() as u64,
        });
        // openraft purges the log up to this snapshot as soon as we return:
        // the file, its name and the directory entry are all fsynced first.
        let temp = self.dir.join(SNAPSHOT_TEMP_FILE);
        let write = || -> io::Result<()> {
            let mut file = File::create(&temp)?;
            file.write_all(SNAPSHOT_FILE_MAGIC)?;
            file.write_all(&(record.len() as u64).to_le_bytes())?;
            file.write_all(&record)?;
            let mut written = SNAPSHOT_FILE_MAGIC.len() + 8 + record.len();
            let mut previous_chunk = None;
            for chunk in data.chunks(SNAPSHOT_WRITEBACK_CHUNK_BYTES) {
                file.write_all(chunk)?;
                pace_writeback(&file, (written, chunk.len()), previous_chunk);
                previous_chunk = Some((written, chunk.len()));
                written += chunk.len();
            }
            file.sync_all()?;
            std::fs::rename(&temp, self.dir.join(SNAPSHOT_FILE))?;
            File::open(&self.dir)?.sync_all()
        };
        if let Err(source) = write() {
            // A disk that filled up mid-write must not stay full of a
            // snapshot that will never be used: the replica could not
            // recover when space is freed elsewhere (storage::fault).
            let _ = std::fs::remove_file(&temp);
            return Err(StorageError::Write { path: temp, source });
        }
        Ok(SaveOutcome::Saved)
    }

    /// The stored snapshot's record, without reading its data.
    fn read_record(&self) -> Result<Option<SnapshotRecord>, StorageError> {
        match self.open_file()? {
            Some(mut file) => read_file_record(&mut file).map(Some),
            None => Ok(None),
        }
    }

    fn load_blocking(&self) -> Result<Option<StoredSnapshot>, StorageError> {
        let Some(mut file) = self.open_file()? else {
            return Ok(None);
        };
        let record = read_file_record(&mut file)?;
        let mut data = Vec::new();
        file.read_to_end(&mut data).map_err(StorageError::Sync)?;
        check_length(&record, &data)?;
        Ok(Some(StoredSnapshot { meta: record.meta, data }))
    }

    fn open_file(&self) -> Result<Option<File>, StorageError> {
        match File::open(self.dir.join(SNAPSHOT_FILE)) {
            Ok(file) => Ok(Some(file)),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(StorageError::Sync(error)),
        }
    }
}

/// Reads the magic and the record, leaving `file` at the table bytes.
fn read_file_record(file: &mut File) -> Result<SnapshotRecord, StorageError> {
    let damaged = |reason: String| StorageError::Decode {
        what: "snapshot file",
        reason,
    };
    let mut header = [0u8; 16];
    file.read_exact(&mut header).map_err(|error| damaged(format!("header: {error}")))?;
    if header[..6] == SNAPSHOT_FILE_MAGIC[..6] && header[..8] != SNAPSHOT_FILE_MAGIC[..] {
        return Err(damaged(format!(
            "snapshot file format {}, this build reads {}: written by another version of qm-node",
            String::from_utf8_lossy(&header[6..8]),
            String::from_utf8_lossy(&SNAPSHOT_FILE_MAGIC[6..])
        )));
    }
    if &header[..8] != SNAPSHOT_FILE_MAGIC {
        return Err(damaged(format!("starts with {:?}, not {:?}", &header[..8], SNAPSHOT_FILE_MAGIC)));
    }
    let record_bytes = u64::from_le_bytes(header[8..].try_into().expect("8 bytes"));
    if record_bytes > SNAPSHOT_RECORD_BYTES_MAX {
        return Err(damaged(format!(
            "a record of {record_bytes} bytes, at most {SNAPSHOT_RECORD_BYTES_MAX}"
        )));
    }
    let mut record = vec![0u8; record_bytes as usize];
    file.read_exact(&mut record).map_err(|error| damaged(format!("record: {error}")))?;
    codec::decode(&record, "snapshot record")
}

fn check_length(record: &SnapshotRecord, data: &[u8]) -> Result<(), StorageError> {
    if data.len() as u64 != record.data_bytes {
        return Err(StorageError::Decode {
            what: "snapshot data",
            reason: format!("{} bytes stored, the record says {}", data.len(), record.data_bytes),
        });
    }
    Ok(())
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
        let store = SnapshotStore::open(dir.path());
        let big = vec![10; 300 * 1024];

        // --- a newer snapshot
        assert_eq!(SaveOutcome::Saved, store.save(meta_at(10), big.clone()).await.expect("save").0);

        // --- an older one arriving later is refused, the newer one kept whole
        assert_eq!(SaveOutcome::KeptNewer, store.save(meta_at(5), vec![5; 10]).await.expect("save").0);
        let stored = store.load().await.expect("load").expect("a snapshot is stored");
        assert_eq!((meta_at(10), big), (stored.meta, stored.data));

        // --- a newer one replaces it
        assert_eq!(SaveOutcome::Saved, store.save(meta_at(12), vec![12; 10]).await.expect("save").0);
        let stored = store.load().await.expect("load").expect("a snapshot is stored");
        assert_eq!((meta_at(12), vec![12; 10]), (stored.meta, stored.data));
    }

    /// A damaged file is an error naming it, not an empty or wrong table.
    #[tokio::test]
    async fn a_damaged_snapshot_file_is_reported() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = SnapshotStore::open(dir.path());
        store.save(meta_at(3), vec![1; 100]).await.expect("save");
        let path = dir.path().join(SNAPSHOT_FILE);
        let bytes = std::fs::read(&path).expect("read");

        // --- cut short: the data is shorter than the record says
        std::fs::write(&path, &bytes[..bytes.len() - 1]).expect("write");
        let error = store.load().await.expect_err("damaged").to_string();
        assert!(error.contains("snapshot data"), "{error}");

        // --- another file altogether
        std::fs::write(&path, b"not a snapshot at all").expect("write");
        let error = store.load().await.expect_err("damaged").to_string();
        assert!(error.contains("snapshot file"), "{error}");
    }
}
