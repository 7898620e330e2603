//! What a replica does when its disk fails: out of space (`ENOSPC`) or
//! refusing writes (`EIO`).
//!
//! Every write that must be durable (an append, a vote, a truncation, a
//! purge point, a snapshot) returns its error to openraft, which stops the
//! Raft core with a fatal storage error: the replica acknowledges nothing it
//! did not persist, grants no vote it did not persist, and the other
//! replicas elect a leader and go on without it. What stays up is the
//! process, so that callers get a clear answer instead of a closed port.
//! [`StorageFault::from_fatal`] names the fault (the data dir, disk full
//! or not, the error); the server marks the replica NOT_SERVING, answers
//! calls with UNAVAILABLE naming it, exports it as a metric, and every
//! [`DISK_PROBE_INTERVAL_MS`] [`probe_disk`] writes and fsyncs
//! [`DISK_PROBE_BYTES`] in the data dir. Once a probe succeeds the server
//! stops this Raft instance and opens the data dir again, as a restart
//! would: what is on disk is what was flushed, and a new Raft instance
//! reads it as it reads a data dir after `kill -9`.
//!
//! ```text
//!  write fails ─▶ openraft: Fatal::StorageError ─▶ RaftMetrics.running_state = Err
//!      └─▶ server: NOT_SERVING, UNAVAILABLE "data dir … is full", qm_storage_failed 1
//!            └─▶ probe every second ─ ok ─▶ stop Raft, reopen the data dir, serve again
//! ```

use std::io::Write;
use std::path::{Path, PathBuf};

use openraft::error::Fatal;

use crate::types::NodeId;

/// How often a replica whose disk failed tries it again.
pub const DISK_PROBE_INTERVAL_MS: u64 = 1_000;
/// What a probe writes and fsyncs: enough for the reopened database to write
/// its first segments and a snapshot file of a small table, so that a disk
/// with only a few bytes free does not make the replica flap between
/// failed and serving.
pub const DISK_PROBE_BYTES: usize = 4 * 1024 * 1024;
/// The probe's file, in the data dir; removed after each probe.
pub const DISK_PROBE_FILE: &str = "disk-probe.tmp";
/// Free bytes under which the data dir's file system counts as full when a
/// write failed: sled writes in segments of 512 KiB, so a failed write with
/// less than one segment free is a full disk.
pub const DISK_FULL_FREE_BYTES_MAX: u64 = 1024 * 1024;

/// A replica's storage failed: its Raft core stopped on a storage error.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StorageFault {
    pub data_dir: PathBuf,
    /// The data dir's file system had (almost) no space left when the fault
    /// was seen.
    pub disk_full: bool,
    /// Bytes free on the data dir's file system then, when known.
    pub free_bytes: Option<u64>,
    /// openraft's fatal error, with the storage error it carries.
    pub error: String,
}

impl StorageFault {
    /// The fault `fatal` describes, if it is a storage error (a panicked or
    /// stopped core is not a disk fault).
    pub fn from_fatal(fatal: &Fatal<NodeId>, data_dir: &Path) -> Option<StorageFault> {
        let Fatal::StorageError(error) = fatal else { return None };
        let free_bytes = free_bytes(data_dir);
        Some(StorageFault {
            data_dir: data_dir.to_path_buf(),
            disk_full: free_bytes.is_some_and(|free| free < DISK_FULL_FREE_BYTES_MAX) || names_enospc(&error.to_string()),
            free_bytes,
            error: error.to_string(),
        })
    }
}

/// Whether an error's text carries ENOSPC: openraft keeps a storage error's
/// source only as text, where an `io::Error` shows as `… (os error 28)`
/// (Display) or `kind: StorageFull` (Debug). The free space, read when the
/// fault is seen, is the other witness; space freed since can hide it.
fn names_enospc(error: &str) -> bool {
    error.contains("(os error 28)") || error.contains("kind: StorageFull")
}

impl std::fmt::Display for StorageFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = match self.disk_full {
            true => "is full",
            false => "failed a write",
        };
        write!(
            f,
            "the disk of data dir {} {what} ({}; {}): this replica stopped acknowledging writes and linearizable reads, the others go on; it resumes by itself when the disk takes writes again",
            self.data_dir.display(),
            self.free_bytes.map_or("free space unknown".to_owned(), |free| format!("{free} bytes free")),
            self.error
        )
    }
}

/// What a caller is told when Raft stopped on `fatal`: the disk fault when
/// it is one, naming the data dir, else openraft's own words.
pub fn describe_fatal(fatal: &Fatal<NodeId>, data_dir: &Path) -> String {
    match StorageFault::from_fatal(fatal, data_dir) {
        Some(fault) => fault.to_string(),
        None => fatal.to_string(),
    }
}

/// Writes [`DISK_PROBE_BYTES`] to [`DISK_PROBE_FILE`] in `data_dir`, fsyncs
/// it and removes it: the disk takes writes again when this succeeds.
/// Blocking.
pub fn probe_disk(data_dir: &Path) -> std::io::Result<()> {
    let path = data_dir.join(DISK_PROBE_FILE);
    let written = std::fs::File::create(&path).and_then(|mut file| {
        file.write_all(&vec![0u8; DISK_PROBE_BYTES])?;
        file.sync_all()
    });
    // Removed whether or not it was written, so a failed probe does not
    // itself keep the space it took.
    let removed = std::fs::remove_file(&path);
    written?;
    removed
}

/// Bytes free to an unprivileged writer on the file system of `dir`.
pub fn free_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is a valid C string and `stat` a struct statvfs that
    // statvfs only writes into.
    if unsafe { libc::statvfs(path.as_ptr(), &mut stat) } != 0 {
        return None;
    }
    Some(stat.f_bavail as u64 * stat.f_frsize as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_probe_leaves_nothing_behind_and_fails_where_nothing_can_be_written() {
        let dir = tempfile::tempdir().expect("temp dir");
        probe_disk(dir.path()).expect("a healthy disk takes the probe");
        assert!(!dir.path().join(DISK_PROBE_FILE).exists());
        assert!(probe_disk(&dir.path().join("no-such-dir")).is_err());
        assert!(free_bytes(dir.path()).is_some_and(|free| free > 0));
    }

    #[test]
    fn only_a_storage_error_is_a_disk_fault_and_it_names_the_data_dir() {
        let dir = tempfile::tempdir().expect("temp dir");
        assert_eq!(None, StorageFault::from_fatal(&Fatal::Stopped, dir.path()));
        let io = std::io::Error::from_raw_os_error(libc::ENOSPC);
        let storage_error: openraft::StorageError<NodeId> = openraft::StorageIOError::write_logs(openraft::AnyError::new(&io)).into();
        let fault = StorageFault::from_fatal(&Fatal::StorageError(storage_error), dir.path()).expect("a storage fault");
        assert!(fault.disk_full, "ENOSPC is a full disk whatever the free space: {fault:?}");
        let text = fault.to_string();
        assert!(
            text.contains(&dir.path().display().to_string()) && text.contains("is full"),
            "{text}"
        );
    }
}
