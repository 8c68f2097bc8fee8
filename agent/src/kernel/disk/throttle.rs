//! Block devices as the kernel's I/O controllers name them (`MAJ:MIN` of a whole disk), and a
//! cgroup's I/O limits on one of them: `io.max` on cgroup v2, the four `blkio.throttle.*_device`
//! files on v1. Reading gives what is set now (absent: no limit), so that a fault can record it
//! and put it back exactly.

use std::{
    fmt, fs,
    os::unix::fs::{FileTypeExt as _, MetadataExt as _},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use super::DiskError;

/// A whole block device: the kernel throttles disks, not partitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub(crate) struct BlockDevice {
    pub(crate) major: u32,
    pub(crate) minor: u32,
}

impl fmt::Display for BlockDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.major, self.minor)
    }
}

impl BlockDevice {
    fn sys(&self) -> PathBuf {
        PathBuf::from(format!("/sys/dev/block/{self}"))
    }

    /// The kernel's name of the device (`loop0`, `vda`).
    pub(crate) fn name(&self) -> String {
        fs::canonicalize(self.sys())
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| self.to_string())
    }

    fn is_partition(&self) -> bool {
        self.sys().join("partition").exists()
    }

    /// The disk a partition belongs to.
    fn whole_disk(&self) -> Option<BlockDevice> {
        let parent = fs::canonicalize(self.sys()).ok()?.parent()?.join("dev");
        parse_dev(fs::read_to_string(parent).ok()?.trim())
    }

    fn from_dev(dev: u64) -> Self {
        Self {
            major: libc::major(dev),
            minor: libc::minor(dev),
        }
    }
}

fn parse_dev(text: &str) -> Option<BlockDevice> {
    let (major, minor) = text.split_once(':')?;
    Some(BlockDevice {
        major: major.trim().parse().ok()?,
        minor: minor.trim().parse().ok()?,
    })
}

/// The disk under the filesystem that holds `path` (for a partition, the disk it is on: the
/// kernel throttles whole disks).
pub(crate) fn backing_device(path: &Path) -> Result<BlockDevice, DiskError> {
    let dev = super::stat(path)?.dev();
    let device = BlockDevice::from_dev(dev);
    if !device.sys().exists() {
        return Err(DiskError::NotBlock(format!(
            "{} is on a filesystem ({}) with no block device under it (device number {device}): \
             its I/O cannot be throttled per device; pick a path on a disk-backed filesystem",
            path.display(),
            super::space::fs_type(path)
        )));
    }
    if device.is_partition() {
        return device.whole_disk().ok_or_else(|| {
            DiskError::NotBlock(format!(
                "{} is on partition {}, whose disk cannot be found in /sys",
                path.display(),
                device.name()
            ))
        });
    }
    Ok(device)
}

/// A device as an operator names it: `/dev/sdb`, `sdb`, or `8:16`. Partitions are refused:
/// throttling the whole disk would slow its other partitions too, and that must be asked for.
pub(crate) fn named_device(text: &str) -> Result<BlockDevice, String> {
    let device = if let Some(device) = parse_dev(text) {
        device
    } else {
        let path = if text.starts_with('/') {
            PathBuf::from(text)
        } else {
            Path::new("/dev").join(text)
        };
        let meta = fs::metadata(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        if !meta.file_type().is_block_device() {
            return Err(format!(
                "{} is not a block device (expected e.g. /dev/sdb, sdb or 8:16)",
                path.display()
            ));
        }
        BlockDevice::from_dev(meta.rdev())
    };
    if !device.sys().exists() {
        return Err(format!(
            "no block device {device} on this host (see /sys/dev/block or lsblk)"
        ));
    }
    if device.is_partition() {
        let disk = device
            .whole_disk()
            .map(|d| format!("/dev/{} ({d})", d.name()))
            .unwrap_or_else(|| "its disk".to_owned());
        return Err(format!(
            "{} is a partition; the kernel throttles whole disks: name {disk}, which slows all \
             of its partitions",
            device.name()
        ));
    }
    Ok(device)
}

/// Limits on one device; `None`: no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct IoLimits {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) read_bps: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) write_bps: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) read_iops: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) write_iops: Option<u64>,
}

