//! # Durable storage of one replica
//!
//! openraft's two storage traits, on one sled database per replica:
//! [`LogStore`] (`RaftLogStorage`: the vote, the log, the committed and
//! purged pointers) and [`StateMachineStore`] (`RaftStateMachine`: the
//! [`AllocationTable`](qm_state_machine::AllocationTable) in memory, its
//! snapshots on disk). [`open`] returns both from a data directory.
//!
//! ```text
//!  RaftCore ─ append/vote/truncate/purge ─▶ LogStore ──┐
//!  replication tasks ─ read entries ──────▶ LogReader ─┤  sled::Db   <data_dir>/db (+ conf, blobs/)
//!  sm worker ─ apply ─▶ StateMachineStore ─────────────┘   ├─ raft_log        u64 BE index → bincode Entry
//!            snapshot ─┤   │                              └─ raft_meta       vote, committed, last purged, layout
//!                      └───┼──▶ <data_dir>/table.snapshot  meta, table bytes (written beside sled, not in it)
//!        API reads ◀── StateReader
//!        watchers  ◀── watch<revision>, then the table's event history
//! ```
//!
//! # Layout
//!
//! * [`log_store`]: [`LogStore`] and its [`LogReader`].
//! * [`state_machine_store`]: [`StateMachineStore`], [`AppliedState`],
//!   [`StateReader`].
//! * `snapshot_store`: the latest snapshot, durable in its own file.
//! * [`durable`]: [`DurableFlush`], the one way
//!   anything here becomes durable.
//! * `codec`: bincode 2 (standard configuration) for every stored value.
//!
//! # Durability rules, and why
//!
//! sled keeps writes in memory buffers until they are flushed; by default a
//! background thread flushes every 500 ms. Raft's safety needs more than
//! "soon": a replica that acknowledged an entry or granted a vote and then
//! forgot it after a crash can elect two leaders or lose a committed entry.
//! So the background flusher is turned off (`flush_every_ms(None)`) and every
//! durable point is explicit:
//!
//! * **append**: all entries of one call are written atomically (one entry:
//!   one sled insert; several: one sled batch, see
//!   [`log_store`] for why not always a batch), then flushed
//!   once (group commit), and only then is openraft's
//!   `LogFlushed` callback fired. Firing it before the flush (as some
//!   published examples do) lets the leader count an entry towards a quorum
//!   that a crash can still erase.
//! * **vote**: written and flushed before `save_vote` returns: a vote
//!   forgotten after a crash lets a replica vote twice in one term.
//! * **purge**: the new last-purged log id is flushed *before* any entry is
//!   removed, so a crash never leaves a log whose first entry is unexplained
//!   (a hole, from openraft's point of view). Readers stop seeing the purged
//!   entries at once; a background task removes them in small batches,
//!   unflushed. Entries a crash brings back below the purge point stay
//!   hidden and are removed again after the next open.
//! * **truncate**: removed (atomically) and flushed before returning, so
//!   conflicting entries the leader told us to drop cannot come back. Each
//!   truncation that removed entries is counted ([`TruncationCount`]) before
//!   it returns: the proposer reads the count to tell a write refused by a
//!   follower from one appended here and then truncated.
//! * **committed**: written without a flush of its own. It is only a hint of
//!   how far to re-apply on restart; the next flush (the next append or vote)
//!   carries it, and losing the newest value only means re-applying less and
//!   learning the rest from the leader. An fsync per commit would double the
//!   fsyncs of a busy leader.
//! * **snapshots**: written to a temporary file, fsynced, renamed over the
//!   snapshot file and the directory fsynced before
//!   `build_snapshot`/`install_snapshot` return, because openraft purges the
//!   log up to a snapshot right after; an older snapshot never replaces a
//!   newer one (building runs concurrently with installing). Not in sled:
//!   its one log would make every append's flush wait for the snapshot's
//!   megabytes (`snapshot_store`).
//!
//! `apply` itself writes nothing: the table lives in memory, and on restart it
//! is restored from the latest snapshot, after which openraft re-applies the
//! log up to the saved committed index.
//!
//! What sled 0.34.7's own `flush` does not cover, which [`DurableFlush`]
//! adds: on Linux sled syncs its data file with `sync_file_range`, which
//! persists neither the file's length nor the drive's write cache (so every
//! flush is followed by an `fdatasync`), and values or pages over about
//! 128 KiB go to blob files that sled never fsyncs (so new blob files are
//! fsynced before the log that points at them). See [`DurableFlush`] for the
//! small window that remains.
//!
//! Only one process may use a data directory: sled takes an exclusive `flock`
//! on `<data_dir>/db`, which [`open`] reports as [`StorageError::DataDirInUse`].
//! The kernel drops the lock when the process dies, even by `kill -9`.

pub mod background;
mod codec;
pub mod durable;
pub mod log_store;
mod snapshot_store;
pub mod state_machine_store;

use std::path::{Path, PathBuf};

use qm_state_machine::TableConfig;

use crate::types::NodeId;
use durable::DurableFlush;
pub use log_store::{LogReader, LogStore, TruncationCount};
pub use state_machine_store::{AppliedState, SnapshotRequests, StateMachineStore, StateReader};

