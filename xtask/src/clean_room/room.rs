//! One clean room: a fresh copy of the base image under `<target>/clean-room/rooms/<pid>/`, the
//! mounts it needs, the source tree copied in, commands run in it with `chroot`, and its
//! removal. This module owns everything under `rooms/` and every mount it makes.
//!
//! Its one rule: never delete through a mount. Mounts are made in a mount namespace of xtask's
//! own (entered by [`enter_private_mount_namespace`]), so the host's mount table never holds
//! them and they vanish when xtask exits, even killed; before the tree is removed, every
//! process chrooted into it is killed, every mount is unmounted, and `/proc/self/mountinfo` is
//! read to make sure nothing is mounted under the root any more. If anything still is, the tree
//! is left where it is and the error says so.

use std::{
    env, fs,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use crate::exec;

/// The room's `HOME`: root's, where rustup and cargo look by default.
pub const HOME: &str = "/root";
/// Where the source tree is copied, inside the room.
pub const SOURCE: &str = "/root/faultline";
/// The `PATH` of a root login on a new machine, after rustup's `~/.cargo/env`.
const PATH: &str = "/root/.cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What is mounted at a target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountKind {
    /// A new procfs (the kernel's, for the room's processes).
    Proc,
    /// The host's tree with everything mounted under it (`/sys` with cgroupfs, `/dev` with
    /// `/dev/pts`), made private so an unmount here never reaches the host.
    Rbind,
    /// A fresh, empty BPF filesystem: a new machine's own, and it hides any bpffs the host has
    /// mounted under /sys, so the room's agent cannot see or sweep the host agent's pins.
    Bpffs,
    /// One directory of the host's.
    Bind { read_only: bool },
}

/// One mount: `source` (on the host) at `target` (an absolute path inside the room).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub source: PathBuf,
    pub target: &'static str,
    pub kind: MountKind,
}

/// What the room gets from the host.
pub struct HostShare {
    /// `~/.rustup`: the machine's toolchains, read-only (see `mod.rs` for why that suffices).
    pub rustup_home: PathBuf,
    /// The room's crates download cache, kept between runs.
    pub registry_cache: PathBuf,
}

/// The mounts, in the order they are made; a target under another target comes after it, and
/// they are unmounted in the reverse order.
pub fn mount_plan(share: &HostShare) -> Vec<Mount> {
    vec![
        Mount {
            source: "proc".into(),
            target: "/proc",
            kind: MountKind::Proc,
        },
        Mount {
            source: "/sys".into(),
            target: "/sys",
            kind: MountKind::Rbind,
        },
        Mount {
            source: "bpf".into(),
            target: "/sys/fs/bpf",
            kind: MountKind::Bpffs,
        },
        Mount {
            source: "/dev".into(),
            target: "/dev",
            kind: MountKind::Rbind,
        },
        Mount {
            source: share.rustup_home.clone(),
            target: "/root/.rustup",
            kind: MountKind::Bind { read_only: true },
        },
        Mount {
            source: share.registry_cache.clone(),
            target: "/root/.cargo/registry",
            kind: MountKind::Bind { read_only: false },
        },
    ]
}

/// The `mount` invocations that make `mount` under `root` (an rbind takes two: the bind, then
/// making the copies private).
pub fn mount_commands(root: &Path, mount: &Mount) -> Vec<Vec<String>> {
    let target = inside(root, mount.target).display().to_string();
    let source = mount.source.display().to_string();
    let args = |a: &[&str]| a.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    match mount.kind {
        MountKind::Proc => vec![args(&["-t", "proc", "proc", &target])],
        MountKind::Bpffs => vec![args(&["-t", "bpf", "bpf", &target])],
        MountKind::Rbind => vec![
            args(&["--rbind", &source, &target]),
            args(&["--make-rprivate", &target]),
        ],
        MountKind::Bind { read_only: true } => {
            vec![args(&["--bind", "-o", "ro", &source, &target])]
        }
        MountKind::Bind { read_only: false } => vec![args(&["--bind", &source, &target])],
    }
}

/// `path` (absolute, as the room sees it) as the host sees it.
pub fn inside(root: &Path, path: &str) -> PathBuf {
    root.join(path.trim_start_matches('/'))
}