/// The v1 file and the v2 `io.max` key of each limit, in [`IoLimits`] order.
const KEYS: [(&str, &str); 4] = [
    ("blkio.throttle.read_bps_device", "rbps"),
    ("blkio.throttle.write_bps_device", "wbps"),
    ("blkio.throttle.read_iops_device", "riops"),
    ("blkio.throttle.write_iops_device", "wiops"),
];

impl IoLimits {
    pub(crate) fn values(&self) -> [Option<u64>; 4] {
        [
            self.read_bps,
            self.write_bps,
            self.read_iops,
            self.write_iops,
        ]
    }

    fn from_values(v: [Option<u64>; 4]) -> Self {
        Self {
            read_bps: v[0],
            write_bps: v[1],
            read_iops: v[2],
            write_iops: v[3],
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.values().iter().all(Option::is_none)
    }
}

/// The `(file, value)` writes that set `limits` on `device` in a cgroup of cgroup version `v2`
/// or v1. With `all`, limits that are `None` are removed (a restore); without, they are left
/// as they are (a fault sets only what it was asked for).
pub(crate) fn writes(
    v2: bool,
    device: BlockDevice,
    limits: &IoLimits,
    all: bool,
) -> Vec<(&'static str, String)> {
    let values = limits.values();
    if v2 {
        let keys: Vec<String> = KEYS
            .iter()
            .zip(values)
            .filter(|(_, v)| all || v.is_some())
            .map(|((_, key), v)| match v {
                Some(v) => format!("{key}={v}"),
                None => format!("{key}=max"),
            })
            .collect();
        if keys.is_empty() {
            return Vec::new();
        }
        vec![("io.max", format!("{device} {}", keys.join(" ")))]
    } else {
        KEYS.iter()
            .zip(values)
            .filter(|(_, v)| all || v.is_some())
            // 0 removes a v1 rule.
            .map(|((file, _), v)| (*file, format!("{device} {}", v.unwrap_or(0))))
            .collect()
    }
}

/// The limits on `device` set in cgroup directory `dir` now.
pub(crate) fn read(dir: &Path, v2: bool, device: BlockDevice) -> Result<IoLimits, DiskError> {
    let read = |file: &str| {
        let path = dir.join(file);
        fs::read_to_string(&path).map_err(|source| DiskError::Io {
            action: "read",
            path,
            source,
        })
    };
    let prefix = format!("{device} ");
    if v2 {
        let text = read("io.max")?;
        let Some(line) = text.lines().find_map(|l| l.strip_prefix(&prefix)) else {
            return Ok(IoLimits::default());
        };
        let value = |key: &str| {
            line.split_whitespace()
                .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
                .and_then(|v| v.parse().ok())
        };
        Ok(IoLimits::from_values(KEYS.map(|(_, key)| value(key))))
    } else {
        let mut values = [None; 4];
        for (i, (file, _)) in KEYS.iter().enumerate() {
            values[i] = read(file)?
                .lines()
                .find_map(|l| l.strip_prefix(&prefix))
                .and_then(|v| v.trim().parse().ok());
        }
        Ok(IoLimits::from_values(values))
    }
}

/// What the cgroup in `dir` has read and written on `device`: `(bytes read, bytes written,
/// reads, writes)`, from io.stat (v2) or the blkio throttle statistics (v1, which count only
/// on a disk with an active throttle: a disk fault's). Zero where nothing is counted yet.
pub(crate) fn done(dir: &Path, v2: bool, device: BlockDevice) -> (u64, u64, u64, u64) {
    let text = |file: &str| fs::read_to_string(dir.join(file)).unwrap_or_default();
    let prefix = format!("{device} ");
    if v2 {
        let stat = text("io.stat");
        let line = stat
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .unwrap_or_default();
        let value = |key: &str| {
            line.split_whitespace()
                .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        (
            value("rbytes"),
            value("wbytes"),
            value("rios"),
            value("wios"),
        )
    } else {
        let value = |file: &str, op: &str| {
            text(file)
                .lines()
                .find_map(|l| {
                    l.strip_prefix(&prefix)?
                        .strip_prefix(op)?
                        .trim()
                        .parse()
                        .ok()
                })
                .unwrap_or(0)
        };
        (
            value("blkio.throttle.io_service_bytes", "Read "),
            value("blkio.throttle.io_service_bytes", "Write "),
            value("blkio.throttle.io_serviced", "Read "),
            value("blkio.throttle.io_serviced", "Write "),
        )
    }
}

/// Sets `limits` on `device` in cgroup directory `dir` (see [`writes`] for `all`).
pub(crate) fn write(
    dir: &Path,
    v2: bool,
    device: BlockDevice,
    limits: &IoLimits,
    all: bool,
) -> Result<(), DiskError> {
    for (file, value) in writes(v2, device, limits, all) {
        let path = dir.join(file);
        fs::write(&path, &value).map_err(|source| DiskError::Io {
            action: "write to",
            path,
            source,
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOOP0: BlockDevice = BlockDevice { major: 7, minor: 0 };

    #[test]
    fn v1_writes_one_file_per_limit_and_zero_removes() {
        let limits = IoLimits {
            write_bps: Some(1 << 20),
            ..IoLimits::default()
        };
        assert_eq!(
            writes(false, LOOP0, &limits, false),
            vec![("blkio.throttle.write_bps_device", "7:0 1048576".to_owned())]
        );
        assert_eq!(writes(false, LOOP0, &limits, true).len(), 4);
        assert_eq!(
            writes(false, LOOP0, &limits, true)[0],
            ("blkio.throttle.read_bps_device", "7:0 0".to_owned())
        );
    }

    #[test]
    fn v2_writes_one_io_max_line() {
        let limits = IoLimits {
            read_bps: Some(100),
            write_iops: Some(7),
            ..IoLimits::default()
        };
        assert_eq!(
            writes(true, LOOP0, &limits, false),
            vec![("io.max", "7:0 rbps=100 wiops=7".to_owned())]
        );
        assert_eq!(
            writes(true, LOOP0, &limits, true),
            vec![(
                "io.max",
                "7:0 rbps=100 wbps=max riops=max wiops=7".to_owned()
            )]
        );
        assert!(writes(true, LOOP0, &IoLimits::default(), false).is_empty());
    }

    #[test]
    fn limits_read_back_from_both_versions() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join("io.max"),
            "8:0 rbps=max wbps=5 riops=max wiops=max\n7:0 rbps=100 wbps=max riops=3 wiops=max\n",
        )
        .unwrap();
        assert_eq!(
            read(dir.path(), true, LOOP0).unwrap(),
            IoLimits {
                read_bps: Some(100),
                read_iops: Some(3),
                ..IoLimits::default()
            }
        );
        for (file, _) in KEYS {
            fs::write(dir.path().join(file), "8:0 9\n").unwrap();
        }
        fs::write(
            dir.path().join("blkio.throttle.write_bps_device"),
            "8:0 9\n7:0 4096\n",
        )
        .unwrap();
        assert_eq!(
            read(dir.path(), false, LOOP0).unwrap(),
            IoLimits {
                write_bps: Some(4096),
                ..IoLimits::default()
            }
        );
    }

    #[test]
    fn devices_parse_and_partitions_are_refused() {
        assert_eq!(parse_dev("7:0"), Some(LOOP0));
        assert!(named_device("/etc/hostname")
            .unwrap_err()
            .contains("not a block device"));
        assert!(named_device("999:999")
            .unwrap_err()
            .contains("no block device"));
    }
}
