//! Where the bench runs things: network namespaces and the veth pair between two of them (from
//! the lab crate the integration tests share: [`Netns`], [`Lab`]), and long-running processes
//! started inside one ([`Daemon`]). Every one is a guard whose `Drop` removes it — a namespace
//! after killing what still runs in it — so an error or Ctrl-C leaves nothing behind.
//!
//! Everything the bench creates is named `faultline-bench-<pid>-<n>` (namespaces, bpffs pin
//! directories, cgroups) or lives under `/var/lib/faultline-bench-<pid>`; [`sweep_stale`]
//! removes what a killed earlier run left (its pid no longer runs), and [`leftovers`] lists
//! what this run still holds, which must be nothing at the end.

use std::{
    fs, io,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
pub use faultline_lab::{Lab, Netns};

use crate::exec;

/// The prefix of every name the bench gives.
pub const PREFIX: &str = "faultline-bench";

/// Cgroup hierarchies an agent's stress faults may use: the v1 controllers and v2.
const CGROUP_ROOTS: &[&str] = &[
    "/sys/fs/cgroup/cpu",
    "/sys/fs/cgroup/cpuacct",
    "/sys/fs/cgroup/cpuset",
    "/sys/fs/cgroup/memory",
    "/sys/fs/cgroup/unified",
    "/sys/fs/cgroup",
];

/// `program args...` inside `ns`, found and run as [`exec::command`] does.
pub fn command<I, S>(ns: &Netns, program: &str, args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let resolved =
        crate::host::find_program(program).map_or_else(|| program.into(), |p| p.into_os_string());
    let mut command = ns.command(resolved);
    command
        .args(args)
        .current_dir(crate::host::workspace_root())
        .env("PATH", crate::host::child_path());
    command
}

/// A long-running process inside a namespace (an agent, the node exporter), stopped on drop:
/// SIGTERM, then SIGKILL after `grace`. It runs in a process group of its own, so a Ctrl-C at
/// the terminal reaches only xtask, which then stops it in order; and it gets SIGTERM if xtask
/// dies (PR_SET_PDEATHSIG), so an agent reverts its faults even then.
pub struct Daemon {
    what: String,
    child: Option<Child>,
    grace: Duration,
    /// SIGTERM was sent: a second one could cut an agent's orderly shutdown short.
    terminated: bool,
}

impl Daemon {
    /// Starts `command` (from [`Netns::command`]) with its output appended to `log`. Call it on
    /// the main thread: the death signal follows the thread that forked.
    pub fn spawn(what: &str, mut command: Command, log: &Path, grace: Duration) -> Result<Self> {
        let out = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        command
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .process_group(0);
        // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe and only affects the child.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let shown = exec::display(&command);
        let child = command
            .spawn()
            .with_context(|| format!("cannot start {what}: `{shown}`"))?;
        Ok(Self {
            what: what.to_owned(),
            child: Some(child),
            grace,
            terminated: false,
        })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Fails if the process has exited.
    pub fn check_running(&mut self) -> Result<()> {
        if let Some(child) = self.child.as_mut() {
            if let Some(status) = child.try_wait()? {
                self.child = None;
                bail!("{} exited ({status})", self.what);
            }
        }
        Ok(())
    }

    /// Sends SIGTERM (once) without waiting, so that many daemons can stop at once.
    pub fn terminate(&mut self) {
        if let (Some(child), false) = (&self.child, self.terminated) {
            // SAFETY: kill(2) on our own child, which has not been reaped yet.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            self.terminated = true;
        }
    }

    /// SIGTERM, then waits up to the grace period (SIGKILL and an error after it).
    pub fn stop(&mut self) -> Result<()> {
        self.terminate();
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let started = Instant::now();
        loop {
            if child.try_wait()?.is_some() {
                return Ok(());
            }
            if started.elapsed() > self.grace {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "{} did not exit within {:?} of SIGTERM; killed",
                    self.what,
                    self.grace
                );
            }
            thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("bench cleanup: {e:#}");
        }
    }
}

/// The cgroup `name` in every hierarchy where it exists.
pub fn cgroup_dirs(name: &str) -> Vec<PathBuf> {
    CGROUP_ROOTS
        .iter()
        .map(|root| Path::new(root).join(name))
        .filter(|p| p.is_dir())
        .collect()
}

/// Kills what runs in the cgroup `name` and its children, and removes them all.
pub fn remove_cgroup(name: &str) {
    for parent in cgroup_dirs(name) {
        let children: Vec<PathBuf> = fs::read_dir(&parent)
            .map(|list| {
                list.filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.is_dir())
                    .collect()
            })
            .unwrap_or_default();
        for dir in children.iter().chain([&parent]) {
            for _ in 0..50 {
                let procs = fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
                if procs.trim().is_empty() {
                    break;
                }
                for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                    // SAFETY: kill(2) with a pid read from the bench's own cgroup.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
                thread::sleep(Duration::from_millis(20));
            }
        }
        for dir in children.iter().chain([&parent]) {
            if let Err(e) = fs::remove_dir(dir) {
                eprintln!("bench cleanup: cannot remove {}: {e}", dir.display());
            }
        }
    }
}

/// Everything named by the bench (`faultline-bench-<pid>...`) on this host, with that pid.
fn named_things() -> Vec<(PathBuf, u32)> {
    let mut dirs: Vec<PathBuf> = ["/run/netns", "/sys/fs/bpf", "/var/lib"]
        .iter()
        .map(PathBuf::from)
        .collect();
    dirs.extend(CGROUP_ROOTS.iter().map(PathBuf::from));
    let mut found = Vec::new();
    for dir in dirs {
        let Ok(list) = fs::read_dir(&dir) else {
            continue;
        };
        for path in list.filter_map(|e| e.ok().map(|e| e.path())) {
            let pid = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_prefix(PREFIX))
                .and_then(|rest| rest.strip_prefix('-'))
                .and_then(|rest| rest.split('-').next())
                .and_then(|pid| pid.parse().ok());
            if let Some(pid) = pid {
                found.push((path, pid));
            }
        }
    }
    found
}

fn remove(path: &Path) -> Result<()> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .context("a name")?
        .to_owned();
    if path.starts_with("/run/netns") {
        faultline_lab::netns::delete(&name)
    } else if path.starts_with("/sys/fs/cgroup") {
        remove_cgroup(&name);
        Ok(())
    } else {
        fs::remove_dir_all(path).with_context(|| format!("removing {}", path.display()))
    }
}

/// Removes what earlier runs left whose xtask no longer runs (killed with SIGKILL, or a
/// machine that lost power): the agents got SIGTERM and reverted their faults, but the
/// namespaces, pins and directories stay. Returns what it removed.
pub fn sweep_stale() -> Vec<String> {
    let mut removed = Vec::new();
    for (path, pid) in named_things() {
        if pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        match remove(&path) {
            Ok(()) => removed.push(path.display().to_string()),
            Err(e) => eprintln!("bench: cannot remove stale {}: {e:#}", path.display()),
        }
    }
    removed
}

/// What this run still holds: namespaces, pins, cgroups, directories. Empty when every
/// guard did its job.
pub fn leftovers() -> Vec<String> {
    named_things()
        .into_iter()
        .filter(|(_, pid)| *pid == std::process::id())
        .map(|(path, _)| path.display().to_string())
        .collect()
}

/// Removes what [`leftovers`] finds; the last line of defence, after every guard has run.
pub fn remove_leftovers() {
    for (path, pid) in named_things() {
        if pid == std::process::id() {
            if let Err(e) = remove(&path) {
                eprintln!("bench cleanup: {e:#}");
            }
        }
    }
}
