//! The state filesystem's reserve: the agent's state directory on a small ext4 filesystem of
//! the test's own (an image file, loop-mounted in a temporary directory, unmounted by a guard
//! even when the test fails), filled by the test to below the reserve while a fault is active.
//! Checked: a new apply is refused with an error that names the filesystem and the reserve;
//! the active fault is still reverted at its deadline and its journal entry closed; the audit
//! lines that no longer fit are shed, each with an error in the log and a count in Prometheus;
//! once space is freed, applies work again.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _, Result};
use faultline_tests::{
    agent::entries,
    note, process,
    prometheus::{sample, scrape},
    require_root, unique, Agent, Netns,
};
use tempfile::TempDir;

const T: &str = "at_the_state_reserve_applies_are_refused_audit_lines_shed_and_faults_still_revert";
const METRICS: &str = "127.0.0.1:9464";

/// An ext4 filesystem in an image file, mounted on a temporary directory; unmounted (lazily,
/// if something still holds it) and removed on drop.
struct LoopFs {
    dir: TempDir,
}

impl LoopFs {
    fn new(size_mib: u32) -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("ffl-statefs-").tempdir()?;
        let image = dir.path().join("fs.img");
        let mount = dir.path().join("mnt");
        fs::create_dir(&mount)?;
        fs::File::create(&image)?.set_len(u64::from(size_mib) << 20)?;
        let run = |program: &str, args: &[&Path]| -> Result<()> {
            let mut command = Command::new(program);
            command.args(args);
            process::run_ok(command).map(drop)
        };
        // -m 0: no blocks kept for root, so free and available are the same.
        run(
            "mkfs.ext4",
            &[
                Path::new("-q"),
                Path::new("-F"),
                Path::new("-m"),
                Path::new("0"),
                &image,
            ],
        )?;
        let fs = Self { dir };
        run(
            "mount",
            &[Path::new("-o"), Path::new("loop"), &image, &mount],
        )?;
        Ok(fs)
    }

    fn mount(&self) -> PathBuf {
        self.dir.path().join("mnt")
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        let mount = self.mount();
        let unmounted = Command::new("umount").arg(&mount).status();
        if !unmounted.is_ok_and(|s| s.success()) {
            let _ = Command::new("umount").arg("-l").arg(&mount).status();
        }
    }
}

/// Bytes available on the filesystem of `path` (statvfs f_bavail).
fn available(path: &Path) -> Result<u64> {
    let mut command = Command::new("stat");
    command.args(["-f", "-c", "%a %S"]).arg(path);
    let out = process::run_ok(command)?;
    let mut fields = out.split_whitespace().map(str::parse::<u64>);
    match (fields.next(), fields.next()) {
        (Some(Ok(blocks)), Some(Ok(size))) => Ok(blocks * size),
        _ => bail!("stat -f printed {out:?}"),
    }
}

#[test]
fn at_the_state_reserve_applies_are_refused_audit_lines_shed_and_faults_still_revert() -> Result<()>
{
    if !require_root(T) {
        return Ok(());
    }
    let statefs = LoopFs::new(64)?;
    let state = statefs.mount().join("state");
    let ns = Netns::create(&format!("ffl-{}-{}-r", std::process::id(), unique()))?;
    let agent = Agent::start_with_state(
        &ns,
        &state,
        &["--state-reserve", "16MiB", "--metrics-listen", METRICS],
    )?;
    let block = |duration: &str| {
        [
            "block", "--dir", "in", "--proto", "tcp", "--port", "8080", "--for", duration,
        ]
        .map(str::to_owned)
    };
    let args = block("6s");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let id = agent.apply(&args)?;
    let applied = Instant::now();
    ensure!(ns.nft_table_exists()?, "the block left no nftables table");

    // Fill the filesystem to 8 MiB free, half the reserve.
    let fill = statefs.mount().join("fill");
    let size = available(&statefs.mount())?.saturating_sub(8 << 20);
    let mut fallocate = Command::new("fallocate");
    fallocate.arg("-l").arg(size.to_string()).arg(&fill);
    process::run_ok(fallocate)?;
    let free = available(&statefs.mount())?;

    let other = block("30s");
    let other: Vec<&str> = other.iter().map(String::as_str).collect();
    let mut refused_args = other.clone();
    refused_args[6] = "9090";
    let error = agent.cli_fails(&refused_args, 4)?;
    ensure!(
        error.contains("the state filesystem")
            && error.contains("at or below its reserve of 16.0MiB")
            && error.contains("--state-reserve")
            && error.contains("active faults are still reverted"),
        "the refused apply said: {error}"
    );

    // The fault applied before is reverted at its deadline, and its journal entry closed.
    let fault = loop {
        let fault = agent.settled_fault(&id, Duration::from_secs(2))?;
        if fault["state"] != "active" || applied.elapsed() > Duration::from_secs(15) {
            break fault;
        }
        thread::sleep(Duration::from_millis(100));
    };
    let reverted_after = applied.elapsed();
    ensure!(
        fault["state"] == "reverted" && fault["reason"] == "deadline",
        "at the reserve, the fault ended as {fault:#}"
    );
    ensure!(!ns.nft_table_exists()?, "the block's table is still there");
    let journal = entries(&agent.journal_dir())?;
    ensure!(journal.is_empty(), "the journal still holds {journal:?}");

    let page = scrape(&ns, METRICS)?;
    let shed = sample(&page, "faultline_audit_lines_shed_total")?;
    let refused = sample(&page, "faultline_applies_refused_low_space_total")?;
    let log = agent.log();
    let shed_lines = log
        .lines()
        .filter(|l| l.contains("audit line shed"))
        .count();
    note(
        T,
        format!(
            "{} KiB free of 64 MiB (reserve 16 MiB): apply refused; the fault reverted \
             {reverted_after:.1?} after it was applied (6 s); {shed} audit lines shed, {shed_lines} \
             log lines say so",
            free >> 10
        ),
    );
    ensure!(
        refused == 1.0,
        "faultline_applies_refused_low_space_total is {refused}"
    );
    // The refused apply's line and the automatic revert's.
    ensure!(
        shed >= 2.0 && shed_lines as f64 == shed,
        "{shed} audit lines shed, {shed_lines} log lines about it:\n{log}"
    );
    ensure!(
        log.lines()
            .any(|l| l.contains("audit line shed") && l.contains("automatic-revert")),
        "the shed revert line is not in the log:\n{log}"
    );

    // Room again: applies work again.
    fs::remove_file(&fill).context("removing the fill file")?;
    let again = agent.apply(&other)?;
    agent.revert(&again)?;
    agent.assert_clean()
}
