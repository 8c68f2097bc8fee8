//! The agent under test: `faultline serve` running in a test namespace with its own socket,
//! state directory and eBPF pin directory, and the CLI pointed at it. The guard's `Drop`
//! stops the agent (SIGTERM, then SIGKILL), removes its pin directory and, defensively, the
//! nftables table in its namespace, and prints the agent's log: the test harness captures it
//! and shows it when the test fails, so error messages need not repeat it.

use std::{
    fs::{self, OpenOptions},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Output, Stdio},
    sync::Mutex,
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _, Result};
use serde_json::Value;
use tempfile::TempDir;

use crate::{process, unique, Netns};

/// How long the agent may take to become ready, and to exit after SIGTERM.
pub const AGENT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub struct Agent {
    ns_name: String,
    ns_path: PathBuf,
    dir: TempDir,
    /// `dir/state` unless the test gave another (a small filesystem of its own).
    state_dir: PathBuf,
    pin_dir: PathBuf,
    /// This agent's own cgroup parent: cgroups are host-wide, and a starting agent sweeps
    /// every fault cgroup under its parent that its journal does not know.
    cgroup_parent: String,
    extra_args: Vec<String>,
    /// A program (and its arguments) that runs the agent, e.g. `setpriv` with fewer capabilities.
    wrapper: Vec<String>,
    child: Option<Child>,
    /// Where disk faults may leave objects, for [`Agent::leftovers`].
    watched: Mutex<Watched>,
}

/// Directories whose `.faultline-*` entries, and cgroups whose I/O limits (as they were when
/// watched), [`Agent::leftovers`] checks.
#[derive(Debug, Default)]
struct Watched {
    dirs: Vec<PathBuf>,
    io_limits: Vec<(PathBuf, String)>,
}

impl Agent {
    /// Starts an agent in `ns` with default options and waits until it answers.
    pub fn start(ns: &Netns) -> Result<Self> {
        Self::start_with(ns, &[])
    }

    /// Starts an agent in `ns` with extra `serve` arguments (`--protected-port 8022`).
    pub fn start_with(ns: &Netns, extra_args: &[&str]) -> Result<Self> {
        Self::start_wrapped(ns, &[], extra_args)
    }

