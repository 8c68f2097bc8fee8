//! Workloads for tests: cgroups shaped like a container's or a unit's
//! (`flw-<pid>-<n>.slice/docker-<64 hex>.scope`), made in every hierarchy a test needs (the v1
//! controllers it names, or the one v2 hierarchy), with processes the test starts inside.
//! The guard's `Drop` thaws, kills and removes everything in them, deepest first, also when the
//! test fails.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use crate::unique;

const ROOT: &str = "/sys/fs/cgroup";

/// Whether the host's cgroups are v2 only (`/sys/fs/cgroup` is the cgroup2 mount).
pub fn is_v2() -> bool {
    Path::new(ROOT).join("cgroup.controllers").exists()
}

/// The roots of the hierarchies of `controllers` (v1 names, plus `unified` for the v2
/// hierarchy mounted beside v1 ones): one root on a v2 host, whatever is asked.
pub fn roots(controllers: &[&str]) -> Vec<PathBuf> {
    if is_v2() {
        return vec![PathBuf::from(ROOT)];
    }
    let mut roots: Vec<PathBuf> = Vec::new();
    for c in controllers {
        let root = Path::new(ROOT).join(c);
        if root.is_dir() && !roots.contains(&root) {
            roots.push(root);
        }
    }
    roots
}

/// 64 random hex digits, as a container runtime names a container.
pub fn container_id() -> Result<String> {
    let mut id = String::new();
    while id.len() < 64 {
        id.push_str(
            &fs::read_to_string("/proc/sys/kernel/random/uuid")?
                .trim()
                .replace('-', ""),
        );
    }
    id.truncate(64);
    Ok(id)
}

/// A workload's cgroup in several hierarchies, with the processes started in it.
#[derive(Debug)]
pub struct TestCgroup {
    /// Below each hierarchy's root: `/flw-123-4.slice/docker-<id>.scope`.
    pub path: String,
    /// The workload's directory in each hierarchy.
    pub dirs: Vec<PathBuf>,
    /// Every directory made, outermost first (removed in reverse).
    made: Vec<PathBuf>,
    children: Vec<Child>,
}

impl TestCgroup {
    /// `flw-<pid>-<n>.slice/<leaf>` in the hierarchies of `controllers`.
    pub fn create(leaf: &str, controllers: &[&str]) -> Result<Self> {
        let slice = format!("flw-{}-{}.slice", std::process::id(), unique());
        let path = format!("/{slice}/{leaf}");
        let mut cgroup = Self {
            path: path.clone(),
            dirs: Vec::new(),
            made: Vec::new(),
            children: Vec::new(),
        };
        for root in roots(controllers) {
            for part in [root.join(&slice), root.join(&slice).join(leaf)] {
                fs::create_dir(&part).with_context(|| format!("creating {}", part.display()))?;
                cgroup.made.push(part.clone());
                if part.join("cpuset.cpus").exists() && !is_v2() {
                    // A v1 cpuset cgroup takes no process before it has CPUs and memory nodes.
                    let parent = part.parent().expect("below a root");
                    for file in ["cpuset.cpus", "cpuset.mems"] {
                        fs::write(
                            part.join(file),
                            fs::read_to_string(parent.join(file))?.trim(),
                        )?;
                    }
                }
            }
            if is_v2() {
                // cpu, memory and io for the leaf and below, as systemd enables them on a host,
                // so that usage is counted and I/O limits can be set there; the processes go one level down (`work`), since
                // cgroup v2 lets a cgroup that holds processes itself give no child controllers,
                // and stress makes one.
                let available = fs::read_to_string(root.join("cgroup.controllers"))?;
                let plus: Vec<String> = ["cpu", "memory", "io"]
                    .iter()
                    .filter(|c| available.split_whitespace().any(|a| a == **c))
                    .map(|c| format!("+{c}"))
                    .collect();
                if !plus.is_empty() {
                    for dir in [
                        root.clone(),
                        root.join(&slice),
                        root.join(&slice).join(leaf),
                    ] {
                        let file = dir.join("cgroup.subtree_control");
                        fs::write(&file, plus.join(" "))
                            .with_context(|| format!("writing {}", file.display()))?;
                    }
                }
                let work = root.join(&slice).join(leaf).join("work");
                fs::create_dir(&work).with_context(|| format!("creating {}", work.display()))?;
                cgroup.made.push(work);
            }
            cgroup.dirs.push(root.join(&slice).join(leaf));
        }
        if cgroup.dirs.is_empty() {
            bail!("none of the hierarchies {controllers:?} is mounted");
        }
        Ok(cgroup)
    }

    /// The workload's directory in the hierarchy of `controller` (the v2 one on a v2 host).
    pub fn dir(&self, controller: &str) -> Option<&PathBuf> {
        if is_v2() {
            return self.dirs.first();
        }
        let root = Path::new(ROOT).join(controller);
        self.dirs.iter().find(|d| d.starts_with(&root))
    }

