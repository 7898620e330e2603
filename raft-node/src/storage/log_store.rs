//! [`LogStore`]: openraft's `RaftLogStorage` on sled: the log, the vote and
//! the committed and last-purged log ids. [`LogReader`] is the read-only view
//! replication tasks use concurrently.
//!
//! The log tree maps an entry's index, as 8 big-endian bytes so that sled's
//! key order is index order, to the bincode of the whole entry. The meta tree
//! holds the vote, the committed log id and the last purged log id. See the
//! module docs of [`crate::storage`] for when each write is flushed and why.
//!
//! Purging is two steps. `purge` makes the new purge point durable and hides
//! every entry at or below it from readers at once; a background task then
//! removes those entries in batches of [`PURGE_BATCH_ENTRIES`]. openraft's
//! core awaits `purge`, and removing a snapshot's worth of entries (15-20
//! thousand) in one sled batch took 140-200 ms, during which a follower
//! answered no AppendEntries and the leader's 100 ms replication deadline
//! passed. sled applies a batch under a lock that every other batch (every
//! append) waits for, so small batches also let appends through in between.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{LogState, RaftLogReader, StorageIOError};
use serde::de::DeserializeOwned;

use super::codec;
use super::db::{LOG_TREE, META_TREE};
use super::durable::DurableFlush;
use super::error::{raft_error, RaftStorageError, StorageError};
use crate::types::{Entry, LogId, TypeConfig, Vote};

/// Encoded bytes `limited_get_log_entries` returns at most (but always at
/// least one entry). openraft already caps a replication batch by entry count
/// (`max_payload_entries`); this caps it by size, so a batch of large
/// registrations stays well inside gRPC's default 4 MiB message limit.
pub const REPLICATION_BATCH_BYTES_MAX: usize = 1024 * 1024;

/// Entries one background purge step removes in one sled batch: small
/// enough that an append waiting behind it waits well under a millisecond.
pub const PURGE_BATCH_ENTRIES: usize = 256;

const KEY_VOTE: &[u8] = b"vote";
const KEY_COMMITTED: &[u8] = b"committed";
const KEY_LAST_PURGED: &[u8] = b"last_purged_log_id";

/// Reads log entries; cheap to clone (a sled tree is a shared handle), and
/// safe to use from many tasks while the [`LogStore`] writes.
#[derive(Clone)]
pub struct LogReader {
    log: sled::Tree,
    /// The lowest index readers may see: one past the purge point (0 before
    /// any purge). Entries below it may still be on disk until the purger
    /// reaches them.
    first_visible: Arc<AtomicU64>,
}

/// The replica's log, vote and log pointers. Cloning shares the same trees;
/// openraft serialises the calls that write.
#[derive(Clone)]
pub struct LogStore {
    reader: LogReader,
    meta: sled::Tree,
    flush: DurableFlush,
    purger: Arc<Purger>,
    truncations: TruncationCount,
}

/// How many truncations since this store was opened removed at least one
/// entry. A truncation removes entries a newer leader does not have, which
/// may include writes this replica appended as leader: the proposer compares
/// the count before and after a write to tell "refused, nothing happened"
/// from "appended, then truncated here, may still commit elsewhere"
/// (`crate::consensus::raft_writer`). Cheap to clone; clones share the count.
#[derive(Clone, Debug, Default)]
pub struct TruncationCount(Arc<AtomicU64>);

impl TruncationCount {
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }

    /// Counts one truncation; called before `truncate` returns, so before
    /// openraft answers the truncated entries' writers.
    fn record(&self) {
        self.0.fetch_add(1, Ordering::AcqRel);
    }
}

