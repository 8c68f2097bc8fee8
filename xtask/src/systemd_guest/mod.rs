//! `cargo xtask vm-test --systemd`: the Debian package under systemd, in a Debian 12 guest
//! with systemd as PID 1 and Debian's stock 6.1 kernel, under qemu TCG (cgroup v2, netem).
//!
//! This module owns the run: it builds the package (`cargo xtask package`), makes or reuses
//! the image (`image`), writes the lab disk (the .deb and the check script `lab.sh`, an ext4
//! image made with `mkfs.ext4 -d`), and boots a sparse copy of the image twice under
//! `<target>/vm-systemd/`: the first boot installs and checks, then reboots hard with faults
//! active (qemu runs with -no-reboot, so that ends it); the second boot, on the same disk,
//! checks that nothing was left and prints `systemd-analyze security`. The serial console is
//! the only way results come back; it is streamed as it arrives.

mod fleet;
mod image;

use std::{
    fs,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
pub use fleet::run as run_fleet;

use crate::{exec, host, package, prereqs, test::seconds, vm};

/// The check script; run by the image's faultline-lab.service from the lab disk.
const LAB_SCRIPT: &str = include_str!("lab.sh");
/// What the check scripts share; on each lab disk beside `run.sh`, which sources it.
const LIB_SCRIPT: &str = include_str!("lib.sh");

/// The first boot ends with this line, just before the guest reboots without shutting down.
const REBOOT_MARKER: &str = "FAULTLINE-SYSTEMD-REBOOT";
/// `FAULTLINE-SYSTEMD-RESULT: pass`, or `fail <what>`.
const RESULT_MARKER: &str = "FAULTLINE-SYSTEMD-RESULT:";

/// Small, like a real small server: the agent, a stress of 64 MiB and systemd fit well.
const MEMORY_MIB: u32 = 768;
/// Per boot; here the first took 2m24s and the second 47 s under TCG (see README).
const BOOT_TIMEOUT: Duration = Duration::from_secs(1200);

/// `cargo xtask vm-test --systemd`.
pub fn run() -> Result<()> {
    if !host::is_root()? {
        bail!(
            "`cargo xtask vm-test --systemd` needs root: mmdebstrap builds the guest's root \
             filesystem as root, and it may install qemu and mmdebstrap with apt"
        );
    }
    let started = Instant::now();
    prereqs::ensure()?;
    prereqs::apt_packages(prereqs::SYSTEMD_GUEST_APT_PACKAGES)
        .context("apt packages for the systemd guest")?;

    let step = Instant::now();
    let image = image::ensure(&image::Recipe::standard()).context("the guest image")?;
    println!("systemd guest: image ready in {}", seconds(step.elapsed()));

    let step = Instant::now();
    let deb = package::build(package::Options::default()).context("building the package")?;
    println!(
        "systemd guest: package built in {}",
        seconds(step.elapsed())
    );

    let work = vm::target_dir().join("vm-systemd");
    fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let disk = work.join("root.img");
    let _ = fs::remove_file(&disk);
    // A sparse copy: the cached image stays as mmdebstrap made it.
    exec::run(
        exec::command("cp", ["--sparse=always"])
            .arg(&image.disk)
            .arg(&disk),
    )?;
    let lab = lab_disk(&work, &deb).context("writing the lab disk")?;
    println!("systemd guest: prepared in {}", seconds(started.elapsed()));

    let first = boot(&image, &disk, &lab, "first boot")?;
    match result(&first) {
        Some(Err(what)) => bail!("the systemd guest's checks failed on the first boot: {what}"),
        Some(Ok(())) => bail!("the first boot passed without rebooting; the script is out of step"),
        None if first.contains(REBOOT_MARKER) => {}
        None => bail!(
            "the first boot ended without `{REBOOT_MARKER}` or a `{RESULT_MARKER}` line; see \
             the console above"
        ),
    }
    let second = boot(&image, &disk, &lab, "second boot")?;
    match result(&second) {
        Some(Ok(())) => {}
        Some(Err(what)) => bail!("the systemd guest's checks failed after the reboot: {what}"),
        None => {
            bail!("the second boot ended without a `{RESULT_MARKER}` line; see the console above")
        }
    }
    let _ = fs::remove_file(&disk);
    let _ = fs::remove_file(&lab);
    println!(
        "vm-test --systemd: passed in {}",
        seconds(started.elapsed())
    );
    Ok(())
}

/// `<work>/lab.img`: an ext4 image holding the package as `faultline.deb`, `run.sh` and
/// `lib.sh`.
fn lab_disk(work: &Path, deb: &Path) -> Result<PathBuf> {
    let tree = work.join("lab");
    let _ = fs::remove_dir_all(&tree);
    fs::create_dir_all(&tree).with_context(|| format!("creating {}", tree.display()))?;
    fs::copy(deb, tree.join("faultline.deb"))
        .with_context(|| format!("copying {}", deb.display()))?;
    fs::write(tree.join("run.sh"), LAB_SCRIPT).context("writing run.sh")?;
    fs::write(tree.join("lib.sh"), LIB_SCRIPT).context("writing lib.sh")?;
    ext4_image(&tree, &work.join("lab.img"))
}

/// `image`: an ext4 filesystem holding `tree` (which is then removed), for the guest's
/// `/dev/vdb`, which its faultline-lab.service mounts and runs `run.sh` from.
fn ext4_image(tree: &Path, image: &Path) -> Result<PathBuf> {
    let _ = fs::remove_file(image);
    exec::run(
        exec::command("mkfs.ext4", ["-q", "-F", "-L", "fls-lab", "-d"])
            .arg(tree)
            .arg(image)
            .arg("256M"),
    )?;
    fs::remove_dir_all(tree).with_context(|| format!("removing {}", tree.display()))?;
    Ok(image.to_owned())
}

/// How a guest of the image is booted.
struct Guest<'a> {
    image: &'a image::Image,
    /// A sparse copy of the image's disk, the guest's own.
    disk: &'a Path,
    lab: &'a Path,
    memory_mib: u32,
    cpus: u32,
    /// qemu's arguments for the guest's network (`-nic none` for none).
    network: Vec<String>,
}

