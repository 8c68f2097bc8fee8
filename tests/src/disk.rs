//! Disks for the disk tests: a small ext4 filesystem in an image file, on a loop device of its
//! own, mounted in a temporary directory ([`LoopFs`]); the host's real disks are never filled
//! or throttled. The guard's `Drop` unmounts it and detaches the loop device, also when the
//! test panics. Also the figures the tests measure with: free space as `statvfs` gives it and
//! the bytes a cgroup's I/O statistics charge to a device.

use std::{
    ffi::CString,
    fs,
    os::unix::ffi::OsStrExt as _,
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::Duration,
};

use anyhow::{bail, ensure, Context as _, Result};
use tempfile::TempDir;

use crate::process;

/// A loop device of its own over a sparse image file in a temporary directory (named
/// `fld-...`), with no filesystem on it: for throttling tests whose writers go straight to the
/// device, so that no filesystem's journal sits between the writers and the throttle. Drop
/// detaches it.
#[derive(Debug)]
pub struct LoopDev {
    dir: TempDir,
    device: String,
}

impl LoopDev {
    /// A `mib` MiB device, every byte zero.
    pub fn new(mib: u64) -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("fld-").tempdir()?;
        Self::over(dir, mib, |_| Ok(()))
    }

    /// A device over `dir/image` of `mib` MiB, after `prepare` has had the image.
    fn over(dir: TempDir, mib: u64, prepare: impl FnOnce(&Path) -> Result<()>) -> Result<Self> {
        let image = dir.path().join("image");
        fs::File::create(&image)?.set_len(mib << 20)?;
        prepare(&image)?;
        let mut losetup = Command::new("losetup");
        losetup.args(["--find", "--show"]).arg(&image);
        let device = process::run_ok(losetup)?.trim().to_owned();
        Ok(Self { dir, device })
    }

    /// `/dev/loopN`.
    pub fn device(&self) -> &str {
        &self.device
    }

    /// `MAJ:MIN` of the loop device, as the I/O controllers name it.
    pub fn major_minor(&self) -> Result<String> {
        let name = Path::new(&self.device)
            .file_name()
            .context("a loop device without a name")?;
        let path = Path::new("/sys/class/block").join(name).join("dev");
        Ok(fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?
            .trim()
            .to_owned())
    }

    /// Bytes `(read, written)` by the loop device since it was attached, from
    /// `/sys/block/loopN/stat` (512-byte sectors): what reached the device, from anyone.
    pub fn device_io_bytes(&self) -> Result<(u64, u64)> {
        let name = Path::new(&self.device)
            .file_name()
            .context("a loop device without a name")?;
        let path = Path::new("/sys/block").join(name).join("stat");
        let text =
            fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        let fields: Vec<u64> = text
            .split_whitespace()
            .filter_map(|f| f.parse().ok())
            .collect();
        ensure!(
            fields.len() >= 7,
            "{} has too few fields: {text}",
            path.display()
        );
        Ok((fields[2] * 512, fields[6] * 512))
    }
}

impl Drop for LoopDev {
    fn drop(&mut self) {
        let mut losetup = Command::new("losetup");
        losetup.arg("-d").arg(&self.device);
        if let Err(e) = process::run_ok(losetup) {
            eprintln!("cleanup: cannot detach {}: {e:#}", self.device);
        }
    }
}

/// An ext4 filesystem on a [`LoopDev`], mounted under the device's temporary directory.
#[derive(Debug)]
pub struct LoopFs {
    dev: LoopDev,
    mounted: bool,
}

