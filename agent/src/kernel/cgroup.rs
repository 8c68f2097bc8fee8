//! cgroups for stress workers, on cgroup v2 and on the v1 hierarchies older hosts still mount.
//!
//! Everything lives under one parent named `faultline` at the root of each hierarchy faultline
//! uses, with one child per fault named after its id (`faultline/<id>`). Limits are written
//! before any worker joins, so the kernel enforces the load from the first instant. Revert kills
//! every process in the child (`cgroup.kill` on v2, SIGKILL to each pid on v1) and removes it;
//! a start-up sweep does the same for children no journal entry knows.
//!
//! The parent sits at the hierarchy root rather than under the agent's own cgroup: on v2 a
//! cgroup that holds a process cannot hand controllers to children, and on v1 the agent's own
//! memory limit must not be charged with the stressor's memory. The exception is a cgroup the
//! service manager delegated to the agent (`super::delegate`, cgroup v2 only): there the agent
//! has moved into a leaf of its own, and the parent sits in the delegated cgroup (its "home").

use std::{
    fs, io,
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use thiserror::Error;

use super::disk::throttle::{self, BlockDevice, IoLimits};

/// Limits that only tighten what the others already ensure: a kernel without swap accounting
/// has no `memory.swap.max`, and that is fine.
const OPTIONAL: [&str; 2] = ["memory.swap.max", "memory.swappiness"];

/// The CPU weight of the parent of all stress cgroups, half the default (v1 `cpu.shares`
/// 1024, v2 `cpu.weight` 100): under contention the agent, at the default weight wherever it
/// runs, always outranks every stress fault together, so its deadlines hold while the CPUs are
/// saturated. Idle CPUs are still the stress's whole.
const STRESS_WEIGHT: [(&str, &str); 2] = [("cpu.shares", "512"), ("cpu.weight", "50")];

/// The default name of the parent cgroup.
pub(crate) const DEFAULT_PARENT: &str = "faultline";
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

#[derive(Debug, Error)]
pub(crate) enum CgroupError {
    #[error("no usable cgroup hierarchy: {0}")]
    NoHierarchy(String),
    #[error("the cgroup {controller} controller is not available here: {detail}")]
    MissingController {
        controller: &'static str,
        detail: String,
    },
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cgroup {path} still holds processes {seconds}s after they were killed")]
    Busy { path: PathBuf, seconds: u64 },
}

fn io_error<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> CgroupError + 'a {
    move |source| CgroupError::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

/// A controller a stress fault needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Controller {
    Cpu,
    Memory,
    Cpuset,
    /// I/O limits per device: `io` on v2, blkio's throttle on v1.
    Io,
}

impl Controller {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Controller::Cpu => "cpu",
            Controller::Memory => "memory",
            Controller::Cpuset => "cpuset",
            Controller::Io => "io",
        }
    }
}

/// What the kernel enforces on a fault's cgroup.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Limits {
    /// CPU bandwidth: `quota` microseconds of CPU time per `period`.
    pub(crate) cpu: Option<CpuQuota>,
    /// The CPUs the workers may run on.
    pub(crate) cpus: Option<Vec<u32>>,
    /// The most memory the cgroup may hold, in bytes; no swap.
    pub(crate) memory_max: Option<u64>,
    /// I/O limits on one device (blkio on v1, which also holds the cgroup's I/O statistics).
    pub(crate) io: Option<(BlockDevice, IoLimits)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CpuQuota {
    pub(crate) quota_us: u64,
    pub(crate) period_us: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Hierarchy {
    V2 {
        root: PathBuf,
        controllers: Vec<String>,
    },
    /// One mount point per controller; `None` where it is not mounted. cpu and cpuacct are
    /// often mounted together, in which case both point at the same directory.
    V1 {
        cpu: Option<PathBuf>,
        cpuacct: Option<PathBuf>,
        cpuset: Option<PathBuf>,
        memory: Option<PathBuf>,
        blkio: Option<PathBuf>,
    },
}

/// What the kernel has charged to a fault's cgroup.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Usage {
    pub(crate) cpu_usec: Option<u64>,
    /// Scheduler periods in which the cgroup's CPU quota held it back.
    pub(crate) throttled_periods: Option<u64>,
    pub(crate) memory_bytes: Option<u64>,
}

