//! `disk_slow`: throttle the I/O of a workload (a unit, a container, a pod, a cgroup) on one
//! disk, through its cgroup's own limits (`io.max` on cgroup v2, `blkio.throttle.*_device` on v1). Whatever
//! limits the cgroup had on that disk are recorded durably first and put back exactly on
//! revert, also by the start-up sweep after a crash.

use serde::{Deserialize, Serialize};

use super::io::check_limits;
use crate::{
    errors::{EngineError, InvalidSpec, KernelError},
    faults::{Claim, Connection, Deadline, Demands, Family, Host, Target},
    kernel::{
        cgroup::Controller,
        disk::{
            throttle::{self, BlockDevice, IoLimits},
            DiskError,
        },
        workload::{Placement, Workload},
    },
};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct DiskSlowSpec {
    /// The workload whose cgroup is throttled: a unit, a container, a pod or a cgroup path.
    pub(crate) target: Target,
    /// The disk, as the request named it: `/dev/sdb`, `sdb` or `8:16`.
    pub(crate) device: String,
    pub(crate) limits: IoLimits,
}

impl DiskSlowSpec {
    fn block_device(&self) -> Result<BlockDevice, InvalidSpec> {
        throttle::named_device(&self.device).map_err(|e| InvalidSpec::new("device", e))
    }

    /// The workload's cgroup that holds its I/O limits (in the blkio hierarchy on v1).
    fn placement(&self, workload: &Workload) -> Result<Placement, InvalidSpec> {
        let field = self.target.field();
        let placement = workload
            .placement(if workload.placements.iter().any(|p| p.v2) {
                "io"
            } else {
                "blkio"
            })
            .cloned()
            .ok_or_else(|| {
                let found = workload.where_();
                InvalidSpec::new(
                    field,
                    if workload.placements.iter().any(|p| p.v2) {
                        format!(
                            "the io controller is not enabled for {} ({found}): add +io to \
                             cgroup.subtree_control of its parent",
                            workload.what
                        )
                    } else {
                        format!(
                            "{} has no cgroup in a blkio hierarchy ({found})",
                            workload.what
                        )
                    },
                )
            })?;
        if placement.path.trim_matches('/').is_empty() {
            return Err(InvalidSpec::new(
                field,
                format!(
                    "{} is the root cgroup, which holds the whole host: name a workload below it",
                    workload.what
                ),
            ));
        }
        Ok(placement)
    }
}

impl Family for DiskSlowSpec {
    fn validate(&self, host: &Host<'_>) -> Result<(), InvalidSpec> {
        if let Target::Pids(_) = self.target {
            return Err(InvalidSpec::new(
                "pid",
                "disk slow throttles a cgroup, which may hold other processes than these: name \
                 the --unit, --container, --pod or --cgroup",
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
        let workload = self.target.check(host)?;
        self.placement(&workload)?;
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
            cgroup: self.target.to_string(),
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
        let found = self
            .target
            .check(host)
            .and_then(|w| Ok((self.placement(&w)?, self.block_device()?)));
        let (placement, device) = match found {
            Ok(found) => found,
            Err(e) => return vec![format!("disk: the target cannot be resolved: {e}")],
        };
        let dir = &placement.dir;
        let prior = throttle::read(dir, placement.v2, device)
            .map(|p| super::describe_limits(&p))
            .unwrap_or_else(|e| format!("unreadable ({e})"));
        let mut plan = vec![format!(
            "disk: record the limits of {} on {} ({device}) now ({prior}) for fault {id}",
            dir.display(),
            device.name()
        )];
        for (file, value) in throttle::writes(placement.v2, device, &self.limits, false) {
            plan.push(format!(
                "cgroup v{}: write {value:?} to {}",
                if placement.v2 { 2 } else { 1 },
                dir.join(file).display()
            ));
        }
        plan.push("revert: write the recorded limits back".to_owned());
        plan
    }

    fn apply(&self, id: &str, _deadline: Deadline, host: &Host<'_>) -> Result<(), KernelError> {
        let device = throttle::named_device(&self.device).map_err(DiskError::NotBlock)?;
        let workload = self.target.resolve(id, host)?;
        let placement = self
            .placement(&workload)
            .map_err(|e| DiskError::Refused(e.to_string()))?;
        host.disks
            .throttle(id, &placement.dir, placement.v2, device, &self.limits)?;
        Ok(())
    }

    fn revert(&self, id: &str, host: &Host<'_>) -> Result<(), KernelError> {
        Target::release(id, host);
        host.disks.release(id)
    }

    fn watched(&self) -> bool {
        true
    }

    /// A workload that is gone took its cgroup and its limits with it: the fault ends.
    fn target_gone(&self, id: &str, host: &Host<'_>) -> Option<String> {
        Target::gone(id, host)
    }

    fn effect(
        &self,
        id: &str,
        host: &Host<'_>,
    ) -> Result<crate::faults::effect::Effect, KernelError> {
        let (_, throttles) = host.disks.made(id)?;
        let (mut read, mut written) = (0, 0);
        for t in throttles.iter().filter(|t| t.cgroup.exists()) {
            let (r, w, _, _) = throttle::done(&t.cgroup, t.v2, t.device);
            read += r;
            written += w;
        }
        Ok(
            crate::faults::effect::Effect::new("bytes of the workload's I/O")
                .hits(read + written)
                .counter("bytes_read", read)
                .counter("bytes_written", written),
        )
    }

    fn objects(&self, id: &str, host: &Host<'_>) -> Result<Vec<String>, KernelError> {
        Ok(host.disks.objects(id)?)
    }

    fn demands(&self) -> Demands {
        Demands::default()
    }

    fn summary(&self) -> String {
        format!(
            "disk slow {} for {}: {}",
            self.device,
            self.target,
            super::describe_limits(&self.limits)
        )
    }
}

impl crate::faults::readiness::Ready for DiskSlowSpec {
    fn readiness(
        preflight: &crate::faults::readiness::Preflight<'_>,
    ) -> crate::faults::readiness::Readiness {
        crate::faults::readiness::Readiness::from_capability(
            "I/O limits",
            &preflight.caps.io_limits,
            "enable the blkio controller (cgroup v1) or io (cgroup v2)",
        )
    }
}
