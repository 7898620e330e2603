//! The proposer's batching, timeouts and answers, under `tokio::time::pause()`
//! (`start_paused`), against a writer the test answers by hand.

use std::time::Duration;

use qm_state_machine::{ApplyResult, Command, CommandResponse};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use uuid::Uuid;

use super::*;

const REQUEST_TIMEOUT: Duration = Duration::from_millis(1_000);

type Answer = oneshot::Sender<Result<Vec<ApplyResult>, BatchError>>;

/// Hands every batch's commands to the test with a sender for its answer; a
/// batch whose sender the test drops is never answered.
struct ScriptedWriter {
    batches: mpsc::UnboundedSender<(Vec<Command>, Answer)>,
}

impl BatchWriter for ScriptedWriter {
    async fn write(&self, batch: CommandBatch) -> Result<Vec<ApplyResult>, BatchError> {
        let (answer, answered) = oneshot::channel();
        let commands = batch.commands.into_iter().map(|stamped| stamped.command).collect();
        self.batches.send((commands, answer)).expect("the test receives batches");
        match answered.await {
            Ok(answer) => answer,
            Err(_) => std::future::pending().await,
        }
    }
}

struct Harness {
    proposer: Proposer,
    task: JoinHandle<()>,
    batches: mpsc::UnboundedReceiver<(Vec<Command>, Answer)>,
}

fn start() -> Harness {
    let (batches, received) = mpsc::unbounded_channel();
    let (proposer, task) = Proposer::spawn(ScriptedWriter { batches }, REQUEST_TIMEOUT);
    Harness {
        proposer,
        task,
        batches: received,
    }
}

fn release(n: u128) -> Command {
    Command::Release { id: Uuid::from_u128(n) }
}

fn answer(n: u64) -> ApplyResult {
    Ok(CommandResponse::Ticked { expired: n, rejected: 0 })
}

/// Proposes in a task of its own, and lets it reach the queue.
async fn propose(proposer: &Proposer, command: Command) -> JoinHandle<Result<ApplyResult, ProposeError>> {
    let proposer = proposer.clone();
    let call = tokio::spawn(async move { proposer.propose(command).await });
    tokio::time::sleep(Duration::from_millis(1)).await;
    call
}

async fn answered(call: JoinHandle<Result<ApplyResult, ProposeError>>) -> Result<ApplyResult, ProposeError> {
    call.await.expect("the call's task does not panic")
}

#[tokio::test(start_paused = true)]
async fn an_idle_proposer_sends_a_command_alone() {
    let mut harness = start();

    let call = propose(&harness.proposer, release(1)).await;
    let (commands, reply) = harness.batches.recv().await.expect("a batch");
    assert_eq!(vec![release(1)], commands);

    reply.send(Ok(vec![answer(1)])).expect("the writer waits");
    assert_eq!(Ok(answer(1)), answered(call).await);
}

#[tokio::test(start_paused = true)]
async fn commands_arriving_while_a_batch_is_in_flight_form_the_next_batch() {
    let mut harness = start();
    let first = propose(&harness.proposer, release(1)).await;
    let (_, first_reply) = harness.batches.recv().await.expect("the first batch");

    // --- three arrive while the first is in flight: they wait
    let mut calls = Vec::new();
    for n in 2..=4 {
        calls.push(propose(&harness.proposer, release(n)).await);
    }
    assert!(harness.batches.try_recv().is_err(), "no second batch while one is in flight");

    // --- the first commits: the three go as one batch, each answered its own
    first_reply.send(Ok(vec![answer(1)])).expect("the writer waits");
    let (commands, reply) = harness.batches.recv().await.expect("the second batch");
    assert_eq!(vec![release(2), release(3), release(4)], commands);
    reply.send(Ok(vec![answer(2), answer(3), answer(4)])).expect("the writer waits");

    assert_eq!(Ok(answer(1)), answered(first).await);
    for (call, n) in calls.into_iter().zip(2..) {
        assert_eq!(Ok(answer(n)), answered(call).await);
    }
}