/// What the background purger works on. Its task holds only a `Weak` to
/// this between batches, so once the last [`LogStore`] is dropped the task
/// ends and keeps no handle that would hold the sled database (and its file
/// lock) open.
struct Purger {
    log: sled::Tree,
    /// The index to remove entries up to (`None`: nothing purged yet).
    up_to: tokio::sync::watch::Sender<Option<u64>>,
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
    /// Opens the trees and starts the background purger, which first
    /// finishes a purge that a crash (or a stop) interrupted: entries at or
    /// below the persisted last-purged log id are removed again. Must be
    /// called on a tokio runtime.
    pub(crate) async fn open(db: &sled::Db, flush: DurableFlush) -> Result<LogStore, StorageError> {
        let log = db.open_tree(LOG_TREE)?;
        let meta = db.open_tree(META_TREE)?;
        let last_purged = match meta.get(KEY_LAST_PURGED)? {
            Some(bytes) => Some(codec::decode::<LogId>(&bytes, "last purged log id")?.index),
            None => None,
        };
        let (up_to, targets) = tokio::sync::watch::channel(last_purged);
        let purger = Arc::new(Purger { log: log.clone(), up_to });
        tokio::spawn(run_purger(Arc::downgrade(&purger), targets));
        Ok(LogStore {
            reader: LogReader {
                log,
                first_visible: Arc::new(AtomicU64::new(last_purged.map_or(0, |index| index + 1))),
            },
            meta,
            flush,
            purger,
            truncations: TruncationCount::default(),
        })
    }

    /// The count of truncations that removed entries, shared with the proposer.
    pub fn truncations(&self) -> TruncationCount {
        self.truncations.clone()
    }

    /// The cluster id kept in this store's meta tree.
    pub fn cluster_identity(&self) -> Result<super::identity::ClusterIdentity, StorageError> {
        super::identity::ClusterIdentity::open(self.meta.clone(), self.flush.clone())
    }

    fn read_meta<T: DeserializeOwned>(&self, key: &[u8], what: &'static str) -> Result<Option<T>, StorageError> {
        match self.meta.get(key)? {
            Some(bytes) => Ok(Some(codec::decode(&bytes, what)?)),
            None => Ok(None),
        }
    }

    /// Removes every entry with an index at or above `index`, atomically, so
    /// a crash cannot leave a hole in the middle of the log. Returns how many
    /// it removed.
    fn remove_from(&self, index: u64) -> Result<usize, StorageError> {
        let mut batch = sled::Batch::default();
        let mut removed = 0;
        for item in self.reader.log.range(index.to_be_bytes()..) {
            let (key, _) = item?;
            batch.remove(key);
            removed += 1;
        }
        self.reader.log.apply_batch(batch)?;
        Ok(removed)
    }

    /// Writes the entries of one append so that a crash keeps all of them or
    /// none: one entry is one sled insert, which is atomic by itself; more
    /// go in one sled batch. Returns how many were written.
    ///
    /// Not a batch for one entry (every entry the leader proposes, and
    /// nearly every one a follower receives): sled's `apply_batch` writes
    /// out its IO buffer before the batch and again after the batch's
    /// manifest, each write waited for (`sync_file_range`), so an append
    /// took up to three disk writes before the flush's `fdatasync`. A single
    /// insert joins the buffer that the flush writes. Measured under load
    /// (BENCHMARKS.md, finding 18): 2.8 writes per flush on a follower
    /// before, 2.0 after.
    fn write_entries(&self, entries: impl IntoIterator<Item = Entry>) -> sled::Result<usize> {
        let mut encoded: Vec<(u64, Vec<u8>)> = Vec::new();
        for entry in entries {
            let index = entry.log_id.index;
            if let Some(&(previous, _)) = encoded.last() {
                assert_eq!(index, previous + 1, "openraft appends consecutive entries");
            }
            encoded.push((index, codec::encode(&entry)));
        }
        let count = encoded.len();
        match <[_; 1]>::try_from(encoded) {
            Ok([(index, value)]) => {
                self.reader.log.insert(index.to_be_bytes(), value)?;
            }
            Err(several) => {
                let mut batch = sled::Batch::default();
                for (index, value) in several {
                    batch.insert(&index.to_be_bytes(), value);
                }
                self.reader.log.apply_batch(batch)?;
            }
        }
        Ok(count)
    }
}

