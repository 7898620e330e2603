//! The storage's errors: [`StorageError`] for opening and reading, and
//! openraft's `RaftStorageError` that every trait method returns.

use std::path::PathBuf;

use crate::types::NodeId;

/// openraft's storage error, which every trait method returns.
pub(crate) type RaftStorageError = openraft::StorageError<NodeId>;

/// Wraps an error into openraft's storage error of the given kind, e.g.
/// `raft_error(StorageIOError::write_vote, &error)`.
pub(crate) fn raft_error(
    kind: impl FnOnce(openraft::AnyError) -> openraft::StorageIOError<NodeId>,
    error: &(impl std::error::Error + 'static),
) -> RaftStorageError {
    kind(openraft::AnyError::new(error)).into()
}

/// Why the storage could not be opened or read.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// Another process holds sled's exclusive lock on the data dir.
    #[error("data dir {} is in use by another qm-node (sled holds an exclusive lock on {}): {source}", .path.display(), .path.join("db").display())]
    DataDirInUse { path: PathBuf, source: sled::Error },
    #[error("cannot create data dir {}: {source}", .path.display())]
    CreateDir { path: PathBuf, source: std::io::Error },
    #[error("cannot open the sled database in data dir {}: {source}", .path.display())]
    Open { path: PathBuf, source: sled::Error },
    /// The data dir was written by a build with another layout.
    #[error("data dir {} has storage layout version {found}, this build reads {expected}", .path.display())]
    LayoutVersion { path: PathBuf, found: u32, expected: u32 },
    /// The data dir was written by a newer build: refused, never misread.
    #[error("data dir {} has storage layout version {found}, newer than this build reads ({expected}): run a newer qm-node, or restore a backup into a new data dir", .path.display())]
    NewerLayoutVersion { path: PathBuf, found: u32, expected: u32 },
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),
    #[error("cannot fsync the data dir's files: {0}")]
    Sync(#[source] std::io::Error),
    /// A stored value did not decode: the data dir is damaged or foreign.
    #[error("stored {what} does not decode: {reason}")]
    Decode { what: &'static str, reason: String },
    /// The stored snapshot's table did not decode.
    #[error("stored snapshot: {0}")]
    Snapshot(#[from] qm_state_machine::SnapshotError),
    #[error("storage task panicked or was cancelled: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// A file of the data dir could not be written (a full disk, a failing
    /// one): see [`crate::storage::fault`] for what the replica does then.
    #[error("cannot write {}: {source}", .path.display())]
    Write { path: PathBuf, source: std::io::Error },
    /// The storage of a server pass that has ended, written to afterwards.
    #[error("the data dir was closed (the replica is reopening or stopping)")]
    Closed,
}
