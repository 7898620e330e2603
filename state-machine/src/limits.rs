//! Every limit of the allocation table, named and bounded (STYLE.md rule 7).
//!
//! The input limits are constants: they are part of the wire contract and every
//! replica must agree on them. The behaviour limits live in [`TableConfig`],
//! which is carried in snapshots so that a restored table behaves exactly like
//! the one it was taken from.

use serde::{Deserialize, Serialize};

/// Longest identifier (provider, resource, requester, namespace, kind, label key).
pub const ID_LEN_MAX: usize = 128;
/// Longest label value.
pub const LABEL_VALUE_LEN_MAX: usize = 256;
/// Labels on one provider, one resource or one constraint.
pub const LABELS_MAX: usize = 32;
/// Longest provider address: a DNS name's limit, which any IP address fits.
pub const PROVIDER_ADDRESS_LEN_MAX: usize = 253;
/// Resources one provider may register. A 256-core machine with memory in
/// 1 GiB blocks fits; a registration past this is refused with the field named.
pub const RESOURCES_PER_PROVIDER_MAX: usize = 4096;
/// Distinct kinds in one request's `resource_requirements`.
pub const REQUIREMENT_KINDS_MAX: usize = 16;
/// Largest quantity of one kind in one request or one resource's capacity
/// (2^40: a petabyte counted in GB, with room to spare). Anything above is a typo.
pub const QUANTITY_MAX: u64 = 1 << 40;
/// Units a request may pin with `constraints.resource_ids`.
pub const PINNED_UNITS_MAX: usize = 256;
/// Longest lease a request may ask for: 7 days.
pub const LEASE_TTL_MS_MAX: u64 = 7 * 24 * 3600 * 1000;
/// Named cursors the table keeps ([`crate::table::Cursor`]); one per bridge
/// deployment is the use, so a few dozen is plenty.
pub const CURSORS_MAX: usize = 64;
/// Longest hold of a cursor: a holder that vanishes blocks the others for
/// at most this long.
pub const CURSOR_HOLD_MS_MAX: u64 = 5 * 60 * 1000;
/// Requests one bulk release ([`crate::Command::ReleaseMatching`]) releases
/// or cancels in one log entry; the rest wait for the next entry, which
/// continues after the last id this one reached. A few milliseconds of
/// apply per entry (`examples/mass_failure.rs`), so heartbeats and
/// elections never wait behind a million releases.
pub const BULK_RELEASE_PER_COMMAND_MAX: usize = 1024;
/// Records one bulk release entry looks at (matching or not) before it
/// stops and names where the next entry continues: a filter that matches
/// few of many records still costs a bounded apply.
pub const BULK_RELEASE_EXAMINED_PER_COMMAND_MAX: usize = 16 * 1024;
/// Longest drain deadline an operator may give: a day.
pub const DRAIN_DEADLINE_MS_MAX: u64 = 24 * 3600 * 1000;
/// Shortest lease: below this a lease would expire between two leader ticks.
pub const LEASE_TTL_MS_MIN: u64 = 1000;
/// Namespaces with rules of their own (a quota, a preemption override or
/// protection from preemption); enough for every tenant of a shared cluster.
pub const NAMESPACE_POLICIES_MAX: usize = 4096;
/// Kinds one namespace's quota names.
pub const QUOTA_KINDS_MAX: usize = 64;
/// Largest quota of one kind: a thousand requests of the largest quantity.
pub const QUOTA_MAX: u64 = QUANTITY_MAX << 10;
/// Namespaces whose own queues one command re-examines after it freed
/// their quota (each up to `queue_examined_per_free_max` requests): a tick
/// expiring leases in thousands of namespaces stays a bounded apply.
pub const NAMESPACES_EXAMINED_PER_FREE_MAX: usize = 16;
/// Providers a preemption search looks at; bounds the cost of a request
/// that may preempt at any cluster size.
pub const PREEMPTION_PROVIDERS_EXAMINED_MAX: usize = 64;
/// Allocations on one provider a preemption search considers as victims
/// (the lowest priority first); a request needing more stays queued.
pub const PREEMPTION_VICTIMS_EXAMINED_MAX: usize = 32;

/// Tunable behaviour of the table. Every replica must use the same values,
/// which is why they travel inside the snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableConfig {
    /// How long a finished request (released, expired, rejected) is remembered
    /// for idempotent retries. A retry arriving later is treated as new.
    pub dedupe_window_ms: u64,
    /// At most this many finished requests are remembered; the oldest are
    /// forgotten first even inside the window, so memory stays bounded.
    pub finished_requests_max: usize,
    /// Finished requests forgotten per applied command, so eviction work is
    /// spread out and one command never stalls the log.
    pub evictions_per_command_max: usize,
    /// Best-fit candidates examined for one placement decision before the
    /// request is queued; bounds the decision's cost at any cluster size.
    pub placement_candidates_max: usize,
    /// Queued requests re-examined each time capacity frees.
    pub queue_examined_per_free_max: usize,
    /// Requests that may wait in the queue at once; past this, new requests
    /// that cannot be placed are rejected with `queue_full`.
    pub queue_len_max: usize,
    /// Lease expiries and deadline rejections handled by one tick; the rest
    /// wait for the next tick.
    pub expirations_per_tick_max: usize,
    /// Events kept for watchers resuming from a revision; older revisions are
    /// compacted, as etcd's watch history is.
    pub event_history_max: usize,
    /// Allocations moved off failed providers per applied command. A
    /// `ProviderFailed` moves this many at most; the rest move in the
    /// commands after it (the leader proposes ticks while any are left), so
    /// a hundred providers failing at once never hold apply for seconds.
    pub evacuations_per_command_max: usize,
    /// Leases a new leader's `RefreshLeases` gives a fresh window per
    /// applied command; the rest in the commands after it, during which no
    /// lease expires.
    pub lease_refreshes_per_command_max: usize,
    /// Moves one optimization plan begins at most (its move budget).
    pub moves_per_plan_max: usize,
    /// A move's target agent must confirm within this, else the move is
    /// rolled back (`optimization_failed`); the source's release is waited
    /// for as long again at most.
    pub move_confirm_timeout_ms: u64,
    /// An allocation that moved is not moved again within this.
    pub move_cooldown_ms: u64,
    /// No automatic plan within this of the last plan (an operator's
    /// `qm optimize` is not held back).
    pub plan_cooldown_ms: u64,
    /// A kind whose fragmentation (1 − largest free on one provider ÷ total
    /// free), in thousandths, is above this triggers a plan on a tick;
    /// 1000 never does.
    pub fragmentation_mark_permille: u64,
    /// Providers looked at as sources, and as targets per allocation, by
    /// one plan: its cost stays bounded at any cluster size.
    pub plan_providers_examined_max: usize,
}

impl Default for TableConfig {
    fn default() -> Self {
        TableConfig {
            dedupe_window_ms: 10 * 60 * 1000,
            finished_requests_max: 100_000,
            evictions_per_command_max: 16,
            placement_candidates_max: 256,
            queue_examined_per_free_max: 64,
            queue_len_max: 100_000,
            expirations_per_tick_max: 4096,
            event_history_max: 10_000,
            evacuations_per_command_max: 1024,
            lease_refreshes_per_command_max: 4096,
            moves_per_plan_max: 4,
            move_confirm_timeout_ms: 30_000,
            move_cooldown_ms: 10 * 60 * 1000,
            plan_cooldown_ms: 60_000,
            fragmentation_mark_permille: 1000,
            plan_providers_examined_max: 256,
        }
    }
}
