//! What `faultline doctor` reads of the host besides the kernel's features
//! ([`super::caps`]): the privileges of the process that asks, the clock's synchronisation,
//! free space where the journal lives, which protected ports are listening, the kernel's
//! lockdown mode, and where stress cgroups would live relative to the service manager's tree.
//! Everything here only reads; nothing is created, so a preflight is safe on any host.

use std::{
    fmt, fs,
    path::{Path, PathBuf},
};

use super::cgroup::Cgroups;
use crate::units::format_bytes;

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Verdict {
    Ok,
    /// Works, but something an operator should know or fix.
    Warn,
    /// Something faultline needs is missing.
    Fail,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Verdict::Ok => "ok",
            Verdict::Warn => "warn",
            Verdict::Fail => "fail",
        })
    }
}

/// One line of a preflight: what was checked, how it came out, and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Check {
    /// `privileges`, `clock`, `journal`, `guard`, `kernel`, `cgroups`.
    pub(crate) area: &'static str,
    pub(crate) verdict: Verdict,
    pub(crate) detail: String,
    /// What to do when the verdict is not `Ok`; empty otherwise.
    pub(crate) instead: String,
}

impl Check {
    fn ok(area: &'static str, detail: impl Into<String>) -> Self {
        Self {
            area,
            verdict: Verdict::Ok,
            detail: detail.into(),
            instead: String::new(),
        }
    }

    fn not_ok(
        area: &'static str,
        verdict: Verdict,
        detail: impl Into<String>,
        instead: impl Into<String>,
    ) -> Self {
        Self {
            area,
            verdict,
            detail: detail.into(),
            instead: instead.into(),
        }
    }
}

/// A Linux capability faultline may need, by its number in `capability.h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cap {
    DacOverride = 1,
    Kill = 5,
    NetAdmin = 12,
    IpcLock = 14,
    SysAdmin = 21,
    Perfmon = 38,
    Bpf = 39,
}

impl Cap {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Cap::DacOverride => "CAP_DAC_OVERRIDE",
            Cap::Kill => "CAP_KILL",
            Cap::NetAdmin => "CAP_NET_ADMIN",
            Cap::IpcLock => "CAP_IPC_LOCK",
            Cap::SysAdmin => "CAP_SYS_ADMIN",
            Cap::Perfmon => "CAP_PERFMON",
            Cap::Bpf => "CAP_BPF",
        }
    }
}

/// The effective capabilities of this process, as /proc/self/status reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Privileges {
    effective: u64,
}

impl Privileges {
    pub(crate) fn of_this_process() -> Self {
        let effective = procfs::process::Process::myself()
            .and_then(|p| p.status())
            .map(|s| s.capeff)
            .unwrap_or(0);
        Self { effective }
    }

    /// A fixed set, for tests.
    #[cfg(test)]
    pub(crate) fn with(caps: &[Cap]) -> Self {
        Self {
            effective: caps.iter().fold(0, |bits, c| bits | 1 << *c as u32),
        }
    }

    pub(crate) fn has(&self, cap: Cap) -> bool {
        self.effective & (1 << cap as u32) != 0
    }

    /// The first of `caps` this process lacks.
    pub(crate) fn lacking(&self, caps: &[Cap]) -> Option<Cap> {
        caps.iter().copied().find(|c| !self.has(*c))
    }

    /// eBPF programs and maps: CAP_BPF, or CAP_SYS_ADMIN on kernels before 5.8 (which have no
    /// CAP_BPF and accept CAP_SYS_ADMIN for it; so do later ones).
    pub(crate) fn may_bpf(&self) -> bool {
        self.has(Cap::Bpf) || self.has(Cap::SysAdmin)
    }

    pub(crate) fn check(&self) -> Check {
        const WANTED: &[Cap] = &[
            Cap::NetAdmin,
            Cap::Bpf,
            Cap::Perfmon,
            Cap::DacOverride,
            Cap::SysAdmin,
            Cap::IpcLock,
            Cap::Kill,
        ];
        let (held, missing): (Vec<Cap>, Vec<Cap>) = WANTED.iter().partition(|c| self.has(**c));
        let names = |caps: &[Cap]| caps.iter().map(|c| c.name()).collect::<Vec<_>>().join(" ");
        let detail = format!(
            "effective {:#x}: {}{}",
            self.effective,
            if held.is_empty() {
                "none of faultline's capabilities".to_owned()
            } else {
                names(&held)
            },
            if missing.is_empty() {
                String::new()
            } else {
                format!("; without {}", names(&missing))
            }
        );
        if !self.has(Cap::NetAdmin) {
            return Check::not_ok(
                "privileges",
                Verdict::Fail,
                detail,
                "run the agent as root, or with the capabilities of the shipped systemd unit \
                 (CAP_NET_ADMIN CAP_BPF CAP_PERFMON CAP_DAC_OVERRIDE)",
            );
        }
        Check::ok("privileges", detail)
    }
}

