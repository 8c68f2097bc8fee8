//! The freezer adapter: it owns what pause faults froze, and the durable record of it. A
//! cgroup is frozen with the kernel's freezer (`cgroup.freeze` on v2, `freezer.state` on v1),
//! a bare set of processes (or a workload with no freezer cgroup on this host) with SIGSTOP.
//! The record (`<state dir>/freezer/<id>.json`, fsynced) is written before anything is frozen,
//! so that a revert after a crash, and the start-up sweep for a record no journal entry knows,
//! thaw exactly what faultline froze and nothing else.

use std::{
    fs, io,
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::{
    durable,
    process::{self, Proc},
    Adapter, Attempts, KernelError, Swept,
};

/// How long a freeze may take to settle before it is reported as not taking hold.
const SETTLE: Duration = Duration::from_secs(5);

#[derive(Debug, Error)]
pub(crate) enum FreezerError {
    #[error("cannot {what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the freezer record {path} is unreadable: {source}")]
    Record {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path} is not frozen {seconds}s after it was asked to freeze (it reads {state:?})")]
    Unsettled {
        path: PathBuf,
        state: String,
        seconds: u64,
    },
    #[error("cannot {what} process {pid}: {source}")]
    Signal {
        what: &'static str,
        pid: u32,
        #[source]
        source: io::Error,
    },
}

/// One thing a pause froze.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Frozen {
    /// A cgroup's freezer file: `.../cgroup.freeze` (v2) or `.../freezer.state` (v1).
    Cgroup(PathBuf),
    /// A process stopped with SIGSTOP, with its start time (a reused pid is not it).
    Process { pid: u32, start: u64 },
}

impl Frozen {
    /// The freezer file of the cgroup directory `dir`, on v2 or v1.
    pub(crate) fn cgroup(dir: &Path, v2: bool) -> Self {
        Frozen::Cgroup(dir.join(if v2 { "cgroup.freeze" } else { "freezer.state" }))
    }