fn read_u64(path: &Path) -> io::Result<u64> {
    fs::read_to_string(path)?
        .trim()
        .parse()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// The host's cgroup hierarchy, as faultline uses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Cgroups {
    hierarchy: Hierarchy,
    /// The parent's name (`faultline`; tests use their own, since the hierarchy is host-wide).
    parent: String,
    /// cgroup v2 only: the delegated cgroup the parent sits in instead of the root.
    home: Option<PathBuf>,
}

impl Cgroups {
    /// Finds the hierarchy mounted at `root` (normally /sys/fs/cgroup): cgroup v2 when it is
    /// mounted there, else the v1 controller mounts listed in /proc/self/mountinfo.
    pub(crate) fn probe(root: &Path) -> Result<Self, CgroupError> {
        let parent = DEFAULT_PARENT.to_owned();
        if is_cgroup2(root) {
            let controllers = fs::read_to_string(root.join("cgroup.controllers"))
                .map_err(io_error("read", &root.join("cgroup.controllers")))?
                .split_whitespace()
                .map(str::to_owned)
                .collect();
            return Ok(Self {
                hierarchy: Hierarchy::V2 {
                    root: root.to_owned(),
                    controllers,
                },
                parent,
                home: None,
            });
        }
        let mountinfo = fs::read_to_string("/proc/self/mountinfo")
            .map_err(io_error("read", Path::new("/proc/self/mountinfo")))?;
        let mounts = v1_mounts(&mountinfo);
        let find = |name: &str| {
            mounts
                .iter()
                .find(|(_, controllers)| controllers.iter().any(|c| c == name))
                .map(|(path, _)| path.clone())
        };
        let hierarchy = Hierarchy::V1 {
            cpu: find("cpu"),
            cpuacct: find("cpuacct"),
            cpuset: find("cpuset"),
            memory: find("memory"),
            blkio: find("blkio"),
        };
        if hierarchy
            == (Hierarchy::V1 {
                cpu: None,
                cpuacct: None,
                cpuset: None,
                memory: None,
                blkio: None,
            })
        {
            return Err(CgroupError::NoHierarchy(format!(
                "{} is not cgroup2 and no cgroup v1 controller is mounted",
                root.display()
            )));
        }
        Ok(Self {
            hierarchy,
            parent,
            home: None,
        })
    }

    /// The same hierarchy with the faults' cgroups under `parent` instead of `faultline`.
    pub(crate) fn with_parent(mut self, parent: &str) -> Self {
        self.parent = parent.to_owned();
        self
    }

    /// The same hierarchy with the faults' cgroups in `home`, a cgroup delegated to the agent,
    /// instead of at the root (cgroup v2; v1 hierarchies keep the root).
    pub(crate) fn with_home(mut self, home: PathBuf) -> Self {
        if let Hierarchy::V2 { .. } = self.hierarchy {
            self.home = Some(home);
        }
        self
    }

    /// Where the parent sits in the hierarchy mounted at `mount`: the delegated home on v2
    /// when there is one, else the mount (the hierarchy's root).
    fn top(&self, mount: &Path) -> PathBuf {
        self.home.clone().unwrap_or_else(|| mount.to_owned())
    }

    /// `(controller, mount)` of every v1 controller faultline uses that is mounted; on v2 the
    /// one root, unnamed.
    fn mounts(&self) -> Vec<(&'static str, &Path)> {
        match &self.hierarchy {
            Hierarchy::V2 { root, .. } => vec![("", root.as_path())],
            Hierarchy::V1 {
                cpu,
                cpuacct,
                cpuset,
                memory,
                blkio,
            } => [
                ("cpu", cpu),
                ("cpuacct", cpuacct),
                ("cpuset", cpuset),
                ("memory", memory),
                ("blkio", blkio),
            ]
            .into_iter()
            .filter_map(|(name, mount)| mount.as_deref().map(|m| (name, m)))
            .collect(),
        }
    }

    /// Where the hierarchy is, for `faultline info`.
    pub(crate) fn location(&self) -> String {
        match &self.hierarchy {
            Hierarchy::V2 { root, .. } => match &self.home {
                Some(home) => format!(
                    "cgroup v2 at {}, stress cgroups in the delegated {}",
                    root.display(),
                    home.display()
                ),
                None => format!("cgroup v2 at {}", root.display()),
            },
            Hierarchy::V1 { .. } => {
                let mounts: Vec<String> = self
                    .mounts()
                    .iter()
                    .map(|(name, mount)| format!("{name} at {}", mount.display()))
                    .collect();
                format!("cgroup v1 ({})", mounts.join(", "))
            }
        }
    }

