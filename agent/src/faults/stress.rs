//! The stress families: CPU load and memory pressure, each held by worker processes inside the
//! fault's own cgroup, whose limits the kernel enforces (see `kernel::cgroup`). The workers and
//! their cgroups are the `kernel::workers` adapter's; this module decides how many, with what
//! limits, and whether the host can spare the memory.
//!
//! Aimed at a workload (`--unit`, `--container`, `--pod`, `--cgroup`, `--pid`), the fault's
//! cgroup is a child of the workload's (in each hierarchy it needs, on v1), so the workers are
//! charged to the workload and compete inside its limits, as a noisy neighbour inside it would.

use std::{
    fs,
    path::PathBuf,
    thread,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

use super::{Claim, Connection, Deadline, Demands, Ended, Family, Host, Target};
use crate::{
    errors::{EngineError, InvalidSpec, KernelError},
    kernel::{
        cgroup::{Controller, CpuQuota, Limits},
        workers::WorkerError,
        workload::Workload,
    },
    units::format_bytes,
};

/// The workload's directories, one per hierarchy it has a cgroup in.
fn dirs(workload: &Workload) -> Vec<PathBuf> {
    workload.placements.iter().map(|p| p.dir.clone()).collect()
}

/// Refuses a stress whose cgroup cannot be a child of the workload `target` names, with why.
fn admit_within(
    target: &Option<Target>,
    limits: &Limits,
    host: &Host<'_>,
) -> Result<(), EngineError> {
    let Some(target) = target else {
        return Ok(());
    };
    let workload = target.check(host)?;
    let cgroups = host
        .workers
        .cgroups()
        .map_err(|e| unsupported(e.to_string()))?;
    cgroups
        .check_within(limits, &dirs(&workload))
        .map_err(|detail| unsupported(format!("{}: {detail}", workload.what)))
}

/// The plan's cgroup lines, inside the workload when there is one.
fn describe(target: &Option<Target>, id: &str, limits: &Limits, host: &Host<'_>) -> Vec<String> {
    let workload = target.as_ref().and_then(|t| t.check(host).ok());
    let mut plan = Vec::new();
    if let Some(w) = &workload {
        plan.push(format!("find: {} at {}, at apply", w.what, w.where_()));
    }
    plan.extend(
        host.workers
            .describe(id, limits, workload.as_ref().map(dirs).as_deref()),
    );
    plan
}

/// Creates the fault's cgroup (inside the workload, resolved now, when there is one); returns
/// its `cgroup.procs` files and the workload's directories.
fn create(
    target: &Option<Target>,
    id: &str,
    limits: &Limits,
    host: &Host<'_>,
) -> Result<(Vec<PathBuf>, Option<Vec<PathBuf>>), KernelError> {
    let within = target
        .as_ref()
        .map(|t| t.resolve(id, host).map(|w| dirs(&w)))
        .transpose()?;
    let procs = host.workers.create(id, limits, within.as_deref())?;
    Ok((procs, within))
}

fn in_target(target: &Option<Target>) -> String {
    target
        .as_ref()
        .map(|t| format!(" inside {t}"))
        .unwrap_or_default()
}

/// Refused because the cgroup controllers stress needs are not usable: `detail` says why.
fn unsupported(detail: String) -> EngineError {
    EngineError::Unsupported {
        feature: "cgroup controllers for stress".to_owned(),
        detail,
    }
}

/// Scheduler period for CPU quotas: long enough that the quota is not lost to rounding, short
/// enough that a 50 % load looks like 50 % on any one-second graph.
const PERIOD_US: u64 = 100_000;
/// The kernel's smallest CPU quota: 1 ms per period.
const MIN_QUOTA_US: u64 = 1_000;
/// What a memory worker needs beyond the memory it holds (its stack, heap bookkeeping, page
/// tables); the cgroup limit is the request plus this.
const MEMORY_HEADROOM: u64 = 32 << 20;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct CpuStressSpec {
    /// Percent of the CPUs in scope, `0 < load <= 100`.
    pub(crate) load: f64,
    /// Pin the workers to these CPUs; the load is a share of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) cpus: Vec<u32>,
    /// A share of this many CPUs, unpinned; neither this nor `cpus`: all online CPUs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) cores: Option<u32>,
    /// Rise linearly from nothing to `load` over this long.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "super::opt_secs"
    )]
    pub(crate) ramp: Option<Duration>,
    /// Run inside this workload's cgroup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) target: Option<Target>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum MemSize {
    Bytes(u64),
    /// Percent of the host's total memory.
    Percent(f64),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct MemoryStressSpec {
    pub(crate) size: MemSize,
    /// Allocation rate in bytes per second; `None` allocates as fast as the kernel allows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) rate: Option<u64>,
    /// Lock the pages in memory (mlock), so they cannot be swapped out.
    #[serde(default)]
    pub(crate) lock: bool,
    /// Run inside this workload's cgroup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) target: Option<Target>,
}

