//! The linearizability checker on hand-built histories: valid ones pass,
//! each known bug (stale read, lost write, two holders, a wrong answer) is
//! flagged.

use super::*;
use crate::checker::test_support::{acquire, acquire_once, read_units, release, resend, HistoryBuilder};
use crate::checker::Validity;
use crate::history::OpType;

fn verdict(history: &mut HistoryBuilder) -> LinearizabilityReport {
    check(&history.operations(), SearchLimits::default())
}

fn assert_valid(history: &mut HistoryBuilder) {
    let report = verdict(history);
    assert_eq!(Validity::VALID, report.result.valid, "{:#?}", report.result);
}

fn assert_invalid(history: &mut HistoryBuilder) -> LinearizabilityReport {
    let report = verdict(history);
    assert_eq!(Validity::INVALID, report.result.valid, "{:#?}", report.result);
    assert_eq!(1, report.failures.len());
    report
}

#[test]
fn acquire_read_release_read_is_linearizable() {
    let mut history = HistoryBuilder::default();
    history
        .ok(0, 0, 10, acquire("u", "a", Some("allocated")))
        .ok(1, 20, 30, read_units(&[("u", &["a"])]))
        .ok(0, 40, 50, release("u", "a", Some("released")))
        .ok(1, 60, 70, read_units(&[("u", &[])]));
    assert_valid(&mut history);
}

#[test]
fn a_queued_request_gets_the_unit_when_the_holder_lets_go() {
    let mut history = HistoryBuilder::default();
    history
        .ok(0, 0, 10, acquire("u", "a", Some("allocated")))
        .ok(1, 20, 30, acquire("u", "b", Some("queued")))
        .ok(0, 40, 50, release("u", "a", Some("released")))
        .ok(2, 60, 70, read_units(&[("u", &["b"])]))
        .ok(1, 80, 90, release("u", "b", Some("released")))
        .ok(2, 100, 110, release("u", "b", Some("released")))
        .ok(2, 120, 130, release("u", "c", Some("not-found")));
    assert_valid(&mut history);
}

#[test]
fn a_retried_acquire_may_answer_the_status_it_has_by_then() {
    // b's first attempt queued it; the holder released; the retry of the
    // same request answers "allocated": effect and answer at two moments.
    let mut history = HistoryBuilder::default();
    history
        .ok(0, 0, 10, acquire("u", "a", Some("allocated")))
        .ok(1, 20, 100, acquire("u", "b", Some("allocated")))
        .ok(0, 30, 40, read_units(&[("u", &["a"])]))
        .ok(0, 50, 60, release("u", "a", Some("released")));
    assert_valid(&mut history);
}

#[test]
fn an_unknown_acquire_may_take_effect_late() {
    let mut history = HistoryBuilder::default();
    history
        .info(0, 0, 10, acquire("u", "a", None))
        .ok(1, 20, 30, read_units(&[("u", &[])]))
        .ok(1, 40, 50, read_units(&[("u", &["a"])]))
        .ok(2, 60, 70, release("u", "a", Some("released")));
    assert_valid(&mut history);
}

#[test]
fn a_stale_read_is_caught() {
    // --- a acquired, then a read that started afterwards says the unit is free
    let mut history = HistoryBuilder::default();
    history
        .ok(0, 0, 10, acquire("u", "a", Some("allocated")))
        .ok(1, 20, 30, read_units(&[("u", &["a"])]))
        .ok(0, 40, 50, release("u", "a", Some("released")))
        .ok(1, 60, 70, read_units(&[("u", &["a"])]));
    let report = assert_invalid(&mut history);
    let description = &report.result.anomalies[0].description;
    assert!(description.contains("read -> [r0]"), "{description}");
    assert!(description.contains("free"), "{description}");
    assert_eq!(
        "a", report.result.anomalies[0].violation["requests"]["r0"],
        "names resolve to request ids"
    );
}

