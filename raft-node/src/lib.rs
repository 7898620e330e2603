//! # qm-raft-node: one Quartermaster manager replica
//!
//! (Module docs are completed as the node's modules land.)

pub mod storage;
pub mod types;
