//! `disk_io`: I/O stress. Workers (`faultline __worker disk`) read and write blocks at random
//! offsets of a file in a directory of the fault's own (`DIR/.faultline-io-<id>/data`), with
//! direct I/O where the filesystem allows it, inside the fault's own cgroup, whose I/O limits
//! on the disk under `DIR` (`io.max` on cgroup v2, `blkio.throttle.*` on v1) hold the rate: the
//! workers go as fast as they can and the kernel makes them wait.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{check_dir, check_floor, space_of, Floor};
use crate::{
    errors::{EngineError, InvalidSpec, KernelError},
    faults::{Claim, Connection, Deadline, Demands, Ended, Family, Host},
    kernel::{
        cgroup::{Controller, Limits},
        disk::{
            space::{self, DIRECT_ALIGN},
            throttle::{self, BlockDevice, IoLimits},
            DiskError, Disks,
        },
        Attempts,
    },
    units::format_bytes,
};

/// Workers one fault may start: enough to saturate any single device's queue.
pub(crate) const MAX_WORKERS: u32 = 64;
const MAX_BLOCK: u64 = 64 << 20;
/// Defaults for a request that leaves them out.
pub(crate) const DEFAULT_BLOCK: u64 = 64 << 10;
pub(crate) const DEFAULT_SIZE: u64 = 64 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum IoMode {
    Read,
    Write,
    /// Half reads, half writes, at random.
    Mixed,
}

impl IoMode {
    pub(crate) fn name(self) -> &'static str {
        match self {
            IoMode::Read => "read",
            IoMode::Write => "write",
            IoMode::Mixed => "mixed",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct DiskIoSpec {
    /// A directory on the disk to stress.
    pub(crate) path: PathBuf,
    pub(crate) mode: IoMode,
    /// Bytes per read or write: a multiple of 4 KiB.
    pub(crate) block_size: u64,
    pub(crate) workers: u32,
    /// The workers' file.
    pub(crate) size: u64,
    /// The rate the kernel holds the workers to; empty: as fast as the disk goes.
    #[serde(default)]
    pub(crate) limits: IoLimits,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) floor: Option<u64>,
}

impl DiskIoSpec {
    fn device(&self) -> Result<BlockDevice, DiskError> {
        throttle::backing_device(&self.path)
    }

    fn limits(&self, device: BlockDevice) -> Limits {
        Limits {
            io: Some((device, self.limits)),
            ..Limits::default()
        }
    }

    /// Whether the workers use direct I/O: where the filesystem accepts it (or cannot tell).
    fn direct(&self) -> bool {
        space::supports_direct_io(&self.path) != Some(false)
    }

    fn worker_args(&self, file: &std::path::Path, direct: bool) -> Vec<String> {
        let mut args = vec![
            "disk".to_owned(),
            "--file".to_owned(),
            file.display().to_string(),
            "--mode".to_owned(),
            self.mode.name().to_owned(),
            "--block-size".to_owned(),
            self.block_size.to_string(),
        ];
        if !direct {
            args.push("--buffered".to_owned());
        }
        args
    }
}

impl Family for DiskIoSpec {
    fn validate(&self, _host: &Host<'_>) -> Result<(), InvalidSpec> {
        check_dir(&self.path, "path")?;
        if self.block_size == 0
            || !self.block_size.is_multiple_of(DIRECT_ALIGN as u64)
            || self.block_size > MAX_BLOCK
        {
            return Err(InvalidSpec::new(
                "block-size",
                format!(
                    "{} is not accepted: expected a multiple of 4KiB up to {} (direct I/O \
                     needs aligned blocks)",
                    format_bytes(self.block_size),
                    format_bytes(MAX_BLOCK)
                ),
            ));
        }
        if self.workers == 0 || self.workers > MAX_WORKERS {
            return Err(InvalidSpec::new(
                "workers",
                format!(
                    "{} is out of range, expected 1 to {MAX_WORKERS}",
                    self.workers
                ),
            ));
        }
        if self.size < self.block_size.max(1 << 20) {
            return Err(InvalidSpec::new(
                "size",
                format!(
                    "{} is too small: the file must hold at least one block and 1MiB",
                    format_bytes(self.size)
                ),
            ));
        }
        check_limits(&self.limits)?;
        self.device()
            .map_err(|e| InvalidSpec::new("path", e.to_string()))?;
        Ok(())
    }

    fn admit(&self, host: &Host<'_>) -> Result<(), EngineError> {
        host.workers
            .check(&[Controller::Io])
            .map_err(|detail| EngineError::Unsupported {
                feature: "the cgroup I/O controller".to_owned(),
                detail,
            })?;
        let space = space_of(&self.path)?;
        let floor = Floor::of(self.floor, &self.path, &space, host);
        check_floor(
            &self.path,
            &space,
            space.free.saturating_sub(self.size),
            &floor,
            &format!("an I/O file of {}", format_bytes(self.size)),
        )
    }

    fn claims(&self) -> Vec<Claim> {
        Vec::new()
    }

    fn touches(&self, _conn: &Connection) -> bool {
        false
    }

    fn may_touch_port(&self, _local_port: u16) -> bool {
        false
    }

