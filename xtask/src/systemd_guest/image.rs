//! The systemd guest's image: a Debian 12 root filesystem with systemd as PID 1 and Debian's
//! stock cloud kernel, made by mmdebstrap from Debian's packages and turned into an ext4 disk
//! image with `mkfs.ext4 -d` (nothing is mounted on the host). This module owns the recipe
//! (the mmdebstrap arguments and the files written into the tree), the key it is cached under
//! and the cache directory `/var/cache/faultline/systemd-guest/<key>/`: outside the work tree,
//! so a fresh clone (CI's) reuses it, and rebuilt only when the recipe changes. A cached image
//! is never written to: each run boots a sparse copy of it.

use std::{
    fs,
    os::unix::fs::{symlink, PermissionsExt as _},
    path::{Path, PathBuf},
    time::Instant,
};

use anyhow::{ensure, Context as _, Result};

use crate::{exec, test::seconds};

/// Where the images live; `/var/cache` because the image is a rebuildable cache of the
/// recipe, kept across clones of the tree.
pub const CACHE_DIR: &str = "/var/cache/faultline/systemd-guest";

use crate::clean_room::base::{SOURCES, SUITE};

/// On top of `minbase`: systemd as init (systemd-sysv) with udev and dbus, as a Debian server
/// has them; the stock cloud kernel (what Debian runs on virtual machines) with initramfs-tools,
/// whose initrd loads virtio_blk for the root disk; what the package depends on (libmnl0,
/// libnftnl11, so `dpkg -i` needs no network); and what the lab script measures with: iproute2
/// for its namespace and veth pair, ping for loss and delay, netcat for the block and the rate
/// cap, nftables and procps to look at what the agent left; jq for the JSON the CLI and the
/// audit log write (the fleet lab's checks). No Python: the scripts are shell.
const PACKAGES: &[&str] = &[
    "systemd",
    "systemd-sysv",
    "udev",
    "dbus",
    "linux-image-cloud-amd64",
    "initramfs-tools",
    "kmod",
    "iproute2",
    "nftables",
    "procps",
    "iputils-ping",
    "netcat-openbsd",
    "jq",
    "libmnl0",
    "libnftnl11",
];

/// The root filesystem's size; sparse, about 430 MiB of it are written.
const DISK_SIZE: &str = "2G";

/// Bumped when what is done with mmdebstrap's output changes beyond the files below.
const FORMAT: &str = "systemd-guest-1";

/// The unit that runs the lab: it mounts the second disk (read-only) and runs its script with
/// the console as its output. Ordered after multi-user.target, so it starts once the system
/// is up; `Type=simple` because the script may run for many minutes.
const LAB_UNIT: &str = "\
[Unit]
Description=faultline lab: the checks on the second disk
After=multi-user.target

[Service]
Type=simple
StandardOutput=tty
StandardError=tty
TTYPath=/dev/ttyS0
ExecStart=/bin/sh -c 'mkdir -p /mnt/lab && mount -o ro /dev/vdb /mnt/lab || { echo \"FAULTLINE-SYSTEMD-RESULT: fail the lab disk /dev/vdb could not be mounted\"; systemctl poweroff --no-block; exit 1; }; exec /bin/bash /mnt/lab/run.sh'

[Install]
WantedBy=multi-user.target
";

/// Files written into the tree after mmdebstrap: (path, content, mode).
const FILES: &[(&str, &str, u32)] = &[
    (
        "etc/fstab",
        "/dev/vda / ext4 rw,errors=remount-ro 0 1\n",
        0o644,
    ),
    ("etc/hostname", "fls-guest\n", 0o644),
    (
        "etc/hosts",
        "127.0.0.1 localhost\n127.0.1.1 fls-guest\n",
        0o644,
    ),
    ("etc/systemd/system/faultline-lab.service", LAB_UNIT, 0o644),
];

/// Symlinks written into the tree: (path, target). The gettys are masked so that no login
/// prompt interleaves with the lab's output on the console.
const LINKS: &[(&str, &str)] = &[
    (
        "etc/systemd/system/multi-user.target.wants/faultline-lab.service",
        "/etc/systemd/system/faultline-lab.service",
    ),
    ("etc/systemd/system/serial-getty@ttyS0.service", "/dev/null"),
    ("etc/systemd/system/getty@tty1.service", "/dev/null"),
];

/// How the image is made: everything that determines its content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipe {
    options: Vec<String>,
    sources: Vec<String>,
}

