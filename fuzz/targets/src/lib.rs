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
//! | [`http_body`] | the body of an HTTP write (its first byte picks which) | `POST /v1/release`, `/v1/release/matching`, `/v1/preemption`, `PUT /v1/quotas/{ns}`, `PUT /v1/policies/{name}` |

use qm_api::convert;
use qm_api::proto::api;
use qm_raft_node::codec;
use qm_raft_node::http;
use qm_raft_node::types::{Entry, TypeConfig};
use qm_state_machine::{AllocationTable, ProviderRegistration, ReleaseFilter, ResourceRequest};

/// One target: one input through a decoder, panicking if what must hold does not.
pub type Target = fn(&[u8]);

/// Every target, by the name of its corpus directory.
pub const TARGETS: [(&str, Target); 7] = [
    ("protocol_request", protocol_request),
    ("registration", registration),
    ("grpc_allocate", grpc_allocate),
    ("grpc_register", grpc_register),
    ("snapshot", snapshot),
    ("raft_message", raft_message),
    ("http_body", http_body),
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

/// The body of an HTTP write, after its first byte, which picks the
/// document: parsed by the handler's own function, then checked as the
/// call checks it. Bad input must be a `400` naming a field, never a panic
/// or another status; the message stays bounded, whatever was sent.
pub fn http_body(data: &[u8]) {
    let Some((&which, body)) = data.split_first() else {
        return;
    };
    let refusal = match which % 5 {
        0 => http::requests::release_call(body).err(),
        1 => http::requests::release_matching_call(body)
            .map(|call| {
                let non_empty = |text: &str| (!text.is_empty()).then(|| text.to_owned());
                let filter = ReleaseFilter {
                    namespace: non_empty(&call.namespace),
                    requester_id: non_empty(&call.requester_id),
                    provider_id: non_empty(&call.provider_id),
                };
                let _ = filter.check();
            })
            .err(),
        2 => http::quotas::set_quota_call("team".to_owned(), body)
            .map(|call| {
                let limits = qm_api::quota::limits_from_proto(&call.limits);
                let _ = qm_state_machine::quota::check_quota(&call.namespace, &limits);
            })
            .err(),
        3 => http::quotas::set_preemption_call(body).err(),
        _ => http::policies::set_policy_call("team".to_owned(), body)
            .map(|call| {
                let policy = call.policy.expect("the handler always sends a policy");
                if let Ok(spec) = qm_api::policy::spec_from_proto(&policy) {
                    let _ = spec.check();
                }
            })
            .err(),
    };
    if let Some(refusal) = refusal {
        assert_eq!(400, refusal.status.as_u16(), "{}", refusal.body);
        assert!(refusal.body["field"].is_string(), "a refusal names no field: {}", refusal.body);
        let message = refusal.body["message"].as_str().unwrap_or_default();
        assert!(
            message.len() <= HTTP_MESSAGE_LEN_MAX,
            "a refusal's message of {} bytes",
            message.len()
        );
    }
}

/// The longest message a refusal may carry: the parser's bounded reason and
/// the words around it.
const HTTP_MESSAGE_LEN_MAX: usize = qm_state_machine::protocol::PARSE_ERROR_LEN_MAX + 256;