impl LoopFs {
    /// Makes a `mib` MiB filesystem (mkfs.ext4 defaults: 5 % reserved for root, so `df`'s
    /// available is less than its free) and mounts it.
    pub fn new(mib: u64) -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("fld-").tempdir()?;
        let dev = LoopDev::over(dir, mib, |image| {
            let mut mkfs = Command::new("mkfs.ext4");
            mkfs.args(["-q", "-F"]).arg(image);
            process::run_ok(mkfs).map(drop)
        })?;
        let mut fs = Self {
            dev,
            mounted: false,
        };
        fs::create_dir(fs.path())?;
        let mut mount = Command::new("mount");
        mount.arg(fs.device()).arg(fs.path());
        process::run_ok(mount)?;
        fs.mounted = true;
        Ok(fs)
    }

    /// The mount point.
    pub fn path(&self) -> PathBuf {
        self.dev.dir.path().join("mnt")
    }

    /// `/dev/loopN`.
    pub fn device(&self) -> &str {
        self.dev.device()
    }

    /// `MAJ:MIN` of the loop device, as the I/O controllers name it.
    pub fn major_minor(&self) -> Result<String> {
        self.dev.major_minor()
    }

    /// Bytes available to writers (`df`'s Avail).
    pub fn free(&self) -> Result<u64> {
        Ok(statvfs(&self.path())?.0)
    }

    /// Bytes `(read, written)` by the loop device since it was attached.
    pub fn device_io_bytes(&self) -> Result<(u64, u64)> {
        self.dev.device_io_bytes()
    }

    /// `(size, available, block)` in bytes, as `df` counts them.
    pub fn figures(&self) -> Result<(u64, u64, u64)> {
        let (avail, used, block) = statvfs(&self.path())?;
        Ok((used + avail, avail, block))
    }

    /// faultline's directories (`.faultline-*`) on the filesystem.
    pub fn faultline_dirs(&self) -> Result<Vec<PathBuf>> {
        Ok(crate::agent::entries(&self.path())?
            .into_iter()
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| n.as_bytes().starts_with(b".faultline-"))
            })
            .collect())
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        if self.mounted {
            // A worker killed a moment ago may still hold a file open: retry, then detach lazily.
            let mut unmounted = false;
            for _ in 0..50 {
                let mut umount = Command::new("umount");
                umount.arg(self.path());
                if process::run_ok(umount).is_ok() {
                    unmounted = true;
                    break;
                }
                thread::sleep(Duration::from_millis(100));
            }
            if !unmounted {
                let mut umount = Command::new("umount");
                umount.arg("-l").arg(self.path());
                if let Err(e) = process::run_ok(umount) {
                    eprintln!("cleanup: cannot unmount {}: {e:#}", self.path().display());
                }
            }
        }
        // The device detaches when `dev` drops, after this.
    }
}

/// `(available, used, fragment size)` in bytes of the filesystem under `path`.
fn statvfs(path: &Path) -> Result<(u64, u64, u64)> {
    let c_path = CString::new(path.as_os_str().as_bytes())?;
    // SAFETY: statvfs(3) fills the zeroed struct we own; the path is a valid C string.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c_path.as_ptr(), &mut st) } != 0 {
        bail!(
            "statvfs {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        );
    }
    let block = st.f_frsize;
    Ok((
        st.f_bavail * block,
        (st.f_blocks - st.f_bfree) * block,
        block,
    ))
}

/// Bytes `(read, written)` the cgroup in `dir` has done on device `maj_min`, from its own I/O
/// statistics: `io.stat` on cgroup v2, `blkio.throttle.io_service_bytes` on v1.
pub fn cgroup_io_bytes(dir: &Path, maj_min: &str) -> Result<(u64, u64)> {
    let v2 = dir.join("io.stat");
    if v2.exists() {
        let text = fs::read_to_string(&v2)?;
        let Some(line) = text
            .lines()
            .find(|l| l.split_whitespace().next() == Some(maj_min))
        else {
            return Ok((0, 0));
        };
        let value = |key: &str| {
            line.split_whitespace()
                .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        return Ok((value("rbytes"), value("wbytes")));
    }
    let v1 = dir.join("blkio.throttle.io_service_bytes");
    let text = fs::read_to_string(&v1).with_context(|| format!("reading {}", v1.display()))?;
    let value = |op: &str| {
        text.lines()
            .find_map(|l| {
                let mut parts = l.split_whitespace();
                (parts.next() == Some(maj_min) && parts.next() == Some(op))
                    .then(|| parts.next()?.parse().ok())
                    .flatten()
            })
            .unwrap_or(0)
    };
    Ok((value("Read"), value("Write")))
}

/// The directory of cgroup `path` (below the root) that holds I/O limits and statistics: the
/// blkio hierarchy on cgroup v1, the one v2 hierarchy otherwise.
pub fn io_cgroup_root() -> PathBuf {
    let v1 = Path::new("/sys/fs/cgroup/blkio");
    if v1.exists() {
        v1.to_owned()
    } else {
        PathBuf::from("/sys/fs/cgroup")
    }
}
