//! The openraft type configuration of a Quartermaster replica.

use std::io::Cursor;

use qm_state_machine::{ApplyResult, StampedCommand};

openraft::declare_raft_types!(
    /// Log entries carry a [`StampedCommand`]; applying one answers an [`ApplyResult`].
    pub TypeConfig:
        D = StampedCommand,
        R = ApplyResult,
        NodeId = u64,
        Node = openraft::BasicNode,
        SnapshotData = Cursor<Vec<u8>>,
);

pub type NodeId = u64;
pub type Raft = openraft::Raft<TypeConfig>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type Vote = openraft::Vote<NodeId>;
pub type StoredMembership = openraft::StoredMembership<NodeId, openraft::BasicNode>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, openraft::BasicNode>;
