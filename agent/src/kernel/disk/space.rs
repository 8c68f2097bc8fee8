//! Free space of a filesystem and the fallocate'd files that take it: what `statvfs` says, what
//! the filesystem under a path is, whether it allocates without writing (fallocate) and reads
//! and writes past the page cache (O_DIRECT), and the loop that lands a filesystem's free space
//! on a target.
//!
//! "Free" is what `df` calls available (`f_bavail`): the space unprivileged writers can still
//! use. The agent runs as root and could also take the blocks the filesystem reserves for root,
//! but a fault that is measured by `df` must be computed in `df`'s terms.

use std::{
    fs::{self, File, OpenOptions},
    io,
    os::{fd::AsRawFd, unix::fs::OpenOptionsExt as _},
    path::{Path, PathBuf},
};

use nix::{errno::Errno, fcntl::FallocateFlags};

use super::DiskError;

/// A filesystem's size and free space, in bytes, as `df` shows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Space {
    /// Used plus available: what `df` divides by for `Use%` (the root reserve left out).
    pub(crate) size: u64,
    /// Available to writers (`f_bavail`).
    pub(crate) free: u64,
    /// The allocation unit (`f_frsize`).
    pub(crate) block: u64,
}

impl Space {
    /// The figures of the filesystem holding `path`.
    pub(crate) fn of(path: &Path) -> Result<Self, DiskError> {
        let st = nix::sys::statvfs::statvfs(path).map_err(|e| DiskError::Io {
            action: "statvfs",
            path: path.to_owned(),
            source: e.into(),
        })?;
        let block = st.fragment_size().max(1) as u64;
        let used = (st.blocks() as u64).saturating_sub(st.blocks_free() as u64) * block;
        let free = st.blocks_available() as u64 * block;
        Ok(Self {
            size: used + free,
            free,
            block,
        })
    }

    /// The free space at which the filesystem is `percent` full, as `df`'s `Use%` counts.
    pub(crate) fn free_at_usage(&self, percent: f64) -> u64 {
        (self.size as f64 * (1.0 - percent / 100.0)).round() as u64
    }

    /// The default floor: 1 GiB or 5 % of the filesystem, whichever is larger.
    pub(crate) fn default_floor(&self) -> u64 {
        (self.size / 20).max(1 << 30)
    }
}

/// The filesystem under `path`: its device number and type name (`ext4`), for messages and
/// for telling whether two paths share a filesystem.
pub(crate) fn filesystem(path: &Path) -> Result<(u64, String), DiskError> {
    use std::os::unix::fs::MetadataExt as _;
    Ok((super::stat(path)?.dev(), fs_type(path)))
}

/// The type of the filesystem mounted under `path`, from /proc/self/mountinfo (the longest
/// mount point that contains it); `unknown` if it cannot be told.
pub(crate) fn fs_type(path: &Path) -> String {
    let Ok(path) = fs::canonicalize(path) else {
        return "unknown".to_owned();
    };
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    mountinfo
        .lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mount_point = unescape(left.split(' ').nth(4)?);
            let fs_type = right.split(' ').next()?;
            path.starts_with(&mount_point)
                .then(|| (mount_point.as_os_str().len(), fs_type.to_owned()))
        })
        // The last of equally long mount points is the one on top.
        .fold(None, |best: Option<(usize, String)>, (len, t)| match best {
            Some((best_len, _)) if best_len > len => best,
            _ => Some((len, t)),
        })
        .map(|(_, t)| t)
        .unwrap_or_else(|| "unknown".to_owned())
}

