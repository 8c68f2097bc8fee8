//! The disk adapter: it owns what disk faults put on the host — directories of their own on the
//! filesystems they fill or stress (`DIR/.faultline-<what>-<fault id>`, with everything in them)
//! and the I/O limits they set on cgroups they do not own — and the durable record of both
//! (`<state dir>/disk/<fault id>.json`, written with `kernel::durable` before a directory is
//! made or a limit is changed). The record holds each directory's full path and each limit's
//! previous value, so that the start-up sweep finds a crashed fault's files on any filesystem
//! and puts back exactly the limits it replaced.
//!
//! The agent's state filesystem keeps its reserve (`--state-reserve`, see `engine::space`): a
//! fault's files there never leave less than twice that free, the reserve for the journal, the
//! audit log and reverts, and as much again so that applies are not refused while they last.

use std::{
    fs, io,
    os::unix::fs::DirBuilderExt as _,
    path::{Path, PathBuf},
    sync::Mutex,
};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::{
    cgroup::Cgroups,
    durable::{RecordError, Records},
    Adapter, Attempts, KernelError, Swept,
};

pub(crate) mod space;
pub(crate) mod throttle;

use throttle::{BlockDevice, IoLimits};

#[derive(Debug, Error)]
pub(crate) enum DiskError {
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "the {fs_type} filesystem under {path} does not support fallocate: a fill would have to \
         write zeros, which faultline does not do (it would take minutes and wear the device); \
         fill a filesystem that allocates without writing (ext4, xfs, btrfs, tmpfs)"
    )]
    NoFallocate { path: PathBuf, fs_type: String },
    #[error(
        "stopped: the filesystem has {} free, less than the floor of {} (something else is \
         writing to it)",
        fmt_bytes(*free),
        fmt_bytes(*floor)
    )]
    BelowFloor { free: u64, floor: u64 },
    #[error("{0}")]
    NotBlock(String),
    /// The host changed since admission, and the fault would now break its bounds.
    #[error("refused: {0}")]
    Refused(String),
    #[error(transparent)]
    Record(#[from] RecordError),
    #[error("cgroups are not usable here: {0}")]
    NoCgroups(String),
}

/// `fs::metadata`, with the path in the error.
fn stat(path: &Path) -> Result<fs::Metadata, DiskError> {
    fs::metadata(path).map_err(|source| DiskError::Io {
        action: "stat",
        path: path.to_owned(),
        source,
    })
}

/// MiB with one decimal, for the one message here that needs sizes (the faults layer formats
/// everything else).
fn fmt_bytes(bytes: u64) -> String {
    format!("{:.1}MiB", bytes as f64 / (1u64 << 20) as f64)
}

/// Bytes the files directly in `dir` take on disk (their allocated blocks).
fn allocated(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt as _;
    fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.blocks() * 512)
        .sum()
}

/// A limit a fault set on a cgroup it does not own, and what was there before.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Throttled {
    /// The cgroup's directory (in the blkio hierarchy on v1).
    pub(crate) cgroup: PathBuf,
    pub(crate) v2: bool,
    pub(crate) device: BlockDevice,
    pub(crate) prior: IoLimits,
}

/// What one fault made; written before it is made.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Record {
    #[serde(default)]
    dirs: Vec<PathBuf>,
    #[serde(default)]
    throttles: Vec<Throttled>,
}

/// Disk faults' directories and limits, and the records of them.
pub(crate) struct Disks {
    /// `<state dir>/disk/`, one `<fault id>.json` per fault that made something.
    records: Records,
    state_dir: PathBuf,
    /// `serve --state-reserve`.
    state_reserve: u64,
    cgroups: Result<Cgroups, String>,
    /// Record updates are read-modify-write.
    lock: Mutex<()>,
}

impl Disks {
    pub(crate) fn new(
        state_dir: &Path,
        state_reserve: u64,
        cgroups: Result<Cgroups, String>,
    ) -> Self {
        Self {
            records: Records::new(state_dir.join("disk")),
            state_dir: state_dir.to_owned(),
            state_reserve,
            cgroups,
            lock: Mutex::new(()),
        }
    }

