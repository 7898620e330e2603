//! # qm-client: Quartermaster's wire API, client library and `qm` CLI
//!
//! Quartermaster keeps its allocation table on three or five Raft replicas.
//! This crate is how everything else talks to them: the `.proto` API and its
//! generated code (also used by the server, feature `server`), conversions
//! between the wire and the table's types, a [`Client`] that finds the
//! leader and survives losing it, and the `qm` command line over that client.
//!
//! ```text
//!  qm CLI / your code
//!        │ ResourceRequest (protocol JSON) ──validate──▶ convert ──▶ api::AllocateRequest
//!        ▼
//!  Client::call ──▶ believed leader ──ok──▶ reply (AllocationReply: allocated | queued | rejected)
//!        │            │ UNAVAILABLE + x-qm-leader-addr ──▶ the named leader (no backoff)
//!        │            │ timeout / unavailable / connection error
//!        │            ▼
//!        │       backoff (full jitter) ──▶ next replica … at most retries_max, within request_timeout_ms
//!        ▼
//!  Error: InvalidArgument | NotFound | Conflict | Unavailable (nothing happened) | Unknown (a write may have happened)
//!
//!  Client::watch ──▶ any replica ──events──▶ dedupe by revision ──▶ WatchStream
//!                      ✗ ──▶ next replica, from last_seen_revision + 1
//! ```
//!
//! # Layout
//!
//! * [`proto`]: the generated wire types and stubs (`proto/*.proto`).
//! * [`convert`]: wire types ⇄ the table's types (`qm_state_machine`), and
//!   the protocol's JSON shapes.
//! * [`config`]: [`ClientConfig`], its defaults and limits.
//! * [`client`]: [`Client`]: every API call, leader discovery, redirects,
//!   failover, retries with the same `request_id`.
//! * [`error`]: [`Error`], what a call ends in.
//! * `failure`: how one failed attempt is classified (redirect, retry, final).
//! * [`retry`]: [`Backoff`], exponential with full jitter.
//! * `replicas`: the replicas' channels and the believed leader.
//! * `pipeline`: allocate, release and renew multiplexed on one `Pipeline`
//!   stream per replica (unary calls against a replica without it).
//! * [`watch`]: [`WatchStream`], events across failovers.
//! * [`tls`]: mutual TLS: [`TlsConfig`], the certificate's [`tls::Identity`]
//!   (role, name, namespace) and the CA behind `qm certs`.
//! * [`lease`]: [`LeaseKeeper`], renews a lease in the background.
//! * [`heartbeat`]: [`HeartbeatLoop`], a provider's heartbeats in the background.
//! * `bench`: the load generator behind `qm bench`.
//! * [`agent`]: a provider agent (`qm agent`): inventory, heartbeats with
//!   usage metrics, confirmations of allocations and releases.
//! * [`cli`]: the `qm` command line (`src/main.rs` only parses and runs it).

pub mod agent;
pub mod bench;
pub mod cli;
pub mod client;
pub mod config;
pub mod convert;
pub mod error;
mod failure;
pub mod heartbeat;
pub mod lease;
mod pipeline;
pub mod proto;
mod replicas;
pub mod retry;
pub mod tls;
pub mod watch;

pub use client::{Client, Confirmation, Consistency};
pub use config::{ClientConfig, ConfigError};
pub use convert::ConvertError;
pub use error::{ConflictKind, Error};
pub use failure::{FIELD_HEADER, LEADER_ADDR_HEADER, LEADER_ID_HEADER, NOT_LEADER_PREFIXES};
pub use heartbeat::HeartbeatLoop;
pub use lease::LeaseKeeper;
pub use retry::Backoff;
pub use tls::TlsConfig;
pub use watch::WatchStream;
