//! [`StateMachineStore`]: openraft's `RaftStateMachine` and
//! `RaftSnapshotBuilder` over the [`AllocationTable`].
//!
//! The table lives in memory as [`AppliedState`] behind a tokio `RwLock`;
//! `apply` writes nothing to disk. Snapshots are durable
//! (`SnapshotStore`), and on open the table is restored from the latest
//! one; openraft then re-applies the log from there up to the saved committed
//! index.
//!
//! The API reads the table through a [`StateReader`]. Watchers follow
//! changes by subscribing to the table's revision (a tokio `watch` channel,
//! bumped once per applied batch and after a snapshot install) and then read
//! the events themselves from the table's history
//! (`AllocationTable::events_from`). The events are not copied into a channel:
//! they are already in the history, and copying every event of every command
//! for a handful of watchers cost more than the watchers did.
//!
//! What watchers must know:
//!
//! * After a restart, re-applied entries emit their events again, with the
//!   same revisions: watchers resume from the revision after the last they sent.
//! * Installing a snapshot replaces the table and its history; the revision
//!   may jump, and a watcher too far behind the kept history is told so.

use std::io::Cursor;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use openraft::storage::RaftStateMachine;
use openraft::{EntryPayload, RaftSnapshotBuilder, Snapshot, StorageIOError};
use qm_state_machine::{AllocationTable, TableConfig};
use tokio::sync::{watch, Notify, RwLock, RwLockReadGuard};

use super::background;
use super::error::{raft_error, RaftStorageError, StorageError};
use super::snapshot_store::{SaveOutcome, SnapshotStore};
use crate::metrics::ApplyDurations;
use crate::types::{AppResponse, Entry, LogId, SnapshotMeta, StoredMembership, TypeConfig};

/// The table and the log position it reflects.
#[derive(Debug)]
pub struct AppliedState {
    table: AllocationTable,
    /// The last entry applied to `table`; `None` before the first.
    last_applied: Option<LogId>,
    /// The membership of the last applied membership entry.
    last_membership: StoredMembership,
}

impl AppliedState {
    pub fn table(&self) -> &AllocationTable {
        &self.table
    }

    pub fn last_applied(&self) -> Option<LogId> {
        self.last_applied
    }

    pub fn last_membership(&self) -> &StoredMembership {
        &self.last_membership
    }
}

/// Read-only access to the applied state and its events, for the API.
/// Cheap to clone.
#[derive(Clone)]
pub struct StateReader {
    state: Arc<RwLock<AppliedState>>,
    revisions: watch::Sender<u64>,
    apply_durations: ApplyDurations,
}

impl StateReader {
    /// How long each command took to apply here, for `/metrics`.
    pub fn apply_durations(&self) -> &ApplyDurations {
        &self.apply_durations
    }

    /// A consistent view of the table. Do not hold it across slow work:
    /// applying entries waits for it.
    pub async fn read(&self) -> RwLockReadGuard<'_, AppliedState> {
        self.state.read().await
    }

    /// The table's revision, changed whenever applied commands (or an
    /// installed snapshot) change it; read the events from the table.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.revisions.subscribe()
    }
}

/// Asks for a snapshot once enough work was applied since the last one:
/// enough commands, or enough time spent applying them.
///
/// openraft's own policy counts entries, and an entry is a batch of 1 to 512
/// commands (`proposer`): counted in entries, a lightly loaded replica
/// snapshots hundreds of times as often as a busy one for the same work, and
/// a busy one lets its log and its restart grow that much longer. Counted in
/// commands, the log behind the latest snapshot holds about the same work
/// whatever the load. Counted in apply time as well, what a restart applies
/// again takes about as long whatever the table's size (a command costs
/// more in a larger table). openraft still snapshots every
/// `--snapshot-every-entries` as well; this asks through
/// [`SnapshotRequests`], which the replica turns into
/// `raft.trigger().snapshot()`.
///
/// Only the sm worker applies, so the counters have one writer each: apply
/// adds to them (under the table's write lock), a snapshot build marks
/// where they stood at its copy (under the read lock).
#[derive(Debug)]
struct SnapshotDue {
    /// Commands applied.
    commands: WorkSinceSnapshot,
    /// Nanoseconds spent applying commands.
    apply_nanos: WorkSinceSnapshot,
    /// How long the latest snapshot took to copy and encode, in CPU
    /// nanoseconds: the apply-time interval is never shorter, so building
    /// snapshots costs at most about as much CPU as applying does.
    last_build_nanos: AtomicU64,
    wanted: Notify,
}

