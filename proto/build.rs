use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = PathBuf::from(env::var("OUT_DIR")?);
    let protos = [
        "faultline/v1/faults.proto",
        "faultline/v1/agent.proto",
        "faultline/v1/metrics.proto",
    ];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("faultline_descriptor.bin"))
        .compile_protos(&protos, &["."])?;
    Ok(())
}