/// mountinfo escapes spaces, tabs, newlines and backslashes as `\ooo`.
fn unescape(field: &str) -> PathBuf {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            let digits = std::str::from_utf8(&bytes[i + 1..i + 4]).unwrap_or("");
            if let Ok(value) = u8::from_str_radix(digits, 8) {
                out.push(value);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    use std::os::unix::ffi::OsStringExt as _;
    PathBuf::from(std::ffi::OsString::from_vec(out))
}

/// Whether the filesystem under directory `dir` allocates space without writing it
/// (fallocate), tried on an unnamed file (`O_TMPFILE`) that vanishes when it is closed, even
/// if the agent dies. `None` when that cannot be told without creating a named file (the
/// filesystem has no `O_TMPFILE`); the fill then finds out on its first file.
pub(crate) fn supports_fallocate(dir: &Path, block: u64) -> Option<bool> {
    let file = tmpfile(dir, 0).ok()?;
    match nix::fcntl::fallocate(file.as_raw_fd(), FallocateFlags::empty(), 0, block as i64) {
        Ok(()) => Some(true),
        Err(Errno::EOPNOTSUPP) => Some(false),
        // Out of space, say: fallocate itself is there.
        Err(_) => Some(true),
    }
}

/// Whether the filesystem under `dir` accepts `O_DIRECT`, tried on an unnamed file; `None`
/// when that cannot be told (no `O_TMPFILE`).
pub(crate) fn supports_direct_io(dir: &Path) -> Option<bool> {
    match tmpfile(dir, libc::O_DIRECT) {
        Ok(_) => Some(true),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Some(false),
        Err(_) => None,
    }
}

fn tmpfile(dir: &Path, flags: i32) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_TMPFILE | flags)
        .open(dir)
}

/// Allocates `len` more bytes at the end of `file` (whose length is `at`) without writing them.
pub(crate) fn allocate(file: &File, path: &Path, at: u64, len: u64) -> Result<(), DiskError> {
    nix::fcntl::fallocate(
        file.as_raw_fd(),
        FallocateFlags::empty(),
        at as i64,
        len as i64,
    )
    .map_err(|e| match e {
        Errno::EOPNOTSUPP => DiskError::NoFallocate {
            path: path.to_owned(),
            fs_type: fs_type(path),
        },
        e => DiskError::Io {
            action: "fallocate",
            path: path.to_owned(),
            source: e.into(),
        },
    })
}

/// The largest file a fill makes: a filesystem's own limits (ext4: 16 TiB, FAT: 4 GiB) are
/// far above it, and a fill of many files ends close to its target with one short file.
pub(crate) const FILL_FILE: u64 = 1 << 30;

/// Allocates files `fill-0000`, `fill-0001`, ... in `dir` until the free space of its filesystem
/// is `target` bytes (within a block or two: the filesystem's own bookkeeping for the files,
/// extent blocks and inodes, is measured and made up for). `target` is at least `floor`; a
/// filesystem already below `floor` is refused, and a step that ends below the target (the
/// bookkeeping, or another writer) is given back from the fill's own files. Returns the bytes
/// allocated.
pub(crate) fn fill_to(dir: &Path, target: u64, floor: u64) -> Result<u64, DiskError> {
    let mut files: Vec<(PathBuf, File, u64)> = Vec::new();
    let mut allocated = 0u64;
    let start = Space::of(dir)?;
    if start.free < floor {
        return Err(DiskError::BelowFloor {
            free: start.free,
            floor,
        });
    }
    // Each round measures, then allocates (or gives back) the difference; the filesystem's
    // bookkeeping makes the first rounds land a few blocks off, the later ones correct it. A
    // round allocates at most one file's worth, so a large fill needs one round per file.
    let rounds = 16 + start.free.saturating_sub(target) / FILL_FILE;
    for _ in 0..rounds {
        // Below the floor (the last step's bookkeeping, or another writer) falls below the
        // target too, and the step gives back.
        let space = Space::of(dir)?;
        if space.free > target {
            let missing = (space.free - target) / space.block * space.block;
            if missing == 0 {
                break;
            }
            if files.last().is_none_or(|(_, _, len)| *len >= FILL_FILE) {
                let path = dir.join(format!("fill-{:04}", files.len()));
                let file = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&path)
                    .map_err(|source| DiskError::Io {
                        action: "create",
                        path: path.clone(),
                        source,
                    })?;
                files.push((path, file, 0));
            }
            let (path, file, len) = files.last_mut().expect("one is open");
            let step = missing.min(FILL_FILE - *len);
            allocate(file, path, *len, step)?;
            *len += step;
            allocated += step;
        } else {
            let excess = (target - space.free).div_ceil(space.block) * space.block;
            if excess == 0 {
                break;
            }
            // Too far: give back from the last file.
            let Some((path, file, len)) = files.last_mut() else {
                break;
            };
            let give = excess.min(*len);
            *len -= give;
            allocated -= give;
            file.set_len(*len).map_err(|source| DiskError::Io {
                action: "truncate",
                path: path.clone(),
                source,
            })?;
            if give < excess {
                break;
            }
        }
    }
    for (path, file, _) in &files {
        file.sync_all().map_err(|source| DiskError::Io {
            action: "fsync",
            path: path.clone(),
            source,
        })?;
    }
    Ok(allocated)
}