    /// Starts a shell running `script` inside the workload (it joins every hierarchy before it
    /// runs the script; `exec sleep 600` makes the shell the one process); returns its pid.
    pub fn spawn(&mut self, script: &str) -> Result<u32> {
        let joins: Vec<String> = self
            .dirs
            .iter()
            .map(|d| {
                let d = if is_v2() { d.join("work") } else { d.clone() };
                format!("echo $$ > {}/cgroup.procs", d.display())
            })
            .collect();
        let errors = tempfile::NamedTempFile::new()?;
        let child = Command::new("sh")
            .args(["-c", &format!("{} && {script}", joins.join(" && "))])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(errors.reopen()?)
            .spawn()?;
        let pid = child.id();
        self.children.push(child);
        // In the cgroup before the caller looks.
        let started = Instant::now();
        while !self.procs().contains(&pid) {
            let exited = self
                .children
                .last_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if exited.is_some() || started.elapsed() > Duration::from_secs(10) {
                bail!(
                    "process {pid} did not join {} ({}); its shell said: {}",
                    self.path,
                    exited.map_or("still running".to_owned(), |s| s.to_string()),
                    fs::read_to_string(errors.path()).unwrap_or_default().trim()
                );
            }
            thread::sleep(Duration::from_millis(10));
        }
        Ok(pid)
    }

    /// The processes in the workload and below, in any of its hierarchies.
    pub fn procs(&self) -> Vec<u32> {
        let mut pids: Vec<u32> = self.dirs.iter().flat_map(|d| procs_below(d)).collect();
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    /// CPU time the kernel charged to the workload and everything below it, in seconds
    /// (`cpuacct.usage` on v1, `usage_usec` of `cpu.stat` on v2).
    pub fn cpu_seconds(&self) -> Result<f64> {
        if is_v2() {
            let dir = self.dir("cpu").context("no cgroup")?;
            let stat = fs::read_to_string(dir.join("cpu.stat"))?;
            let usec: f64 = stat
                .lines()
                .find_map(|l| l.strip_prefix("usage_usec "))
                .context("no usage_usec in cpu.stat")?
                .trim()
                .parse()?;
            return Ok(usec / 1e6);
        }
        let dir = self.dir("cpuacct").context("no cpuacct cgroup")?;
        Ok(fs::read_to_string(dir.join("cpuacct.usage"))?
            .trim()
            .parse::<f64>()?
            / 1e9)
    }

    /// Memory the kernel charged to the workload and everything below it, in bytes.
    pub fn memory_bytes(&self) -> Result<u64> {
        let dir = self.dir("memory").context("no memory cgroup")?;
        let file = if is_v2() {
            "memory.current"
        } else {
            "memory.usage_in_bytes"
        };
        Ok(fs::read_to_string(dir.join(file))?.trim().parse()?)
    }

    /// Reaps the test's own children that have exited (a killed process is then gone from
    /// /proc, not a zombie).
    pub fn reap(&mut self) {
        for child in &mut self.children {
            let _ = child.try_wait();
        }
    }
}

/// Processes in `dir` and in the cgroups below it.
pub fn procs_below(dir: &Path) -> Vec<u32> {
    let mut pids = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(dir) = stack.pop() {
        pids.extend(
            fs::read_to_string(dir.join("cgroup.procs"))
                .unwrap_or_default()
                .lines()
                .filter_map(|l| l.trim().parse::<u32>().ok()),
        );
        if let Ok(entries) = fs::read_dir(&dir) {
            stack.extend(
                entries
                    .filter_map(Result::ok)
                    .map(|e| e.path())
                    .filter(|p| p.is_dir()),
            );
        }
    }
    pids
}

/// The directories below `dir`, deepest first.
fn subdirs(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = fs::read_dir(dir) {
        for path in entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.is_dir())
        {
            out.extend(subdirs(&path));
            out.push(path);
        }
    }
    out
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        for dir in &self.dirs {
            // A frozen process takes no signal before it is thawed.
            for file in ["freezer.state", "cgroup.freeze"] {
                for d in std::iter::once(dir.clone()).chain(subdirs(dir)) {
                    let path = d.join(file);
                    if path.exists() {
                        let _ = fs::write(
                            &path,
                            if file == "freezer.state" {
                                "THAWED"
                            } else {
                                "0"
                            },
                        );
                    }
                }
            }
        }
        for _ in 0..100 {
            let pids = self.procs();
            if pids.is_empty() {
                break;
            }
            for pid in pids {
                // SAFETY: kill(2) with a pid read from the test's own cgroup.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            }
            thread::sleep(Duration::from_millis(20));
        }
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        for dir in &self.dirs {
            for sub in subdirs(dir) {
                let _ = fs::remove_dir(&sub);
            }
        }
        for dir in self.made.iter().rev() {
            if let Err(e) = fs::remove_dir(dir) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    eprintln!("cleanup: cannot remove {}: {e}", dir.display());
                }
            }
        }
    }
}
