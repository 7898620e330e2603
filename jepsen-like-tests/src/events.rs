//! The table's own account of a run: its events in log order, as a watcher
//! saw them (allocation workload with `--preemption`).
//!
//! The history says what clients were told and when; it cannot say in which
//! order the log applied a grant, a preemption and a quota change that
//! raced. The events can: every replica applies the same entries in the
//! same order and numbers their events by revision. A watcher (the client
//! library's [`qm_client::WatchStream`], which resumes on another replica
//! from the last revision seen + 1 after a failover, without gaps or
//! duplicates) streams them from revision 1 while the run goes, through the
//! admin's client (under TLS a consumer's watch would show its namespace's
//! events only). After the final read the run asks the table for its
//! revision and waits until the watcher has reached it, so the log is whole.
//!
//! Kept: the events that change what a namespace holds or may hold
//! ([`KEPT_EVENT_TYPES`]); `resource_status` and the rest are dropped as
//! they arrive. Written to `events.json` in the report, read back by
//! `qm-jepsen check`.
//!
//! If the table compacted revisions the watcher had not seen yet (it keeps
//! the newest `event_history_max` events, 10,000 by default), or the watcher
//! did not reach the final revision in time, the log is marked incomplete
//! and the checkers that need it say `unknown` instead of guessing.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use qm_client::{Client, Consistency};
use qm_state_machine::PreemptionSetting;
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::error::JepsenError;
use crate::history::GrantView;

/// The event types the log keeps.
pub const KEPT_EVENT_TYPES: [&str; 10] = [
    "allocation_granted",
    "allocation_released",
    "allocation_expired",
    "allocation_moved",
    "allocation_preempted",
    "request_cancelled",
    "request_rejected",
    "quota_set",
    "quota_deleted",
    "preemption_set",
];
/// Pause before the watcher opens a new stream after one ended in an error.
pub const WATCH_RESTART_DELAY_MS: u64 = 500;
/// How long the run waits, after the final read, for the watcher to reach
/// the table's revision.
pub const WATCH_CATCH_UP_TIMEOUT_MS: u64 = 30_000;
/// The file in the report directory.
pub const EVENTS_FILE: &str = "events.json";

/// One event as the watcher kept it: the fields of its JSON (`qm watch`
/// prints the same), those the checkers read.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchedEvent {
    pub revision: u64,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocation_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// `allocation_granted`, `allocation_moved`: the units held.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub grants: Vec<GrantView>,
    /// `allocation_preempted`: the victim's priority, the preemptor, and
    /// whether the victim went back to the queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preemptor_request_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preemptor_namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preemptor_priority: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requeued: Option<bool>,
    /// `quota_set`: the namespace's whole quota, kind → limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<BTreeMap<String, u64>>,
    /// `preemption_set`: whether the namespace's allocations may be preempted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preemptible: Option<bool>,
    /// `preemption_set`: who may preempt (`None`: a namespace follows the cluster's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub setting: Option<PreemptionSetting>,
}

impl WatchedEvent {
    /// Parses an event's JSON; `None` for a type the log does not keep.
    pub fn from_json(json: &str) -> Result<Option<WatchedEvent>, serde_json::Error> {
        let value: serde_json::Value = serde_json::from_str(json)?;
        let kind = value.get("type").and_then(serde_json::Value::as_str).unwrap_or_default();
        if !KEPT_EVENT_TYPES.contains(&kind) {
            return Ok(None);
        }
        serde_json::from_value(value).map(Some)
    }
}

/// The events of a run, in revision order, and whether nothing is missing.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventLog {
    /// Every kept event from revision 1 to the final revision was seen.
    pub complete: bool,
    /// The table's revision after the final read (0: unknown).
    pub final_revision: u64,
    /// Why the log is incomplete, or what the watcher went through.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    pub events: Vec<WatchedEvent>,
}

impl EventLog {
    /// Writes `events.json` into `dir`.
    pub fn write(&self, dir: &Path) -> Result<(), JepsenError> {
        let path = dir.join(EVENTS_FILE);
        let text = serde_json::to_string(self).expect("events serialise");
        std::fs::write(&path, text).map_err(JepsenError::io(&path))
    }

    /// Reads `events.json` from `dir`; `None` when the run kept none.
    pub fn read(dir: &Path) -> Result<Option<EventLog>, JepsenError> {
        let path = dir.join(EVENTS_FILE);
        if !path.exists() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&path).map_err(JepsenError::io(&path))?;
        serde_json::from_str(&text).map(Some).map_err(|error| JepsenError::Parse {
            path,
            line: 1,
            reason: error.to_string(),
        })
    }
}

