//! # qm-jepsen: Jepsen-style fault injection for Quartermaster
//!
//! Operators run this against a build before they trust it. It starts real
//! `qm-node` replicas on loopback (fresh data dirs), puts a TCP proxy in
//! front of each so that links between replicas can be cut or slowed without
//! root, drives client processes through `qm-client`, and lets a nemesis
//! kill, pause, partition and reconfigure the cluster on a schedule (and,
//! in the allocation workload, ask for optimization plans and drains, so
//! that allocations move live under the faults). Every
//! operation goes into a history (invoke, then ok / fail / info); after a
//! final heal and a final read, checkers decide whether the history is one
//! a correct system could have produced: linearizability per unit (register
//! workload), or no double allocation, capacity never exceeded, no lost
//! acknowledged allocation, idempotent retries and no stale read (allocation
//! workload).
//! The report has plots, a summary, and for a linearizability failure a
//! page drawing the offending unit's operations on a time line.
//!
//! With `--tls` the same run goes over mutual TLS: a fresh CA, one
//! certificate for the replicas, and each client presenting its role's
//! (consumer workers, one provider certificate per provider, an admin for
//! membership). The proxies forward the encrypted bytes untouched.
//!
//! The checkers are proven by putting known bugs back: unit tests feed them
//! hand-built bad histories, and `--unsafe-stale-reads` starts replicas that
//! answer reads from their own state, which both workloads catch as stale
//! reads: the register workload's linearizability checker, and the
//! allocation workload's [`checker::stale_read`].
//!
//! ```text
//!            qm-jepsen run ...                                       report (--out)
//!                 │                                                        ▲
//!   ┌─────────────┼──────────────┐                                         │
//!   ▼             ▼              ▼                                         │
//! workers ──qm-client──▶ proxies ──▶ qm-node 1..n (127.0.0.N+1)   checkers ◀── history.jsonl
//!   │  invoke/ok/fail/info    ▲  links cut/delayed              ▲        ▲
//!   │                         │                                 │        │
//!   │                  nemesis: kill -9, SIGSTOP/CONT,          │        │
//!   │                  partitions, add/remove replicas,         │
//!   │                  optimize + drain / uncordon ─────────────┼── records its ops too
//!   └──────────────────────────────────────────────────────────▶ HistoryRecorder
//!                    after the time limit: heal everything → final read → stop all pids
//! ```
//!
//! # Layout
//!
//! * [`config`]: the command line ([`config::Cli`]), defaults, limits, [`config::RunConfig`].
//! * [`run`](mod@run): [`run()`], one test from start to report.
//! * [`credentials`]: [`credentials::Credentials`], the CA and certificates of a `--tls` run.
//! * [`cluster`]: [`cluster::TestCluster`], replicas behind proxies, faults and membership.
//! * [`proxy`]: [`proxy::NetProxy`], the per-replica TCP proxy that cuts and delays links.
//! * [`nemesis`]: the fault schedule; [`nemesis::partition`] shapes, [`nemesis::targets`].
//! * [`workload`]: client processes; [`workload::register`], [`workload::allocation`],
//!   [`workload::providers`].
//! * [`history`]: operations, the recorder, `history.jsonl`.
//! * [`events`]: `--preemption` runs: the table's events in log order, as a
//!   watcher saw them across failovers (`events.json`).
//! * [`checker`]: one file per checker (movable allocations may change
//!   units: see [`checker::holds::movable_requests`]), each with its `Violation` enum: [`checker::linearizability`] (register;
//!   [`checker::wgl`] is its search), [`checker::double_allocation`], [`checker::capacity`],
//!   [`checker::lost_allocation`], [`checker::idempotency`], [`checker::stale_read`] (allocation), [`checker::quota`],
//!   [`checker::quota_log`] and [`checker::preemption`] (`--preemption`: on the events), [`checker::stats`].
//! * [`report`]: `results.json`, `summary.txt`, [`report::plots`], [`report::timeline`].
//! * [`error`]: the harness's typed errors, [`JepsenError`].

pub mod checker;
pub mod cluster;
pub mod config;
pub mod credentials;
pub mod error;
pub mod events;
pub mod history;
pub mod nemesis;
pub mod proxy;
pub mod report;
pub mod run;
pub mod workload;

pub use error::JepsenError;
pub use run::{run, RunOutcome};