    fn plan(&self, id: &str, _deadline: Deadline, host: &Host<'_>) -> Vec<String> {
        let dir = Disks::dir_of(&self.path, "io", id);
        let direct = self.direct();
        let mut plan = vec![
            format!(
                "disk: record {} (removed by the start-up sweep after a crash)",
                dir.display()
            ),
            format!(
                "disk: write {} of data to {}",
                format_bytes(self.size),
                dir.join("data").display()
            ),
        ];
        match self.device() {
            Ok(device) => {
                plan.extend(host.workers.describe(id, &self.limits(device), None));
                plan.push(format!(
                    "disk: the rate is held on {} ({device}): {}",
                    device.name(),
                    super::describe_limits(&self.limits)
                ));
            }
            Err(e) => plan.push(format!("disk: {e}")),
        }
        plan.push(format!(
            "workers: start {} I/O worker(s) (faultline __worker {}) in the cgroup",
            self.workers,
            self.worker_args(&dir.join("data"), direct).join(" ")
        ));
        if !direct {
            plan.push(format!(
                "disk: the {} filesystem refuses direct I/O: the workers use the page cache, \
                 syncing each write and dropping each block read from the cache",
                space::fs_type(&self.path)
            ));
        }
        plan
    }

    fn apply(&self, id: &str, _deadline: Deadline, host: &Host<'_>) -> Result<(), KernelError> {
        let device = self.device()?;
        let direct = self.direct();
        let dir = host.disks.create_dir(id, &self.path, "io")?;
        let file = dir.join("data");
        space::write_data(&file, self.size, direct)?;
        let procs = host
            .workers
            .cgroups()?
            .create(id, &self.limits(device), None)?;
        let args = self.worker_args(&file, direct);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        for _ in 0..self.workers {
            host.workers.spawn(id, &args, &procs)?;
        }
        Ok(())
    }

    fn revert(&self, id: &str, host: &Host<'_>) -> Result<(), KernelError> {
        // The workers go first: their file is open until they do.
        let mut attempts = Attempts::default();
        attempts.note(host.workers.remove(id));
        attempts.note(host.disks.release(id));
        attempts.finish()
    }

    fn end(&self, id: &str, host: &Host<'_>) -> Result<Ended, KernelError> {
        // Killed workers do no more I/O: that ends the fault. Waiting for them to exit, the
        // cgroup's removal and their directory's (whose file they hold open until then)
        // follow the answer.
        host.workers.stop(id)?;
        Ok(Ended::CleanupLeft)
    }

    fn effect(
        &self,
        id: &str,
        host: &Host<'_>,
    ) -> Result<crate::faults::effect::Effect, KernelError> {
        let device = self.device()?;
        // The fault's cgroup that counts I/O: v2's one, or v1's blkio one.
        let (read, written, reads, writes) = host
            .workers
            .cgroups()?
            .existing(id, None)
            .iter()
            .find(|d| {
                d.join("io.stat").exists() || d.join("blkio.throttle.io_service_bytes").exists()
            })
            .map(|d| throttle::done(d, d.join("io.stat").exists(), device))
            .unwrap_or_default();
        Ok(crate::faults::effect::Effect::new("bytes of I/O")
            .hits(read + written)
            .counter("bytes_read", read)
            .counter("bytes_written", written)
            .counter("reads", reads)
            .counter("writes", writes))
    }

    fn objects(&self, id: &str, host: &Host<'_>) -> Result<Vec<String>, KernelError> {
        let mut lines = host.disks.objects(id)?;
        lines.extend(host.workers.objects(id));
        Ok(lines)
    }

    fn demands(&self) -> Demands {
        Demands {
            disk: Some(self.size),
            ..Demands::default()
        }
    }

    fn summary(&self) -> String {
        format!(
            "disk io {} on {}, {} worker(s) of {} blocks, {}",
            self.mode.name(),
            self.path.display(),
            self.workers,
            format_bytes(self.block_size),
            super::describe_limits(&self.limits)
        )
    }
}

/// Limits are positive: a zero would mean "no I/O at all" on v2 and "no limit" on v1.
pub(crate) fn check_limits(limits: &IoLimits) -> Result<(), InvalidSpec> {
    for (field, value) in [
        ("read-bps", limits.read_bps),
        ("write-bps", limits.write_bps),
        ("read-iops", limits.read_iops),
        ("write-iops", limits.write_iops),
    ] {
        if value == Some(0) {
            return Err(InvalidSpec::new(
                field,
                "0: expected a positive rate (leave the flag out for no limit)",
            ));
        }
    }
    Ok(())
}

impl crate::faults::readiness::Ready for DiskIoSpec {
    fn readiness(
        preflight: &crate::faults::readiness::Preflight<'_>,
    ) -> crate::faults::readiness::Readiness {
        crate::faults::readiness::Readiness::from_capability(
            "I/O limits",
            &preflight.caps.io_limits,
            "enable the blkio controller (cgroup v1) or io (cgroup v2): the rate of disk io \
             is held by it",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_limits_are_refused_by_name() {
        let limits = IoLimits {
            write_iops: Some(0),
            ..IoLimits::default()
        };
        assert_eq!(check_limits(&limits).unwrap_err().field, "write-iops");
        assert!(check_limits(&IoLimits::default()).is_ok());
    }
}