    fn is_v2(file: &Path) -> bool {
        file.file_name().is_some_and(|n| n == "cgroup.freeze")
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Record {
    frozen: Vec<Frozen>,
}

pub(crate) struct Freezer {
    records: PathBuf,
}

impl Freezer {
    pub(crate) fn new(state_dir: &Path) -> Self {
        Self {
            records: state_dir.join("freezer"),
        }
    }

    pub(crate) fn record_path(&self, id: &str) -> PathBuf {
        self.records.join(format!("{id}.json"))
    }

    /// The fault (other than `id`) whose record holds any of `frozen`, and which.
    pub(crate) fn held_by(&self, frozen: &[Frozen]) -> Option<(String, Frozen)> {
        self.ids().into_iter().find_map(|other| {
            let record = self.load(&other).ok().flatten()?;
            record
                .frozen
                .into_iter()
                .find(|f| frozen.contains(f))
                .map(|f| (other, f))
        })
    }

    /// Records `frozen` for fault `id` (fsynced), then freezes each and waits until the kernel
    /// says it is frozen. What a failure leaves is thawed by [`Freezer::thaw`], which the
    /// engine runs after a failed apply.
    pub(crate) fn freeze(&self, id: &str, frozen: &[Frozen]) -> Result<(), KernelError> {
        self.save(
            id,
            &Record {
                frozen: frozen.to_vec(),
            },
        )?;
        for f in frozen {
            match f {
                Frozen::Cgroup(file) => {
                    let v2 = Frozen::is_v2(file);
                    write(file, if v2 { "1" } else { "FROZEN" })?;
                    settle(file, v2)?;
                }
                Frozen::Process { pid, start } => {
                    let p = proc_at(*pid, *start);
                    process::signal(&p, libc::SIGSTOP).map_err(|source| FreezerError::Signal {
                        what: "stop",
                        pid: *pid,
                        source,
                    })?;
                    stopped(*pid)?;
                }
            }
        }
        Ok(())
    }

    /// Fault `id`'s objects as the kernel has them, one line each: its record, and each thing
    /// it froze that is frozen still (a cgroup's freezer, a stopped process).
    pub(crate) fn objects(&self, id: &str) -> Result<Vec<String>, KernelError> {
        let Some(record) = self.load(id)? else {
            return Ok(Vec::new());
        };
        let mut lines = vec![format!("record {}", self.record_path(id).display())];
        for f in &record.frozen {
            match f {
                Frozen::Cgroup(file) => {
                    let state = fs::read_to_string(file).unwrap_or_default();
                    if matches!(state.trim(), "1" | "FROZEN" | "FREEZING") {
                        lines.push(format!("frozen cgroup {}", file.display()));
                    }
                }
                Frozen::Process { pid, .. } => {
                    if process_state(*pid) == Some('T') {
                        lines.push(format!("stopped process {pid}"));
                    }
                }
            }
        }
        Ok(lines)
    }

    /// How many processes fault `id` holds frozen or stopped now: its effect.
    pub(crate) fn held(&self, id: &str) -> Result<u64, KernelError> {
        let Some(record) = self.load(id)? else {
            return Ok(0);
        };
        Ok(record
            .frozen
            .iter()
            .map(|f| match f {
                Frozen::Cgroup(file) => {
                    let state = fs::read_to_string(file).unwrap_or_default();
                    if !matches!(state.trim(), "1" | "FROZEN") {
                        return 0;
                    }
                    let procs = file.with_file_name("cgroup.procs");
                    fs::read_to_string(procs)
                        .map(|p| p.lines().count() as u64)
                        .unwrap_or(0)
                }
                Frozen::Process { pid, .. } => u64::from(process_state(*pid) == Some('T')),
            })
            .sum())
    }

    /// Thaws everything fault `id` froze, as its record says, trying each, then removes the
    /// record. Idempotent: no record, a cgroup removed since or a process gone are fine.
    pub(crate) fn thaw(&self, id: &str) -> Result<(), KernelError> {
        let Some(record) = self.load(id)? else {
            return Ok(());
        };
        let mut attempts = Attempts::default();
        for f in &record.frozen {
            attempts.note(thaw_one(f));
        }
        if attempts.failed() {
            // The record stays: the next revert or start-up tries again.
            return attempts.finish();
        }
        durable::remove(&self.records, &self.record_path(id))
            .map(|_| ())
            .map_err(|source| {
                FreezerError::Io {
                    what: "remove",
                    path: self.record_path(id),
                    source,
                }
                .into()
            })
    }

    fn save(&self, id: &str, record: &Record) -> Result<(), FreezerError> {
        fs::create_dir_all(&self.records).map_err(|source| FreezerError::Io {
            what: "create",
            path: self.records.clone(),
            source,
        })?;
        let path = self.record_path(id);
        let text = serde_json::to_vec_pretty(record).expect("records serialise");
        durable::write(&self.records, &path, &text).map_err(|source| FreezerError::Io {
            what: "write",
            path,
            source,
        })
    }

    fn load(&self, id: &str) -> Result<Option<Record>, FreezerError> {
        let path = self.record_path(id);
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|source| FreezerError::Record { path, source }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(FreezerError::Io {
                what: "read",
                path,
                source,
            }),
        }
    }

    fn ids(&self) -> Vec<String> {
        durable::record_ids(&self.records)
    }
}

impl Adapter for Freezer {
    /// Thaws what faults not in `keep` froze.
    fn sweep(&self, keep: &[&str]) -> Swept {
        let mut swept = Swept::default();
        for id in self.ids() {
            if keep.contains(&id.as_str()) {
                continue;
            }
            match self.thaw(&id) {
                Ok(()) => swept.removed.push(format!("thawed what pause {id} froze")),
                Err(e) => swept.failed.push(e),
            }
        }
        swept
    }
}

fn proc_at(pid: u32, start: u64) -> Proc {
    Proc {
        pid,
        start,
        comm: String::new(),
        ppid: 0,
        kthread: false,
    }
}

fn thaw_one(f: &Frozen) -> Result<(), FreezerError> {
    match f {
        Frozen::Cgroup(file) => {
            if !file.exists() {
                // The cgroup is gone, and its processes with it.
                return Ok(());
            }
            write(file, if Frozen::is_v2(file) { "0" } else { "THAWED" })
        }
        Frozen::Process { pid, start } => {
            match process::signal(&proc_at(*pid, *start), libc::SIGCONT) {
                Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Ok(()),
                other => other.map_err(|source| FreezerError::Signal {
                    what: "continue",
                    pid: *pid,
                    source,
                }),
            }
        }
    }
}

fn write(file: &Path, value: &str) -> Result<(), FreezerError> {
    fs::write(file, value).map_err(|source| FreezerError::Io {
        what: "write",
        path: file.to_owned(),
        source,
    })
}

/// Waits until the kernel reports process `pid` stopped (`T` in /proc/<pid>/stat), or gone.
fn stopped(pid: u32) -> Result<(), FreezerError> {
    let started = Instant::now();
    loop {
        let state = procfs::process::Process::new(pid as i32)
            .and_then(|p| p.stat())
            .map(|s| s.state);
        match state {
            Ok('T') | Err(_) => return Ok(()),
            Ok(other) if started.elapsed() > SETTLE => {
                return Err(FreezerError::Unsettled {
                    path: PathBuf::from(format!("/proc/{pid}")),
                    state: other.to_string(),
                    seconds: SETTLE.as_secs(),
                })
            }
            Ok(_) => thread::sleep(Duration::from_millis(5)),
        }
    }
}

/// Waits until the kernel reports the cgroup frozen: `frozen 1` in v2's `cgroup.events`,
/// `FROZEN` (past `FREEZING`) in v1's `freezer.state`.
fn settle(file: &Path, v2: bool) -> Result<(), FreezerError> {
    let started = Instant::now();
    loop {
        let state = if v2 {
            fs::read_to_string(file.with_file_name("cgroup.events"))
                .unwrap_or_default()
                .lines()
                .find(|l| l.starts_with("frozen "))
                .unwrap_or_default()
                .to_owned()
        } else {
            fs::read_to_string(file)
                .unwrap_or_default()
                .trim()
                .to_owned()
        };
        if state == "frozen 1" || state == "FROZEN" {
            return Ok(());
        }
        if started.elapsed() > SETTLE {
            return Err(FreezerError::Unsettled {
                path: file.to_owned(),
                state,
                seconds: SETTLE.as_secs(),
            });
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// A process's state letter (`R`, `S`, `T`, ...) from /proc/<pid>/stat, if it exists.
fn process_state(pid: u32) -> Option<char> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The comm may hold spaces and parentheses: the state follows the last `)`.
    let at = stat.rfind(')')?;
    stat.get(at + 2..)?.chars().next()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_is_kept_until_everything_is_thawed() {
        let state = tempfile::tempdir().unwrap();
        let freezer = Freezer::new(state.path());
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let p = Proc::read(child.id()).unwrap();
        let frozen = [Frozen::Process {
            pid: p.pid,
            start: p.start,
        }];
        freezer.freeze("f1", &frozen).unwrap();
        assert!(freezer.record_path("f1").exists());
        assert_eq!(
            freezer.held_by(&frozen).map(|(id, _)| id),
            Some("f1".into())
        );
        let stat = || Process::stat_state(p.pid);
        assert_eq!(stat(), Some('T'), "stopped");
        // Start-up: a record no journal entry keeps is thawed.
        let swept = freezer.sweep(&[]);
        assert_eq!(swept.removed.len(), 1);
        assert!(swept.failed.is_empty());
        assert!(!freezer.record_path("f1").exists());
        assert_ne!(stat(), Some('T'), "continued");
        freezer.thaw("f1").unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }

    struct Process;

    impl Process {
        fn stat_state(pid: u32) -> Option<char> {
            procfs::process::Process::new(pid as i32)
                .ok()?
                .stat()
                .ok()
                .map(|s| s.state)
        }
    }
}
