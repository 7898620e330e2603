//! `request_id` as the idempotency key, and the dedupe window that bounds how
//! long (and how many) finished requests are remembered.

mod common;

use common::*;
use qm_state_machine::{AllocationRequest, Command, CommandError, CommandResponse, RequestState, TableConfig};

#[test]
fn the_same_request_twice_gets_the_same_record_and_one_allocation() {
    let mut t = Table::with_providers(vec![provider("node_1", cores("", 2))]);
    let wanted = request(1, &[("cpu_cores", 1)]);

    // --- first: granted
    let first = t.allocate(&wanted);
    assert_eq!(2, first.events.len());

    // --- a retry (say, across a leader change): the same answer, nothing new
    let retry = t.allocate(&wanted);
    assert_eq!((first.result, vec![]), (retry.result, retry.events));
    assert_eq!(1, t.table.active_allocations());
    assert_eq!(1, t.table.usage().by_kind["cpu_cores"].used);
}

#[test]
fn a_retry_of_a_queued_request_answers_its_current_record() {
    let mut t = Table::with_providers(vec![provider("node_1", cores("", 1))]);
    t.allocate(&request(1, &[("cpu_cores", 1)]));
    let waiting = request(2, &[("cpu_cores", 1)]);
    assert_eq!(RequestState::Queued, t.allocate_record(&waiting).state);

    // --- retried while queued: still queued, still one entry in the queue
    assert_eq!(RequestState::Queued, t.allocate_record(&waiting).state);
    assert_eq!(1, t.table.queue_len());

    // --- granted in the meantime: the retry sees the grant
    t.release(id(1));
    let retried = t.allocate(&waiting);
    assert_eq!(Vec::<qm_state_machine::Event>::new(), retried.events);
    assert_eq!(RequestState::Monitoring, record_of(retried).state);
}

#[test]
fn a_different_request_under_a_used_id_is_refused() {
    let mut t = Table::with_providers(vec![provider("node_1", cores("", 2))]);
    t.allocate(&request(1, &[("cpu_cores", 1)]));

    // --- same id, other quantities or other priority: refused, the table unchanged
    for changed in [
        request(1, &[("cpu_cores", 2)]),
        AllocationRequest {
            priority: 3,
            ..request(1, &[("cpu_cores", 1)])
        },
    ] {
        assert_eq!(
            Err(CommandError::RequestIdReused { request_id: id(1) }),
            t.allocate(&changed).result
        );
    }
}

#[test]
fn a_finished_request_is_remembered_for_the_dedupe_window() {
    let mut t = Table::with_config(TableConfig {
        dedupe_window_ms: 10_000,
        ..Default::default()
    });
    t.register(provider("node_1", cores("", 1)));
    let wanted = request(1, &[("cpu_cores", 1)]);
    t.allocate(&wanted);
    t.now_ms = T0 + 1_000;
    let released = record_of(t.release(id(1)));
    assert_eq!(Some(T0 + 1_000), released.finished_at_ms().get());

    // --- a retry inside the window answers the released record; nothing is allocated again
    t.now_ms = T0 + 10_999;
    let retry = t.allocate(&wanted);
    assert_eq!(
        (Ok(CommandResponse::Request(std::sync::Arc::new(released))), vec![]),
        (retry.result, retry.events)
    );
    assert_eq!(0, t.table.active_allocations());

    // --- the first command at the window's end forgets it
    t.tick_at(T0 + 11_000);
    assert_eq!(None, t.table.get(id(1)));
    assert_eq!(0, t.table.requests_len());

    // --- a retry now is a new request and is granted again
    let again = t.allocate(&wanted);
    assert_eq!(2, again.events.len());
    assert_eq!(RequestState::Monitoring, record_of(again).state);
}

#[test]
fn at_most_finished_requests_max_are_remembered_oldest_first_out() {
    let mut t = Table::with_config(TableConfig {
        finished_requests_max: 2,
        ..Default::default()
    });
    t.register(provider("node_1", cores("", 1)));

    // --- three rejected requests (nobody offers gpus): the oldest is forgotten, inside the window
    for n in 1..=3 {
        t.now_ms += 1;
        assert_eq!(RequestState::Error, t.allocate_record(&request(n, &[("gpu", 1)])).state);
    }
    assert_eq!(
        (None, true, true),
        (t.table.get(id(1)), t.table.get(id(2)).is_some(), t.table.get(id(3)).is_some())
    );
}

#[test]
fn eviction_work_per_command_is_bounded() {
    let config = TableConfig {
        dedupe_window_ms: 1_000,
        evictions_per_command_max: 2,
        ..Default::default()
    };
    let mut t = Table::with_config(config);
    t.register(provider("node_1", cores("", 1)));
    for n in 1..=5 {
        t.allocate(&request(n, &[("gpu", 1)]));
    }

    // --- all five are past the window; each command forgets at most two
    for remaining in [3, 1, 0] {
        t.tick_at(T0 + 1_000);
        assert_eq!(remaining, t.table.requests_len());
    }
}

#[test]
fn a_failed_command_evicts_nothing() {
    let mut t = Table::with_config(TableConfig {
        dedupe_window_ms: 1_000,
        ..Default::default()
    });
    t.register(provider("node_1", cores("", 1)));
    t.allocate(&request(1, &[("gpu", 1)]));

    // --- past the window, but the command fails: the table (and its clock) stay as they were
    t.now_ms = T0 + 5_000;
    assert!(t.apply(Command::Release { id: id(42) }).result.is_err());
    assert_eq!((1, T0), (t.table.requests_len(), t.table.clock_ms()));
}
