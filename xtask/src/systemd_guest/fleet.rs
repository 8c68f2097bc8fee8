//! `cargo xtask vm-test --fleet`: a fleet across kernels. Three guests of the systemd guest's
//! image (each its own Debian 12 kernel, systemd as PID 1, the Debian package installed) on
//! one virtual network, each agent listening with mutual TLS on a certificate made here by
//! `faultline certs`; the guest `ctl` runs `faultline fleet run` across the three (the checks
//! are `fleet.sh`'s).
//!
//! This module owns the run: the package, the certificates (a CA, one agent certificate per
//! guest for its address, the controller's client certificate), each guest's lab disk (the
//! package, `fleet.sh` as `run.sh`, its role, its TLS files), and the three qemu processes.
//! Their network is a qemu multicast socket (`-netdev socket,mcast=`) on the loopback of a
//! network namespace of the run's own, so the guests' frames reach one another and nothing
//! else; the namespace goes with the run, also when it fails. Each guest's console is shown
//! line by line after its name and ends with its `FAULTLINE-FLEET-RESULT:` line.

use std::{
    fs,
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use super::{ext4_image, image, Guest};
use crate::{exec, host, package, prereqs, test::seconds, vm};

const SCRIPT: &str = include_str!("fleet.sh");
const RESULT_MARKER: &str = "FAULTLINE-FLEET-RESULT:";

/// The guests: role, address (fleet.sh has the same), MAC (fleet.sh finds its NIC by it).
const GUESTS: &[(&str, &str, &str)] = &[
    ("ctl", "10.78.0.1", "52:54:00:78:00:01"),
    ("a", "10.78.0.2", "52:54:00:78:00:02"),
    ("b", "10.78.0.3", "52:54:00:78:00:03"),
];

/// One vCPU each: three guests share this machine's cores under TCG. Memory as a small
/// server's: the agent, a CPU stress and systemd fit well.
const MEMORY_MIB: u32 = 640;
const CPUS: u32 = 1;
/// The whole lab, boots included (the three guests took 3m40s here; see README).
const TIMEOUT: Duration = Duration::from_secs(1500);
/// How long a and b may run on once ctl has ended.
const CUTOFF_GRACE: Duration = Duration::from_secs(60);

/// `cargo xtask vm-test --fleet`.
pub fn run() -> Result<()> {
    if !host::is_root()? {
        bail!(
            "`cargo xtask vm-test --fleet` needs root: mmdebstrap builds the guests' root \
             filesystem as root, qemu's network lives in a network namespace of the run's own, \
             and it may install qemu and mmdebstrap with apt"
        );
    }
    let started = Instant::now();
    prereqs::ensure()?;
    prereqs::apt_packages(prereqs::SYSTEMD_GUEST_APT_PACKAGES)
        .context("apt packages for the guests")?;

    let step = Instant::now();
    let image = image::ensure(&image::Recipe::standard()).context("the guest image")?;
    println!("fleet lab: image ready in {}", seconds(step.elapsed()));
    let step = Instant::now();
    let deb = package::build(package::Options::default()).context("building the package")?;
    println!("fleet lab: package built in {}", seconds(step.elapsed()));

    let work = vm::target_dir().join("vm-fleet");
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let certs = certificates(&work).context("making the certificates")?;
    let mut disks = Vec::new();
    for (role, _, _) in GUESTS {
        let disk = work.join(format!("root-{role}.img"));
        // A sparse copy: the cached image stays as mmdebstrap made it.
        exec::run(
            exec::command("cp", ["--sparse=always"])
                .arg(&image.disk)
                .arg(&disk),
        )?;
        let lab = lab_disk(&work, role, &deb, &certs)
            .with_context(|| format!("writing {role}'s lab disk"))?;
        disks.push((role, disk, lab));
    }
    println!("fleet lab: prepared in {}", seconds(started.elapsed()));

    let ns = faultline_lab::Netns::create(&format!("flfleet-{}", std::process::id()))
        .context("the lab network's namespace")?;
    let qemu = host::find_program("qemu-system-x86_64")
        .context("qemu-system-x86_64 is not installed; `cargo xtask prereqs` installs it")?;
    // a and b serve ctl until it says it is done: once ctl has ended, however it ended, they
    // get a minute to finish their checks and power off, then they are killed.
    let cutoff = vm::Cutoff::default();
    let runs: Vec<(&str, Result<vm::QemuRun>)> = thread::scope(|scope| {
        let booted: Vec<_> = disks
            .iter()
            .zip(GUESTS)
            .map(|((role, disk, lab), (_, _, mac))| {
                let guest = Guest {
                    image: &image,
                    disk,
                    lab,
                    memory_mib: MEMORY_MIB,
                    cpus: CPUS,
                    network: vec![
                        "-netdev".into(),
                        "socket,id=lab,mcast=239.192.78.1:47078,localaddr=127.0.0.1".into(),
                        "-device".into(),
                        format!("virtio-net-pci,netdev=lab,mac={mac}"),
                    ],
                };
                let mut command = ns.command(&qemu);
                command
                    .args(guest.args())
                    .current_dir(host::workspace_root())
                    .env("PATH", host::child_path());
                let label = format!("[{role:>3}] ");
                let cutoff = &cutoff;
                (
                    **role,
                    scope.spawn(move || {
                        let run = vm::run_qemu_labelled(&mut command, TIMEOUT, Some(label), cutoff);
                        if **role == "ctl" {
                            cutoff.set(CUTOFF_GRACE);
                        }
                        run
                    }),
                )
            })
            .collect();
        booted
            .into_iter()
            .map(|(role, handle)| {
                (
                    role,
                    handle.join().unwrap_or_else(|_| {
                        Err(anyhow::anyhow!("the thread running qemu panicked"))
                    }),
                )
            })
            .collect()
    });
    drop(ns);

    let mut failures = Vec::new();
    for (role, run) in &runs {
        match run {
            Err(e) => failures.push(format!("{role}: {e:#}")),
            Ok(run) if run.timed_out => failures.push(format!(
                "{role}: did not power off within {} (or {} after ctl ended); qemu killed",
                seconds(TIMEOUT),
                seconds(CUTOFF_GRACE)
            )),
            Ok(run) => {
                println!(
                    "fleet lab: {role} ended after {} ({})",
                    seconds(run.took),
                    run.status
                );
                match super::verdict(&run.console, RESULT_MARKER) {
                    Some(Ok(())) => {}
                    Some(Err(what)) => failures.push(format!("{role}: {what}")),
                    None => failures.push(format!(
                        "{role}: powered off without a `{RESULT_MARKER}` line; see its console"
                    )),
                }
            }
        }
    }
    if !failures.is_empty() {
        bail!("the fleet lab failed:\n  {}", failures.join("\n  "));
    }
    let _ = fs::remove_dir_all(&work);
    println!("vm-test --fleet: passed in {}", seconds(started.elapsed()));
    Ok(())
}

/// The TLS files each guest gets, made with the packaged binary's `faultline certs`: a CA,
/// an agent certificate per guest (its address as name and IP), and the controller's client
/// certificate, whose name `controller` the agents' policy makes admin.
fn certificates(work: &Path) -> Result<PathBuf> {
    let dir = work.join("certs");
    let faultline = host::workspace_root().join("target/release/faultline");
    let certs = |args: &[&str]| exec::run(&mut exec::command(&faultline.to_string_lossy(), args));
    let ca = dir.join("ca");
    certs(&["certs", "ca", "--out", &ca.to_string_lossy()])?;
    for (role, address, _) in GUESTS {
        certs(&[
            "certs",
            "agent",
            "--ca-dir",
            &ca.to_string_lossy(),
            "--name",
            address,
            "--ip",
            address,
            "--out",
            &dir.join(role).to_string_lossy(),
        ])?;
    }
    certs(&[
        "certs",
        "client",
        "--ca-dir",
        &ca.to_string_lossy(),
        "--name",
        "controller",
        "--out",
        &dir.join("controller").to_string_lossy(),
    ])?;
    Ok(dir)
}

/// `<work>/lab-<role>.img`: the package, `run.sh`, `lib.sh`, `role`, and `tls/agent/` (the guest's
/// certificate, key and the CA; never the CA's key), plus `tls/controller/` on ctl.
fn lab_disk(work: &Path, role: &str, deb: &Path, certs: &Path) -> Result<PathBuf> {
    let tree = work.join(format!("lab-{role}"));
    fs::create_dir_all(tree.join("tls")).with_context(|| format!("creating {}", tree.display()))?;
    fs::copy(deb, tree.join("faultline.deb"))
        .with_context(|| format!("copying {}", deb.display()))?;
    fs::write(tree.join("run.sh"), SCRIPT).context("writing run.sh")?;
    fs::write(tree.join("lib.sh"), super::LIB_SCRIPT).context("writing lib.sh")?;
    fs::write(tree.join("role"), role).context("writing role")?;
    copy_dir(&certs.join(role), &tree.join("tls/agent"))?;
    if role == "ctl" {
        copy_dir(&certs.join("controller"), &tree.join("tls/controller"))?;
    }
    ext4_image(&tree, &work.join(format!("lab-{role}.img")))
}

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    fs::create_dir_all(to).with_context(|| format!("creating {}", to.display()))?;
    for entry in fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let entry = entry?;
        fs::copy(entry.path(), to.join(entry.file_name()))
            .with_context(|| format!("copying {}", entry.path().display()))?;
    }
    Ok(())
}