impl Recipe {
    pub fn standard() -> Self {
        Self {
            options: vec![
                "--mode=root".to_owned(),
                "--variant=minbase".to_owned(),
                format!("--include={}", PACKAGES.join(",")),
                "--format=directory".to_owned(),
                SUITE.to_owned(),
            ],
            sources: SOURCES.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    /// The cache key: FNV-1a (64 bits) over the format tag, every argument and every file and
    /// link written into the tree, each part ended by a NUL. A cache key, not a security
    /// boundary: the image is made here, from Debian's signed archive.
    pub fn key(&self) -> String {
        let files = FILES
            .iter()
            .flat_map(|(path, text, _)| [*path, *text])
            .chain(LINKS.iter().flat_map(|(path, to)| [*path, *to]));
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for part in std::iter::once(FORMAT)
            .chain(std::iter::once(DISK_SIZE))
            .chain(self.options.iter().map(String::as_str))
            .chain(self.sources.iter().map(String::as_str))
            .chain(files)
        {
            for byte in part.bytes().chain(std::iter::once(0)) {
                hash ^= u64::from(byte);
                hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
            }
        }
        format!("{hash:016x}")
    }
}

/// A built image: the root disk and the kernel and initrd to boot it with.
#[derive(Debug, Clone)]
pub struct Image {
    pub disk: PathBuf,
    pub vmlinuz: PathBuf,
    pub initrd: PathBuf,
}

impl Image {
    fn at(dir: &Path) -> Self {
        Self {
            disk: dir.join("root.img"),
            vmlinuz: dir.join("vmlinuz"),
            initrd: dir.join("initrd.img"),
        }
    }

    fn complete(&self) -> bool {
        [&self.disk, &self.vmlinuz, &self.initrd]
            .iter()
            .all(|p| p.is_file())
    }
}

/// The image for `recipe` under [`CACHE_DIR`], made now if there is none; images of other
/// recipes are removed (they can never be used again and each holds a 2 GiB sparse disk).
pub fn ensure(recipe: &Recipe) -> Result<Image> {
    let cache = Path::new(CACHE_DIR);
    fs::create_dir_all(cache).with_context(|| format!("creating {}", cache.display()))?;
    let key = recipe.key();
    let dir = cache.join(&key);
    for entry in fs::read_dir(cache).with_context(|| format!("reading {}", cache.display()))? {
        let path = entry?.path();
        if path != dir {
            println!("image: removing {} (another recipe)", path.display());
            fs::remove_dir_all(&path).with_context(|| format!("removing {}", path.display()))?;
        }
    }
    let image = Image::at(&dir);
    if image.complete() {
        println!("image: reusing {} (recipe {key})", dir.display());
        return Ok(image);
    }
    let started = Instant::now();
    // Built beside and renamed, so an interrupted build is never mistaken for a cached one.
    let partial = cache.join(format!("{key}.partial"));
    let _ = fs::remove_dir_all(&partial);
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&partial).with_context(|| format!("creating {}", partial.display()))?;
    let tree = partial.join("tree");
    println!("image: building recipe {key} with mmdebstrap (Debian's packages)");
    exec::run(
        exec::command("mmdebstrap", &recipe.options)
            .arg(&tree)
            .args(&recipe.sources),
    )?;
    customize(&tree)?;
    let built = Image::at(&partial);
    let boot = tree.join("boot");
    let release = kernel_release(&boot)?;
    fs::copy(boot.join(format!("vmlinuz-{release}")), &built.vmlinuz)
        .context("copying the kernel out of the tree")?;
    fs::copy(boot.join(format!("initrd.img-{release}")), &built.initrd)
        .context("copying the initrd out of the tree (did initramfs-tools run?)")?;
    exec::run(
        exec::command("mkfs.ext4", ["-q", "-F", "-L", "fls-root", "-d"])
            .arg(&tree)
            .arg(&built.disk)
            .arg(DISK_SIZE),
    )?;
    fs::remove_dir_all(&tree).with_context(|| format!("removing {}", tree.display()))?;
    fs::rename(&partial, &dir)
        .with_context(|| format!("renaming {} to {}", partial.display(), dir.display()))?;
    println!(
        "image: {} built in {} (kernel {release})",
        dir.display(),
        seconds(started.elapsed())
    );
    Ok(image)
}

fn customize(tree: &Path) -> Result<()> {
    for (path, text, mode) in FILES {
        let file = tree.join(path);
        if let Some(parent) = file.parent() {
            fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        fs::write(&file, text).with_context(|| format!("writing {}", file.display()))?;
        fs::set_permissions(&file, fs::Permissions::from_mode(*mode))
            .with_context(|| format!("chmod {}", file.display()))?;
    }
    for (path, to) in LINKS {
        let link = tree.join(path);
        if let Some(parent) = link.parent() {
            fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        let _ = fs::remove_file(&link);
        symlink(to, &link).with_context(|| format!("linking {}", link.display()))?;
    }
    // The enablement symlink the distribution made for tty1's getty is dropped with the mask.
    let _ = fs::remove_file(tree.join("etc/systemd/system/getty.target.wants/getty@tty1.service"));
    Ok(())
}

/// The one kernel release the tree's /boot holds.
fn kernel_release(boot: &Path) -> Result<String> {
    let releases: Vec<String> = fs::read_dir(boot)
        .with_context(|| format!("reading {}", boot.display()))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter_map(|n| n.strip_prefix("vmlinuz-").map(str::to_owned))
        .collect();
    ensure!(
        releases.len() == 1,
        "expected one kernel in {}, found {releases:?}",
        boot.display()
    );
    Ok(releases[0].clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_follows_the_recipe() {
        let a = Recipe::standard();
        let mut b = a.clone();
        assert_eq!(a.key(), b.key());
        b.options.push("--include=strace".to_owned());
        assert_ne!(a.key(), b.key());
        assert_eq!(a.key().len(), 16);
    }
}
