//! The generated wire types and stubs of the public API (`proto/quartermaster.proto`).

/// The public API: `quartermaster.v1`.
// The pipeline's oneofs hold a request or a reply inline, as prost lays them
// out; each is built once per call and moved, never kept in bulk, so boxing
// (an allocation per message) would cost more than the size it saves.
#[allow(clippy::large_enum_variant)]
pub mod api {
    tonic::include_proto!("quartermaster.v1");
}

/// The encoded file descriptors, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/descriptors.bin"));