/// The host's online CPUs, from /sys/devices/system/cpu/online (`0-3,6`).
fn online_cpus() -> Vec<u32> {
    let text = fs::read_to_string("/sys/devices/system/cpu/online").unwrap_or_default();
    let mut cpus = Vec::new();
    for part in text.trim().split(',').filter(|p| !p.is_empty()) {
        let (first, last) = part.split_once('-').unwrap_or((part, part));
        if let (Ok(first), Ok(last)) = (first.parse::<u32>(), last.parse::<u32>()) {
            cpus.extend(first..=last);
        }
    }
    if cpus.is_empty() {
        let n = thread::available_parallelism().map_or(1, |n| n.get() as u32);
        cpus.extend(0..n);
    }
    cpus
}

impl CpuStressSpec {
    /// How many CPUs the load is a share of; also how many workers run.
    fn width(&self) -> u32 {
        if !self.cpus.is_empty() {
            self.cpus.len() as u32
        } else {
            self.cores.unwrap_or_else(|| online_cpus().len() as u32)
        }
    }

    fn quota(&self, share: f64) -> CpuQuota {
        let quota_us = (self.load / 100.0 * share * self.width() as f64 * PERIOD_US as f64).round();
        CpuQuota {
            quota_us: (quota_us as u64).max(MIN_QUOTA_US),
            period_us: PERIOD_US,
        }
    }

    fn limits(&self) -> Limits {
        Limits {
            cpu: Some(self.quota(if self.ramp.is_some() { 0.0 } else { 1.0 })),
            cpus: (!self.cpus.is_empty()).then(|| self.cpus.clone()),
            memory_max: None,
            io: None,
        }
    }

    fn controllers(&self) -> Vec<Controller> {
        let mut needs = vec![Controller::Cpu];
        if !self.cpus.is_empty() {
            needs.push(Controller::Cpuset);
        }
        needs
    }
}

impl Family for CpuStressSpec {
    fn validate(&self, host: &Host<'_>) -> Result<(), InvalidSpec> {
        if !(self.load.is_finite() && self.load > 0.0 && self.load <= 100.0) {
            return Err(InvalidSpec::new(
                "load",
                format!(
                    "{} is out of range, expected 0 < load <= 100 (percent)",
                    self.load
                ),
            ));
        }
        let online = online_cpus();
        if !self.cpus.is_empty() && self.cores.is_some() {
            return Err(InvalidSpec::new(
                "cpus",
                "give either --cpus (pin to these CPUs) or --cores (a number of CPUs), not both",
            ));
        }
        for cpu in &self.cpus {
            if !online.contains(cpu) {
                return Err(InvalidSpec::new(
                    "cpus",
                    format!(
                        "CPU {cpu} is not online here; online CPUs: {}",
                        cpu_list(&online)
                    ),
                ));
            }
        }
        let mut unique = self.cpus.clone();
        unique.sort_unstable();
        unique.dedup();
        if unique.len() != self.cpus.len() {
            return Err(InvalidSpec::new("cpus", "a CPU is listed twice"));
        }
        if let Some(cores) = self.cores {
            if cores == 0 || cores as usize > online.len() {
                return Err(InvalidSpec::new(
                    "cores",
                    format!(
                        "{cores} is out of range, expected 1 to {} (the online CPUs)",
                        online.len()
                    ),
                ));
            }
        }
        if self.ramp.is_some_and(|r| r.is_zero()) {
            return Err(InvalidSpec::new(
                "ramp",
                "0s: leave it out for the full load at once",
            ));
        }
        if let Some(target) = &self.target {
            target.check(host)?;
        }
        Ok(())
    }

    fn admit(&self, host: &Host<'_>) -> Result<(), EngineError> {
        host.workers
            .check(&self.controllers())
            .map_err(unsupported)?;
        admit_within(&self.target, &self.limits(), host)
    }

    fn claims(&self) -> Vec<Claim> {
        Vec::new()
    }