    pub(crate) fn version(&self) -> u32 {
        match self.hierarchy {
            Hierarchy::V2 { .. } => 2,
            Hierarchy::V1 { .. } => 1,
        }
    }

    /// The controllers faultline can use here, by name.
    pub(crate) fn usable(&self) -> Vec<&'static str> {
        [
            Controller::Cpu,
            Controller::Memory,
            Controller::Cpuset,
            Controller::Io,
        ]
        .into_iter()
        .filter(|c| self.check(&[*c]).is_ok())
        .map(Controller::name)
        .collect()
    }

    /// Refuses when a controller a fault needs is missing.
    pub(crate) fn check(&self, needs: &[Controller]) -> Result<(), CgroupError> {
        for controller in needs {
            let missing = match &self.hierarchy {
                Hierarchy::V2 { root, controllers } => {
                    (!controllers.iter().any(|c| c == controller.name())).then(|| {
                        format!(
                            "{} lists no {} controller (cgroup v2)",
                            root.join("cgroup.controllers").display(),
                            controller.name()
                        )
                    })
                }
                Hierarchy::V1 {
                    cpu,
                    cpuacct,
                    cpuset,
                    memory,
                    blkio,
                } => match controller {
                    Controller::Cpu if cpu.is_none() || cpuacct.is_none() => {
                        Some("cgroup v1 needs both the cpu and cpuacct controllers mounted".into())
                    }
                    Controller::Memory if memory.is_none() => {
                        Some("the cgroup v1 memory controller is not mounted".into())
                    }
                    Controller::Cpuset if cpuset.is_none() => {
                        Some("the cgroup v1 cpuset controller is not mounted".into())
                    }
                    Controller::Io => match blkio {
                        None => Some("the cgroup v1 blkio controller is not mounted".into()),
                        Some(mount) if !mount.join("blkio.throttle.read_bps_device").exists() => {
                            Some(format!(
                                "{} has no blkio.throttle files (CONFIG_BLK_DEV_THROTTLING)",
                                mount.display()
                            ))
                        }
                        Some(_) => None,
                    },
                    _ => None,
                },
            };
            if let Some(detail) = missing {
                return Err(CgroupError::MissingController {
                    controller: controller.name(),
                    detail,
                });
            }
        }
        Ok(())
    }

    /// Where a fault's `<parent>/<id>` goes in the hierarchy mounted at `mount`: its root, or,
    /// for a fault inside a workload, the workload's directory in that hierarchy (`within`,
    /// one directory per hierarchy it has one in).
    fn base(&self, mount: &Path, within: Option<&[PathBuf]>) -> Option<PathBuf> {
        match within {
            None => Some(self.top(mount)),
            Some(dirs) => dirs.iter().find(|d| d.starts_with(mount)).cloned(),
        }
    }

    /// The directories of one fault's cgroup, one per hierarchy it spans (one on v2).
    fn dirs(&self, id: &str, limits: Option<&Limits>, within: Option<&[PathBuf]>) -> Vec<PathBuf> {
        let child = |mount: &Path| {
            self.base(mount, within)
                .map(|b| b.join(&self.parent).join(id))
        };
        match &self.hierarchy {
            Hierarchy::V2 { root, .. } => child(root).into_iter().collect(),
            Hierarchy::V1 {
                cpu,
                cpuacct,
                cpuset,
                memory,
                blkio,
            } => {
                let mut dirs = Vec::new();
                let mut push = |mount: &Option<PathBuf>| {
                    if let Some(dir) = mount.as_deref().and_then(child) {
                        if !dirs.contains(&dir) {
                            dirs.push(dir);
                        }
                    }
                };
                match limits {
                    // Creating: only the hierarchies the limits need.
                    Some(limits) => {
                        if limits.cpu.is_some() {
                            push(cpu);
                            push(cpuacct);
                        }
                        if limits.cpus.is_some() {
                            push(cpuset);
                        }
                        if limits.memory_max.is_some() {
                            push(memory);
                        }
                        if limits.io.is_some() {
                            push(blkio);
                        }
                    }
                    // Removing: wherever the fault may have a cgroup.
                    None => {
                        for mount in [cpu, cpuacct, cpuset, memory, blkio] {
                            push(mount);
                        }
                    }
                }
                dirs
            }
        }
    }

    /// Why a fault with `limits` cannot have its cgroup inside the workload at `within`, if it
    /// cannot: a hierarchy it needs where the workload has no cgroup, or, on v2, a workload
    /// cgroup that holds processes itself and so cannot give a child its own controllers (the
    /// kernel's no-internal-processes rule).
    pub(crate) fn check_within(&self, limits: &Limits, within: &[PathBuf]) -> Result<(), String> {
        // Grandparents of the cgroups outside any workload are the mounts: without the home.
        let at_root = Self {
            home: None,
            ..self.clone()
        };
        let needed = at_root.dirs("x", Some(limits), None);
        for dir in &needed {
            let mount = dir.parent().and_then(Path::parent).unwrap_or(dir);
            if self.base(mount, Some(within)).is_none() {
                return Err(format!(
                    "the workload has no cgroup in the hierarchy at {}",
                    mount.display()
                ));
            }
        }
        if let Hierarchy::V2 { root, .. } = &self.hierarchy {
            if let Some(base) = self.base(root, Some(within)) {
                let subtree =
                    fs::read_to_string(base.join("cgroup.subtree_control")).unwrap_or_default();
                let wanted = self.v2_wanted(&base);
                let missing = wanted
                    .iter()
                    .any(|c| !subtree.split_whitespace().any(|have| have == c));
                if missing && !procs(&base).is_empty() {
                    return Err(format!(
                        "{} holds processes itself, and cgroup v2 gives no child of such a cgroup \
                         controllers of its own (no internal processes); the workers could not be \
                         held to their limits inside it. Name a cgroup above the processes \
                         (a pod, a slice) instead",
                        base.display()
                    ));
                }
            }
        }
        Ok(())
    }

    /// The v2 controllers faultline uses that `dir` can hand to children.
    fn v2_wanted(&self, dir: &Path) -> Vec<String> {
        let available = fs::read_to_string(dir.join("cgroup.controllers")).unwrap_or_default();
        ["cpu", "memory", "cpuset", "io"]
            .iter()
            .filter(|c| available.split_whitespace().any(|have| have == **c))
            .map(|c| c.to_string())
            .collect()
    }

    /// The plan for `create`, as the writes it makes.
    pub(crate) fn describe(
        &self,
        id: &str,
        limits: &Limits,
        within: Option<&[PathBuf]>,
    ) -> Vec<String> {
        let mut lines: Vec<String> = self
            .dirs(id, Some(limits), within)
            .iter()
            .map(|d| format!("cgroup v{}: mkdir {}", self.version(), d.display()))
            .collect();
        for (file, value) in self.limit_writes(limits) {
            lines.push(format!(
                "cgroup v{}: write {value:?} to {file}",
                self.version()
            ));
        }
        lines
    }

    /// `(file name, value)` pairs for `limits`, in the order they are written.
    fn limit_writes(&self, limits: &Limits) -> Vec<(&'static str, String)> {
        let mut writes = Vec::new();
        let v2 = self.version() == 2;
        if let Some(cpus) = &limits.cpus {
            let list = cpus
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(",");
            writes.push(("cpuset.cpus", list));
        }
        if let Some(CpuQuota {
            quota_us,
            period_us,
        }) = limits.cpu
        {
            if v2 {
                writes.push(("cpu.max", format!("{quota_us} {period_us}")));
            } else {
                writes.push(("cpu.cfs_period_us", period_us.to_string()));
                writes.push(("cpu.cfs_quota_us", quota_us.to_string()));
            }
        }
        if let Some(max) = limits.memory_max {
            if v2 {
                writes.push(("memory.max", max.to_string()));
                writes.push(("memory.swap.max", "0".to_owned()));
            } else {
                writes.push(("memory.limit_in_bytes", max.to_string()));
                // Keep the stressor's pages in memory, so usage is what the request asked for.
                writes.push(("memory.swappiness", "0".to_owned()));
            }
        }
        if let Some((device, io)) = &limits.io {
            writes.extend(throttle::writes(v2, *device, io, false));
        }
        writes
    }

    /// Creates the fault's cgroup with its limits; returns the `cgroup.procs` files a worker
    /// must join. A failure part-way leaves what was made for `remove`, which the engine runs
    /// after every failed apply.
    pub(crate) fn create(
        &self,
        id: &str,
        limits: &Limits,
        within: Option<&[PathBuf]>,
    ) -> Result<Vec<PathBuf>, CgroupError> {
        let dirs = self.dirs(id, Some(limits), within);
        for dir in &dirs {
            let parent = dir.parent().expect("faultline/<id> has a parent");
            self.prepare_parent(parent)?;
            fs::create_dir(dir).map_err(io_error("create the cgroup", dir))?;
            if self.version() == 1 && dir.join("cpuset.mems").exists() {
                copy_file(&parent.join("cpuset.mems"), &dir.join("cpuset.mems"))?;
            }
        }
        for (file, value) in self.limit_writes(limits) {
            // Each file exists in exactly one of the v1 hierarchies, or in the one v2 cgroup.
            let Some(dir) = dirs.iter().find(|d| d.join(file).exists()) else {
                if OPTIONAL.contains(&file) {
                    continue;
                }
                return Err(CgroupError::MissingController {
                    controller: file.split('.').next().unwrap_or(file),
                    detail: format!("no {file} in {}", dirs[0].display()),
                });
            };
            write(&dir.join(file), &value)?;
        }
        Ok(dirs.iter().map(|d| d.join("cgroup.procs")).collect())
    }

    /// Makes the `faultline` parent usable: on v2 it hands the controllers down; on v1 cpuset
    /// needs its CPUs and memory nodes before a child can have them.
    fn prepare_parent(&self, parent: &Path) -> Result<(), CgroupError> {
        let created = match fs::create_dir(parent) {
            Ok(()) => true,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => false,
            Err(e) => return Err(io_error("create the cgroup", parent)(e)),
        };
        // The hierarchy's root, or the workload the fault runs inside.
        let base = parent.parent().expect("the parent sits in a mount");
        match &self.hierarchy {
            Hierarchy::V2 { .. } => {
                let wanted: Vec<String> = self
                    .v2_wanted(base)
                    .iter()
                    .map(|c| format!("+{c}"))
                    .collect();
                if !wanted.is_empty() {
                    for dir in [base, parent] {
                        write(&dir.join("cgroup.subtree_control"), &wanted.join(" "))?;
                    }
                }
            }
            Hierarchy::V1 { .. } => {
                if created && parent.join("cpuset.cpus").exists() {
                    let root = base;
                    copy_file(&root.join("cpuset.cpus"), &parent.join("cpuset.cpus"))?;
                    copy_file(&root.join("cpuset.mems"), &parent.join("cpuset.mems"))?;
                }
            }
        }
        for (file, weight) in STRESS_WEIGHT {
            if parent.join(file).exists() {
                write(&parent.join(file), weight)?;
            }
        }
        Ok(())
    }

    /// Changes the CPU quota of a live fault (the linear ramp-up).
    pub(crate) fn set_cpu_quota(
        &self,
        id: &str,
        quota: CpuQuota,
        within: Option<&[PathBuf]>,
    ) -> Result<(), CgroupError> {
        let limits = Limits {
            cpu: Some(quota),
            ..Limits::default()
        };
        let dirs = self.dirs(id, Some(&limits), within);
        for (file, value) in self.limit_writes(&limits) {
            if file == "cpu.cfs_period_us" {
                continue;
            }
            if let Some(dir) = dirs.iter().find(|d| d.join(file).exists()) {
                write(&dir.join(file), &value)?;
            }
        }
        Ok(())
    }

    /// What the kernel has charged to the fault's cgroup (at the roots, or inside the workload
    /// at `within`) so far; `None` where this hierarchy does not account it.
    pub(crate) fn usage(&self, id: &str, within: Option<&[PathBuf]>) -> Usage {
        let mut usage = Usage::default();
        for dir in self.existing(id, within) {
            let stat = fs::read_to_string(dir.join("cpu.stat")).unwrap_or_default();
            let field = |name: &str| {
                stat.lines()
                    .find_map(|l| l.strip_prefix(name)?.trim().parse::<u64>().ok())
            };
            // v2: cpu.stat has the usage; v1: cpuacct.usage, in nanoseconds.
            if let Some(us) = field("usage_usec ") {
                usage.cpu_usec = Some(us);
            }
            if let Some(periods) = field("nr_throttled ") {
                usage.throttled_periods = Some(periods);
            }
            if let Ok(ns) = read_u64(&dir.join("cpuacct.usage")) {
                usage.cpu_usec = Some(ns / 1000);
            }
            for file in ["memory.current", "memory.usage_in_bytes"] {
                if let Ok(bytes) = read_u64(&dir.join(file)) {
                    usage.memory_bytes = Some(bytes);
                }
            }
        }
        usage
    }

    /// The fault's cgroups that exist, in every hierarchy (at the roots, or inside the
    /// workload at `within`).
    pub(crate) fn existing(&self, id: &str, within: Option<&[PathBuf]>) -> Vec<PathBuf> {
        self.dirs(id, None, within)
            .into_iter()
            .filter(|d| d.exists())
            .collect()
    }

    /// Sends SIGKILL to every process in the fault's cgroup, without waiting for them to exit:
    /// a killed process runs no more. Returns the cgroup's directories that exist.
    pub(crate) fn kill(
        &self,
        id: &str,
        within: Option<&[PathBuf]>,
    ) -> Result<Vec<PathBuf>, CgroupError> {
        let dirs: Vec<PathBuf> = self
            .dirs(id, None, within)
            .into_iter()
            .filter(|d| d.exists())
            .collect();
        for dir in &dirs {
            let kill = dir.join("cgroup.kill");
            // cgroup.kill (v2, Linux 5.14) kills atomically, forks included. Without it, one
            // pass over the processes: this is a revert's `end`, which must not wait; a
            // process forked meanwhile is caught by `remove`, which signals until none is left.
            if !(kill.exists() && write(&kill, "1").is_ok()) {
                signal_once(dir);
            }
        }
        Ok(dirs)
    }

    /// Kills every process in the fault's cgroup and removes it. Idempotent.
    pub(crate) fn remove(&self, id: &str, within: Option<&[PathBuf]>) -> Result<(), CgroupError> {
        let dirs = self.kill(id, within)?;
        for dir in &dirs {
            signal_all(dir)?;
            wait_empty(dir)?;
            match fs::remove_dir(dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_error("remove the cgroup", dir)(e)),
            }
            if let Some(parent) = dir.parent() {
                // The parent goes with the last fault; a concurrent fault keeps it (ENOTEMPTY).
                let _ = fs::remove_dir(parent);
            }
        }
        Ok(())
    }

    /// The ids of faults that have a cgroup under `faultline`, in any hierarchy.
    pub(crate) fn fault_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self
            .mounts()
            .iter()
            .filter_map(|(_, m)| fs::read_dir(self.top(m).join(&self.parent)).ok())
            .flat_map(|entries| entries.filter_map(Result::ok))
            .filter(|e| e.path().is_dir())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        ids.sort();
        ids.dedup();
        ids
    }
}

