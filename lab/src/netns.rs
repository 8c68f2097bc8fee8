//! Network namespaces as test hosts ([`Netns`]). A namespace is deleted by its guard's `Drop`,
//! also when the test or bench panics, after the processes still running in it are killed.
//! Nothing here touches the host's own namespace beyond creating and deleting named ones.

use std::{
    ffi::OsStr,
    fs::File,
    io,
    os::{fd::AsRawFd, unix::process::CommandExt as _},
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use crate::process;

/// A named network namespace (`/run/netns/<name>`), deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
    path: PathBuf,
    /// Held open for `setns`: what threads and child processes enter.
    file: File,
}

impl Netns {
    /// Creates the namespace and brings its loopback up.
    pub fn create(name: &str) -> Result<Self> {
        let mut ip = Command::new("ip");
        ip.args(["netns", "add", name]);
        process::run_ok(ip)?;
        let path = Path::new("/run/netns").join(name);
        let file = match File::open(&path) {
            Ok(file) => file,
            Err(e) => {
                let _ = delete(name);
                return Err(e).with_context(|| format!("opening {}", path.display()));
            }
        };
        let ns = Self {
            name: name.to_owned(),
            path,
            file,
        };
        ns.exec_ok(&["ip", "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/<name>`, for `nsenter --net=` and `setns`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `program` to be run inside the namespace: the child enters it between fork and exec
    /// (mounts stay the host's, unlike `ip netns exec`), so nothing runs in between and the
    /// child's pid is the program's.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut command = Command::new(program);
        let fd = self.file.as_raw_fd();
        // SAFETY: setns(2) is async-signal-safe and changes only the child's own namespace;
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

    /// Runs `argv` inside the namespace; fails with its output unless it exits 0.
    pub fn exec_ok(&self, argv: &[&str]) -> Result<String> {
        let (program, args) = argv.split_first().context("empty command")?;
        let mut command = self.command(program);
        command.args(args);
        process::run_ok(command)
    }

    /// Runs `argv` inside the namespace and reports whether it exited 0.
    pub fn exec_succeeds(&self, argv: &[&str]) -> Result<bool> {
        let (program, args) = argv.split_first().context("empty command")?;
        let mut command = self.command(program);
        command.args(args);
        Ok(process::run(command, process::COMMAND_TIMEOUT)?
            .status
            .success())
    }

    /// Runs `f` on a thread that has entered the namespace: sockets it creates belong to the
    /// namespace for their whole life, wherever they are used afterwards.
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

    /// The qdiscs of `dev` as `tc -d -j` prints them (the kernel's netlink dump, decoded by
    /// iproute2, an independent reader), without the counters, which change with every packet:
    /// two calls compare equal when the qdisc tree is the same.
    pub fn qdiscs(&self, dev: &str) -> Result<serde_json::Value> {
        const COUNTERS: &[&str] = &[
            "bytes",
            "packets",
            "drops",
            "overlimits",
            "requeues",
            "backlog",
            "qlen",
            "refcnt",
        ];
        let text = self.exec_ok(&["tc", "-d", "-j", "qdisc", "show", "dev", dev])?;
        let mut value: serde_json::Value =
            serde_json::from_str(&text).context("tc -j printed no JSON")?;
        for q in value.as_array_mut().into_iter().flatten() {
            if let Some(q) = q.as_object_mut() {
                q.retain(|k, _| !COUNTERS.contains(&k.as_str()));
            }
        }
        Ok(value)
    }

    /// Whether nftables table `inet faultline` exists in the namespace.
    pub fn nft_table_exists(&self) -> Result<bool> {
        self.exec_succeeds(&["nft", "list", "table", "inet", "faultline"])
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = delete(&self.name) {
            eprintln!("cleanup: {e:#}");
        }
    }
}

/// Kills what runs in namespace `name`, then deletes it: the guard's `Drop`, and the sweep of
/// what an earlier, killed run left.
pub fn delete(name: &str) -> Result<()> {
    let pids = || -> Vec<i32> {
        let mut ip = Command::new("ip");
        ip.args(["netns", "pids", name]);
        process::run_ok(ip)
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|pid| pid.parse().ok())
            .filter(|&pid| pid != std::process::id() as i32)
            .collect()
    };
    for pid in pids() {
        // SAFETY: plain kill(2) on a process that runs in the namespace being deleted.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while !pids().is_empty() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    let mut ip = Command::new("ip");
    ip.args(["netns", "delete", name]);
    process::run_ok(ip)
        .map(drop)
        .with_context(|| format!("deleting network namespace {name}"))
}