    fn touches(&self, _conn: &Connection) -> bool {
        false
    }

    fn may_touch_port(&self, _local_port: u16) -> bool {
        false
    }

    fn plan(&self, id: &str, _deadline: Deadline, host: &Host<'_>) -> Vec<String> {
        let mut plan = describe(&self.target, id, &self.limits(), host);
        plan.push(format!(
            "workers: start {} CPU worker(s) (faultline __worker cpu) in the cgroup",
            self.width()
        ));
        if let Some(ramp) = self.ramp {
            let full = self.quota(1.0);
            plan.push(format!(
                "ramp: raise the quota linearly to {} us per {} us over {}",
                full.quota_us,
                full.period_us,
                humantime::format_duration(ramp)
            ));
        }
        plan
    }

    fn apply(&self, id: &str, _deadline: Deadline, host: &Host<'_>) -> Result<(), KernelError> {
        // A failure part-way is undone by the revert the engine runs after a failed apply.
        let (procs, within) = create(&self.target, id, &self.limits(), host)?;
        for _ in 0..self.width() {
            host.workers.spawn(id, &["cpu"], &procs)?;
        }
        if let Some(ramp) = self.ramp {
            let cgroups = host.workers.cgroups()?.clone();
            let (id, spec) = (id.to_owned(), self.clone());
            // Ends by itself: at full load, or when the cgroup is gone (the fault reverted).
            thread::Builder::new()
                .name(format!("ramp-{id}"))
                .spawn(move || {
                    ramp_up(&spec, ramp, |quota| {
                        cgroups.set_cpu_quota(&id, quota, within.as_deref()).is_ok()
                    })
                })
                .map_err(|e| KernelError::Workers(WorkerError::Spawn(e)))?;
        }
        Ok(())
    }

    fn revert(&self, id: &str, host: &Host<'_>) -> Result<(), KernelError> {
        Target::release(id, host);
        host.workers.remove(id)
    }

    fn end(&self, id: &str, host: &Host<'_>) -> Result<Ended, KernelError> {
        end_workers(id, host)
    }

    fn effect(&self, id: &str, host: &Host<'_>) -> Result<super::effect::Effect, KernelError> {
        let usage = host.workers.usage(id);
        let cpu = usage.cpu_usec.unwrap_or_default();
        Ok(super::effect::Effect::new("us of CPU")
            .hits(cpu)
            .counter("cpu_usec", cpu)
            .counter(
                "throttled_periods",
                usage.throttled_periods.unwrap_or_default(),
            ))
    }

    fn objects(&self, id: &str, host: &Host<'_>) -> Result<Vec<String>, KernelError> {
        Ok(host.workers.objects(id))
    }

    fn watched(&self) -> bool {
        self.target.is_some()
    }

    fn target_gone(&self, id: &str, host: &Host<'_>) -> Option<String> {
        Target::gone(id, host)
    }

    fn demands(&self) -> Demands {
        Demands {
            percents: vec![("cpu load", self.load)],
            memory: None,
            disk: None,
        }
    }

    fn summary(&self) -> String {
        let scope = if !self.cpus.is_empty() {
            format!("of CPUs {}", cpu_list(&self.cpus))
        } else {
            format!("of {} CPU(s)", self.width())
        };
        let mut out = format!("cpu load {}% {scope}", self.load);
        if let Some(ramp) = self.ramp {
            out.push_str(&format!(", ramp {}", humantime::format_duration(ramp)));
        }
        out.push_str(&in_target(&self.target));
        out
    }
}

/// Raises the quota (through `set`, false once the cgroup is gone) to the full load.
fn ramp_up(spec: &CpuStressSpec, ramp: Duration, set: impl Fn(CpuQuota) -> bool) {
    let full = spec.quota(1.0);
    let started = Instant::now();
    loop {
        let share = (started.elapsed().as_secs_f64() / ramp.as_secs_f64()).min(1.0);
        let quota = CpuQuota {
            quota_us: ((full.quota_us as f64 * share) as u64).max(MIN_QUOTA_US),
            ..full
        };
        if !set(quota) || share >= 1.0 {
            return;
        }
        thread::sleep(Duration::from_millis(250));
    }
}

