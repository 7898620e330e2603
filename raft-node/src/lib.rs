//! # qm-raft-node: one Quartermaster manager replica
//!
//! Three or five replicas hold the allocation table of `qm-state-machine` in
//! a Raft-replicated state machine (openraft 0.9), each with its own sled
//! database, talking gRPC (tonic) to each other and to clients. Any replica
//! can die, pause or be cut off without an acknowledged allocation being
//! lost or a unit being handed out twice.
//!
//! The replica is a chain of four layers; each uses only the layers below
//! it, and no module imports one above it:
//!
//! ```text
//!  server     run(): storage, Raft, gRPC services, bootstrap, health, metrics, background tasks
//!    │
//!  api        ApiService: guard → validate → Node ──(typed errors)──▶ status.rs ──▶ tonic::Status (qm_api::wire)
//!    │
//!  consensus  Node::propose ─▶ Proposer (group commit) ─▶ RaftBatchWriter ─▶ openraft
//!             Node::read_barrier (read index), HeartbeatBook, leader duties (pure decisions, one driver)
//!    │                                                                          │ append, vote, truncate, apply
//!  storage    LogStore (sled; counts truncations) ◀────────────────────────────┘
//!             StateMachineStore ─▶ AllocationTable (qm-state-machine) ─▶ events, StateReader
//! ```
//!
//! One write, top to bottom and back:
//!
//! ```text
//!  client ──gRPC──▶ api::requests::allocate ──validate──▶ Node::propose ──▶ Proposer queue ──batch──▶ Raft::client_write
//!                     │ follower: NotLeader ──▶ UNAVAILABLE + x-qm-leader-addr       │ replicate to a majority,
//!                     │                                                               │ each flushes sled first
//!                     ▼                                                               ▼
//!              read_barrier (reads)                            StateMachineStore::apply ─▶ AllocationTable
//!                     │                                                               │ ApplyResult, events
//!                     └──────────── reads ◀───────────────────────────────────────────┴─▶ answer, Watch streams
//! ```
//!
//! A write that fails is one of `consensus::ProposeError`: refused by a
//! follower (nothing happened), truncated after it was appended (outcome
//! unknown), not committed in time (outcome unknown), or refused by the
//! table (nothing changed). Only `api::status` turns these into gRPC.
//!
//! # Layout
//!
//! * [`server`]: [`run`]: wires the layers together and serves until shutdown.
//! * [`api`]: the public gRPC API; [`api::status`] is the one mapping of
//!   typed errors to statuses.
//! * [`http`]: the HTTP port: the protocol's JSON, a Consul-compatible
//!   catalog, `/metrics`, OpenAPI; it calls the [`api`] handlers.
//! * [`consensus`]: [`consensus::Node`] (propose, read barrier, leader
//!   redirect), the proposer's batching, the Raft batch writer, the
//!   leader's duties and heartbeat book, and their typed errors.
//! * [`storage`]: sled behind openraft's log and state-machine traits.
//! * [`network`]: Raft RPC between replicas, and dialling a peer (over mutual
//!   TLS whose peer certificate is checked against the CRL too); [`proto`]:
//!   its generated service.
//! * [`security`]: mutual TLS (reloaded on SIGHUP or a file change, with a
//!   CRL), which certificate may make which call, and the audit trail.
//! * [`config`]: flags, TOML file, defaults, validation.
//! * [`recover`]: `qm-node recover`: a one-replica cluster from the survivor of a lost majority.
//! * [`restore`]: `qm-node restore`: a new replica's data dir from a backup file.
//! * [`metrics`]: Prometheus exposition.
//! * [`clock`]: the wall clock, read in one place.
//! * [`codec`]: bincode for what replicas send each other and store.
//! * [`types`]: the openraft type configuration.

pub mod api;
pub mod clock;
pub mod codec;
pub mod config;
pub mod consensus;
pub mod http;
pub mod metrics;
pub mod network;
pub mod proto;
pub mod recover;
pub mod restore;
pub mod security;
pub mod server;
pub mod storage;
pub mod types;

pub use server::run;
