//! faultline's tc classifiers, one BPF object:
//! - `faultline_loss` drops a share of an interface's IP packets. It does what netem's loss does
//!   on kernels without sch_netem, and more precisely targeted: only packets that match the
//!   fault's protocol, destination ports and remote networks count.
//! - `faultline_steer` sends the packets a shaping fault targets to that fault's qdisc.
//! - raw tracepoints `faultline_state`, `_reset`, `_error`, `_retx` (`_retx_err` since Linux
//!   6.13) count TCP connect health (`tcp`).
//!
//! Each fault loads its own copy with its own configuration map, which holds the deadline: past
//! it the program lets everything through, so the fault ends on time even if the agent died.
//!
//! Built for `bpfel-unknown-none` by agent/build.rs. A host build of this crate (part of
//! `cargo test --workspace`) compiles only the shared types, so the workspace lints and tests it
//! as a whole.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod filter;
#[cfg(target_arch = "bpf")]
mod loss;
#[cfg(target_arch = "bpf")]
mod runtime;
#[cfg(target_arch = "bpf")]
mod steer;
#[cfg(target_arch = "bpf")]
mod tcp;

#[cfg(not(target_arch = "bpf"))]
fn main() {
    eprintln!(
        "faultline-ebpf holds eBPF programs: the agent's build compiles it for bpfel-unknown-none"
    );
    std::process::exit(2);
}