fn cpu_list(cpus: &[u32]) -> String {
    cpus.iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// `/proc/meminfo` figures, in bytes.
fn meminfo() -> (u64, u64) {
    procfs::Current::current()
        .map(|m: procfs::Meminfo| (m.mem_total, m.mem_available.unwrap_or(m.mem_free)))
        .unwrap_or((0, 0))
}

impl MemoryStressSpec {
    /// The size in bytes on this host.
    pub(crate) fn bytes(&self) -> u64 {
        match self.size {
            MemSize::Bytes(b) => b,
            MemSize::Percent(p) => (meminfo().0 as f64 * p / 100.0) as u64,
        }
    }

    fn limits(&self) -> Limits {
        Limits {
            memory_max: Some(self.bytes() + MEMORY_HEADROOM),
            ..Limits::default()
        }
    }

    fn worker_args(&self) -> Vec<String> {
        let mut args = vec![
            "memory".to_owned(),
            "--bytes".to_owned(),
            self.bytes().to_string(),
        ];
        if let Some(rate) = self.rate {
            args.extend(["--rate".to_owned(), rate.to_string()]);
        }
        if self.lock {
            args.push("--lock".to_owned());
        }
        args
    }
}

impl Family for MemoryStressSpec {
    fn validate(&self, host: &Host<'_>) -> Result<(), InvalidSpec> {
        let (total, _) = meminfo();
        match self.size {
            MemSize::Percent(p) if !(p.is_finite() && p > 0.0 && p <= 100.0) => {
                return Err(InvalidSpec::new(
                    "size",
                    format!("{p}% is out of range, expected 0 < percent <= 100 of total memory"),
                ))
            }
            MemSize::Bytes(0) => {
                return Err(InvalidSpec::new(
                    "size",
                    "0 bytes: expected a size like 512MiB or 25%",
                ))
            }
            MemSize::Bytes(b) if b > total => {
                return Err(InvalidSpec::new(
                    "size",
                    format!(
                        "{} is larger than this host's total memory ({})",
                        format_bytes(b),
                        format_bytes(total)
                    ),
                ))
            }
            _ => {}
        }
        if self.rate == Some(0) {
            return Err(InvalidSpec::new(
                "rate",
                "0 bytes/s: expected a rate like 100MiB/s",
            ));
        }
        if let Some(target) = &self.target {
            target.check(host)?;
        }
        Ok(())
    }

    fn admit(&self, host: &Host<'_>) -> Result<(), EngineError> {
        host.workers
            .check(&[Controller::Memory])
            .map_err(unsupported)?;
        let (total, available) = meminfo();
        let reserve = host.workers.reserve(total);
        let bytes = self.bytes();
        if available < bytes.saturating_add(reserve) {
            return Err(EngineError::Reserve {
                detail: format!(
                    "taking {} would leave {} available, less than the reserve of {} \
                     (MemAvailable {}); ask for at most {}",
                    format_bytes(bytes),
                    format_bytes(available.saturating_sub(bytes)),
                    format_bytes(reserve),
                    format_bytes(available),
                    format_bytes(available.saturating_sub(reserve))
                ),
            });
        }
        admit_within(&self.target, &self.limits(), host)
    }

    fn claims(&self) -> Vec<Claim> {
        Vec::new()
    }

    fn touches(&self, _conn: &Connection) -> bool {
        false
    }

    fn may_touch_port(&self, _local_port: u16) -> bool {
        false
    }

    fn plan(&self, id: &str, _deadline: Deadline, host: &Host<'_>) -> Vec<String> {
        let mut plan = describe(&self.target, id, &self.limits(), host);
        plan.push(format!(
            "workers: start 1 memory worker (faultline __worker {}) in the cgroup",
            self.worker_args().join(" ")
        ));
        plan
    }

    fn apply(&self, id: &str, _deadline: Deadline, host: &Host<'_>) -> Result<(), KernelError> {
        let (procs, _) = create(&self.target, id, &self.limits(), host)?;
        let args = self.worker_args();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        host.workers.spawn(id, &args, &procs)
    }

    fn revert(&self, id: &str, host: &Host<'_>) -> Result<(), KernelError> {
        Target::release(id, host);
        host.workers.remove(id)
    }

    fn end(&self, id: &str, host: &Host<'_>) -> Result<Ended, KernelError> {
        end_workers(id, host)
    }

    fn effect(&self, id: &str, host: &Host<'_>) -> Result<super::effect::Effect, KernelError> {
        let usage = host.workers.usage(id);
        let memory = usage.memory_bytes.unwrap_or_default();
        Ok(super::effect::Effect::new("bytes of memory")
            .hits(memory)
            .counter("memory_bytes", memory)
            .counter("cpu_usec", usage.cpu_usec.unwrap_or_default()))
    }

    fn objects(&self, id: &str, host: &Host<'_>) -> Result<Vec<String>, KernelError> {
        Ok(host.workers.objects(id))
    }

    fn watched(&self) -> bool {
        self.target.is_some()
    }

    fn target_gone(&self, id: &str, host: &Host<'_>) -> Option<String> {
        Target::gone(id, host)
    }

    fn demands(&self) -> Demands {
        Demands {
            percents: Vec::new(),
            memory: Some(self.bytes()),
            disk: None,
        }
    }

    fn summary(&self) -> String {
        let mut out = match self.size {
            MemSize::Bytes(b) => format!("memory {}", format_bytes(b)),
            MemSize::Percent(p) => format!("memory {p}% of total"),
        };
        if let Some(rate) = self.rate {
            out.push_str(&format!(" at {}/s", format_bytes(rate)));
        }
        if self.lock {
            out.push_str(" (locked)");
        }
        out.push_str(&in_target(&self.target));
        out
    }
}

/// Stress needs cgroup controllers, and nothing a capability grants beyond writing cgroupfs.
fn cgroup_readiness(
    preflight: &super::readiness::Preflight<'_>,
    controller: Controller,
) -> super::readiness::Readiness {
    use super::readiness::Readiness;
    match preflight.host.workers.check(&[controller]) {
        Ok(()) => Readiness::Works(format!(
            "{} controller of {}",
            controller.name(),
            preflight
                .caps
                .cgroups
                .as_ref()
                .map(|c| c.location())
                .unwrap_or_default()
        )),
        Err(because) => Readiness::DoesNot {
            because,
            instead: format!(
                "enable the {} controller (cgroup v2: in cgroup.subtree_control; v1: mount it)",
                controller.name()
            ),
        },
    }
}

impl super::readiness::Ready for CpuStressSpec {
    fn readiness(preflight: &super::readiness::Preflight<'_>) -> super::readiness::Readiness {
        cgroup_readiness(preflight, Controller::Cpu)
    }
}

impl super::readiness::Ready for MemoryStressSpec {
    fn readiness(preflight: &super::readiness::Preflight<'_>) -> super::readiness::Readiness {
        cgroup_readiness(preflight, Controller::Memory)
    }
}

/// A stress ends when its workers are killed; waiting for them to exit, removing their cgroup
/// and its record are left for [`Family::revert`], after the answer.
fn end_workers(id: &str, host: &Host<'_>) -> Result<Ended, KernelError> {
    host.workers.stop(id)?;
    Ok(Ended::CleanupLeft)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_quota_is_the_load_share_of_the_cpus_in_scope() {
        let spec = CpuStressSpec {
            load: 50.0,
            cpus: vec![],
            cores: Some(1),
            ramp: None,
            target: None,
        };
        assert_eq!(
            spec.quota(1.0),
            CpuQuota {
                quota_us: 50_000,
                period_us: PERIOD_US
            }
        );
        let spec = CpuStressSpec {
            load: 60.0,
            cpus: vec![0, 1],
            cores: None,
            ramp: Some(Duration::from_secs(10)),
            target: None,
        };
        assert_eq!(spec.quota(1.0).quota_us, 120_000);
        // A ramp starts at the kernel's minimum quota.
        assert_eq!(spec.limits().cpu.unwrap().quota_us, 1_000);
        assert_eq!(spec.limits().cpus, Some(vec![0, 1]));
    }

    #[test]
    fn bad_loads_and_cpus_name_their_field() {
        let host_free = |spec: CpuStressSpec| {
            let config = crate::config::AgentConfig {
                state_dir: "/nonexistent".into(),
                bpf_pin_dir: "/nonexistent".into(),
                ..Default::default()
            };
            let adapters =
                super::super::Adapters::new(&config, crate::kernel::caps::Capabilities::probe());
            spec.validate(&adapters.host(false)).map_err(|e| e.field)
        };
        let spec = |load, cpus: Vec<u32>| CpuStressSpec {
            load,
            cpus,
            cores: None,
            ramp: None,
            target: None,
        };
        assert_eq!(host_free(spec(0.0, vec![])), Err("load".to_owned()));
        assert_eq!(host_free(spec(100.5, vec![])), Err("load".to_owned()));
        assert_eq!(host_free(spec(50.0, vec![9999])), Err("cpus".to_owned()));
        assert_eq!(host_free(spec(50.0, vec![])), Ok(()));
    }
}