/// Gives xtask a mount namespace of its own with every mount private, so nothing it mounts
/// propagates to the host and all of it goes when xtask (and the room's processes) exit.
pub fn enter_private_mount_namespace() -> Result<()> {
    // SAFETY: unshare and mount with these arguments only change this process's view of the
    // mount table; the C strings are valid and NUL-terminated for the duration of the call.
    unsafe {
        if libc::unshare(libc::CLONE_NEWNS) != 0 {
            return Err(std::io::Error::last_os_error())
                .context("unshare(CLONE_NEWNS): a private mount namespace for the clean room");
        }
        if libc::mount(
            c"none".as_ptr(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        ) != 0
        {
            return Err(std::io::Error::last_os_error())
                .context("making every mount private in the clean room's namespace");
        }
    }
    Ok(())
}

/// The mount points in a `/proc/<pid>/mountinfo` text that are `root` or under it. Field 5 is
/// the mount point, with space, tab, newline and backslash written as octal escapes.
pub fn mounts_under(mountinfo: &str, root: &Path) -> Vec<PathBuf> {
    mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|field| PathBuf::from(unescape_octal(field)))
        .filter(|point| point.starts_with(root))
        .collect()
}

fn unescape_octal(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escape = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match escape {
            Some(digits) => {
                let value = digits.iter().fold(0u32, |v, d| v * 8 + u32::from(d - b'0'));
                out.push(value as u8);
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `chroot ROOT /usr/bin/env -i -C DIR <a root login's environment> PROGRAM ARGS...`: a command
/// run in the room as root, in `dir`, with nothing of xtask's environment.
pub fn command_in(root: &Path, dir: &str, program: &str, args: &[&str]) -> Command {
    let mut command = exec::command("chroot", [root.as_os_str()]);
    command.args(["/usr/bin/env", "-i", "-C", dir]);
    command.arg(format!("HOME={HOME}"));
    command.args(["USER=root", "LOGNAME=root", "LANG=C.UTF-8"]);
    command.arg(format!("PATH={PATH}"));
    command.arg(format!(
        "TERM={}",
        env::var("TERM").unwrap_or_else(|_| "dumb".to_owned())
    ));
    command.arg(program).args(args);
    command
}

/// A room on disk, removed (mounts first) when dropped.
pub struct Room {
    root: PathBuf,
    /// Targets mounted so far, in order.
    mounted: Vec<&'static str>,
    removed: bool,
}

impl Room {
    /// Extracts `tarball` into `rooms/<pid>`.
    pub fn extract(rooms: &Path, tarball: &Path) -> Result<Room> {
        fs::create_dir_all(rooms).with_context(|| format!("creating {}", rooms.display()))?;
        let root = rooms.join(std::process::id().to_string());
        // Created before the guard exists, so a directory that is not ours is never removed.
        fs::create_dir(&root).with_context(|| format!("creating {}", root.display()))?;
        let room = Room {
            root,
            mounted: Vec::new(),
            removed: false,
        };
        exec::run(
            exec::command("tar", ["-x", "--numeric-owner", "-p", "-f"])
                .arg(tarball)
                .arg("-C")
                .arg(&room.root),
        )?;
        Ok(room)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `path` inside the room, as the host sees it.
    pub fn path(&self, path: &str) -> PathBuf {
        inside(&self.root, path)
    }

    /// Makes the mounts of `plan`, in order, creating their targets.
    pub fn mount(&mut self, plan: &[Mount]) -> Result<()> {
        for mount in plan {
            let target = self.path(mount.target);
            fs::create_dir_all(&target)
                .with_context(|| format!("creating {}", target.display()))?;
            for args in mount_commands(&self.root, mount) {
                exec::run(&mut exec::command("mount", &args))
                    .with_context(|| format!("mounting {}", mount.target))?;
            }
            self.mounted.push(mount.target);
        }
        Ok(())
    }

    /// Kills what still runs in the room, unmounts everything, checks nothing is mounted under
    /// the root, then removes the tree. Idempotent.
    pub fn remove(&mut self) -> Result<()> {
        if self.removed {
            return Ok(());
        }
        println!("clean-room: removing {}", self.root.display());
        let killed = kill_processes_in(&self.root);
        if killed > 0 {
            println!("clean-room: killed {killed} process(es) still running in the room");
        }
        let mut errors = Vec::new();
        while let Some(target) = self.mounted.pop() {
            let path = self.path(target);
            let unmount = || exec::command("umount", ["-R"]).arg(&path).output();
            match unmount() {
                Ok(out) if out.status.success() => {}
                _ => {
                    // Busy (a process we could not kill holds it): detach it lazily; what is
                    // detached is no longer reachable through the tree.
                    let lazy = exec::command("umount", ["-R", "-l"]).arg(&path).output();
                    if !lazy.as_ref().is_ok_and(|o| o.status.success()) {
                        errors.push(format!("cannot unmount {}", path.display()));
                    }
                }
            }
        }
        let still = mounted_under(&self.root)?;
        if !still.is_empty() || !errors.is_empty() {
            bail!(
                "refusing to remove {}: still mounted under it: {}{}",
                self.root.display(),
                still
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                if errors.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", errors.join("; "))
                }
            );
        }
        fs::remove_dir_all(&self.root)
            .with_context(|| format!("removing {}", self.root.display()))?;
        self.removed = true;
        Ok(())
    }
}

impl Drop for Room {
    fn drop(&mut self) {
        if let Err(e) = self.remove() {
            eprintln!("clean-room: {e:#}");
        }
    }
}

/// Mount points at or under `root` in this process's mount namespace.
pub fn mounted_under(root: &Path) -> Result<Vec<PathBuf>> {
    let mountinfo =
        fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    Ok(mounts_under(&mountinfo, root))
}

/// SIGKILLs every process whose root directory is `root` or under it, and waits (up to 10 s)
/// for them to be gone. Returns how many there were.
fn kill_processes_in(root: &Path) -> usize {
    let in_room = || -> Vec<i32> {
        let Ok(entries) = fs::read_dir("/proc") else {
            return Vec::new();
        };
        entries
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
            .filter(|pid| {
                fs::read_link(format!("/proc/{pid}/root")).is_ok_and(|r| r.starts_with(root))
            })
            .collect()
    };
    let pids = in_room();
    for pid in &pids {
        // SAFETY: kill(2) with a pid read from /proc; at worst the process is already gone.
        unsafe { libc::kill(*pid, libc::SIGKILL) };
    }
    let until = Instant::now() + Duration::from_secs(10);
    while !in_room().is_empty() && Instant::now() < until {
        thread::sleep(Duration::from_millis(100));
    }
    pids.len()
}

/// Removes rooms that killed runs left: `rooms/<pid>` whose xtask is gone. Their mounts lived in
/// that xtask's namespace and went with it; the checks of [`Room::remove`] still run.
pub fn remove_stale(rooms: &Path) -> Result<()> {
    let Ok(entries) = fs::read_dir(rooms) else {
        return Ok(());
    };
    for entry in entries {
        let path = entry?.path();
        let Some(pid) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        // A room named after our own pid is stale too: we have not made ours yet.
        if pid != std::process::id() && Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        println!(
            "clean-room: removing {} (left by a run that was killed)",
            path.display()
        );
        let mut stale = Room {
            root: path,
            mounted: Vec::new(),
            removed: false,
        };
        stale.remove()?;
    }
    Ok(())
}

/// What [`copy_tracked_files`] copied.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Copied {
    pub files: usize,
    pub bytes: u64,
    /// Tracked but deleted in the working tree: not copied, as a checkout of the tree would not
    /// have them either once committed.
    pub deleted: Vec<PathBuf>,
}

/// The files `git ls-files` lists in `workspace` (tracked, as they are in the working tree,
/// uncommitted changes included; untracked files are not part of what CI would build).
pub fn tracked_files(workspace: &Path) -> Result<Vec<PathBuf>> {
    let listing = exec::capture(exec::command("git", ["ls-files", "-z"]).current_dir(workspace))?;
    Ok(listing
        .split('\0')
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .collect())
}

/// Copies `files` (relative to `from`) to `to`, keeping modes and symlinks.
pub fn copy_tracked_files(from: &Path, to: &Path, files: &[PathBuf]) -> Result<Copied> {
    let mut copied = Copied::default();
    for file in files {
        let source = from.join(file);
        let target = to.join(file);
        let Ok(meta) = fs::symlink_metadata(&source) else {
            copied.deleted.push(file.clone());
            continue;
        };
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        if meta.file_type().is_symlink() {
            let link = fs::read_link(&source)?;
            symlink(&link, &target).with_context(|| format!("linking {}", target.display()))?;
        } else if meta.is_dir() {
            // A submodule or a nested repository: git lists it as one entry.
            bail!(
                "{} is a directory in git's listing (a submodule?); the clean room copies files only",
                file.display()
            );
        } else {
            copied.bytes += fs::copy(&source, &target)
                .with_context(|| format!("copying {} to {}", source.display(), target.display()))?;
        }
        copied.files += 1;
    }
    Ok(copied)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn share() -> HostShare {
        HostShare {
            rustup_home: "/root/.rustup".into(),
            registry_cache: "/w/target/clean-room/cargo-registry".into(),
        }
    }

    #[test]
    fn a_mount_inside_another_comes_after_it() {
        let plan = mount_plan(&share());
        for (i, mount) in plan.iter().enumerate() {
            for later in &plan[i + 1..] {
                assert!(
                    !Path::new(mount.target).starts_with(later.target),
                    "{} is mounted before {}, which would hide it",
                    mount.target,
                    later.target
                );
            }
        }
        let kind = |target: &str| plan.iter().find(|m| m.target == target).map(|m| &m.kind);
        assert_eq!(
            kind("/root/.rustup"),
            Some(&MountKind::Bind { read_only: true })
        );
        assert_eq!(
            kind("/root/.cargo/registry"),
            Some(&MountKind::Bind { read_only: false })
        );
        assert_eq!(kind("/sys/fs/bpf"), Some(&MountKind::Bpffs));
    }

    #[test]
    fn mount_commands_target_the_room_and_keep_rbinds_private() {
        let root = Path::new("/w/rooms/7");
        let plan = mount_plan(&share());
        let sys = mount_commands(root, &plan[1]);
        assert_eq!(
            sys,
            [
                vec!["--rbind", "/sys", "/w/rooms/7/sys"],
                vec!["--make-rprivate", "/w/rooms/7/sys"]
            ]
        );
        let rustup = plan.iter().find(|m| m.target == "/root/.rustup").unwrap();
        assert_eq!(
            mount_commands(root, rustup),
            [vec![
                "--bind",
                "-o",
                "ro",
                "/root/.rustup",
                "/w/rooms/7/root/.rustup"
            ]]
        );
        assert_eq!(
            mount_commands(root, &plan[0]),
            [vec!["-t", "proc", "proc", "/w/rooms/7/proc"]]
        );
    }

    #[test]
    fn mountinfo_is_read_with_its_escapes_and_only_under_the_root() {
        let mountinfo = "\
22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
40 22 0:5 / /w/rooms/7/proc rw - proc proc rw
41 22 0:20 / /w/rooms/7/sys rw - sysfs sysfs rw
42 41 0:30 / /w/rooms/7/sys/fs/cgroup rw - tmpfs tmpfs rw
43 22 254:0 /root/.rustup /w/rooms/7/root/my\\040dir ro - ext4 /dev/vda rw
44 22 0:5 / /w/rooms/70/proc rw - proc proc rw
";
        assert_eq!(
            mounts_under(mountinfo, Path::new("/w/rooms/7")),
            [
                "/w/rooms/7/proc",
                "/w/rooms/7/sys",
                "/w/rooms/7/sys/fs/cgroup",
                "/w/rooms/7/root/my dir"
            ]
            .map(PathBuf::from)
        );
        assert!(mounts_under(mountinfo, Path::new("/w/rooms/8")).is_empty());
    }

    #[test]
    fn commands_in_the_room_start_from_an_empty_environment() {
        let command = command_in(
            Path::new("/w/rooms/7"),
            SOURCE,
            "cargo",
            &["xtask", "prereqs"],
        );
        let args: Vec<String> = command
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            args[..5],
            ["/w/rooms/7", "/usr/bin/env", "-i", "-C", SOURCE]
        );
        assert!(args.contains(&"HOME=/root".to_owned()));
        assert!(args.iter().any(|a| a.starts_with("PATH=/root/.cargo/bin:")));
        assert_eq!(args[args.len() - 3..], ["cargo", "xtask", "prereqs"]);
        assert!(command.get_program().to_string_lossy().ends_with("chroot"));
    }

    #[test]
    fn tracked_files_are_copied_with_modes_and_links_and_deletions_are_reported() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = env::temp_dir().join(format!("xtask-clean-room-copy-{}", std::process::id()));
        let (from, to) = (dir.join("from"), dir.join("to"));
        fs::create_dir_all(from.join("bin")).unwrap();
        fs::write(from.join("bin/run"), "#!/bin/sh\n").unwrap();
        fs::set_permissions(from.join("bin/run"), fs::Permissions::from_mode(0o755)).unwrap();
        symlink("bin/run", from.join("link")).unwrap();
        let files = ["bin/run", "link", "gone.rs"].map(PathBuf::from);
        let copied = copy_tracked_files(&from, &to, &files).unwrap();
        assert_eq!(copied.files, 2);
        assert_eq!(copied.bytes, 10);
        assert_eq!(copied.deleted, [PathBuf::from("gone.rs")]);
        let mode = fs::metadata(to.join("bin/run"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755);
        assert_eq!(
            fs::read_link(to.join("link")).unwrap(),
            Path::new("bin/run")
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}
