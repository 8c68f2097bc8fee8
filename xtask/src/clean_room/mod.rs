//! `cargo xtask clean-room`: proves that the project's own scripts install everything the build
//! needs, by building the agent inside a fresh Debian 12 root filesystem that holds only what a
//! new machine of ours has (`base`) and what `cargo xtask prereqs` installs there. Then it starts
//! the agent in the room, asks it `faultline info`, stops it with SIGTERM, and — where the tree
//! has a `package` task — takes the Debian package through install, upgrade, remove and purge
//! (`package`).
//!
//! The room shares the host's kernel, and its Rust toolchains: `~/.rustup` is bind-mounted
//! read-only (prereqs' `rustup component add` calls are no-ops when the component is there, and
//! it installs the nightly toolchain only when `rustup toolchain list` lacks it, so nothing
//! writes there; a machine without nightly would fail here, as it would on a new machine that
//! cannot reach static.rust-lang.org). Everything else is the room's own: `CARGO_HOME`
//! (`/root/.cargo`, where prereqs' `cargo install bpf-linker` puts its binary), apt's packages,
//! the target directory. Between runs only the base image, the crates download cache and —
//! when asked for with `--reuse-bpf-linker` — the bpf-linker binary are kept.
//!
//! Each step prints its wall time; the first failing step stops the run and is named. Whatever
//! the outcome (an error, Ctrl-C), the room's processes are killed, its mounts undone and its
//! tree removed (`room`).

pub(crate) mod base;
mod package;
mod room;

use std::{
    fs,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::{Child, Command},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _, Result};
use clap::Args;

use self::room::{command_in, HostShare, Room, SOURCE};
use crate::{exec, host, prereqs, test::seconds, vm};

/// The room's agent sweeps stress cgroups under this parent only, so it can never touch the
/// cgroups of an agent running on the host (both see the host's cgroupfs).
const CGROUP_PARENT: &str = "faultline-clean-room";

#[derive(Debug, Args)]
pub struct Options {
    /// Build the base image again even if one for the current recipe is cached
    #[arg(long)]
    rebuild_base: bool,
    /// Empty the room's crates download cache first, so every crate is downloaded again (by
    /// default the cache earlier runs filled is reused; crates.io is still asked for the index)
    #[arg(long)]
    fresh_registry: bool,
    /// Put the bpf-linker an earlier run installed into the room's CARGO_HOME before prereqs,
    /// so its `cargo install` (minutes) is skipped — and not tested in this run
    #[arg(long)]
    reuse_bpf_linker: bool,
}

/// The steps run so far and their wall times, for the summary.
pub struct Steps {
    done: Vec<(String, Duration)>,
}

impl Steps {
    /// Runs one step between a header and its timing line; a failure names the step.
    pub fn run<T>(&mut self, name: &str, body: impl FnOnce() -> Result<T>) -> Result<T> {
        interrupted()?;
        println!("==> {name}");
        let started = Instant::now();
        let result = body();
        let took = started.elapsed();
        self.done.push((name.to_owned(), took));
        match result {
            Ok(value) => {
                println!("<== {name}: ok ({})", seconds(took));
                interrupted()?;
                Ok(value)
            }
            Err(e) => {
                Err(e).with_context(|| format!("step `{name}` failed after {}", seconds(took)))
            }
        }
    }

    fn summary(&self) -> String {
        let width = self.done.iter().map(|(n, _)| n.len()).max().unwrap_or(0);
        self.done
            .iter()
            .map(|(name, took)| format!("  {name:<width$}  {:>7}\n", seconds(*took)))
            .collect()
    }
}

/// A signal caught by [`host::catch_signals`]: Ctrl-C reaches the room's processes too (they
/// are in our process group); a SIGTERM sent to xtask alone is passed on to the running child
/// by [`wait_for`]. Either way the run stops and the room is removed.
fn interrupted() -> Result<()> {
    if host::interrupted() {
        bail!("interrupted: the room is being removed");
    }
    Ok(())
}

