//! Test hosts: network namespaces ([`Netns`]) and a pair of them joined by a veth link
//! ([`Lab`]): host `a` at 10.77.X.1 / fd77:X::1 and host `b` at 10.77.X.2 / fd77:X::2.
//! A namespace is deleted by its guard's `Drop`, also when the test panics, after the
//! processes still running in it are killed. Nothing here touches the host's own namespace
//! beyond creating and deleting the named namespaces.

use std::{
    fs::File,
    net::{Ipv4Addr, Ipv6Addr},
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use crate::{process, unique};

/// A named network namespace (`/run/netns/<name>`), deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
    path: PathBuf,
}

impl Netns {
    /// Creates the namespace and brings its loopback up.
    pub fn create(name: &str) -> Result<Self> {
        let mut ip = Command::new("ip");
        ip.args(["netns", "add", name]);
        process::run_ok(ip)?;
        let ns = Self {
            name: name.to_owned(),
            path: Path::new("/run/netns").join(name),
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

    /// `program` to be run inside the namespace (through `nsenter --net=`).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new("nsenter");
        command
            .arg(format!("--net={}", self.path.display()))
            .arg(program);
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
        let file =
            File::open(&self.path).with_context(|| format!("opening {}", self.path.display()))?;
        thread::scope(|scope| {
            let worker = scope.spawn(move || {
                // SAFETY: a valid namespace fd; entering a network namespace affects only the
                // calling thread, which ends when `f` returns.
                if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(std::io::Error::last_os_error())
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

    fn pids(&self) -> Vec<i32> {
        let mut ip = Command::new("ip");
        ip.args(["netns", "pids", &self.name]);
        process::run_ok(ip)
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|pid| pid.parse().ok())
            .filter(|&pid| pid != std::process::id() as i32)
            .collect()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for pid in self.pids() {
            // SAFETY: plain kill(2) on a process that runs in our test namespace.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.pids().is_empty() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(20));
        }
        let mut ip = Command::new("ip");
        ip.args(["netns", "delete", &self.name]);
        if let Err(e) = process::run_ok(ip) {
            eprintln!(
                "cleanup: cannot delete network namespace {}: {e:#}",
                self.name
            );
        }
    }
}

/// One end of the lab's link: a namespace, its veth interface and its addresses.
#[derive(Debug)]
pub struct Host {
    pub ns: Netns,
    /// The veth interface, e.g. `veth42a`.
    pub dev: String,
    pub v4: Ipv4Addr,
    pub v6: Ipv6Addr,
}

/// Two hosts `a` and `b` joined by a veth pair, with a subnet number X unique to the test.
#[derive(Debug)]
pub struct Lab {
    pub a: Host,
    pub b: Host,
    pub subnet: u8,
}

impl Lab {
    /// Creates both namespaces and the link, and checks that `a` reaches `b` over IPv4 and
    /// IPv6 (which also fills the neighbour caches before any fault).
    pub fn new() -> Result<Self> {
        Self::named("fl")
    }

    /// [`Lab::new`] with namespaces named `<prefix>-<pid>-<n>-a` and `-b`.
    pub fn named(prefix: &str) -> Result<Self> {
        let n = unique();
        let pid = std::process::id();
        let subnet = ((pid.wrapping_mul(31).wrapping_add(n)) % 250 + 1) as u8;
        let a = Self::host(&format!("{prefix}-{pid}-{n}-a"), subnet, 'a', 1)?;
        let b = Self::host(&format!("{prefix}-{pid}-{n}-b"), subnet, 'b', 2)?;
        // Both ends are created inside their namespaces, so the names cannot collide with
        // interfaces of the host or of other tests.
        let mut ip = Command::new("ip");
        ip.args(["link", "add", &a.dev, "netns", a.ns.name()])
            .args(["type", "veth", "peer", "name", &b.dev, "netns", b.ns.name()]);
        process::run_ok(ip)?;
        for host in [&a, &b] {
            let v4 = format!("{}/24", host.v4);
            let v6 = format!("{}/64", host.v6);
            host.ns
                .exec_ok(&["ip", "addr", "add", &v4, "dev", &host.dev])?;
            host.ns
                .exec_ok(&["ip", "-6", "addr", "add", &v6, "dev", &host.dev, "nodad"])?;
            host.ns.exec_ok(&["ip", "link", "set", &host.dev, "up"])?;
        }
        let lab = Self { a, b, subnet };
        lab.wait_reachable()?;
        Ok(lab)
    }

    fn host(name: &str, subnet: u8, side: char, last: u8) -> Result<Host> {
        Ok(Host {
            ns: Netns::create(name)?,
            dev: format!("veth{subnet}{side}"),
            v4: Ipv4Addr::new(10, 77, subnet, last),
            v6: format!("fd77:{subnet}::{last}").parse()?,
        })
    }

    fn wait_reachable(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        for target in [self.b.v4.to_string(), self.b.v6.to_string()] {
            loop {
                if self
                    .a
                    .ns
                    .exec_succeeds(&["ping", "-c", "1", "-W", "1", &target])?
                {
                    break;
                }
                if Instant::now() > deadline {
                    bail!("{} does not answer ping from {}", target, self.a.ns.name());
                }
                thread::sleep(Duration::from_millis(100));
            }
        }
        Ok(())
    }
}
