//! `disk_slow`: throttle the I/O of a cgroup someone else owns on one disk, through the
//! cgroup's own limits (`io.max` on cgroup v2, `blkio.throttle.*_device` on v1). Whatever
//! limits the cgroup had on that disk are recorded durably first and put back exactly on
//! revert, also by the start-up sweep after a crash.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::io::check_limits;
use crate::{
    errors::{EngineError, InvalidSpec, KernelError},
    faults::{Claim, Connection, Deadline, Demands, Family, Host},
    kernel::{
        cgroup::Controller,
        disk::throttle::{self, BlockDevice, IoLimits},
    },
};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct DiskSlowSpec {
    /// The target cgroup, below the hierarchy's root (`/system.slice/db.service`).
    pub(crate) cgroup: String,
    /// The disk, as the request named it: `/dev/sdb`, `sdb` or `8:16`.
    pub(crate) device: String,
    pub(crate) limits: IoLimits,
}

impl DiskSlowSpec {
    fn block_device(&self) -> Result<BlockDevice, InvalidSpec> {
        throttle::named_device(&self.device).map_err(|e| InvalidSpec::new("device", e))
    }

    /// The target's directory that holds its I/O limits.
    fn dir(&self, host: &Host<'_>) -> Result<PathBuf, InvalidSpec> {
        let cgroups = host
            .disks
            .cgroups()
            .map_err(|e| InvalidSpec::new("cgroup", e.to_string()))?;
        cgroups.io_dir(&self.cgroup).ok_or_else(|| {
            InvalidSpec::new(
                "cgroup",
                "no I/O controller hierarchy is mounted (cgroup v1 blkio or v2 io)",
            )
        })
    }
}

impl Family for DiskSlowSpec {
    fn validate(&self, host: &Host<'_>) -> Result<(), InvalidSpec> {
        if self.cgroup.trim_matches('/').is_empty() {
            return Err(InvalidSpec::new(
                "cgroup",
                "the root cgroup holds the whole host: name a cgroup below it \
                 (/system.slice/NAME.service, as /proc/PID/cgroup shows it)",
            ));
        }
        if self.cgroup.split('/').any(|part| part == "..") {
            return Err(InvalidSpec::new(
                "cgroup",
                format!("{:?} climbs out of the hierarchy with ..", self.cgroup),
            ));
        }
        if self.limits.is_empty() {
            return Err(InvalidSpec::new(
                "limits",
                "none given: set at least one of --read-bps, --write-bps, --read-iops, \
                 --write-iops",
            ));
        }
        check_limits(&self.limits)?;
        self.block_device()?;
        let dir = self.dir(host)?;
        if !dir.is_dir() {
            return Err(InvalidSpec::new(
                "cgroup",
                format!(
                    "no cgroup {} ({} does not exist)",
                    self.cgroup,
                    dir.display()
                ),
            ));
        }
        let v2 = host
            .disks
            .cgroups()
            .map(|c| c.version() == 2)
            .unwrap_or(false);
        if v2 && !dir.join("io.max").exists() {
            return Err(InvalidSpec::new(
                "cgroup",
                format!(
                    "the io controller is not enabled for {} (no io.max): add +io to \
                     cgroup.subtree_control of its parent",
                    self.cgroup
                ),
            ));
        }
        Ok(())
    }

    fn admit(&self, host: &Host<'_>) -> Result<(), EngineError> {
        let cgroups = host.disks.cgroups().map_err(|e| EngineError::Unsupported {
            feature: "the cgroup I/O controller".to_owned(),
            detail: e.to_string(),
        })?;
        cgroups
            .check(&[Controller::Io])
            .map_err(|e| EngineError::Unsupported {
                feature: "the cgroup I/O controller".to_owned(),
                detail: e.to_string(),
            })
    }

    fn claims(&self) -> Vec<Claim> {
        let device = self
            .block_device()
            .map(|d| d.to_string())
            .unwrap_or_else(|_| self.device.clone());
        vec![Claim::IoLimits {
            cgroup: format!("/{}", self.cgroup.trim_matches('/')),
            device,
        }]
    }

    fn touches(&self, _conn: &Connection) -> bool {
        false
    }

    fn may_touch_port(&self, _local_port: u16) -> bool {
        false
    }

    fn plan(&self, id: &str, _deadline: Deadline, host: &Host<'_>) -> Vec<String> {
        let (Ok(device), Ok(dir)) = (self.block_device(), self.dir(host)) else {
            return vec!["disk: the target cannot be resolved".to_owned()];
        };
        let v2 = host
            .disks
            .cgroups()
            .map(|c| c.version() == 2)
            .unwrap_or(false);
        let prior = throttle::read(&dir, v2, device)
            .map(|p| super::describe_limits(&p))
            .unwrap_or_else(|e| format!("unreadable ({e})"));
        let mut plan = vec![format!(
            "disk: record the limits of {} on {} ({device}) now ({prior}) for fault {id}",
            dir.display(),
            device.name()
        )];
        for (file, value) in throttle::writes(v2, device, &self.limits, false) {
            plan.push(format!(
                "cgroup v{}: write {value:?} to {}",
                if v2 { 2 } else { 1 },
                dir.join(file).display()
            ));
        }
        plan.push("revert: write the recorded limits back".to_owned());
        plan
    }

    fn apply(&self, id: &str, _deadline: Deadline, host: &Host<'_>) -> Result<(), KernelError> {
        let device = throttle::named_device(&self.device)
            .map_err(crate::kernel::disk::DiskError::NotBlock)?;
        let dir = self
            .dir(host)
            .map_err(|e| crate::kernel::disk::DiskError::Refused(e.to_string()))?;
        host.disks.throttle(id, &dir, device, &self.limits)?;
        Ok(())
    }

    fn revert(&self, id: &str, host: &Host<'_>) -> Result<(), KernelError> {
        host.disks.release(id)
    }

    fn demands(&self) -> Demands {
        Demands::default()
    }

    fn summary(&self) -> String {
        format!(
            "disk slow {} for cgroup /{}: {}",
            self.device,
            self.cgroup.trim_matches('/'),
            super::describe_limits(&self.limits)
        )
    }
}