/// One measure of the work applied since the latest snapshot.
#[derive(Debug)]
struct WorkSinceSnapshot {
    /// A snapshot is due after this much; `u64::MAX` until
    /// [`StateMachineStore::snapshot_requests`].
    every: AtomicU64,
    /// Counted since the store was opened.
    total: AtomicU64,
    /// `total` as of the latest snapshot's copy (or install).
    at_snapshot: AtomicU64,
    /// `total` when this measure last asked for a snapshot.
    asked_at: AtomicU64,
}

impl WorkSinceSnapshot {
    fn new() -> WorkSinceSnapshot {
        WorkSinceSnapshot {
            every: AtomicU64::new(u64::MAX),
            total: AtomicU64::new(0),
            at_snapshot: AtomicU64::new(0),
            asked_at: AtomicU64::new(0),
        }
    }

    /// Counts `amount`; whether a snapshot is to be asked for now: due
    /// after `every` (or `at_least`, if more) since the latest one. A
    /// request openraft ignores (one is being built already) is repeated
    /// after another quarter of the interval, if still due then.
    fn add(&self, amount: u64, at_least: u64) -> bool {
        let total = self.total.load(Ordering::Relaxed).saturating_add(amount);
        self.total.store(total, Ordering::Relaxed);
        let every = self.every.load(Ordering::Relaxed).max(at_least);
        if every == u64::MAX {
            // Not set (or a build so long it cannot be measured): never.
            return false;
        }
        let at_snapshot = self.at_snapshot.load(Ordering::Relaxed);
        let asked_at = self.asked_at.load(Ordering::Relaxed);
        let due = total - at_snapshot >= every;
        let asked_since_snapshot = asked_at > at_snapshot;
        if due && (!asked_since_snapshot || total - asked_at >= (every / 4).max(1)) {
            self.asked_at.store(total, Ordering::Relaxed);
            return true;
        }
        false
    }

    /// The table now reflects everything counted so far.
    fn snapshot_taken(&self) {
        self.at_snapshot.store(self.total.load(Ordering::Relaxed), Ordering::Relaxed);
    }
}

impl SnapshotDue {
    fn new() -> SnapshotDue {
        SnapshotDue {
            commands: WorkSinceSnapshot::new(),
            apply_nanos: WorkSinceSnapshot::new(),
            last_build_nanos: AtomicU64::new(0),
            wanted: Notify::new(),
        }
    }

    /// Counts an entry's applied commands and the time they took, and asks
    /// for a snapshot when one is due by either.
    fn count_applied(&self, commands: u64, took: std::time::Duration) {
        let by_commands = self.commands.add(commands, 0);
        let by_apply_time = self.apply_nanos.add(nanos(took), self.last_build_nanos.load(Ordering::Relaxed));
        if by_commands || by_apply_time {
            self.wanted.notify_one();
        }
    }

    /// A snapshot after every `every_commands` applied commands, or
    /// `every_apply` spent applying them, whichever comes first.
    fn set_intervals(&self, every_commands: u64, every_apply: std::time::Duration) {
        self.commands.every.store(every_commands.max(1), Ordering::Relaxed);
        self.apply_nanos.every.store(nanos(every_apply).max(1), Ordering::Relaxed);
    }

    /// The table now reflects every command counted so far.
    fn snapshot_taken(&self) {
        self.commands.snapshot_taken();
        self.apply_nanos.snapshot_taken();
    }
}

