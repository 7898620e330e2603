//! What only the leader does, outside the log: turn providers' silence into
//! `ProviderFailed` (and their return into `ProviderRecovered`), propose a
//! `Tick` when a lease or deadline is due, and give every lease a fresh
//! window when it takes over.
//!
//! ```text
//!  every tick_interval_ms:
//!    round(leading term, book's term) ─▶ NotLeading: end the book's leadership
//!                                     ├▶ TakeOver: read barrier, fresh book, take_over_work(table) ─▶ RefreshLeases?
//!                                     └▶ Lead
//!    due_work(table, book, now, window) ─▶ DueWork ─▶ Tick, ProviderFailed…, ProviderRecovered… ─▶ Node::propose
//! ```
//!
//! Every decision is a pure function of the table, the heartbeat book and
//! the time ([`round`], [`take_over_work`], [`due_work`]), tested for exact
//! outputs in `duties_test.rs`; [`run_duties`] only drives them.

use std::sync::Arc;
use std::time::Duration;

use qm_state_machine::{AllocationTable, Command, ProviderStatus};
use tracing::{info, warn};

use crate::clock::now_ms;
use crate::consensus::heartbeats::HeartbeatBook;
use crate::consensus::node::Node;

/// How one round of the duties begins, given who leads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Round {
    /// This replica does not lead: the book's leadership ends, nothing is proposed.
    NotLeading,
    /// This replica leads a term the book does not belong to yet: take over first.
    TakeOver { term: u64 },
    /// The book belongs to the term this replica leads: propose the due work.
    Lead,
}

/// The round for the term this replica leads (if any) and the book's term.
pub fn round(leading_term: Option<u64>, book_term: Option<u64>) -> Round {
    match leading_term {
        None => Round::NotLeading,
        Some(term) if book_term != Some(term) => Round::TakeOver { term },
        Some(_) => Round::Lead,
    }
}

/// What a replica that has just taken over proposes before its first due work.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TakeOverWork {
    /// Something is due some day (a lease or a queued request's deadline):
    /// propose `RefreshLeases`, so that renewals lost during the election
    /// expire nothing.
    pub refresh_leases: bool,
}

pub fn take_over_work(table: &AllocationTable) -> TakeOverWork {
    TakeOverWork {
        refresh_leases: table.next_due_ms().is_some(),
    }
}

/// Ticks one round proposes at most while allocations are still to move off
/// failed providers: each moves at most the table's
/// `evacuations_per_command_max` (1,024) and is its own log entry, so
/// heartbeats and other writes interleave, and with a round every 100 ms a
/// mass failure is evacuated at up to ~160,000 allocations a second.
pub const EVACUATION_TICKS_PER_ROUND_MAX: usize = 16;

/// What one round of the leader's duties proposes, in this order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DueWork {
    /// A lease expiry or a queued request's deadline is at or before now.
    pub tick: bool,
    /// Further ticks that only carry on an evacuation, at most
    /// [`EVACUATION_TICKS_PER_ROUND_MAX`].
    pub evacuation_ticks: usize,
    /// Active providers silent for longer than the failure window, by id.
    pub failed_providers: Vec<String>,
    /// Failed providers heard from within the failure window, by id (not
    /// a deregistered one still being evacuated: it is leaving).
    pub recovered_providers: Vec<String>,
}

impl DueWork {
    /// The commands to propose, in order: `Tick`, then each
    /// `ProviderFailed`, then each `ProviderRecovered`.
    pub fn into_commands(self) -> Vec<Command> {
        let ticks = usize::from(self.tick).max(self.evacuation_ticks);
        let tick = std::iter::repeat_n(Command::Tick, ticks);
        let failed = self
            .failed_providers
            .into_iter()
            .map(|provider_id| Command::ProviderFailed { provider_id });
        let recovered = self
            .recovered_providers
            .into_iter()
            .map(|provider_id| Command::ProviderRecovered { provider_id });
        tick.chain(failed).chain(recovered).collect()
    }
}