#[tokio::test(start_paused = true)]
async fn a_batch_holds_at_most_the_batch_limit() {
    let mut harness = start();
    let _first = propose(&harness.proposer, release(0)).await;
    let (_, first_reply) = harness.batches.recv().await.expect("the first batch");
    let waiting = PROPOSAL_BATCH_COMMANDS_MAX + 10;
    for n in 1..=waiting {
        let proposer = harness.proposer.clone();
        tokio::spawn(async move { proposer.propose(release(n as u128)).await });
    }
    tokio::time::sleep(Duration::from_millis(1)).await;

    first_reply.send(Ok(vec![answer(0)])).expect("the writer waits");
    let (commands, reply) = harness.batches.recv().await.expect("a full batch");
    assert_eq!(PROPOSAL_BATCH_COMMANDS_MAX, commands.len());
    reply
        .send(Ok(vec![answer(0); PROPOSAL_BATCH_COMMANDS_MAX]))
        .expect("the writer waits");
    let (commands, _) = harness.batches.recv().await.expect("the rest");
    assert_eq!(10, commands.len());
}

#[tokio::test(start_paused = true)]
async fn a_batch_not_committed_in_time_answers_timeout_to_every_caller() {
    let mut harness = start();
    let started = Instant::now();
    let first = propose(&harness.proposer, release(1)).await;
    let (_, _never_answered) = harness.batches.recv().await.expect("the first batch");
    let queued = [
        propose(&harness.proposer, release(2)).await,
        propose(&harness.proposer, Command::Tick).await,
    ];

    let timeout = |operation_type| ProposeError::Timeout {
        timeout_ms: REQUEST_TIMEOUT.as_millis() as u64,
        operation_type,
    };
    assert_eq!(Err(timeout("release")), answered(first).await);
    assert_eq!(REQUEST_TIMEOUT, started.elapsed());

    // --- the batch behind it is written once the first gives up, and is not answered either
    let (commands, _also_never_answered) = harness.batches.recv().await.expect("the second batch");
    assert_eq!(vec![release(2), Command::Tick], commands);
    let [second, third] = queued;
    assert_eq!(Err(timeout("release")), answered(second).await);
    assert_eq!(Err(timeout("tick")), answered(third).await);
}

#[tokio::test(start_paused = true)]
async fn a_batch_error_answers_every_caller_of_the_batch() {
    let mut harness = start();
    let leader = Some(Leader {
        id: 2,
        addr: "127.0.0.1:7102".to_owned(),
    });
    let errors = [
        (
            BatchError::NotLeader { leader: leader.clone() },
            ProposeError::NotLeader {
                leader: leader.clone(),
                operation_type: "release",
            },
        ),
        (
            BatchError::OutcomeUnknown { leader: leader.clone() },
            ProposeError::OutcomeUnknown {
                leader: leader.clone(),
                operation_type: "release",
            },
        ),
        (
            BatchError::Stopping {
                reason: "disk full".to_owned(),
            },
            ProposeError::Stopping {
                operation_type: "release",
                reason: "disk full".to_owned(),
            },
        ),
    ];
    for (batch_error, expected) in errors {
        let first = propose(&harness.proposer, release(1)).await;
        let (_, first_reply) = harness.batches.recv().await.expect("the first batch");
        let calls = [
            propose(&harness.proposer, release(2)).await,
            propose(&harness.proposer, release(3)).await,
        ];
        first_reply.send(Ok(vec![answer(1)])).expect("the writer waits");
        assert_eq!(Ok(answer(1)), answered(first).await);

        let (_, reply) = harness.batches.recv().await.expect("the second batch");
        reply.send(Err(batch_error)).expect("the writer waits");
        for call in calls {
            assert_eq!(Err(expected.clone()), answered(call).await);
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_batch_answered_with_the_wrong_number_of_results_is_an_internal_error() {
    let mut harness = start();
    let call = propose(&harness.proposer, release(1)).await;
    let (_, reply) = harness.batches.recv().await.expect("a batch");

    reply.send(Ok(vec![answer(1), answer(2)])).expect("the writer waits");
    let expected = ProposeError::Internal {
        operation_type: "release",
        reason: "a batch of 1 commands was answered with 2 results".to_owned(),
    };
    assert_eq!(Err(expected), answered(call).await);
}

#[tokio::test(start_paused = true)]
async fn a_stopped_proposer_answers_stopping() {
    let harness = start();
    harness.task.abort();
    assert!(harness.task.await.expect_err("aborted").is_cancelled());

    let stopping = ProposeError::Stopping {
        operation_type: "release",
        reason: crate::consensus::proposer::PROPOSER_STOPPED.to_owned(),
    };
    assert_eq!(Err(stopping), harness.proposer.propose(release(1)).await);
}