    /// Starts an agent in `ns` through `wrapper` (a command line that ends by running the
    /// agent's own command line, like `setpriv --bounding-set ...`).
    pub fn start_wrapped(ns: &Netns, wrapper: &[&str], extra_args: &[&str]) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("faultline-test-")
            .tempdir()?;
        Self::start_in(ns, dir, wrapper, None, extra_args)
    }

    /// Starts an agent whose socket and state directory are in a new directory under `parent`
    /// (a filesystem the test made, say).
    pub fn start_with_state_under(ns: &Netns, parent: &Path, extra_args: &[&str]) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("faultline-test-")
            .tempdir_in(parent)?;
        Self::start_in(ns, dir, &[], None, extra_args)
    }

    /// Starts an agent in `ns` whose state directory is `state_dir`.
    pub fn start_with_state(ns: &Netns, state_dir: &Path, extra_args: &[&str]) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("faultline-test-")
            .tempdir()?;
        Self::start_in(ns, dir, &[], Some(state_dir), extra_args)
    }

    fn start_in(
        ns: &Netns,
        dir: TempDir,
        wrapper: &[&str],
        state_dir: Option<&Path>,
        extra_args: &[&str],
    ) -> Result<Self> {
        let state_dir = state_dir.map_or_else(|| dir.path().join("state"), Path::to_owned);
        let pin_dir = PathBuf::from(format!(
            "/sys/fs/bpf/faultline-test-{}-{}",
            std::process::id(),
            unique()
        ));
        let cgroup_parent = format!("faultline-test-{}-{}", std::process::id(), unique());
        let mut agent = Self {
            cgroup_parent,
            ns_name: ns.name().to_owned(),
            ns_path: ns.path().to_owned(),
            dir,
            state_dir,
            pin_dir,
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            wrapper: wrapper.iter().map(|s| s.to_string()).collect(),
            child: None,
            watched: Mutex::default(),
        };
        agent.restart()?;
        Ok(agent)
    }

    /// Starts the agent (again) with the same socket, state and pin directories, and waits
    /// until `faultline info` answers.
    pub fn restart(&mut self) -> Result<()> {
        ensure!(self.child.is_none(), "the agent is still running");
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())?;
        let mut command = Command::new("nsenter");
        command
            .arg(format!("--net={}", self.ns_path.display()))
            .args(&self.wrapper)
            .arg(process::faultline_bin()?)
            .arg("serve")
            .arg("--socket")
            .arg(self.socket())
            .arg("--state-dir")
            .arg(self.state_dir())
            .arg("--bpf-pin-dir")
            .arg(&self.pin_dir)
            .arg("--cgroup-parent")
            .arg(&self.cgroup_parent)
            .args(["--log-level", "info"])
            .args(&self.extra_args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        self.child = Some(command.spawn().context("starting the agent")?);
        self.wait_ready()
    }

    fn wait_ready(&mut self) -> Result<()> {
        let started = Instant::now();
        loop {
            let child = self.child.as_mut().expect("started above");
            if let Some(status) = child.try_wait()? {
                self.child = None;
                bail!(
                    "the agent in {} exited before it was ready ({status}); see the agent log in \
                     this test's output",
                    self.ns_name
                );
            }
            if self.socket().exists() && self.cli(&["info"])?.status.success() {
                return Ok(());
            }
            if started.elapsed() > AGENT_TIMEOUT {
                bail!(
                    "the agent in {} was not ready within {AGENT_TIMEOUT:?}; see the agent log in \
                     this test's output",
                    self.ns_name
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// The agent's process id (nsenter and setpriv exec it in place, so it is the child's).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Runs `faultline --agent <socket> <args>` and returns whatever it did.
    pub fn cli(&self, args: &[&str]) -> Result<Output> {
        let mut command = Command::new(process::faultline_bin()?);
        command.arg("--agent").arg(self.socket()).args(args);
        process::run(command, process::COMMAND_TIMEOUT)
    }

    /// Runs the CLI, fails unless it exits 0, and returns its stdout.
    pub fn cli_ok(&self, args: &[&str]) -> Result<String> {
        let output = self.cli(args)?;
        if !output.status.success() {
            bail!("{}", process::describe(&cli_line(args), &output));
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Runs the CLI and fails unless it exits with `code`; returns its stderr.
    pub fn cli_fails(&self, args: &[&str], code: i32) -> Result<String> {
        let output = self.cli(args)?;
        if output.status.code() != Some(code) {
            bail!(
                "expected exit status {code}; {}",
                process::describe(&cli_line(args), &output)
            );
        }
        Ok(String::from_utf8_lossy(&output.stderr).into_owned())
    }

    /// Applies a fault (`block ...` / `loss ...`) with `--detach -o json`, checks that the
    /// agent reports it active, and returns its id.
    pub fn apply(&self, args: &[&str]) -> Result<String> {
        let mut full = args.to_vec();
        full.extend(["--detach", "-o", "json"]);
        let stdout = self.cli_ok(&full)?;
        let fault: Value = serde_json::from_str(&stdout)
            .with_context(|| format!("{} printed no fault JSON: {stdout}", cli_line(&full)))?;
        ensure!(
            fault["state"] == "active",
            "{} returned a fault that is not active: {fault:#}",
            cli_line(&full)
        );
        fault["id"]
            .as_str()
            .map(str::to_owned)
            .with_context(|| format!("fault without an id: {fault:#}"))
    }

    /// `faultline get ID -o json`.
    pub fn fault(&self, id: &str) -> Result<Value> {
        let stdout = self.cli_ok(&["get", id, "-o", "json"])?;
        serde_json::from_str(&stdout).with_context(|| format!("get {id} printed {stdout}"))
    }

    /// `faultline get ID -o json`, once the fault no longer reads `reverting` (or `within` has
    /// passed): the kernel's objects are gone before the agent records a fault as reverted, so
    /// a test that saw the effect end may read the state a moment too early.
    pub fn settled_fault(&self, id: &str, within: Duration) -> Result<Value> {
        let started = Instant::now();
        loop {
            let fault = self.fault(id)?;
            if fault["state"] != "reverting" || started.elapsed() > within {
                return Ok(fault);
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// `faultline ls -o json`.
    pub fn faults(&self) -> Result<Vec<Value>> {
        let stdout = self.cli_ok(&["ls", "-o", "json"])?;
        serde_json::from_str(&stdout).with_context(|| format!("ls -o json printed {stdout}"))
    }

    /// Waits until the agent's TCP connect health programs are loaded (in the background after
    /// start-up, which takes seconds under emulation); fails with the agent's reason if they
    /// cannot be.
    pub fn wait_for_tcp_health(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let snapshot: Value = serde_json::from_str(&self.cli_ok(&["metrics", "-o", "json"])?)?;
            match snapshot["tcp_unavailable"].as_str() {
                None => return Ok(()),
                Some(r) if r.contains("still loading") && Instant::now() < deadline => {
                    thread::sleep(Duration::from_millis(200));
                }
                Some(r) => bail!("TCP connect health is unavailable: {r}"),
            }
        }
    }

    /// `faultline revert ID`.
    pub fn revert(&self, id: &str) -> Result<()> {
        self.cli_ok(&["revert", id]).map(drop)
    }

    /// SIGKILL: the agent dies without reverting anything.
    pub fn kill(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// SIGTERM, then waits up to [`AGENT_TIMEOUT`] for the agent to exit; returns how it
    /// exited and how long that took (SIGKILL and an error if it did not).
    pub fn terminate(&mut self) -> Result<(ExitStatus, Duration)> {
        let mut child = self.child.take().context("the agent is not running")?;
        let started = Instant::now();
        // SAFETY: plain kill(2) on our own child, which has not been reaped yet.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok((status, started.elapsed()));
            }
            if started.elapsed() > AGENT_TIMEOUT {
                let _ = child.kill();
                let _ = child.wait();
                bail!("the agent did not exit within {AGENT_TIMEOUT:?} of SIGTERM");
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("fl.sock")
    }

    pub fn state_dir(&self) -> PathBuf {
        self.state_dir.clone()
    }

    /// One JSON file per fault the agent has not finished reverting.
    pub fn journal_dir(&self) -> PathBuf {
        self.state_dir().join("journal")
    }

    /// The cgroup under which this agent's stress faults live (at each hierarchy's root).
    pub fn cgroup_parent(&self) -> &str {
        &self.cgroup_parent
    }

    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("agent.log")
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// What the agent's faults left in the kernel and on disk: the nftables table, faultline
    /// qdiscs and IFB devices in its namespace, pins, journal entries, qdisc and disk records,
    /// its cgroups, disk faults' directories in watched directories and changed I/O limits of
    /// watched cgroups. Empty when everything was reverted.
    pub fn leftovers(&self) -> Result<Vec<String>> {
        let mut found = Vec::new();
        let mut nft = Command::new("nsenter");
        nft.arg(format!("--net={}", self.ns_path.display())).args([
            "nft",
            "list",
            "table",
            "inet",
            "faultline",
        ]);
        if process::run(nft, process::COMMAND_TIMEOUT)?
            .status
            .success()
        {
            found.push(format!("nftables table inet faultline in {}", self.ns_name));
        }
        for dir in [
            self.pin_dir.clone(),
            self.journal_dir(),
            self.state_dir().join("qdisc"),
            self.state_dir().join("disk"),
            self.state_dir().join("freezer"),
        ] {
            found.extend(entries(&dir)?.into_iter().map(|p| p.display().to_string()));
        }
        let in_ns = |args: &[&str]| -> Result<String> {
            let mut command = Command::new("nsenter");
            command
                .arg(format!("--net={}", self.ns_path.display()))
                .args(args);
            process::run_ok(command)
        };
        // faultline's qdiscs have handles fa00: to fa0f:.
        for line in in_ns(&["tc", "qdisc", "show"])?.lines() {
            if line
                .split_whitespace()
                .nth(2)
                .is_some_and(|h| h.starts_with("fa0"))
            {
                found.push(format!("qdisc in {}: {line}", self.ns_name));
            }
        }
        for line in in_ns(&["ip", "-o", "link", "show", "type", "ifb"])?.lines() {
            found.push(format!("IFB device in {}: {line}", self.ns_name));
        }
        for parent in self.cgroup_parents() {
            found.extend(
                entries(&parent)?
                    .into_iter()
                    .filter(|p| p.is_dir())
                    .map(|p| format!("cgroup {}", p.display())),
            );
        }
        let watched = self.watched.lock().unwrap_or_else(|e| e.into_inner());
        for dir in &watched.dirs {
            found.extend(
                entries(dir)?
                    .into_iter()
                    .filter(|p| {
                        p.file_name()
                            .and_then(|n| n.to_str())
                            .is_some_and(|n| n.starts_with(".faultline-"))
                    })
                    .map(|p| format!("disk fault directory {}", p.display())),
            );
        }
        for (cgroup, before) in &watched.io_limits {
            let now = io_limits(cgroup)?;
            if &now != before {
                found.push(format!(
                    "I/O limits of {} changed: {before:?} then, {now:?} now",
                    cgroup.display()
                ));
            }
        }
        found.extend(
            self.nested_cgroups()
                .iter()
                .map(|p| format!("cgroup {}", p.display())),
        );
        found.extend(self.still_frozen());
        Ok(found)
    }

    /// Makes [`Agent::leftovers`] look for disk faults' directories (`.faultline-*`) in `dir`.
    pub fn watch_dir(&self, dir: &Path) {
        let mut watched = self.watched.lock().unwrap_or_else(|e| e.into_inner());
        watched.dirs.push(dir.to_owned());
    }

    /// Makes [`Agent::leftovers`] report the I/O limits of cgroup directory `cgroup` if they
    /// differ from what they are now.
    pub fn watch_io_limits(&self, cgroup: &Path) -> Result<()> {
        let now = io_limits(cgroup)?;
        let mut watched = self.watched.lock().unwrap_or_else(|e| e.into_inner());
        watched.io_limits.push((cgroup.to_owned(), now));
        Ok(())
    }

    /// What this agent's pause faults froze (as its audit log's `froze:` reports say, which
    /// survive a restart) and is frozen still: a cgroup's freezer, or a stopped process.
    pub fn still_frozen(&self) -> Vec<String> {
        let audit = fs::read_to_string(self.state_dir().join("audit.log")).unwrap_or_default();
        let mut found = Vec::new();
        for line in audit.lines().filter(|l| l.contains("\"fault-report\"")) {
            let Ok(record) = serde_json::from_str::<Value>(line) else {
                continue;
            };
            let detail = record["detail"].as_str().unwrap_or_default();
            if let Some(file) = detail.strip_prefix("froze: the cgroup freezer ") {
                let state = fs::read_to_string(file).unwrap_or_default();
                if matches!(state.trim(), "FROZEN" | "FREEZING" | "1") {
                    found.push(format!("frozen cgroup {file}"));
                }
            } else if let Some(pids) = detail.strip_prefix("froze: SIGSTOP to processes ") {
                for pid in pids.split(", ") {
                    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
                    let state = stat.rfind(')').and_then(|at| stat[at + 2..].chars().next());
                    if state == Some('T') {
                        found.push(format!("stopped process {pid}"));
                    }
                }
            }
        }
        found
    }

    /// This agent's cgroup parent inside workloads (stress in a unit or a container), in any
    /// hierarchy, below its root.
    pub fn nested_cgroups(&self) -> Vec<PathBuf> {
        let mut found = Vec::new();
        for root in hierarchy_roots() {
            walk(&root, 0, &mut |dir, depth| {
                if depth > 0
                    && dir
                        .file_name()
                        .is_some_and(|n| n == self.cgroup_parent.as_str())
                {
                    found.push(dir.to_owned());
                }
            });
        }
        found
    }

    /// This agent's cgroup parent in every hierarchy it may use (v1 controllers, or v2), where
    /// it exists.
    pub fn cgroup_parents(&self) -> Vec<PathBuf> {
        ["cpu", "cpuacct", "cpuset", "memory", "blkio", ""]
            .iter()
            .map(|c| {
                Path::new("/sys/fs/cgroup")
                    .join(c)
                    .join(&self.cgroup_parent)
            })
            .filter(|p| p.exists())
            .collect()
    }

    /// Kills what is left in this agent's cgroups and removes them: a failed test must not
    /// leave load or memory behind.
    fn remove_cgroups(&self) {
        for parent in self.cgroup_parents() {
            for child in entries(&parent)
                .unwrap_or_default()
                .into_iter()
                .filter(|p| p.is_dir())
            {
                for _ in 0..50 {
                    let procs = fs::read_to_string(child.join("cgroup.procs")).unwrap_or_default();
                    if procs.trim().is_empty() {
                        break;
                    }
                    for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                        // SAFETY: kill(2) with a pid read from the cgroup; no memory involved.
                        unsafe { libc::kill(pid, libc::SIGKILL) };
                    }
                    thread::sleep(Duration::from_millis(20));
                }
                let _ = fs::remove_dir(&child);
            }
            let _ = fs::remove_dir(&parent);
        }
    }

    /// Fails, naming them, if [`Agent::leftovers`] finds anything.
    /// Fails if anything of the agent's is left. A revert answers once the fault's effect has
    /// ended and cleans up right after (milliseconds): what is left is looked for again for up
    /// to two seconds before it counts.
    pub fn assert_clean(&self) -> Result<()> {
        let until = std::time::Instant::now() + std::time::Duration::from_secs(2);
        loop {
            let leftovers = self.leftovers()?;
            if leftovers.is_empty() {
                return Ok(());
            }
            ensure!(
                std::time::Instant::now() < until,
                "left behind: {leftovers:?}"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if self.child.is_some() {
            if let Err(e) = self.terminate() {
                eprintln!("cleanup: {e:#}");
            }
        }
        self.remove_cgroups();
        if self.pin_dir.exists() {
            if let Err(e) = fs::remove_dir_all(&self.pin_dir) {
                eprintln!("cleanup: cannot remove {}: {e}", self.pin_dir.display());
            }
        }
        let mut nft = Command::new("nsenter");
        nft.arg(format!("--net={}", self.ns_path.display())).args([
            "nft",
            "delete",
            "table",
            "inet",
            "faultline",
        ]);
        let _ = process::run(nft, process::COMMAND_TIMEOUT);
        // Captured by the test harness: shown only when the test fails.
        eprintln!(
            "---- agent log ({}) ----\n{}---- end of agent log ----",
            self.ns_name,
            self.log()
        );
    }
}

/// A cgroup's I/O limits, as its files say them: `io.max` on v2, the four throttle files on v1.
pub fn io_limits(cgroup: &Path) -> Result<String> {
    let mut out = String::new();
    for file in [
        "io.max",
        "blkio.throttle.read_bps_device",
        "blkio.throttle.write_bps_device",
        "blkio.throttle.read_iops_device",
        "blkio.throttle.write_iops_device",
    ] {
        let path = cgroup.join(file);
        if path.exists() {
            let text =
                fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
            out.push_str(&format!("{file}: {}\n", text.trim()));
        }
    }
    Ok(out)
}

/// Every cgroup hierarchy's root on this host (each v1 controller's, and the v2 one).
fn hierarchy_roots() -> Vec<PathBuf> {
    let root = Path::new("/sys/fs/cgroup");
    if root.join("cgroup.controllers").exists() {
        return vec![root.to_owned()];
    }
    entries(root)
        .unwrap_or_default()
        .into_iter()
        .filter(|p| p.is_dir() && p.join("cgroup.procs").exists())
        .collect()
}

/// Calls `f` on every cgroup directory below `dir` (depth counted from it), to depth 6.
fn walk(dir: &Path, depth: usize, f: &mut dyn FnMut(&Path, usize)) {
    if depth > 6 {
        return;
    }
    for sub in entries(dir)
        .unwrap_or_default()
        .into_iter()
        .filter(|p| p.is_dir())
    {
        f(&sub, depth + 1);
        walk(&sub, depth + 1, f);
    }
}

/// The entries of `dir` (none if it does not exist).
pub fn entries(dir: &Path) -> Result<Vec<PathBuf>> {
    match fs::read_dir(dir) {
        Ok(list) => Ok(list
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<_, _>>()?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e).with_context(|| format!("reading {}", dir.display())),
    }
}

fn cli_line(args: &[&str]) -> String {
    format!("faultline {}", args.join(" "))
}
