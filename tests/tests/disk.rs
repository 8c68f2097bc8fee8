//! Disk faults on a small ext4 filesystem of the test's own, on a loop device ([`LoopFs`]):
//! a fill lands the free space `statvfs` reports where the request said and never below the
//! floor or the agent's reserve, and everything is gone after revert (also after a crash);
//! I/O stress runs at the rate the kernel holds, measured from the cgroup's own I/O
//! statistics; a throttle caps a workload's measured throughput and the cgroup's own limits
//! come back exactly. Works on cgroup v1 (this machine) and v2 (the VM guest).

use std::{
    thread,
    time::{Duration, Instant},
};

use anyhow::{ensure, Context as _, Result};
use faultline_tests::{disk::LoopFs, note, require_root, unique, Agent, Netns};

const MIB: u64 = 1 << 20;

fn agent(extra: &[&str]) -> Result<(Netns, Agent)> {
    let ns = Netns::create(&format!("fld-{}-{}", std::process::id(), unique()))?;
    let agent = Agent::start_with(&ns, extra)?;
    Ok((ns, agent))
}

/// Waits until the filesystem's free space is `expected` within `slack` bytes (ext4 frees the
/// blocks of removed files when its journal commits, a moment after the unlink).
fn wait_free(fs: &LoopFs, expected: u64, slack: u64) -> Result<u64> {
    let started = Instant::now();
    loop {
        let free = fs.free()?;
        if free.abs_diff(expected) <= slack || started.elapsed() > Duration::from_secs(10) {
            return Ok(free);
        }
        thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_fill_leaves_exactly_the_requested_free_space() -> Result<()> {
    const TEST: &str = "a_fill_leaves_exactly_the_requested_free_space";
    if !require_root(TEST) {
        return Ok(());
    }
    let fs = LoopFs::new(256)?;
    let (_ns, agent) = agent(&[])?;
    agent.watch_dir(&fs.path());
    let path = fs.path().display().to_string();
    let (_, before, block) = fs.figures()?;

    let id = agent.apply(&[
        "disk", "fill", "--path", &path, "--size", "100MiB", "--floor", "16MiB", "--for", "60s",
    ])?;
    let free = fs.free()?;
    let expected = before - 100 * MIB;
    note(
        TEST,
        format!(
            "--size 100MiB: free {before} -> {free} bytes, expected {expected} ({:+} bytes, \
             block {block})",
            free as i64 - expected as i64
        ),
    );
    ensure!(
        free.abs_diff(expected) <= block,
        "free space is {free}, expected {expected} within one block of {block}"
    );
    ensure!(
        fs.faultline_dirs()?.len() == 1,
        "expected the fault's directory, found {:?}",
        fs.faultline_dirs()?
    );
    agent.revert(&id)?;
    let after = wait_free(&fs, before, block)?;
    ensure!(
        after.abs_diff(before) <= block,
        "free space is {after} after revert, {before} before the fill"
    );

    // A target usage, as df's Use% counts it.
    let id = agent.apply(&[
        "disk",
        "fill",
        "--path",
        &path,
        "--percent",
        "80",
        "--floor",
        "16MiB",
        "--for",
        "60s",
    ])?;
    let (size, free, _) = fs.figures()?;
    let used = 100.0 * (size - free) as f64 / size as f64;
    let expected = (size as f64 * 0.2).round() as u64;
    note(
        TEST,
        format!(
            "--percent 80: free {free} bytes ({used:.3}% used), expected {expected} ({:+} bytes)",
            free as i64 - expected as i64
        ),
    );
    ensure!(
        free.abs_diff(expected) <= block,
        "free space is {free}, expected {expected} within one block"
    );
    agent.revert(&id)?;
    wait_free(&fs, before, block)?;
    agent.assert_clean()
}

#[test]
fn a_fill_that_would_cross_the_floor_is_refused_with_the_numbers() -> Result<()> {
    const TEST: &str = "a_fill_that_would_cross_the_floor_is_refused_with_the_numbers";
    if !require_root(TEST) {
        return Ok(());
    }
    let fs = LoopFs::new(256)?;
    let (_ns, agent) = agent(&[])?;
    agent.watch_dir(&fs.path());
    let path = fs.path().display().to_string();
    let before = fs.free()?;

    // The default floor (1 GiB) is more than this filesystem holds.
    let stderr = agent.cli_fails(
        &[
            "disk", "fill", "--path", &path, "--size", "10MiB", "--for", "10s",
        ],
        4,
    )?;
    ensure!(
        stderr.contains("default floor of 1.0GiB") && stderr.contains("free of"),
        "the refusal does not give the floor and the figures: {stderr}"
    );
    let stderr = agent.cli_fails(
        &[
            "disk",
            "fill",
            "--path",
            &path,
            "--percent",
            "95",
            "--floor",
            "64MiB",
            "--for",
            "10s",
        ],
        4,
    )?;
    ensure!(
        stderr.contains("floor of 64.0MiB") && stderr.contains("at most"),
        "the refusal does not give the floor and what could be taken: {stderr}"
    );
    note(TEST, stderr.trim());
    for (args, field) in [
        (vec!["--path", "relative/dir", "--size", "1MiB"], "path"),
        (vec!["--path", "/nonexistent-fld", "--size", "1MiB"], "path"),
        (vec!["--path", &path, "--size", "0"], "size"),
        (vec!["--path", &path, "--percent", "150"], "percent"),
    ] {
        let mut full = vec!["disk", "fill"];
        full.extend(args);
        full.extend(["--floor", "1MiB", "--for", "10s"]);
        let stderr = agent.cli_fails(&full, 2)?;
        ensure!(
            stderr.contains(field),
            "{full:?}: stderr does not name {field}: {stderr}"
        );
    }
    ensure!(agent.faults()?.is_empty(), "a refused request left a fault");
    ensure!(fs.free()? == before, "a refused request took space");
    agent.assert_clean()
}

#[test]
fn the_state_directory_keeps_its_reserve() -> Result<()> {
    const TEST: &str = "the_state_directory_keeps_its_reserve";
    if !require_root(TEST) {
        return Ok(());
    }
    let fs = LoopFs::new(256)?;
    let ns = Netns::create(&format!("fld-{}-{}", std::process::id(), unique()))?;
    // The agent journals on the filesystem it is asked to fill.
    let agent = Agent::start_with_state_under(&ns, &fs.path(), &["--disk-reserve", "64MiB"])?;
    agent.watch_dir(&fs.path());
    let path = fs.path().display().to_string();
    let free = fs.free()?;

    let greedy = format!("{}KiB", (free - 32 * MIB) / 1024);
    let stderr = agent.cli_fails(
        &[
            "disk", "fill", "--path", &path, "--size", &greedy, "--floor", "8MiB", "--for", "10s",
        ],
        4,
    )?;
    ensure!(
        stderr.contains("reserve of 64.0MiB"),
        "the refusal does not name the agent's reserve: {stderr}"
    );
    // Up to the reserve is accepted, and the agent still journals and reverts.
    let fair = format!("{}KiB", (free - 65 * MIB) / 1024);
    let id = agent.apply(&[
        "disk", "fill", "--path", &path, "--size", &fair, "--floor", "8MiB", "--for", "60s",
    ])?;
    let during = fs.free()?;
    note(
        TEST,
        format!("free {free} -> {during} bytes with a 64 MiB reserve"),
    );
    ensure!(
        during >= 64 * MIB,
        "the fill left {during} bytes, less than the reserve"
    );
    agent.revert(&id)?;
    ensure!(
        agent.fault(&id)?["state"] == "reverted",
        "the fault did not revert"
    );
    agent.assert_clean()
}

#[test]
fn a_fill_is_removed_after_the_agent_is_killed() -> Result<()> {
    const TEST: &str = "a_fill_is_removed_after_the_agent_is_killed";
    if !require_root(TEST) {
        return Ok(());
    }
    let fs = LoopFs::new(256)?;
    let (_ns, mut agent) = agent(&[])?;
    agent.watch_dir(&fs.path());
    let path = fs.path().display().to_string();
    let (_, before, block) = fs.figures()?;
    agent.apply(&[
        "disk", "fill", "--path", &path, "--size", "50MiB", "--floor", "16MiB", "--for", "60s",
    ])?;
    ensure!(!fs.faultline_dirs()?.is_empty(), "no fill directory");
    agent.kill()?;
    ensure!(
        !fs.faultline_dirs()?.is_empty(),
        "the fill went with the agent"
    );
    agent.restart()?;
    let after = wait_free(&fs, before, block)?;
    note(
        TEST,
        format!("free {before} before, {after} after the restart's recovery"),
    );
    ensure!(
        after.abs_diff(before) <= block,
        "free space {after} after recovery, {before} before"
    );
    agent.assert_clean().context("after the restart")
}
