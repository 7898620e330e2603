//! [`LogStore`]: openraft's `RaftLogStorage` on sled: the log, the vote and
//! the committed and last-purged log ids. [`LogReader`] is the read-only view
//! replication tasks use concurrently.
//!
//! The log tree maps an entry's index, as 8 big-endian bytes so that sled's
//! key order is index order, to the bincode of the whole entry. The meta tree
//! holds the vote, the committed log id and the last purged log id. See the
//! module docs of [`crate::storage`] for when each write is flushed and why.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{LogState, RaftLogReader, StorageIOError};
use serde::de::DeserializeOwned;

use super::durable::DurableFlush;
use super::{codec, raft_error, RaftStorageError, StorageError, LOG_TREE, META_TREE};
use crate::types::{Entry, LogId, TypeConfig, Vote};

/// Encoded bytes `limited_get_log_entries` returns at most (but always at
/// least one entry). openraft already caps a replication batch by entry count
/// (`max_payload_entries`); this caps it by size, so a batch of large
/// registrations stays well inside gRPC's default 4 MiB message limit.
pub const REPLICATION_BATCH_BYTES_MAX: usize = 1024 * 1024;

const KEY_VOTE: &[u8] = b"vote";
const KEY_COMMITTED: &[u8] = b"committed";
const KEY_LAST_PURGED: &[u8] = b"last_purged_log_id";

/// Reads log entries; cheap to clone (a sled tree is a shared handle), and
/// safe to use from many tasks while the [`LogStore`] writes.
#[derive(Clone)]
pub struct LogReader {
    log: sled::Tree,
}

/// The replica's log, vote and log pointers. Cloning shares the same trees;
/// openraft serialises the calls that write.
#[derive(Clone)]
pub struct LogStore {
    reader: LogReader,
    meta: sled::Tree,
    flush: DurableFlush,
}

// By hand: sled's `Debug` for a tree prints every key and value (and its
// `len` walks them all).
impl Debug for LogReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogReader").finish_non_exhaustive()
    }
}

impl Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogStore").finish_non_exhaustive()
    }
}

impl LogStore {
    /// Opens the trees and finishes a purge a crash interrupted: entries at
    /// or below the persisted last-purged log id are removed again.
    pub(crate) async fn open(db: &sled::Db, flush: DurableFlush) -> Result<LogStore, StorageError> {
        let store = LogStore {
            reader: LogReader {
                log: db.open_tree(LOG_TREE)?,
            },
            meta: db.open_tree(META_TREE)?,
            flush,
        };
        if let Some(last_purged) = store.read_meta::<LogId>(KEY_LAST_PURGED, "last purged log id")? {
            if store.remove_up_to(last_purged.index)? > 0 {
                store.flush.flush().await.map_err(StorageError::Sync)?;
            }
        }
        Ok(store)
    }

    fn read_meta<T: DeserializeOwned>(&self, key: &[u8], what: &'static str) -> Result<Option<T>, StorageError> {
        match self.meta.get(key)? {
            Some(bytes) => Ok(Some(codec::decode(&bytes, what)?)),
            None => Ok(None),
        }
    }

    /// Removes every entry with an index at or below `index`, atomically.
    /// Returns how many were removed.
    fn remove_up_to(&self, index: u64) -> Result<usize, StorageError> {
        let mut batch = sled::Batch::default();
        let mut removed = 0;
        for item in self.reader.log.range(..=index.to_be_bytes()) {
            let (key, _) = item?;
            batch.remove(key);
            removed += 1;
        }
        self.reader.log.apply_batch(batch)?;
        Ok(removed)
    }

    /// Removes every entry with an index at or above `index`, atomically, so
    /// a crash cannot leave a hole in the middle of the log.
    fn remove_from(&self, index: u64) -> Result<(), StorageError> {
        let mut batch = sled::Batch::default();
        for item in self.reader.log.range(index.to_be_bytes()..) {
            let (key, _) = item?;
            batch.remove(key);
        }
        self.reader.log.apply_batch(batch)?;
        Ok(())
    }