/// Runs `command` (echoed) to its end; on an interruption it is sent SIGTERM, then SIGKILL.
fn run(command: &mut Command) -> Result<()> {
    let shown = exec::display(command);
    println!("$ {shown}");
    let child = command
        .spawn()
        .with_context(|| format!("cannot start `{shown}`"))?;
    let status = wait_for(child, &shown)?;
    ensure!(status.success(), "`{shown}` failed ({status})");
    Ok(())
}

fn wait_for(mut child: Child, shown: &str) -> Result<std::process::ExitStatus> {
    let mut signalled: Option<Instant> = None;
    loop {
        if let Some(status) = child.try_wait()? {
            // Ctrl-C reaches the child too, which may exit before we look at the flag.
            if signalled.is_some() || host::interrupted() {
                bail!("interrupted while `{shown}` ran");
            }
            return Ok(status);
        }
        if host::interrupted() {
            match signalled {
                None => {
                    // SAFETY: kill(2) on our own child's pid.
                    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
                    signalled = Some(Instant::now());
                }
                Some(at) if at.elapsed() > Duration::from_secs(10) => {
                    let _ = child.kill();
                }
                Some(_) => {}
            }
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// `cargo xtask clean-room`.
pub fn run_task(o: Options) -> Result<()> {
    if !host::is_root()? {
        bail!(
            "`cargo xtask clean-room` needs root: it builds a Debian root filesystem with \
             mmdebstrap, mounts /proc, /sys and /dev into it and chroots there; run it as root"
        );
    }
    let started = Instant::now();
    host::catch_signals()?;
    let mut steps = Steps { done: Vec::new() };
    let result = clean_room(&o, &mut steps);
    print!("clean-room: step times\n{}", steps.summary());
    match &result {
        Ok(()) => println!("clean-room: passed in {}", seconds(started.elapsed())),
        Err(_) => println!("clean-room: FAILED after {}", seconds(started.elapsed())),
    }
    result
}

fn clean_room(o: &Options, steps: &mut Steps) -> Result<()> {
    let dir = vm::target_dir().join("clean-room");
    let rooms = dir.join("rooms");
    steps.run("clean-room prerequisites (host)", || {
        prereqs::apt_packages(prereqs::CLEAN_ROOM_APT_PACKAGES)
    })?;
    room::enter_private_mount_namespace()?;
    room::remove_stale(&rooms)?;

    let recipe = base::Recipe::standard();
    let (tarball, built) =
        steps.run("base image", || base::ensure(&recipe, &dir, o.rebuild_base))?;
    println!(
        "base: {} {}",
        if built { "built" } else { "cached" },
        tarball.display()
    );

    let mut room = steps.run("extract a fresh root", || Room::extract(&rooms, &tarball))?;
    steps.run("set up the room", || set_up(&mut room, o, &dir))?;
    steps.run(
        "copy the source tree (git ls-files, and its history)",
        || {
            let workspace = host::workspace_root();
            let files = room::tracked_files(&workspace)?;
            let copied = room::copy_tracked_files(&workspace, &room.path(SOURCE), &files)?;
            println!(
                "copied {} files ({:.1} MiB) to {SOURCE}",
                copied.files,
                copied.bytes as f64 / (1024.0 * 1024.0)
            );
            for deleted in &copied.deleted {
                println!(
                    "not copied (deleted in the working tree): {}",
                    deleted.display()
                );
            }
            room::add_history(&workspace, &room.path(SOURCE))
        },
    )?;

    let bpf_linker = room.path("/root/.cargo/bin/bpf-linker");
    let had_bpf_linker = bpf_linker.exists();
    steps.run("cargo xtask prereqs", || {
        run(&mut command_in(
            room.root(),
            SOURCE,
            "cargo",
            &["xtask", "prereqs"],
        ))
    })?;
    if !had_bpf_linker {
        // Kept for `--reuse-bpf-linker`; a plain run still installs its own.
        let cached = dir.join(format!("bpf-linker-{}", prereqs::BPF_LINKER_VERSION));
        fs::copy(&bpf_linker, &cached)
            .with_context(|| format!("keeping bpf-linker as {}", cached.display()))?;
    }
    steps.run("cargo build --release -p faultline", || {
        run(&mut command_in(
            room.root(),
            SOURCE,
            "cargo",
            &["build", "--release", "-p", "faultline"],
        ))
    })?;
    let binary = format!("{SOURCE}/target/release/faultline");
    steps.run("faultline --version and --help", || {
        run(&mut command_in(
            room.root(),
            SOURCE,
            &binary,
            &["--version"],
        ))?;
        let help = exec::capture(&mut command_in(room.root(), SOURCE, &binary, &["--help"]))?;
        ensure!(
            help.contains("serve"),
            "`faultline --help` does not list `serve`:\n{help}"
        );
        println!("faultline --help: {} lines", help.lines().count());
        Ok(())
    })?;
    steps.run("faultline serve, info, SIGTERM", || {
        agent_check(&room, &binary)
    })?;

    let help = exec::capture(&mut command_in(
        room.root(),
        SOURCE,
        "cargo",
        &["xtask", "--help"],
    ))
    .context("cargo xtask --help in the room")?;
    if package::task_listed(&help) {
        package::run(&room, steps)?;
    } else {
        println!(
            "SKIP package phase: this tree has no `cargo xtask package` task (`cargo xtask \
             --help` in the room does not list it), so there is no .deb to install, upgrade, \
             remove and purge"
        );
    }
    steps.run("remove the room", || room.remove())?;
    Ok(())
}

/// What the base image lacks that the room needs, none of it a package: the host's DNS setup
/// and the site's CAs (for apt and crates.io), a `policy-rc.d` so that packages do not start services (the room
/// shares the host's network; prometheus would take ports 9090 and 9100 of the host), the
/// machine's rustup proxies and cargo-nextest, and the mounts.
fn set_up(room: &mut Room, o: &Options, dir: &Path) -> Result<()> {
    let resolv = room.path("/etc/resolv.conf");
    let _ = fs::remove_file(&resolv);
    fs::copy("/etc/resolv.conf", &resolv).context("copying /etc/resolv.conf into the room")?;
    let policy = room.path("/usr/sbin/policy-rc.d");
    fs::write(
        &policy,
        "#!/bin/sh\n# cargo xtask clean-room: start no services\nexit 101\n",
    )?;
    set_mode(&policy, 0o755)?;

    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .context("HOME is not set")?;
    let host_bin = host::cargo_bin_dir().context("no cargo bin directory")?;
    let cargo_bin = room.path("/root/.cargo/bin");
    fs::create_dir_all(&cargo_bin)?;
    // The rustup proxies: `rustup` and the links to it (cargo, rustc, ...). Anything else in
    // the host's cargo bin was `cargo install`ed there (bpf-linker) and must not be seen.
    fs::copy(host_bin.join("rustup"), cargo_bin.join("rustup")).context("copying rustup")?;
    let mut proxies = Vec::new();
    for entry in fs::read_dir(&host_bin)? {
        let entry = entry?;
        if fs::read_link(entry.path()).is_ok_and(|t| t == Path::new("rustup")) {
            symlink("rustup", cargo_bin.join(entry.file_name()))?;
            proxies.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    proxies.sort();
    println!("rustup proxies: rustup {}", proxies.join(" "));
    if let Some(nextest) = host::find_program("cargo-nextest") {
        fs::copy(&nextest, room.path("/usr/local/bin/cargo-nextest"))
            .context("copying cargo-nextest")?;
    }
    let cached_linker = dir.join(format!("bpf-linker-{}", prereqs::BPF_LINKER_VERSION));
    if o.reuse_bpf_linker {
        if cached_linker.exists() {
            fs::copy(&cached_linker, cargo_bin.join("bpf-linker"))?;
            println!(
                "bpf-linker: reusing {} (--reuse-bpf-linker): its install is NOT tested in this run",
                cached_linker.display()
            );
        } else {
            println!("bpf-linker: none kept from an earlier run; prereqs installs it");
        }
    }

    let registry_cache = dir.join("cargo-registry");
    if o.fresh_registry && registry_cache.exists() {
        println!(
            "registry: emptying {} (--fresh-registry)",
            registry_cache.display()
        );
        fs::remove_dir_all(&registry_cache)
            .with_context(|| format!("removing {}", registry_cache.display()))?;
    }
    fs::create_dir_all(&registry_cache)?;
    let share = HostShare {
        rustup_home: home.join(".rustup"),
        registry_cache,
    };
    room.mount(&room::mount_plan(&share))?;
    site_certificates(room)
}

/// The machine's own certificate authorities (`/usr/local/share/ca-certificates`, where a site
/// puts the CA of the proxy its HTTPS goes through) are trusted in the room too, as on every
/// machine of the site: without them cargo cannot reach crates.io here. Debian's own CAs come
/// from the room's ca-certificates package.
fn site_certificates(room: &Room) -> Result<()> {
    let local = Path::new("/usr/local/share/ca-certificates");
    let Ok(entries) = fs::read_dir(local) else {
        return Ok(());
    };
    let mut copied = Vec::new();
    for entry in entries {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "crt") {
            let name = path.file_name().context("a file name")?;
            fs::copy(
                &path,
                room.path(local.to_str().unwrap_or_default()).join(name),
            )
            .with_context(|| format!("copying {}", path.display()))?;
            copied.push(name.to_string_lossy().into_owned());
        }
    }
    if copied.is_empty() {
        return Ok(());
    }
    copied.sort();
    println!("site CAs: {}", copied.join(" "));
    exec::run(&mut command_in(
        room.root(),
        "/",
        "update-ca-certificates",
        &[],
    ))
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {mode:o} {}", path.display()))
}

/// Starts `faultline serve` in the room, in a network namespace of its own (its start-up sweep
/// of nftables, qdiscs and IFB devices must not touch the host's, where another agent may
/// run), waits for its socket to answer `faultline info`, then stops it with SIGTERM and
/// requires exit status 0.
fn agent_check(room: &Room, binary: &str) -> Result<()> {
    let serve = command_in(
        room.root(),
        "/",
        binary,
        &["serve", "--cgroup-parent", CGROUP_PARENT],
    );
    let mut command = exec::command("unshare", ["--net", "--"]);
    command.arg(serve.get_program()).args(serve.get_args());
    println!("$ {}", exec::display(&command));
    let mut agent = command
        .spawn()
        .context("starting faultline serve in the room")?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let info = loop {
        interrupted()?;
        if let Some(status) = agent.try_wait()? {
            bail!("faultline serve exited before it answered ({status})");
        }
        let mut info = command_in(room.root(), "/", binary, &["info"]);
        if let Some(out) = exec::probe(&mut info) {
            println!("$ {}", exec::display(&info));
            break out;
        }
        if Instant::now() > deadline {
            let _ = agent.kill();
            let _ = agent.wait();
            bail!("faultline serve did not answer `faultline info` within 60 s");
        }
        thread::sleep(Duration::from_millis(250));
    };
    print!("{info}");
    // SAFETY: kill(2) on our own child, which is faultline itself (unshare, chroot and env
    // exec it in turn).
    unsafe { libc::kill(agent.id() as i32, libc::SIGTERM) };
    let stop = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = agent.try_wait()? {
            break status;
        }
        if Instant::now() > stop {
            let _ = agent.kill();
            let _ = agent.wait();
            bail!("faultline serve did not exit within 30 s of SIGTERM");
        }
        thread::sleep(Duration::from_millis(100));
    };
    ensure!(
        status.success(),
        "faultline serve exited with {status} after SIGTERM"
    );
    println!("faultline serve: exited 0 after SIGTERM");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_step_is_named_and_timed_and_kept_in_the_summary() {
        let mut steps = Steps { done: Vec::new() };
        steps.run("copy", || Ok(())).unwrap();
        let error = steps
            .run("cargo xtask prereqs", || -> Result<()> {
                bail!("apt-get failed")
            })
            .unwrap_err();
        let text = format!("{error:#}");
        assert!(
            text.starts_with("step `cargo xtask prereqs` failed after"),
            "{text}"
        );
        assert!(text.ends_with("apt-get failed"), "{text}");
        let summary = steps.summary();
        assert_eq!(summary.lines().count(), 2);
        assert!(summary
            .lines()
            .nth(1)
            .unwrap()
            .starts_with("  cargo xtask prereqs"));
    }
}
