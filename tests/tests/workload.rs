//! The workload resolver, as every family that takes a workload uses it, seen through a rate
//! fault aimed at a workload's traffic: unknown units and containers are refused before
//! anything is touched, with what would be accepted; a container-like cgroup is found by a
//! prefix of its id, where it is shows in `faultline get`, and the fault ends by itself, with
//! the reason, when the workload's last process exits.

use std::{
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Result};
use faultline_tests::{cgroup, note, require_root, skip, Agent, Lab};

#[test]
fn unknown_workloads_are_refused_with_what_would_be_accepted() -> Result<()> {
    const T: &str = "unknown_workloads_are_refused_with_what_would_be_accepted";
    if !require_root(T) {
        return Ok(());
    }
    let lab = Lab::new()?;
    let agent = Agent::start(&lab.a.ns)?;
    let rate = [
        "rate", "--dev", &lab.a.dev, "--rate", "5mbit", "--for", "30s",
    ];
    let cases: [(&[&str], &[&str]); 5] = [
        (
            &["--container", "0123456789ab"],
            &["container", "docker-<id>.scope", "running container"],
        ),
        (&["--container", "nginx"], &["container", "hex digits"]),
        (
            &["--unit", "flw-no-such-unit"],
            &["unit", "flw-no-such-unit.service", "running"],
        ),
        (&["--pod", "0b5e2c4a-0000"], &["pod", "kubepods"]),
        (&["--cgroup", "/"], &["cgroup", "root cgroup"]),
    ];
    for (target, words) in cases {
        let args = [&rate[..], target].concat();
        let stderr = agent.cli_fails(&args, 2)?;
        for word in words {
            ensure!(
                stderr.contains(word),
                "{target:?}: no {word:?} in: {stderr}"
            );
        }
    }
    ensure!(agent.faults()?.is_empty(), "a refused request left a fault");
    agent.assert_clean()
}

#[test]
fn a_container_is_found_by_its_id_shown_and_its_end_ends_the_fault() -> Result<()> {
    const T: &str = "a_container_is_found_by_its_id_shown_and_its_end_ends_the_fault";
    if !require_root(T) {
        return Ok(());
    }
    if cgroup::roots(&["unified"]).is_empty() {
        skip(
            T,
            "no cgroup v2 hierarchy is mounted (a workload's traffic is told by its cgroup v2)",
        );
        return Ok(());
    }
    let lab = Lab::new()?;
    let agent = Agent::start(&lab.a.ns)?;
    let id = cgroup::container_id()?;
    let mut workload =
        cgroup::TestCgroup::create(&format!("docker-{id}.scope"), &["unified", "cpu", "memory"])?;
    let pid = workload.spawn("exec sleep 600")?;

    let fault = agent.apply(&[
        "rate",
        "--dev",
        &lab.a.dev,
        "--rate",
        "5mbit",
        "--container",
        &id[..12],
        "--for",
        "60s",
    ])?;
    let status = agent.fault(&fault)?["status"][0]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    note(T, format!("status: {status}"));
    ensure!(
        status.contains(&format!("container {}", &id[..12]))
            && status.contains(&workload.path)
            && status.contains("1 process"),
        "get does not show where the container is: {status:?}"
    );

    // SAFETY: kill(2) of the process the test started.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    workload.reap();
    let started = Instant::now();
    let ended = loop {
        let f = agent.fault(&fault)?;
        if f["state"] != "active" && f["state"] != "reverting" {
            break f;
        }
        if started.elapsed() > Duration::from_secs(10) {
            bail!("the fault outlived its workload by 10 s: {f:#}");
        }
        thread::sleep(Duration::from_millis(100));
    };
    note(
        T,
        format!(
            "ended {:.1?} after the workload: {}",
            started.elapsed(),
            ended["reason"]
        ),
    );
    ensure!(ended["state"] == "reverted", "{ended:#}");
    let reason = ended["reason"].as_str().unwrap_or_default();
    ensure!(
        reason.starts_with("target gone: container") && reason.contains("no process"),
        "reason {reason:?}"
    );
    agent.assert_clean()
}
