//! The generated Raft service between replicas (`proto/raft.proto`):
//! `quartermaster.raft.v1`. Clients never speak it.

tonic::include_proto!("quartermaster.raft.v1");