/// Whether the kernel's clock is synchronised (by an NTP client through adjtimex): deadlines
/// run on the monotonic clock, but journal and audit times, leases seen from a fleet, and
/// certificate validity for mutual TLS are wall-clock times.
pub(crate) fn clock() -> Check {
    // SAFETY: adjtimex with modes 0 only reads the kernel's clock state into `tx`.
    let mut tx: libc::timex = unsafe { std::mem::zeroed() };
    let state = unsafe { libc::adjtimex(&mut tx) };
    if state < 0 {
        return Check::not_ok(
            "clock",
            Verdict::Warn,
            format!(
                "cannot read the clock's state: {}",
                std::io::Error::last_os_error()
            ),
            "check time synchronisation by hand (timedatectl, chronyc tracking)",
        );
    }
    if state == libc::TIME_ERROR || tx.status & libc::STA_UNSYNC != 0 {
        return Check::not_ok(
            "clock",
            Verdict::Warn,
            "not synchronised: no NTP client has disciplined the kernel clock (STA_UNSYNC)",
            "run an NTP client (systemd-timesyncd, chrony): fleet leases, audit times and \
             certificate validity use wall-clock time",
        );
    }
    Check::ok(
        "clock",
        format!(
            "synchronised, estimated error {} us (maximum {} us)",
            tx.esterror, tx.maxerror
        ),
    )
}

/// Below this much free space where the journal lives, applying faults gets risky: each
/// fault's record is small, but a full filesystem fails the fsync that applies wait for.
const JOURNAL_LOW: u64 = 64 << 20;

/// Free space on the filesystem of the state directory (the journal).
pub(crate) fn journal_space(state_dir: &Path) -> Check {
    // The directory may not exist yet before the first start: ask its nearest ancestor.
    let existing = state_dir
        .ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"));
    match nix::sys::statvfs::statvfs(existing) {
        Ok(stat) => {
            let free = stat.blocks_available() * stat.fragment_size();
            let detail = format!(
                "{}: {} free for unprivileged writers",
                state_dir.display(),
                format_bytes(free)
            );
            if free < JOURNAL_LOW {
                Check::not_ok(
                    "journal",
                    Verdict::Fail,
                    detail,
                    format!(
                        "free at least {} there, or point --state-dir at another filesystem",
                        format_bytes(JOURNAL_LOW)
                    ),
                )
            } else {
                Check::ok("journal", detail)
            }
        }
        Err(e) => Check::not_ok(
            "journal",
            Verdict::Fail,
            format!("cannot stat {}: {e}", existing.display()),
            "point --state-dir at a writable directory",
        ),
    }
}

/// Which of the guard's protected ports have a listening TCP socket in this network namespace:
/// those are the sessions a fault may not cut without --force.
pub(crate) fn protected_ports(ports: &[u16]) -> Check {
    let mut listening: Vec<u16> = procfs::net::tcp()
        .into_iter()
        .flatten()
        .chain(procfs::net::tcp6().into_iter().flatten())
        .filter(|e| e.state == procfs::net::TcpState::Listen)
        .map(|e| e.local_address.port())
        .filter(|p| ports.contains(p))
        .collect();
    listening.sort_unstable();
    listening.dedup();
    let list = |ports: &[u16]| {
        ports
            .iter()
            .map(u16::to_string)
            .collect::<Vec<_>>()
            .join(",")
    };
    if ports.is_empty() {
        return Check::not_ok(
            "guard",
            Verdict::Warn,
            "no protected ports: the guard protects no sessions",
            "name the ports of your remote access with --protected-port (repeatable; default 22)",
        );
    }
    let quiet: Vec<u16> = ports
        .iter()
        .copied()
        .filter(|p| !listening.contains(p))
        .collect();
    Check::ok(
        "guard",
        format!(
            "protected ports {}: {}{}",
            list(ports),
            if listening.is_empty() {
                "none listening".to_owned()
            } else {
                format!("listening on {}", list(&listening))
            },
            if quiet.is_empty() || listening.is_empty() {
                String::new()
            } else {
                format!(", nothing on {}", list(&quiet))
            }
        ),
    )
}

