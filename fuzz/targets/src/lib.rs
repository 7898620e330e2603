//! # qm-fuzz-targets: one input through what a replica does with outside bytes
//!
//! Each function takes arbitrary bytes and runs them through a decoder and
//! validator exactly as the replica does, asserting what must hold for any
//! input: no panic, no allocation without bound (libFuzzer's `-rss_limit_mb`
//! catches that), and for what is accepted, that it survives the wire
//! unchanged. Two callers:
//!
//! ```text
//!  fuzz/fuzz_targets/<name>.rs (cargo fuzz, nightly, libFuzzer) ──┐
//!  fuzz/targets/tests/replay_corpora.rs (stable, in CI) ──────────┴─▶ qm_fuzz_targets::<name>(bytes)
//!                                                  every file of fuzz/corpus/<name>/
//! ```
//!
//! # Targets
//!
//! | name | bytes are | as the replica takes them in |
//! |---|---|---|
//! | [`protocol_request`] | the protocol's `resource_request` JSON | HTTP `POST /v1/allocate`, the broker bridge |
//! | [`registration`] | a registration document (JSON) | HTTP `POST /v1/providers`, `qm provider register`, `qm agent --inventory` |
//! | [`grpc_allocate`] | a protobuf `AllocateRequest` | gRPC `Allocate` |
//! | [`grpc_register`] | a protobuf `RegisterProviderRequest` | gRPC `RegisterProvider` |
//! | [`snapshot`] | a table snapshot | a snapshot installed from the leader, or read from disk at start |
//! | [`raft_message`] | a Raft RPC payload (bincode) | `AppendEntries`, `Vote`, `InstallSnapshot` from another replica |

use qm_api::convert;
use qm_api::proto::api;
use qm_raft_node::codec;
use qm_raft_node::types::{Entry, TypeConfig};
use qm_state_machine::{AllocationTable, ProviderRegistration, ResourceRequest};

/// One target: one input through a decoder, panicking if what must hold does not.
pub type Target = fn(&[u8]);

/// Every target, by the name of its corpus directory.
pub const TARGETS: [(&str, Target); 6] = [
    ("protocol_request", protocol_request),
    ("registration", registration),
    ("grpc_allocate", grpc_allocate),
    ("grpc_register", grpc_register),
    ("snapshot", snapshot),
    ("raft_message", raft_message),
];

/// The protocol's `resource_request` JSON. What validates goes to the wire
/// and back and validates to the same request.
pub fn protocol_request(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(request) = ResourceRequest::from_json(text) else {
        return;
    };
    let Ok(validated) = request.validate() else {
        return;
    };
    let wire = convert::request_to_proto(&ResourceRequest::from(&validated));
    let back = convert::request_from_proto(&wire).expect("a validated request comes back from the wire");
    assert_eq!(Ok(validated), back.validate(), "the wire changed a validated request");
}

/// A registration document (JSON). What validates goes to the wire and
/// back unchanged.
pub fn registration(data: &[u8]) {
    let Ok(document) = serde_json::from_slice::<ProviderRegistration>(data) else {
        return;
    };
    let Ok(validated) = document.validate() else {
        return;
    };
    let back = convert::registration_from_proto(&convert::registration_to_proto(&validated))
        .expect("a validated registration comes back from the wire");
    assert_eq!(Ok(validated), back.validate(), "the wire changed a validated registration");
}

/// A protobuf `AllocateRequest`, as the gRPC handler decodes and checks it.
pub fn grpc_allocate(data: &[u8]) {
    let Ok(call) = <api::AllocateRequest as prost::Message>::decode(data) else {
        return;
    };
    if let Some(request) = call.request {
        if let Ok(request) = convert::request_from_proto(&request) {
            let _ = request.validate();
        }
    }
}

/// A protobuf `RegisterProviderRequest`, as the gRPC handler takes it.
pub fn grpc_register(data: &[u8]) {
    let Ok(call) = <api::RegisterProviderRequest as prost::Message>::decode(data) else {
        return;
    };
    if let Ok(registration) = convert::registration_from_proto(&call) {
        let _ = registration.validate();
    }
}

/// A table snapshot. What decodes encodes to the same bytes (the snapshot
/// is canonical: replicas compare them byte for byte).
pub fn snapshot(data: &[u8]) {
    let Ok(table) = AllocationTable::from_snapshot_bytes(data) else {
        return;
    };
    let encoded = table.to_snapshot_bytes();
    let again = AllocationTable::from_snapshot_bytes(&encoded).expect("an encoded snapshot decodes");
    assert_eq!(encoded, again.to_snapshot_bytes(), "a snapshot does not re-encode to itself");
}

/// A Raft RPC payload from another replica, as each of the three RPCs and a
/// log entry would decode it.
pub fn raft_message(data: &[u8]) {
    let _ = codec::decode::<openraft::raft::AppendEntriesRequest<TypeConfig>>(data);
    let _ = codec::decode::<openraft::raft::VoteRequest<u64>>(data);
    let _ = codec::decode::<openraft::raft::InstallSnapshotRequest<TypeConfig>>(data);
    let _ = codec::decode::<Entry>(data);
}
