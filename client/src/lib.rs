//! # qm-client
//!
//! (Docs completed as the library lands.)

pub mod convert;
pub mod proto;
