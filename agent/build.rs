//! Builds faultline's eBPF programs (agent-ebpf/) for the BPF target with the nightly toolchain,
//! so that `cargo build` of the agent is all it takes. The object lands in OUT_DIR and is
//! embedded into the binary by `kernel::bpf::object`.

use std::process::Command;

use anyhow::{bail, Context as _};

fn main() -> anyhow::Result<()> {
    // Say what is missing in words a person can act on, instead of a linker error deep inside
    // the nested build.
    let linker = Command::new("bpf-linker").arg("--version").output();
    if !matches!(&linker, Ok(out) if out.status.success()) {
        bail!(
            "bpf-linker is not installed or not on PATH; install it with \
             `cargo install bpf-linker@0.10.4 --locked` (or run `cargo xtask test`/`cargo xtask run`, \
             which install everything the build needs)"
        );
    }
    let sysroot = Command::new("rustup")
        .args(["run", "nightly", "rustc", "--print", "sysroot"])
        .output()
        .context("cannot run `rustup run nightly rustc`: the eBPF programs need a nightly toolchain (`rustup toolchain install nightly`)")?;
    if !sysroot.status.success() {
        bail!("no nightly toolchain: `rustup toolchain install nightly --profile minimal` installs it");
    }
    let sysroot = String::from_utf8_lossy(&sysroot.stdout).trim().to_owned();
    if !std::path::Path::new(&sysroot)
        .join("lib/rustlib/src/rust/library/core")
        .exists()
    {
        bail!("the nightly toolchain lacks rust-src, which -Z build-std needs: `rustup component add rust-src --toolchain nightly`");
    }

    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../agent-ebpf");
    println!(
        "cargo:rerun-if-changed={}",
        concat!(env!("CARGO_MANIFEST_DIR"), "/../common/src")
    );
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "faultline-ebpf",
            root_dir: root,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
    .context("building the eBPF programs in agent-ebpf/")
}