/// The kernel's lockdown mode: `integrity` and `confidentiality` refuse kprobes and
/// fentry/fexit programs, which faultline does not use, and reads of kernel memory by
/// tracing programs, which connect health needs only as raw tracepoints.
pub(crate) fn lockdown() -> Check {
    let text = fs::read_to_string("/sys/kernel/security/lockdown").unwrap_or_default();
    let mode = text
        .split_whitespace()
        .find_map(|w| w.strip_prefix('[').and_then(|w| w.strip_suffix(']')));
    match mode {
        None => Check::ok("kernel", "lockdown: not reported (securityfs not mounted)"),
        Some("none") => Check::ok("kernel", "lockdown: none"),
        Some(mode) => Check::ok(
            "kernel",
            format!(
                "lockdown: {mode} (faultline uses no kprobes or fentry programs; \
                 connect health uses raw tracepoints)"
            ),
        ),
    }
}

/// Where stress cgroups would live, and whether a service manager owns that tree: systemd
/// removes cgroups it did not create outside a delegated subtree (`Delegate=`).
pub(crate) fn cgroup_placement(cgroups: &Result<Cgroups, String>) -> Check {
    let cgroups = match cgroups {
        Ok(c) => c,
        Err(why) => {
            return Check::not_ok(
                "cgroups",
                Verdict::Fail,
                format!("no usable cgroup hierarchy: {why}"),
                "mount cgroup2 at /sys/fs/cgroup (or the v1 cpu, cpuacct and memory \
                 controllers) for stress faults",
            )
        }
    };
    let usable = cgroups.usable();
    let mut detail = format!(
        "{}; controllers usable: {}",
        cgroups.location(),
        if usable.is_empty() {
            "none".to_owned()
        } else {
            usable.join(", ")
        }
    );
    let own = own_cgroup();
    if let Some(own) = &own {
        detail.push_str(&format!("; this process is in {}", own.display()));
    }
    // Under --cgroup-delegated the agent has moved into the `agent` leaf of its delegated
    // cgroup, and stress cgroups sit beside it, where systemd leaves them alone.
    if let Some(home) = own
        .as_deref()
        .filter(|o| {
            o.file_name()
                .is_some_and(|n| n == super::delegate::AGENT_LEAF)
        })
        .and_then(Path::parent)
    {
        if cgroups.version() == 2 {
            return Check::ok(
                "cgroups",
                format!(
                    "{detail}; stress cgroups are made in the delegated {}",
                    home.display()
                ),
            );
        }
    }
    // sd_booted(3): systemd is the service manager when this directory exists.
    if Path::new("/run/systemd/system").is_dir() {
        return Check::not_ok(
            "cgroups",
            Verdict::Warn,
            format!(
                "{detail}; systemd manages the tree, and stress cgroups are made under the \
                 hierarchy's root, outside the agent's own unit"
            ),
            "systemd may remove or fight cgroups it did not create: run the agent with \
             Delegate=yes and `serve --cgroup-delegated`, as the packaged unit does, or keep \
             stress faults short on this host",
        );
    }
    Check::ok("cgroups", detail)
}

/// This process's cgroup (the v2 entry, else the first v1 one), from /proc/self/cgroup.
fn own_cgroup() -> Option<PathBuf> {
    let text = fs::read_to_string("/proc/self/cgroup").ok()?;
    let mut fallback = None;
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(_), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        if id == "0" {
            return Some(PathBuf::from(path));
        }
        fallback.get_or_insert_with(|| PathBuf::from(path));
    }
    fallback
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn privileges_name_what_is_missing() {
        let p = Privileges::with(&[Cap::NetAdmin, Cap::Bpf]);
        assert!(p.has(Cap::NetAdmin) && p.may_bpf() && !p.has(Cap::Perfmon));
        assert_eq!(
            p.lacking(&[Cap::NetAdmin, Cap::Perfmon]),
            Some(Cap::Perfmon)
        );
        let check = p.check();
        assert_eq!(check.verdict, Verdict::Ok);
        assert!(
            check.detail.contains("without CAP_PERFMON"),
            "{}",
            check.detail
        );
        let none = Privileges::with(&[]).check();
        assert_eq!(none.verdict, Verdict::Fail);
        assert!(none.instead.contains("CAP_NET_ADMIN"), "{}", none.instead);
    }

    #[test]
    fn journal_space_asks_the_nearest_existing_directory() {
        let check = journal_space(Path::new("/nonexistent/faultline/state"));
        assert_ne!(check.detail, "");
        assert!(check.detail.starts_with("/nonexistent/faultline/state"));
    }
}