    pub(crate) fn cgroups(&self) -> Result<&Cgroups, DiskError> {
        self.cgroups
            .as_ref()
            .map_err(|e| DiskError::NoCgroups(e.clone()))
    }

    /// The free space a disk fault must leave on `path`'s filesystem for the agent, with the
    /// state reserve it doubles: twice that reserve on the state directory's filesystem, so
    /// that the agent is never at its reserve because of its own fault; elsewhere none.
    pub(crate) fn reserve_on(&self, path: &Path) -> Option<(u64, u64)> {
        let (Ok((here, _)), Ok((state, _))) =
            (space::filesystem(path), space::filesystem(&self.state_dir))
        else {
            return None;
        };
        (here == state).then_some((self.state_reserve.saturating_mul(2), self.state_reserve))
    }

    /// The directory fault `id` owns under `parent` for `what` (`fill`, `io`).
    pub(crate) fn dir_of(parent: &Path, what: &str, id: &str) -> PathBuf {
        parent.join(format!(".faultline-{what}-{id}"))
    }

    /// Records, then creates (mode 0700) fault `id`'s directory under `parent`.
    pub(crate) fn create_dir(
        &self,
        id: &str,
        parent: &Path,
        what: &str,
    ) -> Result<PathBuf, DiskError> {
        let dir = Self::dir_of(parent, what, id);
        self.update(id, |record| {
            if !record.dirs.contains(&dir) {
                record.dirs.push(dir.clone());
            }
        })?;
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(|source| DiskError::Io {
                action: "create",
                path: dir.clone(),
                source,
            })?;
        Ok(dir)
    }

    /// Records the limits on `device` in cgroup directory `cgroup` (of cgroup v2, or v1's
    /// blkio) now, then sets `limits` there (only the ones given; the others stay as they are).
    pub(crate) fn throttle(
        &self,
        id: &str,
        cgroup: &Path,
        v2: bool,
        device: BlockDevice,
        limits: &IoLimits,
    ) -> Result<(), DiskError> {
        let prior = throttle::read(cgroup, v2, device)?;
        let entry = Throttled {
            cgroup: cgroup.to_owned(),
            v2,
            device,
            prior,
        };
        self.update(id, |record| {
            // A retried apply must not record its own limits as the previous ones.
            if !record
                .throttles
                .iter()
                .any(|t| t.cgroup == entry.cgroup && t.device == device)
            {
                record.throttles.push(entry.clone());
            }
        })?;
        throttle::write(cgroup, v2, device, limits, false)
    }

