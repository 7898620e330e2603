//! Replica-to-replica Raft traffic over gRPC (`quartermaster.raft.v1.Raft`).
//!
//! * [`client`]: openraft's `RaftNetworkFactory`/`RaftNetwork`, sending
//!   append-entries, votes and snapshot chunks to a peer.
//! * [`server`]: the gRPC service that hands those to the local `Raft`.
//! * [`dial`]: the channel to a peer, over mutual TLS whose peer
//!   certificate is checked against the CRL too.
//!
//! Payloads are openraft's request and response types in bincode; a response
//! carries openraft's `Result` whole, so a remote `RaftError` comes back as a
//! `RemoteError` and a transport failure as `Unreachable`.

pub mod client;
pub mod dial;
pub mod server;