/// The alignment direct I/O needs of buffers, offsets and lengths: 4 KiB covers every logical
/// block size in use (512 B and 4 KiB).
pub(crate) const DIRECT_ALIGN: usize = 4096;

/// A buffer aligned for direct I/O, made from a plain `Vec` (no unsafe allocation): the
/// aligned window inside a slightly larger one.
pub(crate) struct AlignedBuf {
    raw: Vec<u8>,
    offset: usize,
    len: usize,
}

impl AlignedBuf {
    /// `len` bytes of a non-zero pattern (a device or filesystem that elides zeros must still
    /// see real data).
    pub(crate) fn new(len: usize) -> Self {
        let raw = vec![0x5a; len + DIRECT_ALIGN];
        let offset = raw.as_ptr().align_offset(DIRECT_ALIGN);
        Self { raw, offset, len }
    }

    pub(crate) fn as_slice(&self) -> &[u8] {
        &self.raw[self.offset..self.offset + self.len]
    }

    pub(crate) fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.raw[self.offset..self.offset + self.len]
    }
}

/// Opens `path` for reading and writing, with `O_DIRECT` when `direct`.
pub(crate) fn open_data(path: &Path, direct: bool, create: bool) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(create)
        .custom_flags(if direct { libc::O_DIRECT } else { 0 })
        .open(path)
}

/// Writes `path` full of data, `size` bytes (a whole number of 1 MiB chunks, at least one), so
/// that reads of it reach the device (a fallocate'd range reads as zeros without I/O).
pub(crate) fn write_data(path: &Path, size: u64, direct: bool) -> Result<(), DiskError> {
    use std::os::unix::fs::FileExt as _;
    const CHUNK: u64 = 1 << 20;
    let err = |action| {
        let path = path.to_owned();
        move |source| DiskError::Io {
            action,
            path,
            source,
        }
    };
    let file = open_data(path, direct, true).map_err(err("create"))?;
    let buf = AlignedBuf::new(CHUNK as usize);
    let mut at = 0;
    while at < size.max(CHUNK) {
        file.write_all_at(buf.as_slice(), at)
            .map_err(err("write"))?;
        at += CHUNK;
    }
    file.sync_all().map_err(err("fsync"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_and_floor_follow_df() {
        let space = Space {
            size: 100 << 30,
            free: 40 << 30,
            block: 4096,
        };
        assert_eq!(space.free_at_usage(95.0), 5 << 30);
        assert_eq!(space.default_floor(), 5 << 30);
        let small = Space {
            size: 256 << 20,
            free: 200 << 20,
            block: 4096,
        };
        assert_eq!(small.default_floor(), 1 << 30);
    }

    #[test]
    fn mount_points_unescape() {
        assert_eq!(unescape(r"/mnt/a\040b"), PathBuf::from("/mnt/a b"));
        assert_eq!(unescape("/plain"), PathBuf::from("/plain"));
    }

    #[test]
    fn this_hosts_root_is_described() {
        let space = Space::of(Path::new("/")).unwrap();
        assert!(space.size >= space.free && space.block > 0);
        assert_ne!(fs_type(Path::new("/")), "unknown");
    }
}