impl Guest<'_> {
    /// The qemu arguments (after the program) that boot this guest to its power-off or reboot.
    fn args(&self) -> Vec<std::ffi::OsString> {
        let mut args: Vec<std::ffi::OsString> = [
            "-accel",
            "tcg,thread=multi",
            "-smp",
            &self.cpus.to_string(),
            "-cpu",
            "max",
            "-m",
            &self.memory_mib.to_string(),
            "-nographic",
            "-no-reboot",
        ]
        .iter()
        .map(Into::into)
        .collect();
        args.extend(self.network.iter().map(Into::into));
        args.extend([
            "-kernel".into(),
            self.image.vmlinuz.clone().into_os_string(),
            "-initrd".into(),
            self.image.initrd.clone().into_os_string(),
            "-drive".into(),
            format!("file={},if=virtio,format=raw", self.disk.display()).into(),
            "-drive".into(),
            format!(
                "file={},if=virtio,format=raw,readonly=on",
                self.lab.display()
            )
            .into(),
            // panic=-1 reboots at once on a panic, which -no-reboot turns into qemu exiting.
            "-append".into(),
            "root=/dev/vda rw console=ttyS0 panic=-1 quiet".into(),
        ]);
        args
    }
}

/// One boot of the guest, to its power-off or reboot (qemu exits on either); the console.
fn boot(image: &image::Image, disk: &Path, lab: &Path, which: &str) -> Result<String> {
    println!("systemd guest: {which}");
    let guest = Guest {
        image,
        disk,
        lab,
        memory_mib: MEMORY_MIB,
        cpus: 2,
        network: vec!["-nic".into(), "none".into()],
    };
    let mut qemu = exec::command("qemu-system-x86_64", guest.args());
    let run = vm::run_qemu(&mut qemu, BOOT_TIMEOUT)?;
    if run.timed_out {
        bail!(
            "the {which} did not end within {}; qemu killed",
            seconds(BOOT_TIMEOUT)
        );
    }
    println!(
        "systemd guest: {which} ended after {} ({})",
        seconds(run.took),
        run.status
    );
    Ok(run.console)
}

/// The verdict of the console's last result line, if it has one.
fn result(console: &str) -> Option<Result<(), String>> {
    verdict(console, RESULT_MARKER)
}

/// The verdict of the console's last line starting with `marker` (`pass` or `fail <what>`).
fn verdict(console: &str, marker: &str) -> Option<Result<(), String>> {
    let line = console
        .lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix(marker))?
        .trim();
    Some(match line {
        "pass" => Ok(()),
        other => Err(other
            .strip_prefix("fail")
            .unwrap_or(other)
            .trim()
            .to_owned()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_result_line_decides() {
        assert_eq!(result("boot\nlab: ok\n"), None);
        assert_eq!(
            result("FAULTLINE-SYSTEMD-RESULT: fail block: refused\n"),
            Some(Err("block: refused".to_owned()))
        );
        assert_eq!(
            result("echo FAULTLINE-SYSTEMD-RESULT: x\r\nFAULTLINE-SYSTEMD-RESULT: pass\r\n"),
            Some(Ok(()))
        );
    }
}
