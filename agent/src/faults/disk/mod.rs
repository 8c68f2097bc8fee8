//! The disk families: fill a filesystem (`disk_fill`), stress a disk with I/O workers whose
//! rate the kernel holds (`disk_io`), and throttle a cgroup's I/O on a device (`disk_slow`).
//! Their files, directories and the limits they replace belong to the `kernel::disk` adapter;
//! this module decides how much, where, and whether the host can spare it.
//!
//! No disk fault leaves a filesystem with less free space than its floor (`--floor`, default
//! 1 GiB or 5 % of the filesystem, whichever is larger), nor the agent's state directory's
//! filesystem with less than twice the agent's reserve (`faultline serve --state-reserve`).

use std::path::Path;

use crate::{
    errors::{EngineError, InvalidSpec},
    faults::Host,
    kernel::disk::{
        space::{self, Space},
        throttle::IoLimits,
    },
    units::format_bytes,
};

pub(crate) mod fill;
pub(crate) mod io;
pub(crate) mod slow;

pub(crate) use fill::DiskFillSpec;
pub(crate) use io::DiskIoSpec;
pub(crate) use slow::DiskSlowSpec;

/// `read 10.0MiB/s, write 100 IOPS`, or `no limit`.
pub(crate) fn describe_limits(limits: &IoLimits) -> String {
    let names = ["read", "write", "read", "write"];
    let parts: Vec<String> = limits
        .values()
        .iter()
        .enumerate()
        .filter_map(|(i, v)| {
            v.map(|v| {
                if i < 2 {
                    format!("{} {}/s", names[i], format_bytes(v))
                } else {
                    format!("{} {v} IOPS", names[i])
                }
            })
        })
        .collect();
    if parts.is_empty() {
        "no limit".to_owned()
    } else {
        parts.join(", ")
    }
}

/// A directory a disk fault works in: absolute, existing, a directory.
fn check_dir(path: &Path, field: &str) -> Result<(), InvalidSpec> {
    if !path.is_absolute() {
        return Err(InvalidSpec::new(
            field,
            format!(
                "{} is relative: expected an absolute directory (the agent's working directory \
                 is not yours)",
                path.display()
            ),
        ));
    }
    match path.metadata() {
        Ok(meta) if meta.is_dir() => Ok(()),
        Ok(_) => Err(InvalidSpec::new(
            field,
            format!("{} is not a directory", path.display()),
        )),
        Err(e) => Err(InvalidSpec::new(
            field,
            format!("{}: {e} (expected an existing directory)", path.display()),
        )),
    }
}

/// The least free space a disk fault may leave on `path`'s filesystem, and why.
pub(crate) struct Floor {
    pub(crate) bytes: u64,
    pub(crate) why: String,
}

impl Floor {
    /// The request's floor (or the default) and, on the state directory's filesystem, the
    /// agent's reserve: whichever is larger.
    pub(crate) fn of(requested: Option<u64>, path: &Path, space: &Space, host: &Host<'_>) -> Floor {
        let (floor, mut why) = match requested {
            Some(bytes) => (bytes, format!("the floor of {}", format_bytes(bytes))),
            None => (
                space.default_floor(),
                format!(
                    "the default floor of {} (1 GiB or 5 % of the filesystem, whichever is \
                     larger; --floor sets another)",
                    format_bytes(space.default_floor())
                ),
            ),
        };
        match host.disks.reserve_on(path) {
            Some((reserve, state_reserve)) if reserve > floor => {
                why = format!(
                    "the agent's room of {} on its state directory's filesystem: twice its \
                     reserve (faultline serve --state-reserve {}), so that it can journal, \
                     audit and revert, and apply other faults while this one lasts",
                    format_bytes(reserve),
                    format_bytes(state_reserve)
                );
                Floor {
                    bytes: reserve,
                    why,
                }
            }
            _ => Floor { bytes: floor, why },
        }
    }
}

/// Refuses taking `bytes` more of `path`'s filesystem if that leaves less than `floor` free.
/// `what` names the request in the message (`filling 10.0GiB`).
pub(crate) fn check_floor(
    path: &Path,
    space: &Space,
    free_after: u64,
    floor: &Floor,
    what: &str,
) -> Result<(), EngineError> {
    if free_after >= floor.bytes {
        return Ok(());
    }
    let (_, fs_type) = space::filesystem(path).unwrap_or((0, "unknown".to_owned()));
    Err(EngineError::Reserve {
        detail: format!(
            "{what} on {} ({fs_type}, {} free of {}) would leave {} free, less than {}; at most \
             {} can be taken there",
            path.display(),
            format_bytes(space.free),
            format_bytes(space.size),
            format_bytes(free_after),
            floor.why,
            format_bytes(space.free.saturating_sub(floor.bytes)),
        ),
    })
}

/// `Space::of` for admission: an unreadable filesystem refuses the request.
fn space_of(path: &Path) -> Result<Space, EngineError> {
    Space::of(path).map_err(|e| EngineError::Unsupported {
        feature: "free space figures".to_owned(),
        detail: e.to_string(),
    })
}
