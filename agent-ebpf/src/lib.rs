//! Host-side face of faultline's eBPF crate: nothing. The programs are the `faultline-ebpf`
//! binary (src/main.rs), built for the BPF target by agent/build.rs.
#![no_std]
