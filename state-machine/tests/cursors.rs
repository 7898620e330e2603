//! Named cursors: one holder at a time, a revision that only grows, bounded
//! in number and in hold, kept through a snapshot, and no event of their own.

mod common;

use common::*;
use qm_state_machine::limits::{CURSORS_MAX, CURSOR_HOLD_MS_MAX};
use qm_state_machine::{AllocationTable, Command, CommandError, CommandResponse, Cursor};

fn advance(t: &mut Table, name: &str, holder: &str, revision: u64, hold_ms: u64) -> Result<Cursor, CommandError> {
    let applied = t.apply(Command::AdvanceCursor {
        name: name.into(),
        holder: holder.into(),
        revision,
        hold_ms,
    });
    assert!(applied.events.is_empty(), "a cursor emits no event: {:?}", applied.events);
    match applied.result? {
        CommandResponse::Cursor(cursor) => Ok(cursor),
        other => panic!("not a cursor: {other:?}"),
    }
}

/// A table with a few events, so cursors have revisions to point at.
fn table_with_events() -> Table {
    let mut t = Table::with_providers(vec![provider("node_1", cores("a", 4))]);
    t.allocate(&request(1, &[("cpu_cores", 1)]));
    t.allocate(&request(2, &[("cpu_cores", 1)]));
    assert!(t.table.revision() >= 3);
    t
}

#[test]
fn one_holder_at_a_time_until_its_hold_lapses() {
    let mut t = table_with_events();
    let revision_before = t.table.revision();

    // --- the first holder takes it; its revision only grows
    let cursor = advance(&mut t, "bridge", "a", 2, 10_000).unwrap();
    assert_eq!(
        (cursor.holder.as_str(), cursor.revision, cursor.held_until_ms),
        ("a", 2, T0 + 10_000)
    );
    assert_eq!(advance(&mut t, "bridge", "a", 1, 10_000).unwrap().revision, 2, "never moves back");
    assert_eq!(advance(&mut t, "bridge", "a", 3, 10_000).unwrap().revision, 3);

    // --- another holder is answered with the cursor as it is
    t.now_ms += 9_999;
    let refused = advance(&mut t, "bridge", "b", 0, 10_000).unwrap();
    assert_eq!((refused.holder.as_str(), refused.revision), ("a", 3));

    // --- once the hold lapses, the other takes over from where the first got to
    t.now_ms += 1;
    let taken = advance(&mut t, "bridge", "b", 0, 10_000).unwrap();
    assert_eq!(
        (taken.holder.as_str(), taken.revision, taken.held_until_ms),
        ("b", 3, t.now_ms + 10_000)
    );
    assert_eq!(advance(&mut t, "bridge", "a", 3, 10_000).unwrap().holder, "b");

    // --- a hold of 0 lets go at once
    advance(&mut t, "bridge", "b", 3, 0).unwrap();
    assert_eq!(advance(&mut t, "bridge", "a", 3, 10_000).unwrap().holder, "a");

    // --- cursors are not events: the table's revision is where it was
    assert_eq!(t.table.revision(), revision_before);
    assert_eq!(t.table.cursor("bridge").unwrap().holder, "a");
    assert!(t.table.cursor("other").is_none());
}

#[test]
fn bad_advances_name_the_field_and_change_nothing() {
    let mut t = table_with_events();
    let past = t.table.revision() + 1;
    let field = |result: Result<Cursor, CommandError>| result.unwrap_err().field().map(str::to_owned);

    assert_eq!(field(advance(&mut t, "", "a", 0, 1_000)).as_deref(), Some("name"));
    assert_eq!(field(advance(&mut t, "bridge", "has space", 0, 1_000)).as_deref(), Some("holder"));
    assert_eq!(field(advance(&mut t, "bridge", "a", past, 1_000)).as_deref(), Some("revision"));
    assert_eq!(
        field(advance(&mut t, "bridge", "a", 0, CURSOR_HOLD_MS_MAX + 1)).as_deref(),
        Some("hold_ms")
    );
    assert!(t.table.cursor("bridge").is_none());

    // --- at most CURSORS_MAX names; an existing one still advances
    for n in 0..CURSORS_MAX {
        advance(&mut t, &format!("c{n}"), "a", 0, 1_000).unwrap();
    }
    assert_eq!(field(advance(&mut t, "one-too-many", "a", 0, 1_000)).as_deref(), Some("name"));
    assert_eq!(advance(&mut t, "c0", "a", 1, 1_000).unwrap().revision, 1);
}

#[test]
fn cursors_survive_a_snapshot() {
    let mut t = table_with_events();
    advance(&mut t, "bridge", "a", 2, 60_000).unwrap();
    let restored = AllocationTable::from_snapshot_bytes(&t.table.to_snapshot_bytes()).unwrap();
    assert_eq!(restored, t.table);
    assert_eq!(restored.cursor("bridge"), t.table.cursor("bridge"));
}
