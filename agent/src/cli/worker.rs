//! `faultline __worker`: the stress worker processes the agent starts inside a fault's cgroup.
//! Hidden from `--help`: people never run it. A worker does its one job until it is killed
//! (by the revert, which kills its cgroup, or by the death signal when the agent dies).

use std::{thread, time::Duration};

use clap::{Args, Subcommand};

use super::output::Failure;

#[derive(Debug, Args)]
pub(crate) struct Options {
    #[command(subcommand)]
    pub(crate) kind: Kind,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Kind {
    /// Keep one CPU busy; the cgroup's quota decides how busy it may be.
    Cpu,
    /// Touch and hold memory.
    Memory {
        #[arg(long)]
        bytes: u64,
        /// Bytes per second.
        #[arg(long)]
        rate: Option<u64>,
        #[arg(long)]
        lock: bool,
    },
}

pub(crate) fn run(o: Options) -> Result<(), Failure> {
    match o.kind {
        Kind::Cpu => loop {
            // The quota, not this loop, sets the load: keep the CPU busy and let the kernel
            // throttle.
            let mut x = 0u64;
            for i in 0..1_000_000u64 {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(i);
            }
            std::hint::black_box(x);
        },
        Kind::Memory { bytes, rate, lock } => hold_memory(bytes, rate, lock),
    }
}

fn hold_memory(bytes: u64, rate: Option<u64>, lock: bool) -> Result<(), Failure> {
    const CHUNK: usize = 4 << 20;
    if lock {
        // SAFETY: mlockall takes flags only; MCL_FUTURE locks what we allocate below.
        if unsafe { libc::mlockall(libc::MCL_CURRENT | libc::MCL_FUTURE) } != 0 {
            return Err(Failure::internal(format!(
                "mlockall: {} (needs CAP_IPC_LOCK or a large enough RLIMIT_MEMLOCK)",
                std::io::Error::last_os_error()
            )));
        }
    }
    let started = std::time::Instant::now();
    let mut held: Vec<Vec<u8>> = Vec::new();
    let mut total: u64 = 0;
    while total < bytes {
        let size = CHUNK.min((bytes - total) as usize);
        // A non-zero fill writes every byte, so every page is really backed by memory.
        held.push(vec![0x5a; size]);
        total += size as u64;
        if let Some(rate) = rate {
            let due = Duration::from_secs_f64(total as f64 / rate as f64);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                thread::sleep(wait);
            }
        }
    }
    std::hint::black_box(&held);
    loop {
        thread::park();
    }
}