/// Removes purged entries in the background, oldest first, in batches of
/// [`PURGE_BATCH_ENTRIES`], each on a blocking thread. Nothing is flushed: a
/// crash only brings back entries below the durable purge point, which the
/// next start removes again. Ends when every [`LogStore`] is gone.
async fn run_purger(purger: Weak<Purger>, mut targets: tokio::sync::watch::Receiver<Option<u64>>) {
    // The first target (from open) counts as unseen, so a purge that a
    // crash interrupted is finished.
    targets.mark_changed();
    while targets.changed().await.is_ok() {
        let Some(up_to) = *targets.borrow_and_update() else {
            continue;
        };
        let started = std::time::Instant::now();
        let mut removed = 0;
        loop {
            // Stop between batches once the replica's store is gone: the
            // rest is removed on the next open.
            let Some(purger) = purger.upgrade() else {
                return;
            };
            match tokio::task::spawn_blocking(move || remove_batch_up_to(&purger.log, up_to)).await {
                Ok(Ok(0)) => break,
                Ok(Ok(count)) => removed += count,
                Ok(Err(error)) => {
                    // Harmless to leave: readers never see these entries, and
                    // the next purge or start tries again.
                    tracing::warn!(%error, up_to, "removing purged log entries failed");
                    break;
                }
                Err(join_error) => {
                    tracing::warn!(%join_error, up_to, "log purge step did not finish");
                    break;
                }
            }
        }
        if removed > 0 {
            tracing::info!(
                up_to,
                removed,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "log purged behind the snapshot"
            );
        }
    }
}

/// Removes the oldest entries at or below `index`, at most
/// [`PURGE_BATCH_ENTRIES`] of them, atomically. Returns how many it removed
/// (0: none are left).
fn remove_batch_up_to(log: &sled::Tree, index: u64) -> Result<usize, StorageError> {
    let mut batch = sled::Batch::default();
    let mut removed = 0;
    for item in log.range(..=index.to_be_bytes()).take(PURGE_BATCH_ENTRIES) {
        let (key, _) = item?;
        batch.remove(key);
        removed += 1;
    }
    if removed > 0 {
        log.apply_batch(batch)?;
    }
    Ok(removed)
}

