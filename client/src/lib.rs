//! # qm-client: the client library of Quartermaster
//!
//! Quartermaster keeps its allocation table on three or five Raft replicas.
//! This crate is how a program talks to them: a [`Client`] that finds the
//! leader, survives losing it and says exactly what a failed call means.
//! The wire contract it speaks is the `qm-api` crate, re-exported here as
//! [`proto`], [`convert`], [`wire`] and [`tls`] so that one dependency is
//! enough. The `qm` command line, the provider agent and the certificate
//! authority are crates of their own (`client/cli`, `client/agent`,
//! `client/ca`) built on this one.
//!
//! ```text
//!  your code
//!        │ ResourceRequest (protocol JSON) ──validate──▶ convert ──▶ api::AllocateRequest
//!        ▼
//!  Client::call ──▶ believed leader ──ok──▶ reply (AllocationReply: allocated | queued | rejected)
//!        │            │ UNAVAILABLE + x-qm-error: not-leader + x-qm-leader-addr ──▶ the named leader (no backoff)
//!        │            │ timeout / unavailable / connection error
//!        │            ▼
//!        │       backoff (full jitter) ──▶ next replica … at most retries_max, within request_timeout_ms
//!        ▼
//!  Error: InvalidArgument | NotFound | Conflict | Unavailable (nothing happened) | Unknown (a write may have happened)
//!
//!  refresh task ──ClusterStatus (on start, every interval, after redirects)──▶ members ──▶ ReplicaSet
//!
//!  Client::watch ──▶ any replica ──events──▶ dedupe by revision ──▶ WatchStream
//!                      ✗ ──▶ next replica, from last_seen_revision + 1
//! ```
//!
//! # Layout
//!
//! * [`config`]: [`ClientConfig`], its defaults and limits.
//! * [`client`]: [`Client`]: every API call, leader discovery, redirects,
//!   failover, retries with the same `request_id`.
//! * `consistency`: [`Consistency`], linearizable or stale reads.
//! * [`error`]: [`Error`], what a call ends in.
//! * `failure`: how one failed attempt is classified (redirect, retry, final).
//! * `call_plan`: what a call does after a failed attempt (send to the
//!   hinted leader, wait and try another replica, or give up): a pure step.
//! * `leader_check`: while an attempt on the believed leader goes
//!   unanswered, the other replicas are asked who leads (a paused leader).
//! * [`policy`]: capability policies: set, get, list, delete.
//! * [`quota`]: quotas, preemption settings and the allocate preview.
//! * [`retry`]: [`Backoff`], exponential with full jitter.
//! * `replicas`: the replicas' channels, the believed leader, and the
//!   rotation calls go round: the seeds and the members read since.
//! * [`membership`]: the refresh that reads the cluster's membership on
//!   start, every `membership_refresh_interval_ms`, and after redirects and
//!   replicas found gone, so a client follows replicas added and removed.
//! * `pipeline`: allocate, release and renew multiplexed on one `Pipeline`
//!   stream per replica.
//! * [`watch`]: [`WatchStream`], events across failovers.
//! * [`lease`]: [`LeaseKeeper`], renews a lease in the background.
//! * [`heartbeat`]: [`HeartbeatLoop`], a provider's heartbeats in the background.

mod call_plan;
pub mod client;
pub mod config;
mod consistency;
pub mod error;
mod failure;
pub mod heartbeat;
mod leader_check;
pub mod lease;
pub mod membership;
mod pipeline;
pub mod policy;
pub mod quota;
mod replicas;
pub mod retry;
pub mod watch;

pub use qm_api::{backup, convert, proto, tls, wire};

pub use client::{counting_attempts, Client, Confirmation, Consistency};
pub use config::{ClientConfig, ConfigError};
pub use error::Error;
pub use heartbeat::HeartbeatLoop;
pub use lease::LeaseKeeper;
pub use membership::{MembershipChange, MembershipError};
pub use qm_api::wire::ConflictKind;
pub use qm_api::ConvertError;
pub use replicas::KnownReplica;
pub use retry::Backoff;
pub use tls::TlsConfig;
pub use watch::WatchStream;