/// `duration` in nanoseconds, `u64::MAX` past what that holds (584 years).
fn nanos(duration: std::time::Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

/// Waits for the state machine to want a snapshot: enough commands applied
/// since the last one (see `StateMachineStore::snapshot_requests`).
#[derive(Clone, Debug)]
pub struct SnapshotRequests(Arc<SnapshotDue>);

impl SnapshotRequests {
    /// Returns when enough commands were applied since the last snapshot (or
    /// at once, if that happened since the last call).
    pub async fn wanted(&self) {
        self.0.wanted.notified().await;
    }
}

/// The replica's state machine. Clones share the same table, channel and
/// snapshot store (openraft clones it as the snapshot builder).
#[derive(Clone)]
pub struct StateMachineStore {
    state: Arc<RwLock<AppliedState>>,
    revisions: watch::Sender<u64>,
    snapshots: SnapshotStore,
    snapshot_due: Arc<SnapshotDue>,
    apply_durations: ApplyDurations,
}

impl std::fmt::Debug for StateMachineStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateMachineStore")
            .field("subscribers", &self.revisions.receiver_count())
            .finish_non_exhaustive()
    }
}

impl StateMachineStore {
    /// Restores the table from the stored snapshot, or starts an empty one.
    pub(crate) async fn open(data_dir: &Path, table_config: TableConfig) -> Result<StateMachineStore, StorageError> {
        let snapshots = SnapshotStore::open(data_dir);
        let state = match snapshots.load().await? {
            Some(stored) => {
                let table = tokio::task::spawn_blocking(move || AllocationTable::from_snapshot_bytes(&stored.data)).await??;
                if table.config() != &table_config {
                    // The snapshot's config wins: every replica must apply with
                    // the same limits, and the snapshot carries the cluster's.
                    tracing::warn!(
                        stored = ?table.config(),
                        given = ?table_config,
                        "table config differs from the one in the stored snapshot; keeping the snapshot's"
                    );
                }
                AppliedState {
                    table,
                    last_applied: stored.meta.last_log_id,
                    last_membership: stored.meta.last_membership,
                }
            }
            None => AppliedState {
                table: AllocationTable::new(table_config),
                last_applied: None,
                last_membership: StoredMembership::default(),
            },
        };
        let revisions = watch::Sender::new(state.table.revision());
        Ok(StateMachineStore {
            state: Arc::new(RwLock::new(state)),
            revisions,
            snapshots,
            snapshot_due: Arc::new(SnapshotDue::new()),
            apply_durations: ApplyDurations::default(),
        })
    }

    /// From now on, asks for a snapshot after every `every_commands` applied
    /// commands, or `every_apply` spent applying them, whichever comes
    /// first (counted since the last snapshot); the caller turns each
    /// request into `raft.trigger().snapshot()`. Take it before handing the
    /// store to `Raft::new`.
    pub fn snapshot_requests(&self, every_commands: u64, every_apply: std::time::Duration) -> SnapshotRequests {
        self.snapshot_due.set_intervals(every_commands, every_apply);
        SnapshotRequests(Arc::clone(&self.snapshot_due))
    }

    /// A read-only handle for the API; take it before handing the store to
    /// `Raft::new`.
    pub fn reader(&self) -> StateReader {
        StateReader {
            state: Arc::clone(&self.state),
            revisions: self.revisions.clone(),
            apply_durations: self.apply_durations.clone(),
        }
    }

    /// The table's revision (as [`StateReader::subscribe`]).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.revisions.subscribe()
    }

    /// Tells watchers the table's revision, if it moved.
    fn publish_revision(&self, state: &AppliedState) {
        self.revisions.send_if_modified(|revision| {
            let moved = *revision != state.table.revision();
            *revision = state.table.revision();
            moved
        });
    }

    /// Applies one entry and says what it answers.
    fn apply_entry(&self, state: &mut AppliedState, entry: Entry) -> AppResponse {
        state.last_applied = Some(entry.log_id);
        let mut commands = 1;
        let mut took = std::time::Duration::ZERO;
        let response = match entry.payload {
            EntryPayload::Blank => AppResponse::Blank,
            EntryPayload::Normal(batch) => {
                commands = batch.commands.len() as u64;
                AppResponse::Commands(
                    batch
                        .commands
                        .into_iter()
                        .map(|command| {
                            // One clock reading per command: a few tens of
                            // nanoseconds against microseconds of apply.
                            let started = std::time::Instant::now();
                            let result = state.table.apply_into_history(command);
                            let elapsed = started.elapsed();
                            self.apply_durations.observe(elapsed);
                            took += elapsed;
                            result
                        })
                        .collect(),
                )
            }
            EntryPayload::Membership(membership) => {
                state.last_membership = StoredMembership::new(Some(entry.log_id), membership);
                AppResponse::Membership
            }
        };
        self.snapshot_due.count_applied(commands, took);
        response
    }
}

