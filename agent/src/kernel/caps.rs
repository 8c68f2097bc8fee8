//! What the running kernel offers faultline, probed once at start-up and shown by
//! `faultline info`. Probes only read (procfs, sysfs, kernel config, a netlink list request);
//! they never create anything, so probing is safe on any host.

use std::{
    fs,
    io::Read,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use super::{
    bpf::object::tcx_supported,
    btf,
    cgroup::{Cgroups, Controller},
    disk::space,
    nft,
    workload::Hierarchies,
};

/// One facility: whether faultline can use it, and what was found or what is missing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Capability {
    pub(crate) available: bool,
    pub(crate) detail: String,
}

impl Capability {
    fn yes(detail: impl Into<String>) -> Self {
        Self {
            available: true,
            detail: detail.into(),
        }
    }

    fn no(detail: impl Into<String>) -> Self {
        Self {
            available: false,
            detail: detail.into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Capabilities {
    pub(crate) kernel_release: String,
    pub(crate) netem: Capability,
    /// tbf: the qdisc of rate faults.
    pub(crate) tbf: Capability,
    /// IFB devices: where shaping faults queue the packets they target.
    pub(crate) ifb: Capability,
    pub(crate) nftables: Capability,
    pub(crate) btf: Capability,
    pub(crate) tcx: Capability,
    /// eBPF tc classifiers by any attach path (TCX, or clsact + cls_bpf).
    pub(crate) cls_bpf: Capability,
    pub(crate) cgroup: Capability,
    /// Per-device I/O limits in cgroups (v1 blkio throttle, v2 io): disk io and disk slow.
    pub(crate) io_limits: Capability,
    /// Allocating without writing, on the state directory's filesystem (a fill checks its
    /// own); see [`Capabilities::with_state_dir`].
    pub(crate) fallocate: Capability,
    /// 1 or 2; 0 when no usable hierarchy was found.
    pub(crate) cgroup_version: u32,
    /// The hierarchy itself, for stress faults; why not, when there is none.
    pub(crate) cgroups: Result<Cgroups, String>,
    /// The cgroup hierarchies workloads are found in, and the freezer pause uses.
    pub(crate) workloads: Capability,
    /// pidfds: how kill and pause signal a process and only it.
    pub(crate) pidfd: Capability,
}

impl Capabilities {
    pub(crate) fn probe() -> Self {
        let kernel_release = nix::sys::utsname::uname()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_default();
        let config = KernelConfig::read(&kernel_release);
        let modules = Modules::new(&kernel_release);
        let tcx = if tcx_supported() {
            Capability::yes(format!(
                "kernel {kernel_release} >= 6.6 attaches tc programs through TCX links"
            ))
        } else {
            Capability::no(format!(
                "kernel {kernel_release} is older than 6.6; tc programs attach through clsact + cls_bpf"
            ))
        };
        let cls_bpf = if tcx.available {
            Capability::yes("through TCX")
        } else {
            match (
                feature(&config, &modules, "CONFIG_NET_CLS_BPF", "cls_bpf"),
                feature(&config, &modules, "CONFIG_NET_SCH_INGRESS", "sch_ingress"),
            ) {
                (Ok(c), Ok(i)) => Capability::yes(format!("cls_bpf {c}, clsact {i}")),
                (Err(missing), _) | (_, Err(missing)) => Capability::no(missing),
            }
        };
        let netem = match feature(&config, &modules, "CONFIG_NET_SCH_NETEM", "sch_netem") {
            Ok(how) => Capability::yes(format!("sch_netem {how}")),
            Err(missing) => Capability::no(format!(
                "{missing}; delay/jitter/duplicate/corrupt/reorder need it, packet loss works \
                 without it (faultline loss, eBPF)"
            )),
        };
        let qdisc = |option: &str, module: &str, used_for: &str| match feature(
            &config, &modules, option, module,
        ) {
            Ok(how) => Capability::yes(format!("{module} {how}")),
            Err(missing) => Capability::no(format!("{missing}; {used_for}")),
        };
        let tbf = qdisc(
            "CONFIG_NET_SCH_TBF",
            "sch_tbf",
            "rate faults (faultline rate) need it",
        );
        let ifb = qdisc(
            "CONFIG_IFB",
            "ifb",
            "netem and rate faults queue the packets they target in one",
        );
        let btf = if Path::new(btf::VMLINUX).exists() {
            Capability::yes(btf::VMLINUX)
        } else {
            Capability::no(
                "no /sys/kernel/btf/vmlinux (CONFIG_DEBUG_INFO_BTF); TCP connect health cannot load",
            )
        };
        let nftables = match nft::probe() {
            Ok(()) => Capability::yes("nf_tables answers over netlink"),
            Err(e) => Capability::no(e.to_string()),
        };
        let cgroups = Cgroups::probe(Path::new("/sys/fs/cgroup"));
        let (cgroup_version, cgroup) = match &cgroups {
            Ok(found) => {
                let usable = found.usable();
                let detail = format!(
                    "{}; controllers stress can use: {}",
                    found.location(),
                    if usable.is_empty() {
                        "none".to_owned()
                    } else {
                        usable.join(" ")
                    }
                );
                let capability = if usable.is_empty() {
                    Capability::no(detail)
                } else {
                    Capability::yes(detail)
                };
                (found.version(), capability)
            }
            Err(e) => (0, Capability::no(e.to_string())),
        };
        let io_limits = match &cgroups {
            Ok(found) => match found.check(&[Controller::Io]) {
                Ok(()) => Capability::yes(match found.version() {
                    2 => "the cgroup v2 io controller (io.max, io.stat)",
                    _ => "the cgroup v1 blkio controller's throttle (blkio.throttle.*)",
                }),
                Err(e) => Capability::no(format!("{e}; disk io and disk slow need it")),
            },
            Err(e) => Capability::no(e.to_string()),
        };
        let workloads = workloads(&kernel_release);
        Self {
            kernel_release,
            netem,
            tbf,
            ifb,
            nftables,
            btf,
            tcx,
            cls_bpf,
            cgroup,
            io_limits,
            fallocate: Capability::no("not probed: the state directory is not known yet"),
            cgroup_version,
            cgroups: cgroups.map_err(|e| e.to_string()),
            workloads,
            pidfd: pidfd(),
        }
    }

    /// `(name, capability)` pairs in display order.
    pub(crate) fn list(&self) -> Vec<(&'static str, &Capability)> {
        vec![
            ("netem", &self.netem),
            ("tbf", &self.tbf),
            ("ifb", &self.ifb),
            ("nftables", &self.nftables),
            ("btf", &self.btf),
            ("tcx", &self.tcx),
            ("cls_bpf", &self.cls_bpf),
            ("cgroup", &self.cgroup),
            ("io_limits", &self.io_limits),
            ("fallocate", &self.fallocate),
            ("workloads", &self.workloads),
            ("pidfd", &self.pidfd),
        ]
    }

    /// Probes fallocate on the filesystem of `state_dir` (or of its nearest existing
    /// ancestor), with an unnamed file that vanishes when closed.
    pub(crate) fn with_state_dir(mut self, state_dir: &Path) -> Self {
        let dir = state_dir
            .ancestors()
            .find(|d| d.is_dir())
            .unwrap_or(Path::new("/"));
        let fs_type = space::fs_type(dir);
        self.fallocate = match space::supports_fallocate(dir, 4096) {
            Some(true) => Capability::yes(format!(
                "the state directory's filesystem ({fs_type}) allocates without writing; a \
                 fill checks its own filesystem before anything is touched"
            )),
            Some(false) => Capability::no(format!(
                "the state directory's filesystem ({fs_type}) has no fallocate; a fill on it \
                 is refused (other filesystems are checked when a fill names them)"
            )),
            None => Capability::no(format!(
                "cannot tell on the state directory's filesystem ({fs_type}, no O_TMPFILE); a \
                 fill finds out on its first file"
            )),
        };
        self
    }
}

/// Where workloads are found (`--unit`, `--container`, `--pod`, ...) and how pause freezes.
fn workloads(release: &str) -> Capability {
    let hierarchies = Hierarchies::probe();
    if hierarchies.0.is_empty() {
        return Capability::no("no cgroup hierarchy is mounted: no workload can be found");
    }
    let names: Vec<&str> = hierarchies.0.iter().map(|h| h.name.as_str()).collect();
    let v1_freezer = names.iter().any(|n| n.split(',').any(|c| c == "freezer"));
    // cgroup.freeze exists in every non-root v2 cgroup from Linux 5.2 on.
    let v2_freezer = hierarchies.0.iter().any(|h| h.is_v2()) && at_least(release, (5, 2));
    let freezer = match (v1_freezer, v2_freezer) {
        (true, _) => "the v1 freezer",
        (false, true) => "cgroup v2 cgroup.freeze",
        (false, false) => "none: pause stops processes with SIGSTOP",
    };
    Capability::yes(format!(
        "found in the cgroup hierarchies {}; pause freezes with {freezer}",
        names.join(" ")
    ))
}

/// Whether a kernel release (`6.1.0-57-cloud-amd64`) is at least `major.minor`.
fn at_least(release: &str, (major, minor): (u32, u32)) -> bool {
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0)) >= (major, minor)
}

/// Whether pidfd_open(2) works (Linux 5.3 and later).
fn pidfd() -> Capability {
    // SAFETY: pidfd_open(2) on this process, no memory passed; the fd is closed at once.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, std::process::id() as libc::pid_t, 0) };
    if fd < 0 {
        return Capability::no(format!(
            "pidfd_open: {} (Linux 5.3 or later has it); kill and pause --pid cannot signal \
             safely without it",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: the fd was just returned by the kernel and is closed once.
    unsafe { libc::close(fd as i32) };
    Capability::yes("pidfd_open and pidfd_send_signal: kill and pause signal one process only")
}

/// The running kernel's build configuration, where the distribution exposes it.
struct KernelConfig(Option<String>);

impl KernelConfig {
    fn read(release: &str) -> Self {
        let from_proc = fs::File::open("/proc/config.gz").ok().and_then(|f| {
            let mut text = String::new();
            flate2::read::GzDecoder::new(f)
                .read_to_string(&mut text)
                .ok()
                .map(|_| text)
        });
        Self(from_proc.or_else(|| fs::read_to_string(format!("/boot/config-{release}")).ok()))
    }

    /// `Some('y' | 'm')`, `Some('n')` when the config says it is not set, `None` when unknown.
    fn value(&self, option: &str) -> Option<char> {
        let text = self.0.as_deref()?;
        let set = format!("{option}=");
        let unset = format!("# {option} is not set");
        text.lines()
            .find_map(|line| {
                if let Some(v) = line.strip_prefix(&set) {
                    v.chars().next()
                } else if line == unset {
                    Some('n')
                } else {
                    None
                }
            })
            .or(Some('n'))
    }
}

/// The kernel's module directory, for modules that are not loaded yet.
struct Modules {
    dir: PathBuf,
}

impl Modules {
    fn new(release: &str) -> Self {
        Self {
            dir: PathBuf::from(format!("/lib/modules/{release}")),
        }
    }

    fn listed_in(&self, index: &str, module: &str) -> bool {
        let needle = format!("/{module}.ko");
        fs::read_to_string(self.dir.join(index))
            .map(|text| text.lines().any(|l| l.contains(&needle)))
            .unwrap_or(false)
    }
}

/// How a kernel feature is present (`loaded`, `built in`, `available as a module`), or why not.
fn feature(
    config: &KernelConfig,
    modules: &Modules,
    option: &str,
    module: &str,
) -> Result<&'static str, String> {
    if Path::new("/sys/module").join(module).exists() {
        return Ok("loaded");
    }
    if modules.listed_in("modules.builtin", module) {
        return Ok("built in");
    }
    if modules.listed_in("modules.dep", module) {
        return Ok("available as a module");
    }
    match config.value(option) {
        Some('y') => Ok("built in"),
        Some('m') => Err(format!(
            "{module} is configured as a module ({option}=m) but {} does not have it",
            modules.dir.display()
        )),
        Some(_) => Err(format!(
            "{module} is not in this kernel ({option} is not set)"
        )),
        None => Err(format!(
            "{module} is neither loaded nor found in {}",
            modules.dir.display()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_releases_compare_by_major_and_minor() {
        assert!(at_least("6.1.0-57-cloud-amd64", (5, 2)));
        assert!(at_least("5.2.0", (5, 2)));
        assert!(!at_least("4.19.0-21-amd64", (5, 2)));
    }

    #[test]
    fn config_values_are_read_by_exact_option() {
        let config = KernelConfig(Some(
            "CONFIG_NET_SCH_TBF=y\n# CONFIG_NET_SCH_NETEM is not set\nCONFIG_IFB=m\n".to_owned(),
        ));
        assert_eq!(config.value("CONFIG_NET_SCH_TBF"), Some('y'));
        assert_eq!(config.value("CONFIG_NET_SCH_NETEM"), Some('n'));
        assert_eq!(config.value("CONFIG_IFB"), Some('m'));
        assert_eq!(config.value("CONFIG_NET_SCH_TB"), Some('n'));
    }

    #[test]
    fn probe_describes_this_host() {
        let caps = Capabilities::probe();
        assert!(!caps.kernel_release.is_empty());
        for (name, cap) in caps.list() {
            assert!(!cap.detail.is_empty(), "{name} has no detail");
        }
    }
}
