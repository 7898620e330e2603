//! What the state machine store answers for each entry, what it publishes,
//! and what readers see.

mod support;

use std::collections::{BTreeMap, BTreeSet};

use openraft::storage::RaftStateMachine;
use openraft::testing::log_id;
use openraft::{BasicNode, EntryPayload, Membership, StoredMembership};
use qm_raft_node::storage::{self, StateMachineStore};
use qm_raft_node::types::{AppResponse, Entry};
use qm_state_machine::{AllocationTable, Command, StampedCommand, TableConfig};
use support::commands::{allocate, provider};
use uuid::Uuid;

// --- fixtures

fn stamped(index: u64, command: Command) -> StampedCommand {
    StampedCommand::new(1_000 + index, command)
}

fn membership_of(voters: BTreeSet<u64>) -> Membership<u64, BasicNode> {
    let nodes: BTreeMap<u64, BasicNode> = voters
        .iter()
        .map(|&id| (id, BasicNode::new(format!("127.0.0.1:{}", 7000 + id))))
        .collect();
    Membership::new(vec![voters], nodes)
}

async fn open_store(dir: &std::path::Path) -> StateMachineStore {
    storage::open(dir, TableConfig::default()).await.expect("storage opens").1
}

// --- tests

#[tokio::test]
async fn apply_answers_every_entry_and_keeps_its_events() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut state_machine = open_store(dir.path()).await;
    let mut revisions = state_machine.subscribe();
    let commands = [
        (3, provider("provider-a", 2)),
        (4, allocate(1, 2)),
        (5, allocate(2, 1)),                              // queued: no core left
        (6, Command::Release { id: Uuid::from_u128(9) }), // refused: unknown id
        (7, Command::Release { id: Uuid::from_u128(1) }), // frees cores, places the queued request
    ];
    let membership = membership_of(BTreeSet::from([1, 2, 3]));
    let mut entries = vec![
        Entry {
            log_id: log_id(1, 1, 1),
            payload: EntryPayload::Blank,
        },
        Entry {
            log_id: log_id(1, 1, 2),
            payload: EntryPayload::Membership(membership.clone()),
        },
    ];
    entries.extend(commands.iter().map(|(index, command)| Entry {
        log_id: log_id(1, 1, *index),
        payload: EntryPayload::Normal(stamped(*index, command.clone()).into()),
    }));

    // --- the same commands applied to a bare table say what to expect
    let mut expected_table = AllocationTable::new(TableConfig::default());
    let expected_applied: Vec<_> = commands
        .iter()
        .map(|(index, command)| expected_table.apply(&stamped(*index, command.clone())))
        .collect();
    let mut expected_responses = vec![AppResponse::Blank, AppResponse::Membership];
    expected_responses.extend(
        expected_applied
            .iter()
            .map(|applied| AppResponse::Commands(vec![applied.result.clone()])),
    );
    let expected_events: Vec<_> = expected_applied.iter().flat_map(|applied| applied.events.clone()).collect();
    assert!(
        matches!(&expected_responses[5], AppResponse::Commands(results) if matches!(results[..], [Err(_)])),
        "the fixture includes a refused command"
    );

    // --- one response per entry, in order
    let responses = state_machine.apply(entries).await.expect("apply");
    assert_eq!(expected_responses, responses);

    // --- watchers are told the new revision once; the history holds every
    // event of every command, in order, and nothing more
    assert!(revisions.has_changed().expect("store alive"), "the revision was published");
    assert_eq!(expected_table.revision(), *revisions.borrow_and_update());
    assert!(!expected_events.is_empty());
    let history: Vec<_> = {
        let reader = state_machine.reader();
        let state = reader.read().await;
        state.table().events_from(0).expect("history kept").cloned().collect()
    };
    assert_eq!(expected_events, history);

    // --- the applied position and membership, and the table readers see
    let (last_applied, last_membership) = state_machine.applied_state().await.expect("applied state");
    assert_eq!(Some(log_id(1, 1, 7)), last_applied);
    assert_eq!(StoredMembership::new(Some(log_id(1, 1, 2)), membership), last_membership);
    let reader = state_machine.reader();
    let state = reader.read().await;
    assert_eq!(&expected_table, state.table());
    assert_eq!(Some(log_id(1, 1, 7)), state.last_applied());
}

#[tokio::test]
async fn reader_subscribers_are_told_of_revisions_applied_after_they_subscribe() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut state_machine = open_store(dir.path()).await;
    let reader = state_machine.reader();
    let first = Entry {
        log_id: log_id(1, 1, 1),
        payload: EntryPayload::Normal(stamped(1, provider("provider-a", 1)).into()),
    };
    state_machine.apply([first]).await.expect("apply");

    // --- subscribe after the first command: told of the second one's revision
    let mut revisions = reader.subscribe();
    assert!(!revisions.has_changed().expect("store alive"));
    let second = Entry {
        log_id: log_id(1, 1, 2),
        payload: EntryPayload::Normal(stamped(2, allocate(1, 1)).into()),
    };
    state_machine.apply([second]).await.expect("apply");
    let revision_after_first = {
        let mut table = AllocationTable::new(TableConfig::default());
        table.apply(&stamped(1, provider("provider-a", 1)));
        table.revision()
    };
    assert!(revisions.has_changed().expect("store alive"));
    let revision = *revisions.borrow_and_update();
    assert!(revision > revision_after_first, "{revision} after {revision_after_first}");
    let state = reader.read().await;
    let first_new = state
        .table()
        .events_from(revision_after_first + 1)
        .expect("kept")
        .next()
        .expect("an event of the second command");
    assert_eq!(revision_after_first + 1, first_new.revision);
}
