//! `cargo xtask test`: the whole test suite, in the order a reviewer would run it — formatting,
//! clippy, unit and integration tests (root, network namespaces), then the real-kernel VM
//! layer and the package under systemd in a Debian guest. Each step prints `==> step`, then its wall time; the first failing step stops the
//! run and is named in the error. A layer that cannot run prints a `SKIP` line saying why: it is
//! never silently left out.

use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use clap::Args;

use crate::{exec, host, prereqs, vm};

#[derive(Debug, Args)]
pub struct Options {}

/// What a step did, when it did not fail.
enum Outcome {
    Passed,
    Skipped(String),
}

pub fn run(_: Options) -> Result<()> {
    if !host::is_root()? {
        bail!(
            "the test suite needs root: its integration tests create network namespaces, \
             nftables tables and eBPF attachments (CAP_NET_ADMIN, CAP_BPF, CAP_SYS_ADMIN); \
             run `cargo xtask test` as root"
        );
    }
    let started = Instant::now();
    step("prerequisites", || {
        prereqs::ensure().map(|()| Outcome::Passed)
    })?;
    step("fmt", || {
        cargo(&["+nightly", "fmt", "--all", "--", "--check"])
    })?;
    step("clippy", || {
        cargo(&[
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ])
    })?;
    // The integration tests drive the agent binary; build it first so they never run a stale one.
    step("build the agent", || cargo(&["build", "-p", "faultline"]))?;
    step("unit and integration tests", || {
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| host::workspace_root().join("target"));
        let binary = target.join("debug/faultline");
        let mut command = exec::command("cargo", ["test", "--workspace"]);
        command.env("FAULTLINE_BIN", &binary);
        exec::run(&mut command).map(|()| Outcome::Passed)
    })?;
    step("vm layer", vm_layer)?;
    step("systemd guest", systemd_guest)?;
    step("fleet lab", fleet_lab)?;
    println!("all steps passed in {}", seconds(started.elapsed()));
    Ok(())
}

/// Runs one step between its header and its timing line; a failure names the step.
fn step(name: &str, body: impl FnOnce() -> Result<Outcome>) -> Result<()> {
    println!("==> {name}");
    let started = Instant::now();
    let outcome = body();
    let took = seconds(started.elapsed());
    match outcome {
        Ok(Outcome::Passed) => println!("<== {name}: ok ({took})"),
        Ok(Outcome::Skipped(why)) => println!("SKIP {name}: {why}"),
        Err(e) => return Err(e).with_context(|| format!("step `{name}` failed after {took}")),
    }
    Ok(())
}

fn cargo(args: &[&str]) -> Result<Outcome> {
    exec::run(&mut exec::command("cargo", args)).map(|()| Outcome::Passed)
}

/// The real-kernel layer (`cargo xtask vm-test`): Debian 12's stock kernel under qemu. TCG
/// needs no /dev/kvm, so it runs wherever qemu is or can be installed; otherwise one SKIP line
/// says why.
fn vm_layer() -> Result<Outcome> {
    if let Err(e) = vm::ensure_qemu() {
        return Ok(Outcome::Skipped(format!(
            "qemu-system-x86_64 is not available and could not be installed: {e:#}"
        )));
    }
    vm::run(vm::Options::default()).map(|()| Outcome::Passed)
}

/// The package under systemd (`cargo xtask vm-test --systemd`): Debian 12 with systemd as PID
/// 1 under qemu, like the VM layer.
fn systemd_guest() -> Result<Outcome> {
    if let Err(e) = vm::ensure_qemu() {
        return Ok(Outcome::Skipped(format!(
            "qemu-system-x86_64 is not available and could not be installed: {e:#}"
        )));
    }
    crate::systemd_guest::run().map(|()| Outcome::Passed)
}

/// A fleet across kernels (`cargo xtask vm-test --fleet`): three guests of the systemd
/// guest's image, driven over mutual TLS by `faultline fleet run` from one of them.
fn fleet_lab() -> Result<Outcome> {
    if let Err(e) = vm::ensure_qemu() {
        return Ok(Outcome::Skipped(format!(
            "qemu-system-x86_64 is not available and could not be installed: {e:#}"
        )));
    }
    crate::systemd_guest::run_fleet().map(|()| Outcome::Passed)
}

pub fn seconds(d: Duration) -> String {
    let secs = d.as_secs_f64();
    if secs < 60.0 {
        format!("{secs:.1}s")
    } else {
        format!("{}m{:02}s", d.as_secs() / 60, d.as_secs() % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_step_is_named_and_its_cause_kept() {
        let error = step("clippy", || bail!("`cargo clippy` failed")).unwrap_err();
        let text = format!("{error:#}");
        assert!(text.starts_with("step `clippy` failed after"), "{text}");
        assert!(text.ends_with("`cargo clippy` failed"), "{text}");
    }

    #[test]
    fn times_read_like_durations() {
        assert_eq!(seconds(Duration::from_millis(3_250)), "3.2s");
        assert_eq!(seconds(Duration::from_secs(312)), "5m12s");
    }
}
