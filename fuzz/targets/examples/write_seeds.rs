//! Writes the seed inputs of the binary targets into `fuzz/corpus/<target>/`
//! (the JSON targets' seeds are the repository's own example files): a
//! protobuf request, a small table's snapshot, Raft RPCs carrying real
//! commands. Run once when a format changes: `cargo run -p qm-fuzz-targets
//! --example write_seeds`.

use std::path::Path;

use openraft::{CommittedLeaderId, EntryPayload, LogId, Vote};
use prost::Message;
use qm_api::convert;
use qm_api::proto::api;
use qm_raft_node::codec;
use qm_raft_node::types::{CommandBatch, Entry, TypeConfig};
use qm_state_machine::{AllocationTable, Command, ProviderRegistration, ResourceRequest, StampedCommand, TableConfig};

const PROTOCOL_EXAMPLE: &str = include_str!("../../../state-machine/tests/fixtures/resource_request.json");
const PROVIDER: &str = include_str!("../../../scripts/demo/provider-node_1.json");

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../corpus").join(target);
    std::fs::create_dir_all(&dir).expect("corpus dir");
    std::fs::write(dir.join(name), bytes).expect("seed written");
    println!("{target}/{name}: {} bytes", bytes.len());
}

fn main() {
    let example = ResourceRequest::from_json(&PROTOCOL_EXAMPLE.replace("2024-03-21", "2099-03-21")).expect("the example");
    let request = example.validate().expect("valid");
    let registration: ProviderRegistration = serde_json::from_str(PROVIDER).expect("the demo provider");
    let registration = registration.validate().expect("valid");

    let allocate = api::AllocateRequest {
        request: Some(convert::request_to_proto(&example)),
    };
    write("grpc_allocate", "protocol_example.pb", &allocate.encode_to_vec());
    write(
        "grpc_register",
        "provider_node_1.pb",
        &convert::registration_to_proto(&registration).encode_to_vec(),
    );

    let commands = vec![
        StampedCommand::new(1_000, Command::RegisterProvider(registration)),
        StampedCommand::new(2_000, Command::Allocate(request)),
        StampedCommand::new(3_000, Command::Tick),
    ];
    let mut table = AllocationTable::new(TableConfig::default());
    for command in &commands {
        table.apply(command);
    }
    write("snapshot", "one_provider_one_allocation.bin", &table.to_snapshot_bytes());

    let leader = CommittedLeaderId::new(2, 1);
    let entry = Entry {
        log_id: LogId::new(leader, 7),
        payload: EntryPayload::Normal(CommandBatch { commands }),
    };
    let append = openraft::raft::AppendEntriesRequest::<TypeConfig> {
        vote: Vote::new_committed(2, 1),
        prev_log_id: Some(LogId::new(leader, 6)),
        entries: vec![entry.clone()],
        leader_commit: Some(LogId::new(leader, 6)),
    };
    write("raft_message", "append_entries.bin", &codec::encode(&append));
    write(
        "raft_message",
        "vote.bin",
        &codec::encode(&openraft::raft::VoteRequest::new(Vote::new(3, 2), Some(LogId::new(leader, 7)))),
    );
    write("raft_message", "log_entry.bin", &codec::encode(&entry));
}
