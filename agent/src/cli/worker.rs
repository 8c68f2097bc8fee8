//! `faultline __worker`: the stress worker processes the agent starts inside a fault's cgroup.
//! Hidden from `--help`: people never run it. A worker does its one job until it is killed
//! (by the revert, which kills its cgroup, or by the death signal when the agent dies): CPU
//! load, memory, or disk I/O.

use std::{
    os::{fd::AsRawFd as _, unix::fs::FileExt as _},
    path::PathBuf,
    thread,
    time::Duration,
};

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
    /// Read and write blocks of a file at random offsets, as fast as the cgroup's I/O limits
    /// let it.
    Disk {
        #[arg(long)]
        file: PathBuf,
        #[arg(long, value_parser = ["read", "write", "mixed"])]
        mode: String,
        #[arg(long)]
        block_size: u64,
        /// Through the page cache (the filesystem refuses direct I/O): each write is synced
        /// and each block read is dropped from the cache, so that the I/O reaches the disk.
        #[arg(long)]
        buffered: bool,
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
        Kind::Disk {
            file,
            mode,
            block_size,
            buffered,
        } => disk_io(&file, &mode, block_size, buffered),
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

fn disk_io(path: &std::path::Path, mode: &str, block: u64, buffered: bool) -> Result<(), Failure> {
    use crate::kernel::disk::space::{open_data, AlignedBuf};
    let fail = |what: &str, e: std::io::Error| {
        Failure::internal(format!("disk worker: {what} {}: {e}", path.display()))
    };
    let file = open_data(path, !buffered, false).map_err(|e| fail("open", e))?;
    let blocks = file.metadata().map_err(|e| fail("stat", e))?.len() / block;
    if blocks == 0 {
        return Err(fail(
            "use",
            std::io::Error::other("the file holds no whole block"),
        ));
    }
    let mut buf = AlignedBuf::new(block as usize);
    // xorshift64: offsets need only be spread, not unpredictable.
    let mut state = u64::from(std::process::id()) | 1 << 32;
    loop {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let offset = (state % blocks) * block;
        let write = match mode {
            "read" => false,
            "write" => true,
            _ => state & (1 << 40) != 0,
        };
        if write {
            file.write_all_at(buf.as_slice(), offset)
                .map_err(|e| fail("write", e))?;
            if buffered {
                file.sync_data().map_err(|e| fail("sync", e))?;
            }
        } else {
            file.read_exact_at(buf.as_mut_slice(), offset)
                .map_err(|e| fail("read", e))?;
            if buffered {
                // Advice only: a kernel that ignores it leaves the next read cached.
                let _ = nix::fcntl::posix_fadvise(
                    file.as_raw_fd(),
                    offset as i64,
                    block as i64,
                    nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
                );
            }
        }
    }
}
