//! What the storage promises across a restart and a crash.
//!
//! Two kinds of restart: dropping the stores and reopening the same data dir
//! (sled flushes on drop), and a crash, where a child process (this test
//! binary, re-run on one test) writes, then leaves with `process::exit`
//! without dropping anything. Only what the storage flushed before
//! acknowledging survives the crash, so that test fails if, e.g., the append
//! callback fired before the flush.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command as Process, Stdio};

use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::testing::log_id;
use openraft::{BasicNode, EntryPayload, Membership, RaftLogReader, RaftSnapshotBuilder, Snapshot};
use qm_raft_node::storage::{self, LogStore, StateMachineStore, StorageError};
use qm_raft_node::types::{Entry, TypeConfig, Vote};
use qm_state_machine::{AllocationTable, Command, StampedCommand, TableConfig};
use support::commands::{allocate, provider};
use tempfile::TempDir;
use uuid::Uuid;

/// Set in a child process to the data dir it must use.
const CHILD_DATA_DIR_ENV: &str = "QM_STORAGE_TEST_CHILD_DATA_DIR";
/// A child that "crashed" on purpose exits with this, so the parent can tell
/// it from a child whose test merely passed or failed.
const CHILD_CRASH_EXIT_CODE: i32 = 86;
/// What a child prints once it holds the data dir open.
const CHILD_HOLDS_DATA_DIR: &str = "QM_CHILD_HOLDS_DATA_DIR";

// --- fixtures

fn table_config() -> TableConfig {
    TableConfig::default()
}

async fn open(dir: &Path) -> (LogStore, StateMachineStore) {
    storage::open(dir, table_config()).await.expect("storage opens")
}

/// A workload that places, queues and releases: entries 1..=commands().len().
fn commands() -> Vec<Command> {
    vec![
        provider("provider-a", 4),
        allocate(1, 2),
        allocate(2, 2),
        allocate(3, 1),
        Command::Release { id: Uuid::from_u128(1) },
        provider("provider-b", 2),
        allocate(4, 2),
    ]
}

fn normal(index: u64, command: Command) -> Entry {
    Entry {
        log_id: log_id(1, 1, index),
        payload: EntryPayload::Normal(StampedCommand::new(1_000 + index, command).into()),
    }
}

/// `commands()` as log entries from index `first` on.
fn command_entries(first: u64) -> Vec<Entry> {
    (first..).zip(commands()).map(|(index, command)| normal(index, command)).collect()
}

fn membership(index: u64) -> Entry {
    let voters = BTreeSet::from([1, 2, 3]);
    let nodes: BTreeMap<u64, BasicNode> = voters
        .iter()
        .map(|&id| (id, BasicNode::new(format!("127.0.0.1:{}", 7000 + id))))
        .collect();
    Entry {
        log_id: log_id(1, 1, index),
        payload: EntryPayload::Membership(Membership::new(vec![voters], nodes)),
    }
}

/// The table after applying the normal entries among `entries`.
fn table_after(entries: &[Entry]) -> AllocationTable {
    let mut table = AllocationTable::new(table_config());
    for entry in entries {
        if let EntryPayload::Normal(batch) = &entry.payload {
            let command = &batch.commands[0];
            table.apply(command);
        }
    }
    table
}

async fn all_entries(log_store: &mut LogStore) -> Vec<Entry> {
    log_store.try_get_log_entries(..).await.expect("log reads")
}

async fn table_bytes(state_machine: &StateMachineStore) -> Vec<u8> {
    state_machine.reader().read().await.table().to_snapshot_bytes()
}

fn snapshot_bytes(snapshot: Snapshot<TypeConfig>) -> Vec<u8> {
    snapshot.snapshot.into_inner()
}

// --- child processes

fn child_data_dir() -> Option<PathBuf> {
    std::env::var_os(CHILD_DATA_DIR_ENV).map(PathBuf::from)
}