impl LogReader {
    /// Entries in `range`, in index order, stopping before the one that would
    /// take the encoded total past `bytes_max` (the first is always returned).
    /// Entries at or below the purge point are never returned, even while
    /// they are still on disk.
    fn read_entries(&self, range: impl RangeBounds<u64>, bytes_max: usize) -> Result<Vec<Entry>, StorageError> {
        let Some((start, end)) = index_bounds(&range) else {
            return Ok(Vec::new());
        };
        let start = start.max(self.first_visible.load(Ordering::Acquire));
        if end.is_some_and(|end| start >= end) {
            return Ok(Vec::new());
        }
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
        let entries = match self.write_entries(entries) {
            Ok(entries) => entries,
            Err(error) => {
                let raft_error = write_logs_error(&error);
                callback.log_io_completed(Err(error.into()));
                return Err(raft_error);
            }
        };
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
        let removed = self.remove_from(log_id.index).map_err(|error| write_logs_error(&error))?;
        // Counted as soon as the entries are gone, before openraft answers
        // their writers (it does so after `truncate` returns).
        if removed > 0 {
            self.truncations.record();
        }
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
        // Hidden from readers now, removed from disk in the background (see
        // the module docs for why not here).
        self.reader.first_visible.store(log_id.index + 1, Ordering::Release);
        self.purger.up_to.send_replace(Some(log_id.index));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use openraft::storage::RaftLogStorageExt;
    use openraft::testing::log_id;
    use openraft::EntryPayload;

    use super::*;

    /// How long the purger may take to empty a few thousand entries.
    const PURGER_DEADLINE: Duration = Duration::from_secs(20);

    fn blank_entries(indexes: std::ops::RangeInclusive<u64>) -> Vec<Entry> {
        indexes
            .map(|index| Entry {
                log_id: log_id(1, 1, index),
                payload: EntryPayload::Blank,
            })
            .collect()
    }

    async fn wait_until_on_disk(log: &sled::Tree, count: usize) {
        let deadline = tokio::time::Instant::now() + PURGER_DEADLINE;
        while log.len() != count {
            assert!(tokio::time::Instant::now() < deadline, "{} entries still on disk", log.len());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Only a truncation that removes entries is counted: a write appended
    /// here can only have been removed by one of those.
    #[tokio::test]
    async fn truncations_that_remove_entries_are_counted() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (db, flush) = crate::storage::db::open_db(dir.path()).expect("sled opens");
        let mut store = LogStore::open(&db, flush).await.expect("log store opens");
        let truncations = store.truncations();
        store.blocking_append(blank_entries(1..=5)).await.expect("append");
        assert_eq!(0, truncations.get());

        // --- entries 4 and 5 removed: counted
        store.truncate(log_id(1, 1, 4)).await.expect("truncate");
        assert_eq!(1, truncations.get());
        assert_eq!(3, store.try_get_log_entries(..).await.expect("read").len());

        // --- nothing at or above 10: not counted
        store.truncate(log_id(1, 1, 10)).await.expect("truncate");
        assert_eq!(1, truncations.get());
    }

    /// `purge` hides the entries at once and the background purger removes
    /// them from disk, in many batches, while appends go on above them; a
    /// reopen finishes a purge that was cut short.
    #[tokio::test]
    async fn purged_entries_vanish_from_reads_at_once_and_from_disk_in_the_background() {
        let dir = tempfile::tempdir().expect("temp dir");
        let entries_total = 10 * PURGE_BATCH_ENTRIES as u64;
        let purge_point = entries_total - 100;
        {
            let (db, flush) = crate::storage::db::open_db(dir.path()).expect("sled opens");
            let mut store = LogStore::open(&db, flush).await.expect("log store opens");
            store.blocking_append(blank_entries(1..=entries_total)).await.expect("append");

            store.purge(log_id(1, 1, purge_point)).await.expect("purge");
            let visible = store.try_get_log_entries(..).await.expect("read");
            assert_eq!(purge_point + 1, visible[0].log_id.index, "nothing purged is readable");
            assert_eq!(100, visible.len());
            assert!(store.try_get_log_entries(..=purge_point).await.expect("read").is_empty());

            // --- appends go on while the purger works
            let next = entries_total + 1;
            store.blocking_append(blank_entries(next..=next + 9)).await.expect("append");
            wait_until_on_disk(&store.reader.log, 110).await;
            let state = store.get_log_state().await.expect("log state");
            assert_eq!(Some(log_id(1, 1, purge_point)), state.last_purged_log_id);
            assert_eq!(Some(log_id(1, 1, next + 9)), state.last_log_id);
        }

        // --- purged entries a crash brought back are hidden, then removed
        let (db, flush) = crate::storage::db::open_db(dir.path()).expect("sled opens");
        let log = db.open_tree(LOG_TREE).expect("tree");
        log.apply_batch({
            let mut batch = sled::Batch::default();
            for entry in blank_entries(1..=50) {
                batch.insert(&entry.log_id.index.to_be_bytes(), codec::encode(&entry));
            }
            batch
        })
        .expect("put purged entries back");
        let mut store = LogStore::open(&db, flush).await.expect("log store opens");
        assert_eq!(110, store.try_get_log_entries(..).await.expect("read").len());
        wait_until_on_disk(&log, 110).await;
    }
}