#[test]
fn a_lost_write_is_caught() {
    // --- an acknowledged acquire, never released, gone at the final read
    let mut history = HistoryBuilder::default();
    history.ok(0, 0, 10, acquire("u", "a", Some("allocated")));
    let mut final_read = read_units(&[("u", &[])]);
    if let Payload::Read(value) = &mut final_read {
        value.final_read = true;
    }
    history.ok(9, 100, 110, final_read);
    let report = assert_invalid(&mut history);
    assert!(report.result.anomalies[0].description.contains("final read"));
}

#[test]
fn two_holders_at_once_are_caught() {
    let mut history = HistoryBuilder::default();
    history
        .ok(0, 0, 10, acquire("u", "a", Some("allocated")))
        .ok(1, 20, 30, acquire("u", "b", Some("allocated")));
    assert_invalid(&mut history);

    let mut read_both = HistoryBuilder::default();
    read_both
        .info(0, 0, 10, acquire("u", "a", None))
        .info(1, 0, 10, acquire("u", "b", None))
        .ok(2, 20, 30, read_units(&[("u", &["a", "b"])]));
    assert_invalid(&mut read_both);
}

#[test]
fn a_release_that_answers_wrongly_is_caught() {
    // b was queued, so releasing it cancels it; "released" is a lie.
    let mut history = HistoryBuilder::default();
    history
        .ok(0, 0, 10, acquire("u", "a", Some("allocated")))
        .ok(1, 20, 30, acquire("u", "b", Some("queued")))
        .ok(1, 40, 50, release("u", "b", Some("released")));
    assert_invalid(&mut history);
}

#[test]
fn failed_operations_are_left_out_and_units_are_independent() {
    let mut history = HistoryBuilder::default();
    history
        .op(0, 0, 10, OpType::Fail, acquire("u", "a", None), acquire("u", "a", None))
        .ok(1, 20, 30, acquire("v", "b", Some("allocated")))
        .ok(2, 40, 50, read_units(&[("u", &[]), ("v", &["b"])]));
    let report = verdict(&mut history);
    assert_eq!(Validity::VALID, report.result.valid);
    let per_unit = report.result.notes.iter().filter(|note| !note.starts_with("whole table")).count();
    assert_eq!(2, per_unit, "one history per unit: {:?}", report.result.notes);
}

#[test]
fn a_resend_answers_the_request_status_and_changes_nothing() {
    let mut history = HistoryBuilder::default();
    history
        .ok(0, 0, 10, acquire("u", "a", Some("allocated")))
        .ok(1, 20, 30, resend("u", "a", Some("allocated")))
        .ok(0, 40, 50, release("u", "a", Some("released")))
        .ok(1, 60, 70, resend("u", "a", Some("released")))
        .info(1, 80, 90, resend("u", "a", None))
        .ok(2, 100, 110, read_units(&[("u", &[])]));
    assert_valid(&mut history);
}

#[test]
fn a_resend_answered_from_stale_state_is_caught() {
    // --- released and acknowledged, then a retry says it is still held
    let mut history = HistoryBuilder::default();
    history
        .ok(0, 0, 10, acquire("u", "a", Some("allocated")))
        .ok(0, 20, 30, release("u", "a", Some("released")))
        .ok(1, 40, 50, resend("u", "a", Some("allocated")));
    let report = assert_invalid(&mut history);
    assert!(
        report.result.anomalies[0].description.contains("resend r0 -> allocated"),
        "{:?}",
        report.result.anomalies
    );
}

