//! # The consensus layer: proposals, reads and the leader's duties
//!
//! Everything between the storage (below) and the API (above): the
//! [`Node`] handle, the [`Proposer`] that batches commands into log entries,
//! the [`RaftBatchWriter`](raft_writer::RaftBatchWriter) that writes them
//! through openraft, and the leader's duties. It answers with plain typed
//! errors ([`ProposeError`], [`ReadError`], [`NotLeader`]); it knows nothing
//! of gRPC, and no file here imports `crate::api` or `crate::server`.
//!
//! ```text
//!  api ──▶ Node::propose ──▶ Proposer ──batch──▶ RaftBatchWriter ──▶ openraft ──▶ storage
//!      ──▶ Node::read_barrier ──────────────────────────────────────▶ openraft
//!      ──▶ HeartbeatBook (record, forget, list)
//!  duties::run_duties ── round / take_over_work / due_work (pure) ──▶ Node::propose
//! ```
//!
//! # Layout
//!
//! * [`node`]: [`Node`], the handle every part of a replica shares.
//! * [`proposer`]: [`Proposer`], group commit; [`BatchWriter`](proposer::BatchWriter).
//! * [`raft_writer`]: one batch through `Raft::client_write`, and whether a
//!   `ForwardToLeader` means "refused" or "outcome unknown".
//! * [`duties`]: the leader's periodic work, as pure decisions and their driver.
//! * [`heartbeats`]: [`HeartbeatBook`], the leader's memory of providers.
//! * [`leader_contact`]: [`LeaderContact`], when a leader was last heard
//!   from, so that a follower never hints a leader that may be gone.
//! * [`prompt_election`]: a follower whose leader's process is gone
//!   campaigns as soon as the leader lease runs out (pure [`prompt_election::decide`]).
//! * [`error`]: the typed errors.
//! * [`announce`]: the cluster id and format versions replicas announce
//!   on Raft RPCs, the verdict on a peer's, and the [`announce::PeerBook`].
//!
//! Within the layer, imports go one way: `error`, `heartbeats`, `leader_contact` ←
//! `proposer` ← `raft_writer`, `node` ← `duties`, `prompt_election`.

pub mod announce;
pub mod duties;
pub mod error;
pub mod heartbeats;
pub mod leader_contact;
pub mod node;
pub mod prompt_election;
pub mod proposer;
pub mod raft_writer;

pub use error::{Leader, NotLeader, ProposeError, ReadError};
pub use heartbeats::{HeartbeatBook, ReportedMetrics};
pub use leader_contact::LeaderContact;
pub use node::Node;
pub use proposer::Proposer;
