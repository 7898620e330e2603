//! # qm-state-machine: the allocation table
//!
//! The heart of Quartermaster: who holds which units of which provider. Every
//! manager replica applies the same Raft log to an [`AllocationTable`] and gets
//! the same table, so this crate is pure: no IO, no clock, no randomness, no
//! async, no `HashMap` iteration, no floating point in decisions. Time enters
//! only as the `now_ms` the leader stamps on each [`StampedCommand`].
//!
//! ```text
//!  ResourceRequest (JSON) ──validate──▶ AllocationRequest ──▶ Command::Allocate
//!                                                                │ (Raft log)
//!  StampedCommand { now_ms, command } ──▶ AllocationTable::apply ──▶ Applied { result, events }
//!                                      (apply_into_history: the result, taking the command; events stay in the history)
//!                                            │
//!                     providers ─ units ─ queue ─ leases ─ event history
//! ```
//!
//! # Layout
//!
//! * [`protocol`]: the protocol's JSON messages (`resource_request`,
//!   `allocation_response`, `resource_status`) and their validation.
//! * [`request`]: a validated [`AllocationRequest`], constraints, placement policy.
//! * [`provider`]: providers, units, exclusive and divisible sharing.
//! * [`quota`]: namespace quotas and preemption settings.
//! * [`policy`]: capability policies per identity (kinds, providers,
//!   amounts, priority, preemption), their bindings and capability URIs.
//! * [`record`]: what the table keeps per request; the protocol's states.
//! * [`command`]: [`Command`], [`StampedCommand`], [`CommandResponse`].
//! * [`event`]: [`Event`]s with a revision that only grows.
//! * [`table`]: [`AllocationTable`]: apply, placement, queue, leases,
//!   provider failure, queries, snapshot (and the cheap copy a snapshot is
//!   encoded from).
//! * [`error`]: typed errors; a failed command changes nothing.
//! * [`limits`]: every bound, named.
//! * [`name`]: [`Name`], the shared string of ids many records repeat.
//! * [`time`]: RFC 3339 without a clock; [`OptionalMillis`], an optional
//!   time in 8 bytes.
//!
//! # Rules of the table
//!
//! * **Placement**: all of a request goes to one provider. Best fit by
//!   default (the provider with the least free of the request's scarcest kind
//!   that still fits), `spread` on request; ties go to the lower provider id,
//!   then the lower resource id. The search is bounded (see [`table`]).
//! * **Queue**: priority (higher first), then arrival. Freed capacity
//!   re-examines the head of the queue; smaller requests may backfill past a
//!   larger one that does not fit yet. A request past its deadline is never
//!   granted; the next tick rejects it.
//! * **Idempotency**: `request_id` is the key. The same request again returns
//!   its record and allocates nothing more; a different request under the same
//!   id is refused. Finished requests are remembered for
//!   [`TableConfig::dedupe_window_ms`] (10 minutes by default) and at most
//!   [`TableConfig::finished_requests_max`] of them (100,000), oldest first out.
//! * **Quotas**: a namespace's active allocations never ask for more of a
//!   kind than its quota. A request that would pass it waits with reason
//!   `quota_exceeded` (is rejected if it alone is larger); lowering a quota
//!   holds new grants and takes nothing away.
//! * **Preemption** (off by default): a request allowed to preempt, that
//!   fits its quota but no provider, takes the fewest allocations of
//!   strictly lower priority it needs on one provider, lowest priority
//!   first, then fewest units, then newest; never from a namespace that
//!   forbids it. See `state-machine/README.md`.
//! * **Time**: deadlines reject queued requests and leases expire only when a
//!   [`Command::Tick`] carries a `now_ms` past them.

pub mod command;
pub mod error;
pub mod event;
pub mod limits;
pub mod name;
pub mod policy;
pub mod protocol;
pub mod provider;
pub mod quota;
pub mod record;
pub mod request;
pub mod table;
pub mod time;

pub use command::{AllocateOptions, Applied, ApplyResult, Command, CommandResponse, ReleaseFilter, StampedCommand};
pub use error::{CommandError, InvalidArgument, SnapshotError};
pub use event::{Event, EventKind, ResourceState};
pub use limits::TableConfig;
pub use name::Name;
pub use policy::{Binding, Capability, CapabilityPolicy, PolicyGrant, PolicySpec, ProviderScope};
pub use protocol::{event_to_json, AllocationResponse, ResourceRequest, ResourceStatusEvent};
pub use provider::{ProviderRegistration, ProviderStatus, ResourceSpec, Scheduling, Sharing};
pub use quota::{NamespacePolicy, OnPreemption, PreemptionSetting};
pub use record::{AllocationStatus, Placement, Rare, RequestRecord, RequestState, UnitGrant};
pub use request::{AllocationRequest, ConstraintSet, Constraints, PlacementPolicy, Requirement};
pub use table::{
    AllocationTable, Cursor, EventsError, KindUsage, ListFilter, NamespaceUsage, Preview, PreviewOutcome, ProviderUsage, Usage, Victim,
};
pub use time::OptionalMillis;
