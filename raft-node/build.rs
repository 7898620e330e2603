//! Generates the replica-to-replica Raft service from `proto/raft.proto` with
//! protox (pure Rust), so a fresh machine builds with cargo alone: no system
//! `protoc`. Only replicas speak it; the public API is the `qm-api` crate's.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/raft.proto"];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(protos, ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(descriptors)?;
    Ok(())
}