    /// Removes fault `id`'s directories and puts back the limits it replaced, trying each;
    /// the record goes when everything is done. Idempotent.
    pub(crate) fn release(&self, id: &str) -> Result<(), KernelError> {
        let Some(record) = self.load(id)? else {
            return Ok(());
        };
        let mut attempts = Attempts::default();
        for dir in &record.dirs {
            attempts.note(match fs::remove_dir_all(dir) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(DiskError::Io {
                    action: "remove",
                    path: dir.clone(),
                    source: e,
                }),
                _ => Ok(()),
            });
        }
        for t in &record.throttles {
            let restored = if t.cgroup.exists() {
                throttle::write(&t.cgroup, t.v2, t.device, &t.prior, true)
            } else {
                // The cgroup is gone, and its limits with it.
                Ok(())
            };
            attempts.note(restored);
        }
        if !attempts.failed() {
            attempts.note(self.forget(id));
        }
        attempts.finish()
    }

    /// Fault `id`'s objects as they are now, one line each: its record, each directory it made
    /// that exists (with the space its files hold), and the limits now set where it throttled.
    pub(crate) fn objects(&self, id: &str) -> Result<Vec<String>, DiskError> {
        let Some(record) = self.load(id)? else {
            return Ok(Vec::new());
        };
        let mut lines = vec![format!("record {}", self.records.path(id).display())];
        for dir in record.dirs.iter().filter(|d| d.exists()) {
            lines.push(format!(
                "directory {} holding {}",
                dir.display(),
                fmt_bytes(allocated(dir))
            ));
        }
        for t in record.throttles.iter().filter(|t| t.cgroup.exists()) {
            lines.push(format!(
                "I/O limits on {} in {}: {:?}",
                t.device,
                t.cgroup.display(),
                throttle::read(&t.cgroup, t.v2, t.device)?
            ));
        }
        Ok(lines)
    }

    /// Bytes the files in fault `id`'s directories take on disk.
    pub(crate) fn allocated(&self, id: &str) -> Result<u64, DiskError> {
        Ok(self
            .load(id)?
            .map(|r| r.dirs.iter().map(|d| allocated(d)).sum())
            .unwrap_or(0))
    }

    /// What fault `id` made, per its record: directories and throttled cgroups.
    pub(crate) fn made(&self, id: &str) -> Result<(Vec<PathBuf>, Vec<Throttled>), DiskError> {
        Ok(self
            .load(id)?
            .map(|r| (r.dirs, r.throttles))
            .unwrap_or_default())
    }

    fn update(&self, id: &str, change: impl FnOnce(&mut Record)) -> Result<(), DiskError> {
        let _held = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let mut record = self.load(id)?.unwrap_or_default();
        change(&mut record);
        Ok(self.records.save(id, &record)?)
    }

    fn load(&self, id: &str) -> Result<Option<Record>, DiskError> {
        Ok(self.records.load(id)?)
    }

    fn forget(&self, id: &str) -> Result<(), DiskError> {
        Ok(self.records.forget(id)?)
    }
}

impl Adapter for Disks {
    /// Removes the directories and restores the limits of faults not in `keep`.
    fn sweep(&self, keep: &[&str]) -> Swept {
        let mut swept = Swept::default();
        for id in self.records.ids() {
            if keep.contains(&id.as_str()) {
                continue;
            }
            let what =
                match self.made(&id) {
                    Ok((dirs, throttles)) => {
                        let mut parts: Vec<String> =
                            dirs.iter().map(|d| d.display().to_string()).collect();
                        parts.extend(throttles.iter().map(|t| {
                            format!("I/O limits on {} in {}", t.device, t.cgroup.display())
                        }));
                        parts.join(", ")
                    }
                    Err(e) => {
                        swept.failed.push(e.into());
                        continue;
                    }
                };
            match self.release(&id) {
                Ok(()) => swept.removed.push(format!("disk objects of {id}: {what}")),
                Err(e) => swept.failed.push(e),
            }
        }
        swept
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_release_removes_what_the_record_names_and_the_record() {
        let state = tempfile::tempdir().unwrap();
        let target = tempfile::tempdir().unwrap();
        let disks = Disks::new(state.path(), 32 << 20, Err("none".into()));
        let dir = disks.create_dir("abc", target.path(), "fill").unwrap();
        assert_eq!(dir, target.path().join(".faultline-fill-abc"));
        fs::write(dir.join("fill-0000"), b"x").unwrap();
        assert_eq!(disks.records.ids(), ["abc"]);
        // A crash: a new adapter finds it from the record alone.
        let after = Disks::new(state.path(), 32 << 20, Err("none".into()));
        let swept = after.sweep(&[]);
        assert!(swept.failed.is_empty(), "{:?}", swept.failed);
        assert_eq!(swept.removed.len(), 1);
        assert!(!dir.exists());
        assert!(after.records.ids().is_empty());
        after.release("abc").unwrap();
    }

    #[test]
    fn the_reserve_applies_on_the_state_directorys_filesystem_only() {
        let state = tempfile::tempdir().unwrap();
        let disks = Disks::new(state.path(), 5, Err("none".into()));
        assert_eq!(disks.reserve_on(state.path()), Some((10, 5)));
        assert_eq!(disks.reserve_on(Path::new("/proc")), None);
    }
}
