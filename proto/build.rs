//! Compiles `faultline/v1/*.proto` with protox, a protobuf compiler written in Rust that carries
//! the well-known types (`google/protobuf/duration.proto`, ...): building faultline needs no
//! system `protoc` and no system include files, so the build is the same on every machine.

use std::{env, fs, path::PathBuf};

use prost::Message as _;

const PROTOS: [&str; 3] = [
    "faultline/v1/faults.proto",
    "faultline/v1/agent.proto",
    "faultline/v1/metrics.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = PathBuf::from(env::var("OUT_DIR")?);
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    let mut compiler = protox::Compiler::new(["."])?;
    // Imports are kept (as `protoc --include_imports` would): server reflection serves the
    // well-known types the services use, so a client can resolve every message it sees.
    compiler.include_imports(true).include_source_info(true);
    compiler.open_files(PROTOS)?;
    let descriptors = compiler.file_descriptor_set();
    fs::write(
        out.join("faultline_descriptor.bin"),
        descriptors.encode_to_vec(),
    )?;
    tonic_prost_build::configure().compile_fds(descriptors)?;
    Ok(())
}
