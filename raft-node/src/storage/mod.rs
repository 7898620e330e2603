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
//! * [`durable`]: [`DurableFlush`](durable::DurableFlush), the one way
//!   anything here becomes durable.
//! * [`background`]: heavy work (snapshot encoding) on a thread of its own.
//! * [`db`]: opening sled (explicit flushing, the data dir's lock, the
//!   layout version) and the trees' names.
//! * [`error`]: [`StorageError`] and openraft's storage error.
//! * [`fault`]: what a replica does when its disk is full or fails writes
//!   (stop acknowledging, say why, probe, resume).
//! * `codec`: bincode 2 (standard configuration) for every stored value.
//! * [`identity`]: [`ClusterIdentity`], the cluster id in the meta tree.
//!
//! Imports go one way: `error` ← `codec`, `durable` ← `db`, `background`,
//! `snapshot_store` ← `log_store`, `state_machine_store` ← this file.
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
//! What sled 0.34.7's own `flush` does not cover, which [`DurableFlush`](durable::DurableFlush)
//! adds: on Linux sled syncs its data file with `sync_file_range`, which
//! persists neither the file's length nor the drive's write cache (so every
//! flush is followed by an `fdatasync`), and values or pages over about
//! 128 KiB go to blob files that sled never fsyncs (so new blob files are
//! fsynced before the log that points at them). See [`DurableFlush`](durable::DurableFlush) for the
//! small window that remains.
//!
//! Only one process may use a data directory: sled takes an exclusive `flock`
//! on `<data_dir>/db`, which [`open`] reports as [`StorageError::DataDirInUse`].
//! The kernel drops the lock when the process dies, even by `kill -9`.

pub mod background;
mod codec;
pub mod db;
pub mod durable;
pub mod error;
pub mod fault;
pub mod identity;
pub mod log_store;
mod snapshot_store;
pub mod state_machine_store;

use std::path::Path;

use qm_state_machine::TableConfig;

pub use db::{DATA_DIR_LOCK_RETRIES, DATA_DIR_LOCK_RETRY_INTERVAL_MS, SLED_CACHE_BYTES, STORAGE_LAYOUT_VERSION};
pub use error::StorageError;
pub use identity::ClusterIdentity;
pub use log_store::{LogReader, LogStore, TruncationCount};
pub use state_machine_store::{AppliedState, SnapshotRequests, StateMachineStore, StateReader};

/// Stores `table` (snapshot bytes) as the data dir's snapshot at `meta`,
/// durably: how `qm-node restore` seeds a new replica.
pub async fn save_restored_snapshot(data_dir: &Path, meta: crate::types::SnapshotMeta, table: Vec<u8>) -> Result<(), StorageError> {
    snapshot_store::SnapshotStore::open(data_dir).save(meta, table).await?;
    Ok(())
}

/// Opens (creating if needed) the storage of one replica in `data_dir`.
///
/// Restores the table from the latest stored snapshot, or starts an empty
/// one with `table_config` (a restored table keeps the config it was
/// snapshotted with, so that every replica behaves alike). Fails with
/// [`StorageError::DataDirInUse`] when another process has the dir open.
pub async fn open(data_dir: &Path, table_config: TableConfig) -> Result<(LogStore, StateMachineStore), StorageError> {
    let path = data_dir.to_path_buf();
    let started = std::time::Instant::now();
    let (db, flush) = tokio::task::spawn_blocking(move || db::open_db(&path)).await??;
    let log_store = LogStore::open(&db, flush).await?;
    let log_opened = started.elapsed();
    let state_machine = StateMachineStore::open(data_dir, table_config).await?;
    // Where a restart's time goes (issue 23): the log's sled database, then
    // the snapshot read and decoded into the table; openraft then applies
    // the committed entries after it (`raft started` in `server`).
    tracing::info!(
        sled_open_ms = log_opened.as_millis() as u64,
        snapshot_load_ms = (started.elapsed() - log_opened).as_millis() as u64,
        "storage opened"
    );
    Ok((log_store, state_machine))
}
