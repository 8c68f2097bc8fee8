//! `disk_fill`: take a filesystem's free space with fallocate'd files in a directory of the
//! fault's own (`DIR/.faultline-fill-<id>`), until its free space is what the request asked
//! for: the free space now minus `--size`, or what is left at `--percent` usage (`df`'s
//! `Use%`). Allocating writes nothing, so a fill of many gigabytes takes milliseconds and wears
//! nothing; a filesystem that cannot allocate without writing is refused, never filled with
//! zeros.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{check_dir, check_floor, space_of, Floor};
use crate::{
    errors::{EngineError, InvalidSpec, KernelError},
    faults::{Claim, Connection, Deadline, Demands, Family, Host},
    kernel::disk::{
        space::{self, Space},
        DiskError, Disks,
    },
    units::format_bytes,
};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum FillAmount {
    /// Take this many bytes of the free space.
    Bytes(u64),
    /// Fill until the filesystem is this full, in percent of its size as `df` counts it.
    Percent(f64),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct DiskFillSpec {
    /// A directory on the filesystem to fill; the fault's files go in a directory under it.
    pub(crate) path: PathBuf,
    pub(crate) amount: FillAmount,
    /// The least free space the fill may leave; `None`: 1 GiB or 5 %, whichever is larger.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) floor: Option<u64>,
}

impl DiskFillSpec {
    /// The free space the fill lands on, given the filesystem's figures now.
    fn target_free(&self, space: &Space) -> Result<u64, String> {
        match self.amount {
            FillAmount::Bytes(bytes) => space.free.checked_sub(bytes).ok_or_else(|| {
                format!(
                    "{} is more than the {} free on {}",
                    format_bytes(bytes),
                    format_bytes(space.free),
                    self.path.display()
                )
            }),
            FillAmount::Percent(p) => {
                let target = space.free_at_usage(p);
                if target > space.free {
                    Err(format!(
                        "{} is {:.1}% full already, more than the {p}% asked for",
                        self.path.display(),
                        100.0 - space.free as f64 / space.size.max(1) as f64 * 100.0
                    ))
                } else {
                    Ok(target)
                }
            }
        }
    }

    fn what(&self) -> String {
        match self.amount {
            FillAmount::Bytes(b) => format!("filling {}", format_bytes(b)),
            FillAmount::Percent(p) => format!("filling to {p}% used"),
        }
    }
}

impl Family for DiskFillSpec {
    fn validate(&self, _host: &Host<'_>) -> Result<(), InvalidSpec> {
        check_dir(&self.path, "path")?;
        match self.amount {
            FillAmount::Bytes(0) => Err(InvalidSpec::new(
                "size",
                "0 bytes: expected a size like 10GiB, or --percent",
            )),
            FillAmount::Percent(p) if !(p.is_finite() && p > 0.0 && p <= 100.0) => {
                Err(InvalidSpec::new(
                    "percent",
                    format!("{p} is out of range, expected 0 < percent <= 100 (target usage)"),
                ))
            }
            _ => Ok(()),
        }
    }

    fn admit(&self, host: &Host<'_>) -> Result<(), EngineError> {
        let space = space_of(&self.path)?;
        let target = self
            .target_free(&space)
            .map_err(|detail| EngineError::Reserve { detail })?;
        let floor = Floor::of(self.floor, &self.path, &space, host);
        check_floor(&self.path, &space, target, &floor, &self.what())?;
        if space::supports_fallocate(&self.path, space.block) == Some(false) {
            return Err(EngineError::Unsupported {
                feature: "fallocate".to_owned(),
                detail: DiskError::NoFallocate {
                    path: self.path.clone(),
                    fs_type: space::fs_type(&self.path),
                }
                .to_string(),
            });
        }
        Ok(())
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
        let dir = Disks::dir_of(&self.path, "fill", id);
        let mut plan = vec![
            format!(
                "disk: record {} (removed by the start-up sweep after a crash)",
                dir.display()
            ),
            format!("disk: mkdir {}", dir.display()),
        ];
        match Space::of(&self.path) {
            Ok(space) => {
                let floor = Floor::of(self.floor, &self.path, &space, host);
                let target = self.target_free(&space).unwrap_or(space.free);
                plan.push(format!(
                    "disk: fallocate files fill-NNNN (up to {} each) until {} is free (now {}, \
                     floor {}), taking {}",
                    format_bytes(space::FILL_FILE),
                    format_bytes(target),
                    format_bytes(space.free),
                    format_bytes(floor.bytes),
                    format_bytes(space.free.saturating_sub(target))
                ));
            }
            Err(e) => plan.push(format!("disk: cannot read the free space: {e}")),
        }
        plan
    }

    fn apply(&self, id: &str, _deadline: Deadline, host: &Host<'_>) -> Result<(), KernelError> {
        // Measured again: the free space may have moved since admission.
        let space = Space::of(&self.path)?;
        let target = self.target_free(&space).map_err(DiskError::Refused)?;
        let floor = Floor::of(self.floor, &self.path, &space, host);
        if target < floor.bytes {
            return Err(DiskError::Refused(format!(
                "{} free now; {} would leave {}, less than {}",
                format_bytes(space.free),
                self.what(),
                format_bytes(target),
                floor.why
            ))
            .into());
        }
        let dir = host.disks.create_dir(id, &self.path, "fill")?;
        space::fill_to(&dir, target, floor.bytes)?;
        Ok(())
    }

    fn revert(&self, id: &str, host: &Host<'_>) -> Result<(), KernelError> {
        host.disks.release(id)
    }

    fn effect(
        &self,
        id: &str,
        host: &Host<'_>,
    ) -> Result<crate::faults::effect::Effect, KernelError> {
        let bytes = host.disks.allocated(id)?;
        Ok(crate::faults::effect::Effect::new("bytes allocated")
            .hits(bytes)
            .counter("bytes_allocated", bytes))
    }

    fn objects(&self, id: &str, host: &Host<'_>) -> Result<Vec<String>, KernelError> {
        Ok(host.disks.objects(id)?)
    }

    fn demands(&self) -> Demands {
        let bytes = match self.amount {
            FillAmount::Bytes(b) => b,
            FillAmount::Percent(_) => Space::of(&self.path)
                .ok()
                .and_then(|s| Some(s.free.saturating_sub(self.target_free(&s).ok()?)))
                .unwrap_or(0),
        };
        Demands {
            disk: Some(bytes),
            ..Demands::default()
        }
    }

    fn summary(&self) -> String {
        let mut out = match self.amount {
            FillAmount::Bytes(b) => {
                format!("disk fill {} on {}", format_bytes(b), self.path.display())
            }
            FillAmount::Percent(p) => format!("disk fill {} to {p}% used", self.path.display()),
        };
        if let Some(floor) = self.floor {
            out.push_str(&format!(" (floor {})", format_bytes(floor)));
        }
        out
    }
}

impl crate::faults::readiness::Ready for DiskFillSpec {
    fn readiness(
        preflight: &crate::faults::readiness::Preflight<'_>,
    ) -> crate::faults::readiness::Readiness {
        crate::faults::readiness::Readiness::from_capability(
            "fallocate",
            &preflight.caps.fallocate,
            "fill a filesystem that supports fallocate(2) (ext4, xfs, btrfs, tmpfs)",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_follow_the_amount_and_refuse_what_cannot_be() {
        let space = Space {
            size: 1000 << 20,
            free: 600 << 20,
            block: 4096,
        };
        let spec = |amount| DiskFillSpec {
            path: "/data".into(),
            amount,
            floor: None,
        };
        assert_eq!(
            spec(FillAmount::Bytes(100 << 20)).target_free(&space),
            Ok(500 << 20)
        );
        assert_eq!(
            spec(FillAmount::Percent(90.0)).target_free(&space),
            Ok(100 << 20)
        );
        assert!(spec(FillAmount::Bytes(700 << 20))
            .target_free(&space)
            .unwrap_err()
            .contains("more than"));
        assert!(spec(FillAmount::Percent(30.0))
            .target_free(&space)
            .unwrap_err()
            .contains("40.0% full already"));
    }
}
