//! Thin, typed adapters over the kernel interfaces faultline drives, one per kind of object it
//! creates, each owning its objects: the names it derives from a fault id, the durable record of
//! what it replaced, and the start-up [`Adapter::sweep`] that removes what no fault accounts
//! for. Adapters do what they are told and nothing more; policy (guards, conflicts, deadlines)
//! lives in the engine, which reaches them only through the fault families.
//!
//! | adapter | owns |
//! | --- | --- |
//! | [`nft::Firewall`] | the `inet faultline` table's chains of block faults |
//! | [`bpf::Classifiers`] | eBPF tc classifiers (loss, steering) and their pins |
//! | [`qdisc::shaping::Shaping`] | shaping faults' IFB devices and their qdiscs; older agents' records of replaced roots |
//! | [`workers::Workers`] | stress worker processes and their cgroups |
//! | [`disk::Disks`] | disk faults' directories (fill files, I/O files), I/O limits they set on cgroups, records of both |
//! | [`freezer::Freezer`] | what pause faults froze (cgroups, stopped processes) and its durable record |
//! | [`workload::Workloads`] | nothing in the kernel: it finds workloads (units, containers, pods, cgroups, processes) and remembers each active fault's |
//!
//! Below them: [`rtnl`] (the one route-netlink path), [`durable`] (the one fsynced write),
//! [`netdev`], [`cgroup`] (with [`delegate`], the agent's delegated cgroup under systemd), [`btf`], [`oom`] (the agent's and workers' OOM scores), and [`caps`],
//! the probe of what the running kernel offers.

use thiserror::Error;

pub(crate) mod bpf;
pub(crate) mod btf;
pub(crate) mod caps;
pub(crate) mod cgroup;
pub(crate) mod delegate;
pub(crate) mod disk;
pub(crate) mod durable;
pub(crate) mod freezer;
pub(crate) mod netdev;
pub(crate) mod nft;
pub(crate) mod oom;
pub(crate) mod preflight;
pub(crate) mod process;
pub(crate) mod qdisc;
pub(crate) mod rtnl;
pub(crate) mod workers;
pub(crate) mod workload;

/// A kernel adapter failed.
#[derive(Debug, Error)]
pub(crate) enum KernelError {
    #[error(transparent)]
    Nft(#[from] nft::NftError),
    /// Boxed: aya's errors are large, and every `Result` carrying a `KernelError` would pay
    /// for their size.
    #[error(transparent)]
    Bpf(Box<bpf::BpfError>),
    #[error(transparent)]
    Workers(#[from] workers::WorkerError),
    #[error(transparent)]
    Freezer(#[from] freezer::FreezerError),
    /// A fault's workload could not be found when it was applied.
    #[error(transparent)]
    Workload(#[from] workload::WorkloadError),
    /// Boxed for the same reason as `Bpf`.
    #[error(transparent)]
    Shaping(Box<qdisc::shaping::ShapingError>),
    #[error(transparent)]
    Disk(#[from] disk::DiskError),
    /// Several objects of one operation failed; every one was tried.
    #[error("{} objects failed: {}", .0.len(), join(.0))]
    Several(Vec<KernelError>),
}

fn join(errors: &[KernelError]) -> String {
    let texts: Vec<String> = errors.iter().map(ToString::to_string).collect();
    texts.join("; ")
}

/// The errors of an operation that tries every object before it reports, as a revert must:
/// one object that cannot be removed never leaves the others in place.
#[derive(Debug, Default)]
#[must_use = "the errors are reported by `finish`"]
pub(crate) struct Attempts(Vec<KernelError>);

impl Attempts {
    /// Keeps the error of one object's attempt, if it failed.
    pub(crate) fn note<E: Into<KernelError>>(&mut self, result: Result<(), E>) {
        if let Err(e) = result {
            self.0.push(e.into());
        }
    }

    pub(crate) fn failed(&self) -> bool {
        !self.0.is_empty()
    }

    /// `Ok` when every attempt succeeded; else the one error, or all of them.
    pub(crate) fn finish(mut self) -> Result<(), KernelError> {
        match self.0.len() {
            0 => Ok(()),
            1 => Err(self.0.remove(0)),
            _ => Err(KernelError::Several(self.0)),
        }
    }
}

impl From<qdisc::shaping::ShapingError> for KernelError {
    fn from(e: qdisc::shaping::ShapingError) -> Self {
        KernelError::Shaping(Box::new(e))
    }
}

impl From<rtnl::RtnlError> for KernelError {
    fn from(e: rtnl::RtnlError) -> Self {
        KernelError::Shaping(Box::new(e.into()))
    }
}

impl From<cgroup::CgroupError> for KernelError {
    fn from(e: cgroup::CgroupError) -> Self {
        KernelError::Workers(workers::WorkerError::Cgroup(e))
    }
}

impl From<bpf::BpfError> for KernelError {
    fn from(e: bpf::BpfError) -> Self {
        KernelError::Bpf(Box::new(e))
    }
}

/// What a sweep removed, and what it could not.
#[derive(Debug, Default)]
pub(crate) struct Swept {
    /// One line per object removed, for the log.
    pub(crate) removed: Vec<String>,
    pub(crate) failed: Vec<KernelError>,
}

impl Swept {
    pub(crate) fn extend(&mut self, other: Swept) {
        self.removed.extend(other.removed);
        self.failed.extend(other.failed);
    }
}

/// A kernel adapter, as start-up sees it.
pub(crate) trait Adapter {
    /// Removes every object of this adapter that belongs to no fault in `keep` (ids), trying
    /// each one even when another could not be removed.
    fn sweep(&self, keep: &[&str]) -> Swept;
}
