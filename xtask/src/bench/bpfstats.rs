//! What each of a process's eBPF programs costs: the kernel's run-time statistics (run count and
//! summed run time, `run_cnt` and `run_time_ns` in /proc/PID/fdinfo of each program's file
//! descriptor), switched on for as long as a [`StatsOn`] lives, and the raw tracepoint each
//! program is attached to (`tp_name` in the fdinfo of its link).
//!
//! The statistics cost time of their own (two clock reads per program run): they are measured in
//! a round of their own, never in the rounds that time the connect rate.

use std::{
    collections::BTreeMap,
    fs,
    os::fd::{FromRawFd as _, OwnedFd},
};

use anyhow::{Context as _, Result};

/// BPF_ENABLE_STATS and its only kind, BPF_STATS_RUN_TIME (include/uapi/linux/bpf.h).
const BPF_ENABLE_STATS: libc::c_long = 32;
const BPF_STATS_RUN_TIME: u32 = 0;

/// The kernel keeps run-time statistics while this file descriptor is open (whatever
/// `kernel.bpf_stats_enabled` says): nothing to restore if the bench dies.
pub struct StatsOn(#[allow(dead_code)] OwnedFd);

impl StatsOn {
    pub fn enable() -> Result<Self> {
        // union bpf_attr's enable_stats: { __u32 type; }, the rest zero.
        let attr: [u32; 4] = [BPF_STATS_RUN_TIME, 0, 0, 0];
        // SAFETY: bpf(2) reads `size_of_val(&attr)` bytes of `attr`, which lives across the call.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_ENABLE_STATS,
                attr.as_ptr(),
                std::mem::size_of_val(&attr),
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error())
                .context("bpf(BPF_ENABLE_STATS) refused to switch on run-time statistics");
        }
        // SAFETY: a file descriptor the kernel just returned, owned by nobody else.
        Ok(Self(unsafe { OwnedFd::from_raw_fd(fd as i32) }))
    }
}

/// Runs and run time of one program so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Runs {
    pub count: u64,
    pub nanos: u64,
}

/// The raw-tracepoint programs that process `pid` holds, by the tracepoint they serve.
pub fn by_tracepoint(pid: u32) -> Result<BTreeMap<String, Runs>> {
    let dir = format!("/proc/{pid}/fdinfo");
    let mut programs: BTreeMap<u64, Runs> = BTreeMap::new();
    let mut links: BTreeMap<u64, String> = BTreeMap::new();
    for entry in fs::read_dir(&dir).with_context(|| format!("reading {dir}"))? {
        // A descriptor closed meanwhile is no program of interest.
        let Ok(text) = fs::read_to_string(entry?.path()) else {
            continue;
        };
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .map(str::trim)
        };
        let Some(id) = field("prog_id").and_then(|v| v.parse::<u64>().ok()) else {
            continue;
        };
        if let Some(tp) = field("tp_name") {
            links.insert(id, tp.to_owned());
        } else if let (Some(count), Some(nanos)) = (field("run_cnt"), field("run_time_ns")) {
            programs.insert(
                id,
                Runs {
                    count: count.parse().context("run_cnt")?,
                    nanos: nanos.parse().context("run_time_ns")?,
                },
            );
        }
    }
    Ok(links
        .into_iter()
        .filter_map(|(id, tp)| Some((tp, *programs.get(&id)?)))
        .collect())
}

/// `after - before` for each tracepoint in `after`.
pub fn since(
    before: &BTreeMap<String, Runs>,
    after: &BTreeMap<String, Runs>,
) -> BTreeMap<String, Runs> {
    after
        .iter()
        .map(|(tp, a)| {
            let b = before.get(tp).copied().unwrap_or_default();
            (
                tp.clone(),
                Runs {
                    count: a.count.saturating_sub(b.count),
                    nanos: a.nanos.saturating_sub(b.nanos),
                },
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn differences_per_tracepoint() {
        let before = BTreeMap::from([(
            "a".to_owned(),
            Runs {
                count: 10,
                nanos: 1000,
            },
        )]);
        let after = BTreeMap::from([
            (
                "a".to_owned(),
                Runs {
                    count: 15,
                    nanos: 1600,
                },
            ),
            (
                "b".to_owned(),
                Runs {
                    count: 2,
                    nanos: 50,
                },
            ),
        ]);
        let d = since(&before, &after);
        assert_eq!(
            d["a"],
            Runs {
                count: 5,
                nanos: 600
            }
        );
        assert_eq!(
            d["b"],
            Runs {
                count: 2,
                nanos: 50
            }
        );
        // This process holds no eBPF programs.
        assert!(by_tracepoint(std::process::id()).unwrap().is_empty());
    }
}
