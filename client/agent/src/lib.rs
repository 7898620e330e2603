//! # qm-agent: a provider agent
//!
//! Offers a host's (or a declared) inventory to the cluster and keeps the
//! cluster's view of it true. Behind `qm agent`.
//!
//! An agent registers its provider with `confirms_allocations: true`, so the
//! table waits for it: a grant on its units stays in `allocation` until the
//! agent confirms (the protocol's AllocateResources → AllocationConfirmed),
//! a release stays in `deallocation` until it confirms again
//! (DeallocateResources → DeallocationConfirmed). It heartbeats with usage
//! metrics so the leader knows it is alive; if it stops, the leader declares
//! it failed after the failure window and moves its allocations elsewhere.
//!
//! ```text
//!               ┌──────────── Agent ─────────────┐
//!  Inventory ──▶│ register (retry while no leader)│
//!  (host/file)  │                                 │
//!               │ Beat: every interval            │──Heartbeat(metrics)──▶ leader (via Client, failover)
//!               │   MetricsCollector (/proc, /sys)│◀─known: false ── register again
//!               │                                 │
//!               │ Confirmer: Watch from revision  │◀─events── any replica (resumes on failover)
//!               │   Ledger ── owed confirmations ─│──Confirm(allocation | deallocation)──▶ leader
//!               │                                 │
//!  notices ◀────│ what it holds, what it did      │
//!               └─────────────────────────────────┘
//!  stop(): abort both tasks, DeregisterProvider (allocations move elsewhere)
//! ```
//!
//! # Layout
//!
//! * [`runner`]: [`Agent`]: start (register), notices, stop (deregister).
//! * [`config`]: [`AgentConfig`]: heartbeat and retry intervals.
//! * [`inventory`]: [`Inventory`]: what is offered, from this host or a file.
//! * [`host`]: reading `/proc` and `/sys`; [`statvfs`]: disk space.
//! * [`metrics`]: [`MetricsCollector`]: utilization, temperature, power per unit.
//! * `beat`: the heartbeat task.
//! * `confirmer`: the watch-and-confirm task.
//! * [`ledger`]: [`Ledger`]: allocations held, confirmations owed (pure).
//! * [`notice`]: [`Notice`]: what the agent reports, as text or JSON.
//! * [`error`]: [`AgentError`], why an agent could not start or stop cleanly.

mod beat;
pub mod config;
mod confirmer;
pub mod error;
pub mod host;
pub mod inventory;
pub mod ledger;
pub mod metrics;
pub mod notice;
pub mod runner;
pub mod statvfs;

pub use config::AgentConfig;
pub use error::AgentError;
pub use host::HostPaths;
pub use inventory::{HostInventoryOptions, Inventory, InventoryError, MetricSource};
pub use ledger::Ledger;
pub use metrics::MetricsCollector;
pub use notice::Notice;
pub use runner::Agent;
