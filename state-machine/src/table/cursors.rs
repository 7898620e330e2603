//! Named cursors: how far a consumer of the event history (the broker
//! bridge) has got, kept in the log so that another process on another host
//! finds it, and who may move it.
//!
//! A cursor is held by one holder at a time for `hold_ms` of the table's
//! clock; another holder's advance is answered with the cursor unchanged
//! until the hold lapses, so of several bridges one publishes and the others
//! stand by. The revision only grows. No event is emitted: a cursor moving
//! is not a change of the allocation table, and an event per advance would
//! give the bridge its own cursor to publish.

use serde::{Deserialize, Serialize};

use super::AllocationTable;
use crate::command::{ApplyResult, CommandResponse};
use crate::error::{CommandError, InvalidArgument};
use crate::limits::{CURSORS_MAX, CURSOR_HOLD_MS_MAX, ID_LEN_MAX};

/// One named cursor.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    pub name: String,
    /// Who may advance it until `held_until_ms`.
    pub holder: String,
    /// The last revision the holder has handed on (0: none yet).
    pub revision: u64,
    /// Table clock at which another holder may take it over.
    pub held_until_ms: u64,
}

impl AllocationTable {
    /// The cursor by name, if one was ever advanced.
    pub fn cursor(&self, name: &str) -> Option<&Cursor> {
        self.cursors.get(name)
    }

    /// Takes or keeps the hold of `name` for `holder` and moves its revision
    /// up to `revision` (never down). Held by another holder whose hold has
    /// not lapsed: answers the cursor as it is, unchanged.
    pub(super) fn advance_cursor(&mut self, name: &str, holder: &str, revision: u64, hold_ms: u64) -> ApplyResult {
        check_name("name", name)?;
        check_name("holder", holder)?;
        if hold_ms > CURSOR_HOLD_MS_MAX {
            return Err(InvalidArgument::new(
                "hold_ms",
                format!("{hold_ms} is longer than the longest hold, {CURSOR_HOLD_MS_MAX} ms"),
            )
            .into());
        }
        if revision > self.revision {
            return Err(InvalidArgument::new(
                "revision",
                format!("{revision} is past the table's newest revision, {}", self.revision),
            )
            .into());
        }
        let now = self.clock_ms;
        match self.cursors.get_mut(name) {
            Some(cursor) if cursor.holder != holder && cursor.held_until_ms > now => {}
            Some(cursor) => {
                cursor.holder = holder.to_owned();
                cursor.revision = cursor.revision.max(revision);
                cursor.held_until_ms = now.saturating_add(hold_ms);
            }
            None => {
                if self.cursors.len() >= CURSORS_MAX {
                    return Err(CommandError::InvalidArgument(InvalidArgument::new(
                        "name",
                        format!("{name:?} would be a new cursor, and the table keeps at most {CURSORS_MAX}"),
                    )));
                }
                self.cursors.insert(
                    name.to_owned(),
                    Cursor {
                        name: name.to_owned(),
                        holder: holder.to_owned(),
                        revision,
                        held_until_ms: now.saturating_add(hold_ms),
                    },
                );
            }
        }
        Ok(CommandResponse::Cursor(self.cursors[name].clone()))
    }
}

fn check_name(field: &str, value: &str) -> Result<(), InvalidArgument> {
    if value.is_empty() || value.len() > ID_LEN_MAX || value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(InvalidArgument::new(
            field,
            format!("must be 1 to {ID_LEN_MAX} bytes without spaces or control characters, got {value:?}"),
        ));
    }
    Ok(())
}
