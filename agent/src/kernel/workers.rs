//! The workers adapter: it owns the processes stress faults run and the cgroups that hold them
//! (`<parent>/<fault id>` at each hierarchy's root, or inside a workload's cgroup for a stress
//! inside a workload; see `kernel::cgroup`), kills and reaps them on revert, and sweeps the
//! cgroups no fault accounts for at start-up. Where a fault's cgroup is inside a workload, the
//! workload's directories are recorded (fsynced, `<state dir>/workers/<id>.json`) before the
//! cgroup is made, so that a revert after a crash and the sweep find it.
//!
//! Workers are this binary re-executed in a hidden mode (`faultline __worker`). They are
//! spawned by one long-lived thread of the agent with `PR_SET_PDEATHSIG`, so they die with the
//! agent (the death signal follows the thread that forked, hence a thread that never exits),
//! and they join the fault's cgroup before they run a single instruction of their own.

use std::{
    ffi::CString,
    fs, io,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{mpsc, Mutex},
    thread,
    time::Duration,
};

use super::{
    cgroup::{CgroupError, Cgroups, Controller, Limits, Usage},
    durable, Adapter, KernelError, Swept,
};

#[derive(Debug, thiserror::Error)]
pub(crate) enum WorkerError {
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error("cgroups are not usable here: {0}")]
    NoCgroups(String),
    #[error("cannot start a stress worker: {0}")]
    Spawn(#[source] io::Error),
    #[error("the worker spawner thread is gone")]
    SpawnerGone,
    #[error("cannot {what} the record {path}: {source}")]
    Record {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// A worker to start: its `__worker` arguments and the `cgroup.procs` files it joins.
struct SpawnRequest {
    id: String,
    args: Vec<String>,
    procs: Vec<PathBuf>,
    reply: mpsc::Sender<io::Result<u32>>,
}

/// The agent's workers: the cgroup hierarchy they run in, the memory reserve, and the thread
/// that starts (and reaps) them.
pub(crate) struct Workers {
    cgroups: Result<Cgroups, String>,
    /// Bytes of MemAvailable a memory stress must leave; `None`: the default.
    reserve: Option<u64>,
    spawner: Mutex<mpsc::Sender<Spawn>>,
    /// Records of the workloads faults' cgroups are inside.
    records: PathBuf,
}

enum Spawn {
    Start(SpawnRequest),
    /// Reap the workers of a fault whose cgroup was killed.
    Reap(String, mpsc::Sender<()>),
}

impl Workers {
    pub(crate) fn new(
        cgroups: Result<Cgroups, String>,
        reserve: Option<u64>,
        state_dir: &Path,
    ) -> Self {
        let (tx, rx) = mpsc::channel();
        thread::Builder::new()
            .name("stress-spawner".to_owned())
            .spawn(move || spawner(rx))
            .expect("cannot start the stress spawner thread");
        Self {
            cgroups,
            reserve,
            spawner: Mutex::new(tx),
            records: state_dir.join("workers"),
        }
    }

    fn record_path(&self, id: &str) -> PathBuf {
        self.records.join(format!("{id}.json"))
    }

    /// The workload directories fault `id`'s cgroup is inside, if it is inside one.
    fn within(&self, id: &str) -> Option<Vec<PathBuf>> {
        let bytes = fs::read(self.record_path(id)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Creates fault `id`'s cgroup with its limits, at the hierarchies' roots or inside the
    /// workload whose directories are `within` (recorded first); returns the `cgroup.procs`
    /// files a worker joins.
    pub(crate) fn create(
        &self,
        id: &str,
        limits: &Limits,
        within: Option<&[PathBuf]>,
    ) -> Result<Vec<PathBuf>, KernelError> {
        let cgroups = self.cgroups()?;
        if let Some(dirs) = within {
            let path = self.record_path(id);
            let record = |what| {
                let path = path.clone();
                move |source| WorkerError::Record { what, path, source }
            };
            fs::create_dir_all(&self.records).map_err(record("create the directory of"))?;
            let text = serde_json::to_vec(dirs).expect("paths serialise");
            durable::write(&self.records, &path, &text).map_err(record("write"))?;
        }
        Ok(cgroups
            .create(id, limits, within)
            .map_err(WorkerError::from)?)
    }

    pub(crate) fn cgroups(&self) -> Result<&Cgroups, WorkerError> {
        self.cgroups
            .as_ref()
            .map_err(|e| WorkerError::NoCgroups(e.clone()))
    }

    /// The reserve for a host with `total` bytes: as configured, or 5 % of memory but at least
    /// 256 MiB.
    pub(crate) fn reserve(&self, total: u64) -> u64 {
        self.reserve.unwrap_or_else(|| (total / 20).max(256 << 20))
    }

    /// What the kernel has charged to fault `id`'s cgroup; nothing where there is none.
    pub(crate) fn usage(&self, id: &str) -> Usage {
        self.cgroups
            .as_ref()
            .map(|c| c.usage(id, self.within(id).as_deref()))
            .unwrap_or_default()
    }

    /// Fault `id`'s cgroups that exist, one line each, and its record of the workload it is
    /// inside.
    pub(crate) fn objects(&self, id: &str) -> Vec<String> {
        let record = self.record_path(id);
        let record = record
            .exists()
            .then(|| format!("record {}", record.display()));
        self.cgroups
            .as_ref()
            .map(|c| {
                c.existing(id, self.within(id).as_deref())
                    .iter()
                    .map(|d| format!("cgroup {}", d.display()))
                    .chain(record)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Whether the cgroup controllers in `needs` can hold workers here; if not, why.
    pub(crate) fn check(&self, needs: &[Controller]) -> Result<(), String> {
        let cgroups = self.cgroups.as_ref().map_err(Clone::clone)?;
        cgroups.check(needs).map_err(|e| e.to_string())
    }

    pub(crate) fn describe(
        &self,
        id: &str,
        limits: &Limits,
        within: Option<&[PathBuf]>,
    ) -> Vec<String> {
        match &self.cgroups {
            Ok(cgroups) => cgroups.describe(id, limits, within),
            Err(e) => vec![format!("cgroups: not usable here ({e})")],
        }
    }

    pub(crate) fn spawn(
        &self,
        id: &str,
        args: &[&str],
        procs: &[PathBuf],
    ) -> Result<(), KernelError> {
        let (reply, answer) = mpsc::channel();
        let request = SpawnRequest {
            id: id.to_owned(),
            args: args.iter().map(|s| s.to_string()).collect(),
            procs: procs.to_vec(),
            reply,
        };
        self.spawner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send(Spawn::Start(request))
            .map_err(|_| WorkerError::SpawnerGone)?;
        answer
            .recv()
            .map_err(|_| WorkerError::SpawnerGone)?
            .map_err(WorkerError::Spawn)?;
        Ok(())
    }

    /// Kills the fault's workers with their cgroup, reaps them and removes the cgroup.
    /// Kills the fault's workers, without waiting for them to exit or removing anything
    /// ([`Workers::remove`] does).
    pub(crate) fn stop(&self, id: &str) -> Result<(), KernelError> {
        let Ok(cgroups) = &self.cgroups else {
            return Ok(());
        };
        let within = self.within(id);
        cgroups
            .kill(id, within.as_deref())
            .map_err(WorkerError::from)?;
        Ok(())
    }

    pub(crate) fn remove(&self, id: &str) -> Result<(), KernelError> {
        let Ok(cgroups) = &self.cgroups else {
            return Ok(());
        };
        let within = self.within(id);
        cgroups
            .remove(id, within.as_deref())
            .map_err(WorkerError::from)?;
        let (done, wait) = mpsc::channel();
        let sent = self
            .spawner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send(Spawn::Reap(id.to_owned(), done));
        if sent.is_ok() {
            let _ = wait.recv_timeout(Duration::from_secs(5));
        }
        durable::remove(&self.records, &self.record_path(id)).map_err(|source| {
            WorkerError::Record {
                what: "remove",
                path: self.record_path(id),
                source,
            }
        })?;
        Ok(())
    }

    /// Fault ids with a record of a workload their cgroup is inside.
    fn recorded(&self) -> Vec<String> {
        durable::record_ids(&self.records)
    }
}

impl Adapter for Workers {
    /// Removes the cgroups (and their processes) of faults not in `keep`.
    fn sweep(&self, keep: &[&str]) -> Swept {
        let mut swept = Swept::default();
        let Ok(cgroups) = &self.cgroups else {
            return swept;
        };
        let mut ids = cgroups.fault_ids();
        ids.extend(self.recorded());
        ids.sort();
        ids.dedup();
        for id in ids {
            if keep.contains(&id.as_str()) {
                continue;
            }
            match self.remove(&id) {
                Ok(()) => swept
                    .removed
                    .push(format!("stress cgroup and workers of {id}")),
                Err(e) => swept.failed.push(e),
            }
        }
        swept
    }
}

/// The spawner thread: lives as long as the agent, which is what `PR_SET_PDEATHSIG` needs.
fn spawner(requests: mpsc::Receiver<Spawn>) {
    let mut children: Vec<(String, Child)> = Vec::new();
    loop {
        match requests.recv_timeout(Duration::from_secs(1)) {
            Ok(Spawn::Start(request)) => {
                let started = start_worker(&request.args, &request.procs);
                let reply = match started {
                    Ok(child) => {
                        let pid = child.id();
                        children.push((request.id, child));
                        Ok(pid)
                    }
                    Err(e) => Err(e),
                };
                let _ = request.reply.send(reply);
            }
            Ok(Spawn::Reap(id, done)) => {
                for (_, child) in children.iter_mut().filter(|(owner, _)| *owner == id) {
                    // The cgroup was killed: these waits return at once.
                    let _ = child.kill();
                    let _ = child.wait();
                }
                children.retain(|(owner, _)| *owner != id);
                let _ = done.send(());
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        }
        // A worker the kernel killed (its cgroup's OOM killer) must not linger as a zombie.
        children.retain_mut(|(_, child)| matches!(child.try_wait(), Ok(None)));
    }
}

fn start_worker(args: &[String], procs: &[PathBuf]) -> io::Result<Child> {
    let paths: Vec<CString> = procs
        .iter()
        .map(|p| CString::new(p.as_os_str().as_encoded_bytes()))
        .collect::<Result<_, _>>()
        .map_err(io::Error::other)?;
    let parent = std::process::id() as libc::pid_t;
    let mut command = Command::new("/proc/self/exe");
    command
        .arg("__worker")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    let oom_adj = super::oom::WORKER_OOM_SCORE_ADJ;
    // SAFETY: the closure runs in the child between fork and exec and only makes
    // async-signal-safe calls (prctl, getppid, getpid, open, write, close) on memory prepared
    // before the fork.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::getppid() != parent {
                // The agent died before the death signal was armed.
                libc::_exit(1);
            }
            // The agent's low score is inherited; a worker is the first the OOM killer takes.
            let fd = libc::open(
                c"/proc/self/oom_score_adj".as_ptr(),
                libc::O_WRONLY | libc::O_CLOEXEC,
            );
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            let bytes = oom_adj.to_bytes();
            let written = libc::write(fd, bytes.as_ptr().cast(), bytes.len());
            libc::close(fd);
            if written < 0 {
                return Err(io::Error::last_os_error());
            }
            let mut digits = [0u8; 12];
            let len = format_pid(libc::getpid(), &mut digits);
            for path in &paths {
                let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(io::Error::last_os_error());
                }
                let written = libc::write(fd, digits.as_ptr().cast(), len);
                libc::close(fd);
                if written < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    command.spawn()
}

/// Decimal digits of `pid` into `out`, without allocating (the caller is between fork and exec).
fn format_pid(pid: libc::pid_t, out: &mut [u8; 12]) -> usize {
    let mut value = pid.max(0) as u32;
    let mut tmp = [0u8; 12];
    let mut n = 0;
    loop {
        tmp[n] = b'0' + (value % 10) as u8;
        n += 1;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    for i in 0..n {
        out[i] = tmp[n - 1 - i];
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pids_format_without_allocation() {
        let mut out = [0u8; 12];
        let n = format_pid(4_194_304, &mut out);
        assert_eq!(&out[..n], b"4194304");
        let n = format_pid(7, &mut out);
        assert_eq!(&out[..n], b"7");
    }
}
