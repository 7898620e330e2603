//! The generated wire types and stubs (from `proto/`).

/// The public API: `quartermaster.v1`.
pub mod api {
    tonic::include_proto!("quartermaster.v1");
}

/// Replica-to-replica Raft traffic: `quartermaster.raft.v1`.
pub mod raft {
    tonic::include_proto!("quartermaster.raft.v1");
}

/// The encoded file descriptors, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/descriptors.bin"));
