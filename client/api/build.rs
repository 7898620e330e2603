//! Generates the gRPC code of the public API from `proto/` with protox (pure
//! Rust), so a fresh machine builds with cargo alone: no system `protoc`.
//! Both sides are generated: the replicas serve it, clients call it.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/quartermaster.proto"];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(protos, ["proto"])?;
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out_dir.join("descriptors.bin"), prost::Message::encode_to_vec(&descriptors))?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(descriptors)?;
    Ok(())
}