/// sled's cache for hot pages. The log tail and the vote are what a replica
/// reads; the table itself lives in memory, so sled's default of 1 GiB would
/// mostly cache nothing useful.
pub const SLED_CACHE_BYTES: u64 = 64 * 1024 * 1024;

/// How often, and how far apart, [`open`] retries a data dir whose lock is
/// held, before reporting [`StorageError::DataDirInUse`]. A Db dropped in this
/// process keeps its lock until sled's IO threads (and the log's background
/// purger, for the one batch it may be removing) let go of it, a few
/// milliseconds; 25 × 20 ms covers that with a wide margin and still
/// reports a real conflict within half a second.
pub const DATA_DIR_LOCK_RETRIES: u32 = 25;
pub const DATA_DIR_LOCK_RETRY_INTERVAL_MS: u64 = 20;

/// The layout of the trees below. Bumped when it changes, so a build refuses
/// a data dir it would misread.
pub const STORAGE_LAYOUT_VERSION: u32 = 1;

/// Tree names.
pub(crate) const LOG_TREE: &str = "raft_log";
pub(crate) const META_TREE: &str = "raft_meta";

/// Keys of the meta tree.
pub(crate) const KEY_LAYOUT_VERSION: &[u8] = b"layout_version";

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
}

/// Opens (creating if needed) the storage of one replica in `data_dir`.
///
/// Restores the table from the latest stored snapshot, or starts an empty
/// one with `table_config` (a restored table keeps the config it was
/// snapshotted with, so that every replica behaves alike). Fails with
/// [`StorageError::DataDirInUse`] when another process has the dir open.
pub async fn open(data_dir: &Path, table_config: TableConfig) -> Result<(LogStore, StateMachineStore), StorageError> {
    let path = data_dir.to_path_buf();
    let (db, flush) = tokio::task::spawn_blocking(move || open_db(&path)).await??;
    let log_store = LogStore::open(&db, flush).await?;
    let state_machine = StateMachineStore::open(data_dir, table_config).await?;
    Ok((log_store, state_machine))
}

/// Opens sled with explicit flushing only; blocking (sled recovers the log on
/// open).
fn open_db(path: &Path) -> Result<(sled::Db, DurableFlush), StorageError> {
    std::fs::create_dir_all(path).map_err(|source| StorageError::CreateDir {
        path: path.to_path_buf(),
        source,
    })?;
    let mut lock_retries = 0;
    let db = loop {
        let config = sled::Config::new()
            .path(path)
            .mode(sled::Mode::HighThroughput)
            .cache_capacity(SLED_CACHE_BYTES)
            // Never rely on a timer for durability: every durable point flushes.
            .flush_every_ms(None);
        match config.open() {
            Ok(db) => break db,
            // sled's IO threads hold the lock for a moment after the last
            // handle of a Db in this process is dropped; a real conflict
            // with another process outlasts the retries.
            Err(source) if is_lock_conflict(&source) && lock_retries < DATA_DIR_LOCK_RETRIES => {
                lock_retries += 1;
                std::thread::sleep(std::time::Duration::from_millis(DATA_DIR_LOCK_RETRY_INTERVAL_MS));
            }
            Err(source) if is_lock_conflict(&source) => {
                return Err(StorageError::DataDirInUse {
                    path: path.to_path_buf(),
                    source,
                });
            }
            Err(source) => {
                return Err(StorageError::Open {
                    path: path.to_path_buf(),
                    source,
                })
            }
        }
    };
    check_layout_version(&db, path)?;
    let flush = DurableFlush::new(db.clone(), path)?;
    Ok((db, flush))
}

/// sled 0.34.7 reports a held lock only as an `io::Error` of kind `Other`
/// whose message starts "could not acquire lock" (`Config::try_lock`); the
/// version is pinned and a test opens a held data dir, so this match is safe.
fn is_lock_conflict(error: &sled::Error) -> bool {
    matches!(error, sled::Error::Io(io) if io.kind() == std::io::ErrorKind::Other
        && io.to_string().starts_with("could not acquire lock"))
}

/// Stamps a new data dir with [`STORAGE_LAYOUT_VERSION`] and refuses one
/// stamped with another.
fn check_layout_version(db: &sled::Db, path: &Path) -> Result<(), StorageError> {
    let meta = db.open_tree(META_TREE)?;
    match meta.get(KEY_LAYOUT_VERSION)? {
        Some(stored) => {
            let found: u32 = codec::decode(&stored, "storage layout version")?;
            if found != STORAGE_LAYOUT_VERSION {
                return Err(StorageError::LayoutVersion {
                    path: path.to_path_buf(),
                    found,
                    expected: STORAGE_LAYOUT_VERSION,
                });
            }
        }
        None => {
            // Made durable by the first flush; a crash before it leaves an
            // empty, unstamped dir, which is stamped again on the next open.
            meta.insert(KEY_LAYOUT_VERSION, codec::encode(&STORAGE_LAYOUT_VERSION))?;
        }
    }
    Ok(())
}
