//! `faultline_loss`: a tc classifier that drops a share of an interface's IP packets.
//!
//! It does what netem's loss does on kernels without sch_netem, and more precisely targeted:
//! only packets that match the fault's protocol, destination ports and remote networks count.
//! Each fault loads its own copy with its own `CONFIG` map, which holds the deadline: past it the
//! program lets everything through, so the loss ends on time even if the agent died.
//!
//! Built for `bpfel-unknown-none` by agent/build.rs. A host build of this crate (part of
//! `cargo test --workspace`) compiles only the shared types, so the workspace lints and tests it
//! as a whole.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod loss;

#[cfg(not(target_arch = "bpf"))]
fn main() {
    eprintln!(
        "faultline-ebpf holds eBPF programs: the agent's build compiles it for bpfel-unknown-none"
    );
    std::process::exit(2);
}
