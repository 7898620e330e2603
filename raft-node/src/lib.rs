//! # qm-raft-node: one Quartermaster manager replica
//!
//! Three or five replicas hold the allocation table of `qm-state-machine` in
//! a Raft-replicated state machine (openraft 0.9), each with its own sled
//! database, talking gRPC (tonic) to each other and to clients.
//!
//! ```text
//!  client ──gRPC──▶ ApiService ──validate──▶ Node::propose ──▶ openraft (leader)
//!                      │  follower: UNAVAILABLE + x-qm-leader-addr          │ replicate to a majority,
//!                      │                                                    │ each flushes sled first
//!                      ▼                                                    ▼
//!               read_barrier (read index)                 StateMachineStore::apply ─▶ AllocationTable
//!                      │                                                    │ events
//!                      └──────────── reads ◀────────────────────────────────┴─▶ Watch streams
//! ```
//!
//! # Layout
//!
//! * [`config`]: flags, TOML file, defaults, validation.
//! * [`server`]: [`run`]: storage, Raft, gRPC services, bootstrap, health, metrics.
//! * [`node`]: [`node::Node`], the shared handle: propose, read barrier, leader redirect.
//! * [`proposer`]: batches concurrent commands into one log entry (group commit).
//! * [`api`]: the public gRPC API.
//! * [`leader`]: the leader's duties: heartbeats, ticks, provider failure, fresh lease window.
//! * [`network`]: Raft RPC between replicas; [`proto`]: its generated service.
//! * [`security`]: mutual TLS, and which certificate may make which call.
//! * [`storage`]: sled behind openraft's log and state-machine traits.
//! * [`metrics`]: Prometheus exposition.
//! * [`codec`]: bincode for what replicas send each other.
//! * [`types`]: the openraft type configuration.

pub mod api;
pub mod clock;
pub mod codec;
pub mod config;
pub mod consensus;
pub mod metrics;
pub mod network;
pub mod proto;
pub mod security;
pub mod server;
pub mod storage;
pub mod types;

pub use server::run;