    /// Encodes the entries of one append into one atomic batch.
    /// The sled batch for `entries`, and how many there are.
    fn batch_of(entries: impl IntoIterator<Item = Entry>) -> (sled::Batch, usize) {
        let mut batch = sled::Batch::default();
        let mut count = 0;
        let mut previous: Option<u64> = None;
        for entry in entries {
            let index = entry.log_id.index;
            if let Some(previous) = previous {
                assert_eq!(index, previous + 1, "openraft appends consecutive entries");
            }
            let value = codec::encode(&entry);
            batch.insert(&index.to_be_bytes(), value);
            previous = Some(index);
            count += 1;
        }
        (batch, count)
    }
}

impl LogReader {
    /// Entries in `range`, in index order, stopping before the one that would
    /// take the encoded total past `bytes_max` (the first is always returned).
    fn read_entries(&self, range: impl RangeBounds<u64>, bytes_max: usize) -> Result<Vec<Entry>, StorageError> {
        let Some((start, end)) = index_bounds(&range) else {
            return Ok(Vec::new());
        };
        let items = match end {
            Some(end) => self.log.range(start.to_be_bytes()..end.to_be_bytes()),
            None => self.log.range(start.to_be_bytes()..),
        };
        let mut entries = Vec::new();
        let mut bytes = 0;
        for item in items {
            let (key, value) = item?;
            if !entries.is_empty() && bytes + value.len() > bytes_max {
                break;
            }
            bytes += value.len();
            let entry: Entry = codec::decode(&value, "log entry")?;
            assert_eq!(entry.log_id.index, index_of_key(&key), "a log entry is stored under its own index");
            entries.push(entry);
        }
        Ok(entries)
    }

    /// The log id of the last entry present, if any.
    fn last_log_id(&self) -> Result<Option<LogId>, StorageError> {
        match self.log.last()? {
            Some((key, value)) => {
                let entry: Entry = codec::decode(&value, "log entry")?;
                assert_eq!(entry.log_id.index, index_of_key(&key), "a log entry is stored under its own index");
                Ok(Some(entry.log_id))
            }
            None => Ok(None),
        }
    }
}

/// `range` as an inclusive start and an exclusive end (`None`: unbounded), or
/// `None` if it is empty.
fn index_bounds(range: &impl RangeBounds<u64>) -> Option<(u64, Option<u64>)> {
    let start = match range.start_bound() {
        Bound::Included(&start) => start,
        Bound::Excluded(&start) => start.checked_add(1)?,
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        // `..=u64::MAX` has no exclusive end; it is unbounded.
        Bound::Included(&end) => end.checked_add(1),
        Bound::Excluded(&end) => Some(end),
        Bound::Unbounded => None,
    };
    match end {
        Some(end) if start >= end => None,
        _ => Some((start, end)),
    }
}

fn index_of_key(key: &[u8]) -> u64 {
    u64::from_be_bytes(key.try_into().expect("log keys are 8 bytes"))
}

fn read_logs_error(error: &StorageError) -> RaftStorageError {
    raft_error(StorageIOError::read_logs, error)
}