/// The work due at `now_ms`. A provider is silent when its last heartbeat
/// (or the start of this leadership, whichever is later) is more than
/// `window_ms` ago; a book without a leadership finds no one silent.
pub fn due_work(table: &AllocationTable, heartbeats: &HeartbeatBook, now_ms: u64, window_ms: u64) -> DueWork {
    let mut work = DueWork {
        tick: table.next_due_ms().is_some_and(|due| due <= now_ms),
        evacuation_ticks: evacuation_ticks(table.evacuations_pending(), table.config().evacuations_per_command_max),
        ..DueWork::default()
    };
    for provider in table.providers() {
        let provider_id = &provider.provider_id;
        match provider.status {
            ProviderStatus::Active => {
                let since = heartbeats.silent_since(provider_id).unwrap_or(now_ms);
                if now_ms.saturating_sub(since) > window_ms {
                    work.failed_providers.push(provider_id.to_string());
                }
            }
            // Deregistered and still being evacuated: leaving, not coming back.
            ProviderStatus::Failed if table.deregistering(provider_id) => {}
            ProviderStatus::Failed => {
                // Heard from after it was declared failed: it is back.
                let heard = heartbeats.last_seen_ms(provider_id);
                if heard.is_some_and(|at| now_ms.saturating_sub(at) <= window_ms) {
                    work.recovered_providers.push(provider_id.to_string());
                }
            }
        }
    }
    work
}

/// Ticks enough to move `pending` allocations at `per_tick` each, at most
/// [`EVACUATION_TICKS_PER_ROUND_MAX`].
pub fn evacuation_ticks(pending: usize, per_tick: usize) -> usize {
    pending.div_ceil(per_tick.max(1)).min(EVACUATION_TICKS_PER_ROUND_MAX)
}

/// Runs the leader's duties every `tick_interval_ms` until the node stops.
pub async fn run_duties(node: Arc<Node>) {
    let mut interval = tokio::time::interval(Duration::from_millis(node.config.tick_interval_ms));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        interval.tick().await;
        let book_term = node.heartbeats.lock().expect("heartbeat book").term();
        match round(node.leading_term(), book_term) {
            Round::NotLeading => {
                node.heartbeats.lock().expect("heartbeat book").end_leadership();
                continue;
            }
            Round::TakeOver { term } => {
                if !take_over(&node, term).await {
                    continue;
                }
            }
            Round::Lead => {}
        }
        let (now, window_ms) = (now_ms(), node.config.provider_failure_window_ms);
        let work = node
            .with_table(|table| due_work(table, &node.heartbeats.lock().expect("heartbeat book"), now, window_ms))
            .await;
        propose_all(&node, work.into_commands()).await;
    }
}

/// Starts a leadership: waits until every entry of earlier terms is applied
/// (so the table is current), resets the heartbeat book, refreshes leases.
/// `false` if leadership is not confirmed yet (the next round tries again).
async fn take_over(node: &Node, term: u64) -> bool {
    if let Err(error) = node.raft.ensure_linearizable().await {
        warn!(%error, "leadership not confirmed yet");
        return false;
    }
    *node.heartbeats.lock().expect("heartbeat book") = HeartbeatBook::taken_over(term, now_ms());
    info!(
        term,
        operation_type = "take_over",
        "this replica leads; providers and leases get a fresh window"
    );
    let work = node.with_table(take_over_work).await;
    if work.refresh_leases {
        propose_all(node, vec![Command::RefreshLeases]).await;
    }
    true
}

/// Proposes each command in turn; one that is not committed is logged and
/// left to the next round, which decides again from the table.
async fn propose_all(node: &Node, commands: Vec<Command>) {
    for command in commands {
        let operation_type = command.operation_type();
        let provider_id = match &command {
            Command::ProviderFailed { provider_id } => {
                warn!(resource_id = %provider_id, operation_type, "no heartbeat within the failure window");
                Some(provider_id.clone())
            }
            Command::ProviderRecovered { provider_id } => {
                info!(resource_id = %provider_id, operation_type, "failed provider heartbeats again");
                Some(provider_id.clone())
            }
            _ => None,
        };
        if let Err(error) = node.propose(command).await {
            warn!(%error, operation_type, resource_id = provider_id.as_deref().unwrap_or(""), "leader duty not committed");
        }
    }
}

#[cfg(test)]
#[path = "duties_test.rs"]
mod tests;