/// Re-runs this test binary on `test_name` alone, with `data_dir` as its data dir.
fn spawn_child(test_name: &str, data_dir: &Path) -> std::process::Child {
    Process::new(std::env::current_exe().expect("the test binary's path"))
        .args([test_name, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_DATA_DIR_ENV, data_dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the test binary runs again as a child")
}

/// In the parent: runs test `test_name` again in a child process on a new
/// data dir and returns the dir once the child has crashed. In the child:
/// runs `writes` on the data dir, then leaves like `kill -9` would for sled.
/// `writes` hands back the stores so that they are still alive at the exit:
/// dropping the last handle would make sled flush. Each test crashes right
/// after the write it checks, so no later flush can cover for it.
async fn run_until_crash<F, Fut>(test_name: &str, writes: F) -> TempDir
where
    F: FnOnce(PathBuf) -> Fut,
    Fut: Future<Output = (LogStore, StateMachineStore)>,
{
    if let Some(data_dir) = child_data_dir() {
        let _alive_at_exit = writes(data_dir).await;
        std::process::exit(CHILD_CRASH_EXIT_CODE);
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let status = spawn_child(test_name, dir.path()).wait().expect("the child runs");
    assert_eq!(
        Some(CHILD_CRASH_EXIT_CODE),
        status.code(),
        "the child crashes after its writes were acknowledged"
    );
    dir
}

// --- tests

#[tokio::test]
async fn log_vote_committed_and_purge_survive_reopen() {
    let dir = tempfile::tempdir().expect("temp dir");
    let entries: Vec<Entry> = (1..=10).map(|index| normal(index, allocate(u128::from(index), 1))).collect();
    let vote = Vote::new_committed(2, 1);

    // --- write, purge the head, truncate the tail
    {
        let (mut log_store, _state_machine) = open(dir.path()).await;
        log_store.blocking_append(entries[..6].to_vec()).await.expect("append");
        log_store.blocking_append(entries[6..].to_vec()).await.expect("append");
        log_store.save_vote(&vote).await.expect("save vote");
        log_store.save_committed(Some(log_id(1, 1, 8))).await.expect("save committed");
        log_store.purge(log_id(1, 1, 3)).await.expect("purge");
        log_store.truncate(log_id(1, 1, 10)).await.expect("truncate");
    }

    // --- reopen: everything is back, nothing more
    let (mut log_store, _state_machine) = open(dir.path()).await;
    let state = log_store.get_log_state().await.expect("log state");
    assert_eq!(Some(log_id(1, 1, 3)), state.last_purged_log_id);
    assert_eq!(Some(log_id(1, 1, 9)), state.last_log_id);
    assert_eq!(entries[3..9].to_vec(), all_entries(&mut log_store).await);
    assert_eq!(
        entries[4..6].to_vec(),
        log_store.try_get_log_entries(5..7).await.expect("range reads")
    );
    assert_eq!(Some(vote), log_store.read_vote().await.expect("read vote"));
    assert_eq!(Some(log_id(1, 1, 8)), log_store.read_committed().await.expect("read committed"));
}

#[tokio::test]
async fn purging_the_whole_log_keeps_the_last_log_id() {
    let dir = tempfile::tempdir().expect("temp dir");
    {
        let (mut log_store, _state_machine) = open(dir.path()).await;
        log_store.blocking_append(command_entries(1)).await.expect("append");
        log_store.purge(log_id(1, 1, 7)).await.expect("purge");
    }

    let (mut log_store, _state_machine) = open(dir.path()).await;
    let state = log_store.get_log_state().await.expect("log state");
    assert_eq!(Some(log_id(1, 1, 7)), state.last_purged_log_id);
    assert_eq!(
        Some(log_id(1, 1, 7)),
        state.last_log_id,
        "an empty log's last log id is the last purged one"
    );
    assert!(all_entries(&mut log_store).await.is_empty());
}

#[tokio::test]
async fn acknowledged_append_survives_a_crash() {
    let entries = command_entries(1);
    let dir = run_until_crash("acknowledged_append_survives_a_crash", |data_dir| async move {
        let (mut log_store, state_machine) = open(&data_dir).await;
        // Several entries in one call (one sled batch), then one at a time
        // (one plain insert each, as the leader writes every batch it proposes).
        log_store.blocking_append(entries[..3].to_vec()).await.expect("append");
        for entry in &entries[3..] {
            log_store.blocking_append([entry.clone()]).await.expect("append");
        }
        (log_store, state_machine)
    })
    .await;

    let (mut log_store, _state_machine) = open(dir.path()).await;
    assert_eq!(command_entries(1), all_entries(&mut log_store).await);
}

#[tokio::test]
async fn saved_vote_survives_a_crash() {
    let vote = Vote::new_committed(3, 2);
    let dir = run_until_crash("saved_vote_survives_a_crash", |data_dir| async move {
        let (mut log_store, state_machine) = open(&data_dir).await;
        log_store.save_vote(&vote).await.expect("save vote");
        (log_store, state_machine)
    })
    .await;

    let (mut log_store, _state_machine) = open(dir.path()).await;
    assert_eq!(Some(vote), log_store.read_vote().await.expect("read vote"));
}

#[tokio::test]
async fn purge_point_survives_a_crash() {
    let entries = command_entries(1);
    let dir = run_until_crash("purge_point_survives_a_crash", |data_dir| async move {
        let (mut log_store, state_machine) = open(&data_dir).await;
        log_store.blocking_append(entries).await.expect("append");
        log_store.purge(log_id(1, 1, 3)).await.expect("purge");
        (log_store, state_machine)
    })
    .await;

    // --- the purge point is durable; the purged entries, whose removal was
    //     not flushed, stay hidden and are removed again after the open
    let (mut log_store, _state_machine) = open(dir.path()).await;
    let state = log_store.get_log_state().await.expect("log state");
    assert_eq!(Some(log_id(1, 1, 3)), state.last_purged_log_id);
    assert_eq!(command_entries(1)[3..].to_vec(), all_entries(&mut log_store).await);
}

#[tokio::test]
async fn built_snapshot_survives_a_crash() {
    let entries = command_entries(1);
    let dir = run_until_crash("built_snapshot_survives_a_crash", |data_dir| async move {
        let (log_store, mut state_machine) = open(&data_dir).await;
        state_machine.apply(entries).await.expect("apply");
        state_machine.get_snapshot_builder().await.build_snapshot().await.expect("snapshot");
        (log_store, state_machine)
    })
    .await;

    let (_log_store, mut state_machine) = open(dir.path()).await;
    let (last_applied, _) = state_machine.applied_state().await.expect("applied state");
    assert_eq!(command_entries(1).last().map(|entry| entry.log_id), last_applied);
    assert_eq!(
        table_after(&command_entries(1)).to_snapshot_bytes(),
        table_bytes(&state_machine).await
    );
}

#[tokio::test]
async fn snapshot_restores_the_table_after_reopen() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut entries = vec![membership(1)];
    entries.extend(command_entries(2));
    let (in_snapshot, after_snapshot) = entries.split_at(5);

    // --- apply, snapshot, apply more
    let built = {
        let (_log_store, mut state_machine) = open(dir.path()).await;
        state_machine.apply(in_snapshot.to_vec()).await.expect("apply");
        let built = state_machine.get_snapshot_builder().await.build_snapshot().await.expect("snapshot");
        state_machine.apply(after_snapshot.to_vec()).await.expect("apply");
        built
    };
    assert_eq!(Some(log_id(1, 1, 5)), built.meta.last_log_id);
    assert_eq!(&Some(log_id(1, 1, 1)), built.meta.last_membership.log_id());

    // --- reopen: the table is the snapshot's, equal to a fresh apply of the same entries
    let (_log_store, mut state_machine) = open(dir.path()).await;
    let expected = table_after(in_snapshot);
    assert_eq!(expected, *state_machine.reader().read().await.table());
    assert_eq!(expected.to_snapshot_bytes(), table_bytes(&state_machine).await);
    let (last_applied, last_membership) = state_machine.applied_state().await.expect("applied state");
    assert_eq!(built.meta.last_log_id, last_applied);
    assert_eq!(built.meta.last_membership, last_membership);
    let current = state_machine
        .get_current_snapshot()
        .await
        .expect("read snapshot")
        .expect("a snapshot is stored");
    assert_eq!(built.meta, current.meta);
    assert_eq!(snapshot_bytes(built), snapshot_bytes(current));
}

#[tokio::test]
async fn installed_snapshot_replaces_the_table_and_survives_reopen() {
    let leader_dir = tempfile::tempdir().expect("temp dir");
    let follower_dir = tempfile::tempdir().expect("temp dir");
    let entries = command_entries(1);

    // --- the leader builds a snapshot
    let (_leader_log, mut leader) = open(leader_dir.path()).await;
    leader.apply(entries.clone()).await.expect("apply");
    let snapshot = leader.get_snapshot_builder().await.build_snapshot().await.expect("snapshot");
    let meta = snapshot.meta.clone();

    // --- a follower with other state installs it
    {
        let (_log_store, mut follower) = open(follower_dir.path()).await;
        follower.apply(vec![normal(1, provider("provider-z", 1))]).await.expect("apply");
        follower.install_snapshot(&meta, snapshot.snapshot).await.expect("install");
        assert_eq!(table_bytes(&leader).await, table_bytes(&follower).await);
    }

    // --- after a reopen the follower still has it
    let (_log_store, mut follower) = open(follower_dir.path()).await;
    assert_eq!(table_bytes(&leader).await, table_bytes(&follower).await);
    assert_eq!(
        (meta.last_log_id, meta.last_membership.clone()),
        follower.applied_state().await.expect("applied state")
    );
    let current = follower
        .get_current_snapshot()
        .await
        .expect("read snapshot")
        .expect("a snapshot is stored");
    assert_eq!(meta, current.meta);
}

#[tokio::test]
async fn a_snapshot_that_does_not_decode_changes_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let entries = command_entries(1);
    let (_log_store, mut state_machine) = open(dir.path()).await;
    state_machine.apply(entries.clone()).await.expect("apply");
    let built = state_machine.get_snapshot_builder().await.build_snapshot().await.expect("snapshot");
    let before = (
        state_machine.applied_state().await.expect("applied state"),
        table_bytes(&state_machine).await,
    );

    // --- install garbage claiming to be newer
    let mut bad_meta = built.meta.clone();
    bad_meta.last_log_id = Some(log_id(2, 1, 100));
    bad_meta.snapshot_id = "garbage".to_string();
    let garbage = Box::new(std::io::Cursor::new(vec![0xff; 64]));
    state_machine
        .install_snapshot(&bad_meta, garbage)
        .await
        .expect_err("garbage does not install");

    // --- the table and the stored snapshot are as they were
    let after = (
        state_machine.applied_state().await.expect("applied state"),
        table_bytes(&state_machine).await,
    );
    assert_eq!(before, after);
    let current = state_machine
        .get_current_snapshot()
        .await
        .expect("read snapshot")
        .expect("a snapshot is stored");
    assert_eq!(built.meta, current.meta);
}

#[tokio::test]
async fn open_fails_while_another_process_holds_the_data_dir() {
    if let Some(data_dir) = child_data_dir() {
        // --- child: hold the dir until the parent closes our stdin
        let _stores = open(&data_dir).await;
        println!("{CHILD_HOLDS_DATA_DIR}");
        std::io::stdin().read_to_end(&mut Vec::new()).expect("stdin reads until closed");
        return;
    }

    let dir = tempfile::tempdir().expect("temp dir");
    let mut child = spawn_child("open_fails_while_another_process_holds_the_data_dir", dir.path());
    let stdout = BufReader::new(child.stdout.take().expect("child stdout is piped"));
    let mut lines = stdout.lines();
    lines
        .by_ref()
        .map(|line| line.expect("child stdout reads"))
        // The harness prints "test <name> ... " first, on the same line.
        .find(|line| line.ends_with(CHILD_HOLDS_DATA_DIR))
        .expect("the child opens the data dir");

    // --- a second process is refused, with a message that says why
    let error = storage::open(dir.path(), table_config()).await.expect_err("the data dir is held");
    assert!(matches!(error, StorageError::DataDirInUse { .. }), "got {error:?}");
    let message = error.to_string();
    assert!(
        message.contains(&format!("data dir {} is in use by another qm-node", dir.path().display())),
        "{message}"
    );

    // --- the child lets go; the dir opens again
    drop(child.stdin.take());
    assert!(child.wait().expect("child exits").success());
    drop(open(dir.path()).await);
}

#[tokio::test]
async fn open_fails_while_this_process_holds_the_data_dir() {
    let dir = tempfile::tempdir().expect("temp dir");
    let stores = open(dir.path()).await;
    let error = storage::open(dir.path(), table_config()).await.expect_err("the data dir is held");
    assert!(matches!(error, StorageError::DataDirInUse { .. }), "got {error:?}");
    drop(stores);
    drop(open(dir.path()).await);
}

#[tokio::test]
async fn committed_entries_are_reapplied_on_restart() {
    let dir = tempfile::tempdir().expect("temp dir");
    // A real log starts at index 0 with the initial membership.
    let mut entries = vec![membership(0)];
    entries.extend(command_entries(1));
    {
        let (mut log_store, mut state_machine) = open(dir.path()).await;
        log_store.blocking_append(entries.clone()).await.expect("append");
        state_machine.apply(entries[..=2].to_vec()).await.expect("apply");
        state_machine.get_snapshot_builder().await.build_snapshot().await.expect("snapshot");
        log_store.save_committed(Some(log_id(1, 1, 5))).await.expect("save committed");
        state_machine.apply(entries[3..=5].to_vec()).await.expect("apply");
    }

    // --- openraft's own startup re-applies (snapshot, committed] from the log
    let (mut log_store, mut state_machine) = open(dir.path()).await;
    let (last_applied, _) = state_machine.applied_state().await.expect("applied state");
    assert_eq!(Some(log_id(1, 1, 2)), last_applied, "the reopened table is the snapshot's");
    openraft::StorageHelper::new(&mut log_store, &mut state_machine)
        .get_initial_state()
        .await
        .expect("initial state");
    let (last_applied, _) = state_machine.applied_state().await.expect("applied state");
    assert_eq!(Some(log_id(1, 1, 5)), last_applied);
    assert_eq!(table_after(&entries[..=5]).to_snapshot_bytes(), table_bytes(&state_machine).await);
}

/// More entries than one replication batch holds come back in batches, each
/// a non-empty prefix of what was asked, in order.
#[tokio::test]
async fn limited_reads_return_a_nonempty_prefix() {
    let dir = tempfile::tempdir().expect("temp dir");
    let entries: Vec<Entry> = (1..=64).map(|index| normal(index, provider(&format!("p{index}"), 2048))).collect();
    let (mut log_store, _state_machine) = open(dir.path()).await;
    log_store.blocking_append(entries.clone()).await.expect("append");

    let mut reader = log_store.get_log_reader().await;
    let mut read: Vec<Entry> = Vec::new();
    let mut batches = 0;
    while (read.len() as u64) < 64 {
        let start = read.len() as u64 + 1;
        let batch = reader.limited_get_log_entries(start, 65).await.expect("limited read");
        assert_eq!(
            Some(start),
            batch.first().map(|entry| entry.log_id.index),
            "a batch starts where asked"
        );
        read.extend(batch);
        batches += 1;
    }
    assert_eq!(entries, read);
    assert!(batches > 1, "64 registrations of 2048 cores exceed one batch's byte limit");
    assert!(reader.try_get_log_entries(65..).await.expect("read").is_empty());
}