fn write_logs_error(error: &(impl std::error::Error + 'static)) -> RaftStorageError {
    raft_error(StorageIOError::write_logs, error)
}

impl RaftLogReader<TypeConfig> for LogReader {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, RaftStorageError> {
        self.read_entries(range, usize::MAX).map_err(|error| read_logs_error(&error))
    }

    async fn limited_get_log_entries(&mut self, start: u64, end: u64) -> Result<Vec<Entry>, RaftStorageError> {
        self.read_entries(start..end, REPLICATION_BATCH_BYTES_MAX)
            .map_err(|error| read_logs_error(&error))
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, RaftStorageError> {
        self.reader.try_get_log_entries(range).await
    }

    async fn limited_get_log_entries(&mut self, start: u64, end: u64) -> Result<Vec<Entry>, RaftStorageError> {
        self.reader.limited_get_log_entries(start, end).await
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogReader;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, RaftStorageError> {
        let last_purged_log_id: Option<LogId> = self
            .read_meta(KEY_LAST_PURGED, "last purged log id")
            .map_err(|error| read_logs_error(&error))?;
        let last_present = self.reader.last_log_id().map_err(|error| read_logs_error(&error))?;
        // After purging everything the log is empty, and openraft expects the
        // last log id to be the last purged one. An entry below the purge
        // point only exists if one was appended there after the purge (which
        // openraft's storage suite does, not the protocol); it does not make
        // the log end before its purge point.
        let last_log_id = last_present.max(last_purged_log_id);
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> LogReader {
        self.reader.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), RaftStorageError> {
        self.meta
            .insert(KEY_VOTE, codec::encode(vote))
            .map_err(|error| raft_error(StorageIOError::write_vote, &error))?;
        // A vote forgotten after a crash lets this replica vote twice in a term.
        self.flush
            .flush()
            .await
            .map_err(|error| raft_error(StorageIOError::write_vote, &error))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, RaftStorageError> {
        self.read_meta(KEY_VOTE, "vote")
            .map_err(|error| raft_error(StorageIOError::read_vote, &error))
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), RaftStorageError> {
        // No flush of its own: the next append or vote flushes it. A lost
        // newest value only makes a restart re-apply less (see module docs).
        let result = match committed {
            Some(committed) => self.meta.insert(KEY_COMMITTED, codec::encode(&committed)),
            None => self.meta.remove(KEY_COMMITTED),
        };
        result.map(|_| ()).map_err(|error| write_logs_error(&error))
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, RaftStorageError> {
        self.read_meta(KEY_COMMITTED, "committed log id")
            .map_err(|error| read_logs_error(&error))
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), RaftStorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let (batch, entries) = LogStore::batch_of(entries);
        if let Err(error) = self.reader.log.apply_batch(batch) {
            let raft_error = write_logs_error(&error);
            callback.log_io_completed(Err(error.into()));
            return Err(raft_error);
        }
        // One flush for the whole call (group commit), and the callback only
        // after it: the callback tells the leader these entries count
        // towards a quorum, which a crash must not be able to undo.
        let flush_started = std::time::Instant::now();
        let flushed = self.flush.flush().await;
        tracing::debug!(entries, flush_us = flush_started.elapsed().as_micros() as u64, "log append flushed");
        match flushed {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(error) => {
                let raft_error = write_logs_error(&error);
                callback.log_io_completed(Err(error));
                Err(raft_error)
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), RaftStorageError> {
        self.remove_from(log_id.index).map_err(|error| write_logs_error(&error))?;
        self.flush.flush().await.map_err(|error| write_logs_error(&error))
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), RaftStorageError> {
        let previous: Option<LogId> = self
            .read_meta(KEY_LAST_PURGED, "last purged log id")
            .map_err(|error| read_logs_error(&error))?;
        if let Some(previous) = previous {
            assert!(previous.index <= log_id.index, "openraft only moves the purge point forward");
        }
        // The purge point is durable before any entry disappears, so a crash
        // can bring back purged entries (removed again on open) but never
        // leave a first entry that nothing accounts for.
        self.meta
            .insert(KEY_LAST_PURGED, codec::encode(&log_id))
            .map_err(|error| write_logs_error(&error))?;
        self.flush.flush().await.map_err(|error| write_logs_error(&error))?;
        // Not flushed: until the next flush, a crash only brings back entries
        // that open() removes again.
        // On a blocking thread: removing tens of thousands of entries takes
        // ~100 ms, which on a runtime worker would stall every other task of
        // the replica (its API, its replies to the leader) for that long.
        let started = std::time::Instant::now();
        let store = self.clone();
        let removed = tokio::task::spawn_blocking(move || store.remove_up_to(log_id.index))
            .await
            .map_err(|error| write_logs_error(&error))?
            .map_err(|error| write_logs_error(&error))?;
        tracing::info!(
            up_to = log_id.index,
            removed,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "log purged behind the snapshot"
        );
        Ok(())
    }
}