#[test]
fn a_read_consistent_unit_by_unit_but_impossible_as_a_whole_is_caught() {
    // --- the read spans both writes: u as before a's acquire, v as after
    // b's, which began after a's was acknowledged. Each unit alone fits
    // (the read before a on u, after b on v); no single instant fits both.
    let mut history = HistoryBuilder::default();
    history
        .ok(2, 0, 100, read_units(&[("u", &[]), ("v", &["b"])]))
        .ok(0, 10, 20, acquire("u", "a", Some("allocated")))
        .ok(1, 30, 40, acquire("v", "b", Some("allocated")));

    let report = verdict(&mut history);

    assert_eq!(Validity::INVALID, report.result.valid, "{:#?}", report.result);
    assert!(report.failures.is_empty(), "no unit fails on its own");
    let description = &report.result.anomalies[0].description;
    assert!(description.contains("the table as a whole"), "{description}");
    assert!(description.contains("read -> u: [] v: [r0]"), "{description}");
}

#[test]
fn a_read_of_several_units_at_one_instant_passes() {
    // --- the same writes; the read shows the table between them, or after both
    let mut between = HistoryBuilder::default();
    between
        .ok(2, 0, 100, read_units(&[("u", &["a"]), ("v", &[])]))
        .ok(0, 10, 20, acquire("u", "a", Some("allocated")))
        .ok(1, 30, 40, acquire("v", "b", Some("allocated")));
    assert_valid(&mut between);
    let mut after = HistoryBuilder::default();
    after
        .ok(2, 0, 100, read_units(&[("u", &["a"]), ("v", &["b"])]))
        .ok(0, 10, 20, acquire("u", "a", Some("allocated")))
        .ok(1, 30, 40, acquire("v", "b", Some("allocated")));
    let report = verdict(&mut after);
    assert_eq!(Validity::VALID, report.result.valid, "{:#?}", report.result);
    assert!(
        report.result.notes.iter().any(|note| note.starts_with("whole table")),
        "the whole-table search ran: {:?}",
        report.result.notes
    );
}

#[test]
fn the_whole_table_search_says_unknown_at_its_bound() {
    let mut history = HistoryBuilder::default();
    history
        .ok(2, 0, 100, read_units(&[("u", &["a"]), ("v", &["b"])]))
        .ok(0, 10, 20, acquire("u", "a", Some("allocated")))
        .ok(1, 30, 40, acquire("v", "b", Some("allocated")));
    let units = split_by_unit(&history.operations());
    let table = whole_read::table_history(&units);
    assert_eq!(
        (5, 1),
        (table.calls.len(), table.multi_unit_reads),
        "two acquires of two calls, one read"
    );
    let limits = SearchLimits {
        steps_max: 2,
        states_max: 1_000,
    };

    let verdict = whole_read::check(&units, &table, limits);

    assert!(matches!(verdict, wgl::Linearization::Unknown { .. }), "{verdict:?}");
}

/// b queued behind a, c queued behind b; a releases; b holds. Two-step, b's
/// acquire may enter before c's and answer after a's release. Sent once,
/// its answer is the moment it entered: before the release it was queued,
/// after it c was first in the queue. Only the strict model sees the lie.
fn answered_allocated_across_a_release(b: Payload) -> HistoryBuilder {
    let mut history = HistoryBuilder::default();
    history
        .ok(0, 0, 10, acquire("u", "a", Some("allocated")))
        .ok(1, 20, 100, b)
        .ok(2, 25, 28, acquire("u", "c", Some("queued")))
        .ok(0, 30, 40, release("u", "a", Some("released")))
        .ok(3, 50, 60, read_units(&[("u", &["b"])]));
    history
}

#[test]
fn an_acquire_sent_once_is_judged_by_the_strict_single_step_model() {
    let mut retried = answered_allocated_across_a_release(acquire("u", "b", Some("allocated")));
    assert_valid(&mut retried);

    let mut once = answered_allocated_across_a_release(acquire_once("u", "b", Some("allocated")));
    let report = assert_invalid(&mut once);
    assert!(
        report
            .result
            .anomalies
            .iter()
            .any(|anomaly| anomaly.description.contains("(one attempt)") || anomaly.description.contains("read -> [r1]")),
        "{:?}",
        report.result.anomalies
    );
}
