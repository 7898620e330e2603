//! # qm-api: Quartermaster's wire contract
//!
//! Everything a replica and a client must agree on, defined once: the public
//! gRPC API (`proto/quartermaster.proto` and the code generated from it), the
//! conversions between its messages and the allocation table's types, the
//! headers and error encodings that travel beside the messages, and the
//! identities that certificates state. The replica (`qm-raft-node`) and the
//! client library (`qm-client`) both depend on this crate and on nothing of
//! each other.
//!
//! ```text
//!  qm-client ──encode──▶ proto::api::* ──gRPC──▶ qm-raft-node ──convert──▶ qm_state_machine
//!      ▲                                               │
//!      │ wire::WireError::from_status                  │ wire::WireError::to_status
//!      └──── tonic::Status + x-qm-* headers ◀──────────┘
//! ```
//!
//! # Layout
//!
//! * [`backup`]: the backup file (`qm snapshot save`, `qm-node restore`):
//!   its layout, version, checksum, and why a file is refused.
//! * [`quota`]: quotas and preemption ⇄ their messages.
//! * [`policy`]: capability policies ⇄ their messages.
//! * [`proto`]: the generated wire types and stubs (client and server).
//! * [`convert`]: wire types ⇄ the table's types (`qm_state_machine`), and
//!   the protocol's JSON shapes.
//! * [`wire`]: every header name and the typed errors carried in a
//!   `tonic::Status` ([`wire::WireError`]), with their decoding.
//! * [`tls`]: the files a client or replica dials with
//!   ([`tls::TlsConfig`]) and the certificate's [`tls::Identity`] (role,
//!   name, namespace).

pub mod backup;
pub mod convert;
pub mod policy;
pub mod proto;
pub mod quota;
pub mod tls;
pub mod wire;

pub use convert::ConvertError;
