//! Where the bench runs things: network namespaces ([`Netns`]), two of them joined by a veth
//! pair ([`Lab`]), and long-running processes started inside one ([`Daemon`]). Every one is a
//! guard whose `Drop` removes it — a namespace after killing what still runs in it — so an
//! error or Ctrl-C leaves nothing behind.
//!
//! Everything the bench creates is named `faultline-bench-<pid>-<n>` (namespaces, bpffs pin
//! directories, cgroups) or lives under `/var/lib/faultline-bench-<pid>`; [`sweep_stale`]
//! removes what a killed earlier run left (its pid no longer runs), and [`leftovers`] lists
//! what this run still holds, which must be nothing at the end.

use std::{
    fs::{self, File},
    io,
    net::Ipv4Addr,
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

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

/// A named network namespace (`/run/netns/<name>`), deleted on drop.
pub struct Netns {
    name: String,
    /// Held open for `setns`; also what child processes enter before they exec.
    file: File,
}

impl Netns {
    /// Creates the namespace and brings its loopback up.
    pub fn create(name: &str) -> Result<Self> {
        exec::capture(&mut exec::command("ip", ["netns", "add", name]))?;
        let path = Path::new("/run/netns").join(name);
        let file = match File::open(&path) {
            Ok(file) => file,
            Err(e) => {
                let _ = exec::capture(&mut exec::command("ip", ["netns", "delete", name]));
                return Err(e).with_context(|| format!("opening {}", path.display()));
            }
        };
        let ns = Self {
            name: name.to_owned(),
            file,
        };
        ns.exec_ok(&["ip", "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `program args...` to be run inside the namespace: the child enters it between fork and
    /// exec, so nothing (no `nsenter`) runs in between and the child's pid is the program's.
    pub fn command<I, S>(&self, program: &str, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut command = exec::command(program, args);
        let fd = self.file.as_raw_fd();
        // SAFETY: setns(2) is async-signal-safe and only changes the child's own namespace;
        // `fd` stays open in the parent until the child has exec'd (the guard owns it).
        unsafe {
            command.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        command
    }

    /// Runs `argv` inside the namespace; fails with its stderr unless it exits 0.
    pub fn exec_ok(&self, argv: &[&str]) -> Result<String> {
        let (program, args) = argv.split_first().context("empty command")?;
        exec::capture(&mut self.command(program, args))
            .with_context(|| format!("in network namespace {}", self.name))
    }

    /// Runs `f` on a thread that has entered the namespace: sockets it creates belong to the
    /// namespace for their whole life.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        let fd = self.file.as_raw_fd();
        thread::scope(|scope| {
            let worker = scope.spawn(move || {
                // SAFETY: a valid namespace fd; entering a network namespace affects only the
                // calling thread, which ends when `f` returns.
                if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } != 0 {
                    return Err(io::Error::last_os_error())
                        .with_context(|| format!("setns into {}", self.name));
                }
                Ok(f())
            });
            match worker.join() {
                Ok(result) => result,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = delete_netns(&self.name) {
            eprintln!("bench cleanup: {e:#}");
        }
    }
}

/// Kills what runs in namespace `name`, then deletes it.
fn delete_netns(name: &str) -> Result<()> {
    let pids = || -> Vec<i32> {
        exec::probe(&mut exec::command("ip", ["netns", "pids", name]))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .filter(|&p| p != std::process::id() as i32)
            .collect()
    };
    for pid in pids() {
        // SAFETY: kill(2) on a process that runs in the bench's own namespace.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while !pids().is_empty() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    exec::capture(&mut exec::command("ip", ["netns", "delete", name]))
        .map(drop)
        .with_context(|| format!("deleting network namespace {name}"))
}

/// One end of a [`Lab`]'s link.
pub struct Host {
    pub ns: Netns,
    /// The veth interface in `ns`.
    pub dev: String,
    pub v4: Ipv4Addr,
}

/// Two namespaces `a` (10.78.X.1) and `b` (10.78.X.2) joined by a veth pair.
pub struct Lab {
    pub a: Host,
    pub b: Host,
}

impl Lab {
    /// `n` is unique within the run: it names the interfaces and the subnet.
    pub fn new(a: Netns, b: Netns, n: u32) -> Result<Self> {
        let subnet = (n % 250 + 1) as u8;
        let a = Host {
            ns: a,
            dev: format!("fbv{n}a"),
            v4: Ipv4Addr::new(10, 78, subnet, 1),
        };
        let b = Host {
            ns: b,
            dev: format!("fbv{n}b"),
            v4: Ipv4Addr::new(10, 78, subnet, 2),
        };
        // Both ends are created inside their namespaces, so their names cannot collide with
        // the host's interfaces.
        exec::capture(
            exec::command("ip", ["link", "add", &a.dev, "netns", a.ns.name()]).args([
                "type",
                "veth",
                "peer",
                "name",
                &b.dev,
                "netns",
                b.ns.name(),
            ]),
        )?;
        for host in [&a, &b] {
            let v4 = format!("{}/24", host.v4);
            host.ns
                .exec_ok(&["ip", "addr", "add", &v4, "dev", &host.dev])?;
            host.ns.exec_ok(&["ip", "link", "set", &host.dev, "up"])?;
        }
        let target = b.v4.to_string();
        let deadline = Instant::now() + Duration::from_secs(10);
        while exec::probe(&mut a.ns.command("ping", ["-c", "1", "-W", "1", &target])).is_none() {
            if Instant::now() > deadline {
                bail!("{target} does not answer ping from {}", a.ns.name());
            }
            thread::sleep(Duration::from_millis(100));
        }
        Ok(Self { a, b })
    }
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
        delete_netns(&name)
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
