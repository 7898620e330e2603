//! The linearizability checker on hand-built histories: valid ones pass,
//! each known bug (stale read, lost write, two holders, a wrong answer) is
//! flagged.

use super::*;
use crate::checker::test_support::{acquire, read_units, release, resend, HistoryBuilder};
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
    assert_eq!(2, report.result.notes.len(), "one history per unit: {:?}", report.result.notes);
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