pub(crate) fn is_cgroup2(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .map(|s| s.filesystem_type().0 == CGROUP2_SUPER_MAGIC)
        .unwrap_or(false)
}

/// `(mount point, controllers)` of every cgroup v1 mount in a mountinfo text.
fn v1_mounts(mountinfo: &str) -> Vec<(PathBuf, Vec<String>)> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mount_point = left.split(' ').nth(4)?;
            let mut right = right.split(' ');
            if right.next()? != "cgroup" {
                return None;
            }
            let _source = right.next()?;
            let options = right.next()?;
            let controllers = options
                .split(',')
                .filter(|o| ["cpu", "cpuacct", "cpuset", "memory", "blkio"].contains(o))
                .map(str::to_owned)
                .collect::<Vec<_>>();
            (!controllers.is_empty()).then(|| (PathBuf::from(mount_point), controllers))
        })
        .collect()
}

fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    fs::write(path, value).map_err(io_error("write", path))
}

fn copy_file(from: &Path, to: &Path) -> Result<(), CgroupError> {
    let value = fs::read_to_string(from).map_err(io_error("read", from))?;
    write(to, value.trim())
}

fn procs(dir: &Path) -> Vec<i32> {
    fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// SIGKILL to every process in a v1 cgroup, until none is left that could still fork.
/// SIGKILLs every process in `dir` once; whether any was there.
fn signal_once(dir: &Path) -> bool {
    use nix::{sys::signal, unistd::Pid};
    let pids = procs(dir);
    for &pid in &pids {
        // Gone already is fine: that is what we want.
        let _ = signal::kill(Pid::from_raw(pid), signal::Signal::SIGKILL);
    }
    !pids.is_empty()
}

/// SIGKILLs the processes in `dir` until none is left there (up to ten rounds, 10 ms apart):
/// on cgroup v1 a process may fork between the read of `cgroup.procs` and the signal.
fn signal_all(dir: &Path) -> Result<(), CgroupError> {
    for _ in 0..10 {
        if !signal_once(dir) {
            break;
        }
        thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

fn wait_empty(dir: &Path) -> Result<(), CgroupError> {
    const LIMIT: Duration = Duration::from_secs(5);
    let started = Instant::now();
    while !procs(dir).is_empty() {
        if started.elapsed() > LIMIT {
            return Err(CgroupError::Busy {
                path: dir.to_owned(),
                seconds: LIMIT.as_secs(),
            });
        }
        thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_mounts_are_read_from_mountinfo() {
        let text = "\
35 25 0:30 / /sys/fs/cgroup/cpu,cpuacct rw,relatime shared:12 - cgroup cgroup rw,cpu,cpuacct
36 25 0:31 / /sys/fs/cgroup/memory rw,relatime shared:13 - cgroup cgroup rw,memory
37 25 0:32 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw
38 25 0:33 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,name=systemd
";
        assert_eq!(
            v1_mounts(text),
            vec![
                (
                    PathBuf::from("/sys/fs/cgroup/cpu,cpuacct"),
                    vec!["cpu".to_owned(), "cpuacct".to_owned()]
                ),
                (
                    PathBuf::from("/sys/fs/cgroup/memory"),
                    vec!["memory".to_owned()]
                ),
            ]
        );
    }

    fn v1() -> Cgroups {
        let both = Some(PathBuf::from("/cg/cpu,cpuacct"));
        Cgroups {
            hierarchy: Hierarchy::V1 {
                cpu: both.clone(),
                cpuacct: both,
                cpuset: Some(PathBuf::from("/cg/cpuset")),
                memory: Some(PathBuf::from("/cg/memory")),
                blkio: None,
            },
            parent: DEFAULT_PARENT.to_owned(),
            home: None,
        }
    }

    #[test]
    fn a_cpu_fault_on_v1_writes_period_then_quota_in_one_directory() {
        let limits = Limits {
            cpu: Some(CpuQuota {
                quota_us: 50_000,
                period_us: 100_000,
            }),
            ..Limits::default()
        };
        assert_eq!(
            v1().describe("abc", &limits, None),
            vec![
                "cgroup v1: mkdir /cg/cpu,cpuacct/faultline/abc",
                "cgroup v1: write \"100000\" to cpu.cfs_period_us",
                "cgroup v1: write \"50000\" to cpu.cfs_quota_us",
            ]
        );
    }

    #[test]
    fn a_delegated_home_holds_the_parent_on_v2_only() {
        let v2 = Cgroups {
            hierarchy: Hierarchy::V2 {
                root: PathBuf::from("/cg"),
                controllers: vec!["cpu".into()],
            },
            parent: DEFAULT_PARENT.to_owned(),
            home: None,
        }
        .with_home(PathBuf::from("/cg/system.slice/faultline.service"));
        assert_eq!(
            v2.dirs("abc", None, None),
            vec![PathBuf::from(
                "/cg/system.slice/faultline.service/faultline/abc"
            )]
        );
        assert_eq!(v1().with_home(PathBuf::from("/cg/x")).home, None);
    }

    #[test]
    fn v2_writes_cpu_max_memory_max_and_no_swap() {
        let cg = Cgroups {
            hierarchy: Hierarchy::V2 {
                root: PathBuf::from("/cg"),
                controllers: vec!["cpu".into(), "memory".into()],
            },
            parent: DEFAULT_PARENT.to_owned(),
            home: None,
        };
        let limits = Limits {
            cpu: Some(CpuQuota {
                quota_us: 120_000,
                period_us: 100_000,
            }),
            cpus: None,
            memory_max: Some(1 << 20),
            io: None,
        };
        assert_eq!(
            cg.limit_writes(&limits),
            vec![
                ("cpu.max", "120000 100000".to_owned()),
                ("memory.max", "1048576".to_owned()),
                ("memory.swap.max", "0".to_owned()),
            ]
        );
        assert!(cg.check(&[Controller::Cpuset]).is_err());
        assert_eq!(cg.usable(), vec!["cpu", "memory"]);
    }
}