/// What the watcher task shares with the run.
#[derive(Default)]
struct Seen {
    events: Vec<WatchedEvent>,
    /// The last revision delivered (kept or not).
    last_revision: u64,
    notes: Vec<String>,
    /// Revisions were lost (compacted before the watcher got them).
    gap: bool,
}

/// A running watcher; [`EventWatcher::finish`] stops it.
pub struct EventWatcher {
    seen: Arc<Mutex<Seen>>,
    task: JoinHandle<()>,
}

impl EventWatcher {
    /// Starts watching every event from revision 1 through `admin`.
    pub fn start(admin: Client) -> EventWatcher {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let task = tokio::spawn(watch(admin, seen.clone()));
        EventWatcher { seen, task }
    }

    fn last_revision(&self) -> u64 {
        self.seen.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).last_revision
    }

    /// Waits until the watcher has seen the table's current revision (read
    /// through `client`, linearizably), then stops it and returns the log.
    pub async fn finish(self, client: &Client) -> EventLog {
        let mut notes = Vec::new();
        let final_revision = match crate::workload::with_final_retries(|| client.system_state(Consistency::Linearizable)).await {
            Ok(state) => state.revision,
            Err(error) => {
                notes.push(format!("the table's final revision could not be read: {error}"));
                0
            }
        };
        let deadline = Instant::now() + Duration::from_millis(WATCH_CATCH_UP_TIMEOUT_MS);
        while final_revision > 0 && self.last_revision() < final_revision && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.task.abort();
        let seen = std::mem::take(&mut *self.seen.lock().unwrap_or_else(|poisoned| poisoned.into_inner()));
        notes.extend(seen.notes);
        let caught_up = final_revision > 0 && seen.last_revision >= final_revision;
        if final_revision > 0 && !caught_up {
            notes.push(format!(
                "the watcher reached revision {} of {final_revision} within {WATCH_CATCH_UP_TIMEOUT_MS} ms",
                seen.last_revision
            ));
        }
        let complete = caught_up && !seen.gap;
        info!(events = seen.events.len(), final_revision, complete, "the watcher's event log");
        EventLog {
            complete,
            final_revision,
            notes,
            events: seen.events,
        }
    }
}

/// The watcher task: streams from `last_revision + 1`, opening a new stream
/// whenever one ends in an error (the client's stream already fails over
/// between replicas; it ends only when its retries ran out or the revision
/// was compacted).
async fn watch(admin: Client, seen: Arc<Mutex<Seen>>) {
    let lock = || seen.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    loop {
        let from = lock().last_revision + 1;
        let mut stream = admin.watch(from, None);
        while let Some(message) = stream.next().await {
            match message {
                Ok(event) => {
                    let mut seen = lock();
                    seen.last_revision = seen.last_revision.max(event.revision);
                    match WatchedEvent::from_json(&event.json) {
                        Ok(Some(kept)) => seen.events.push(kept),
                        Ok(None) => {}
                        Err(error) => seen.notes.push(format!("event {} did not parse: {error}", event.revision)),
                    }
                }
                Err(error) => {
                    let text = error.to_string();
                    warn!(from, error = %text, "the event watch ended; opening it again");
                    let mut seen = lock();
                    if text.contains("compacted") {
                        seen.gap = true;
                        seen.notes
                            .push(format!("events were compacted before the watcher saw them: {text}"));
                        // Nothing older comes back: carry on from the oldest kept.
                        if let Some(oldest) = oldest_kept(&text) {
                            seen.last_revision = oldest.saturating_sub(1);
                        }
                    }
                    break;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(WATCH_RESTART_DELAY_MS)).await;
    }
}

/// The oldest revision kept, from the table's "revision N is compacted; the
/// oldest kept is M" refusal.
fn oldest_kept(message: &str) -> Option<u64> {
    let tail = message.split("oldest kept is ").nth(1)?;
    tail.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_is_kept_by_type_with_its_fields() {
        let preempted = r#"{"type":"allocation_preempted","revision":7,"event_id":"x","timestamp":"t",
            "request_id":"v","allocation_id":"a","namespace":"default","provider_id":"p","priority":1,
            "preemptor_request_id":"h","preemptor_namespace":"default","preemptor_priority":10,"requeued":true}"#;
        let kept = WatchedEvent::from_json(preempted).expect("parses").expect("kept");
        assert_eq!((7, "allocation_preempted"), (kept.revision, kept.kind.as_str()));
        assert_eq!(
            (Some(1), Some(10), Some(true)),
            (kept.priority, kept.preemptor_priority, kept.requeued)
        );
        let status = r#"{"type":"resource_status","revision":8,"resource_id":"cpu-0","status":"allocated"}"#;
        assert_eq!(None, WatchedEvent::from_json(status).expect("parses"));
        assert_eq!(Some(42), oldest_kept("revision 3 is compacted; the oldest kept is 42"));
    }
}