/// The same applied state always gives the same bytes, so the last applied
/// log id identifies a snapshot.
fn snapshot_id(last_applied: Option<LogId>) -> String {
    match last_applied {
        Some(log_id) => log_id.to_string(),
        None => "empty".to_string(),
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, RaftStorageError> {
        // Under the read lock only for a snapshot copy (a pointer per shard
        // of requests and per provider), then encoded with the table free to
        // change again. Encoding under the lock held apply still for 200-350
        // ms at every snapshot (100k remembered requests), and copying every
        // record and unit under it for 100-190 ms, and the leader's callers
        // waited that long for their answers (BENCHMARKS.md). On a thread of
        // its own, which takes the lock only once it runs (a thread waiting
        // for a core must not hold it), and encodes at a lower priority, so
        // it takes no CPU the replica's serving tasks need (`background`).
        let started = std::time::Instant::now();
        let state = Arc::clone(&self.state);
        let snapshot_due = Arc::clone(&self.snapshot_due);
        let (meta, data, copy_ms, encode_cpu_ms) = background::run_on_own_thread("qm-snapshot", move || {
            let state = state.blocking_read();
            snapshot_due.snapshot_taken();
            let copy_started = std::time::Instant::now();
            let meta = SnapshotMeta {
                last_log_id: state.last_applied,
                last_membership: state.last_membership.clone(),
                snapshot_id: snapshot_id(state.last_applied),
            };
            let copy = state.table.snapshot_copy();
            drop(state);
            let copy_took = copy_started.elapsed();
            background::lower_this_thread_priority();
            let cpu_before = background::this_thread_cpu_time();
            let data = copy.to_snapshot_bytes();
            let encode_cpu = background::this_thread_cpu_time().saturating_sub(cpu_before);
            snapshot_due
                .last_build_nanos
                .store(nanos(copy_took + encode_cpu), Ordering::Relaxed);
            (meta, data, copy_took.as_millis() as u64, encode_cpu.as_millis() as u64)
        })
        .await
        .map_err(|error| raft_error(StorageIOError::read_state_machine, &error))?;
        let encoded = started.elapsed();
        let (outcome, data) = self
            .snapshots
            .save(meta.clone(), data)
            .await
            .map_err(|error| raft_error(|source| StorageIOError::write_snapshot(Some(meta.signature()), source), &error))?;
        if outcome == SaveOutcome::KeptNewer {
            tracing::info!(snapshot = %meta, "built snapshot is not newer than the stored one; kept the stored one");
        }
        tracing::info!(
            snapshot = %meta,
            bytes = data.len(),
            copy_ms,
            encode_ms = (encoded.as_millis() as u64).saturating_sub(copy_ms),
            encode_cpu_ms,
            save_ms = (started.elapsed() - encoded).as_millis() as u64,
            "snapshot built"
        );
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = StateMachineStore;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), RaftStorageError> {
        let state = self.state.read().await;
        Ok((state.last_applied, state.last_membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<AppResponse>, RaftStorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut state = self.state.write().await;
        let responses = entries.into_iter().map(|entry| self.apply_entry(&mut state, entry)).collect();
        self.publish_revision(&state);
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> StateMachineStore {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, RaftStorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(&mut self, meta: &SnapshotMeta, snapshot: Box<Cursor<Vec<u8>>>) -> Result<(), RaftStorageError> {
        let data = snapshot.into_inner();
        // Decode before anything changes: a bad snapshot leaves the table and
        // the stored snapshot as they were.
        let read_error = |source| StorageIOError::read_snapshot(Some(meta.signature()), source);
        let (table, data) = tokio::task::spawn_blocking(move || (AllocationTable::from_snapshot_bytes(&data), data))
            .await
            .map_err(|error| raft_error(read_error, &error))?;
        let table = table.map_err(|error| raft_error(read_error, &error))?;
        let (outcome, _) = self
            .snapshots
            .save(meta.clone(), data)
            .await
            .map_err(|error| raft_error(|source| StorageIOError::write_snapshot(Some(meta.signature()), source), &error))?;
        if outcome == SaveOutcome::KeptNewer {
            // openraft only installs snapshots past what was applied; an equal
            // one is a re-sent copy with the same bytes.
            tracing::info!(snapshot = %meta, "installed snapshot is not newer than the stored one; kept the stored one");
        }
        let mut state = self.state.write().await;
        self.snapshot_due.snapshot_taken();
        *state = AppliedState {
            table,
            last_applied: meta.last_log_id,
            last_membership: meta.last_membership.clone(),
        };
        self.publish_revision(&state);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, RaftStorageError> {
        let stored = self
            .snapshots
            .load()
            .await
            .map_err(|error| raft_error(|source| StorageIOError::read_snapshot(None, source), &error))?;
        Ok(stored.map(|stored| Snapshot {
            meta: stored.meta,
            snapshot: Box::new(Cursor::new(stored.data)),
        }))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn due_every(commands: u64, apply: Duration) -> SnapshotDue {
        let due = SnapshotDue::new();
        due.set_intervals(commands, apply);
        due
    }

    fn ms(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    /// Whether a request is waiting (takes it).
    fn asked(due: &SnapshotDue) -> bool {
        use std::future::Future;
        let notified = due.wanted.notified();
        let mut notified = std::pin::pin!(notified);
        let waker = std::task::Waker::noop();
        notified.as_mut().poll(&mut std::task::Context::from_waker(waker)).is_ready()
    }

    #[test]
    fn a_snapshot_is_asked_for_once_enough_commands_were_applied() {
        let due = due_every(100, Duration::MAX);
        due.count_applied(60, Duration::ZERO);
        assert!(!asked(&due), "60 of 100");
        due.count_applied(60, Duration::ZERO);
        assert!(asked(&due), "120 of 100");
        // Not asked again for every batch while the snapshot is on its way...
        due.count_applied(10, Duration::ZERO);
        assert!(!asked(&due), "asked at 120, now 130");
        // ...but again if none came a quarter of the interval later.
        due.count_applied(20, Duration::ZERO);
        assert!(asked(&due), "asked at 120, now 150");
        // A snapshot starts the count again.
        due.snapshot_taken();
        due.count_applied(99, Duration::ZERO);
        assert!(!asked(&due), "99 since the snapshot");
        due.count_applied(1, Duration::ZERO);
        assert!(asked(&due), "100 since the snapshot");
    }

    #[test]
    fn a_snapshot_is_asked_for_once_enough_time_was_spent_applying() {
        let due = due_every(u64::MAX, ms(2_000));
        due.count_applied(1, ms(1_500));
        assert!(!asked(&due), "1.5 s of 2 s");
        due.count_applied(1, ms(600));
        assert!(asked(&due), "2.1 s of 2 s, in two commands");
        due.count_applied(1, ms(100));
        assert!(!asked(&due), "asked at 2.1 s, now 2.2 s");
        due.count_applied(1, ms(500));
        assert!(asked(&due), "asked at 2.1 s, now 2.7 s");
        due.snapshot_taken();
        due.count_applied(1, ms(1_999));
        assert!(!asked(&due), "1.999 s since the snapshot");
        due.count_applied(1, ms(1));
        assert!(asked(&due), "2 s since the snapshot");
    }

    #[test]
    fn a_snapshot_that_takes_longer_to_build_than_the_interval_stretches_it() {
        let due = due_every(u64::MAX, ms(2_000));
        due.last_build_nanos.store(3_000_000_000, Ordering::Relaxed);
        due.count_applied(1, ms(2_500));
        assert!(!asked(&due), "2.5 s applied, but the last build took 3 s");
        due.count_applied(1, ms(500));
        assert!(asked(&due), "3 s applied");
    }

    #[test]
    fn without_an_interval_nothing_is_asked_for() {
        let due = SnapshotDue::new();
        due.count_applied(u64::MAX / 2, Duration::MAX);
        assert!(!asked(&due));
        due.count_applied(u64::MAX / 2, Duration::MAX);
        assert!(!asked(&due), "the counts saturate");
    }
}
