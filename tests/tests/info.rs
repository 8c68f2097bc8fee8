//! `faultline info` against the kernel itself: what the agent reports about netem, the cgroup
//! version, TCX and nftables is checked with independent probes, on this host and in the
//! real-kernel guest (where netem is loaded and cgroup v2 is mounted).

use std::{fs, path::Path};

use anyhow::{ensure, Context as _, Result};
use faultline_tests::{note, require_root, unique, Agent, Netns};
use serde_json::Value;

fn capability<'a>(info: &'a Value, name: &str) -> Result<&'a Value> {
    info["capabilities"]
        .as_array()
        .context("no capabilities in info")?
        .iter()
        .find(|c| c["name"] == name)
        .with_context(|| format!("info lists no {name} capability"))
}

/// Whether the running kernel has sch_netem: loaded, or built in according to its config.
fn kernel_has_netem() -> bool {
    if Path::new("/sys/module/sch_netem").exists() {
        return true;
    }
    let release = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    fs::read_to_string(format!("/lib/modules/{}/modules.dep", release.trim()))
        .map(|deps| deps.contains("/sch_netem.ko"))
        .unwrap_or(false)
}

fn cgroup_version() -> Result<u64> {
    const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
    let path = std::ffi::CString::new("/sys/fs/cgroup")?;
    // SAFETY: statfs fills the zeroed struct we own; the path is a valid C string.
    let mut fs: libc::statfs = unsafe { std::mem::zeroed() };
    ensure!(
        unsafe { libc::statfs(path.as_ptr(), &mut fs) } == 0,
        "statfs /sys/fs/cgroup: {}",
        std::io::Error::last_os_error()
    );
    Ok(if fs.f_type == CGROUP2_SUPER_MAGIC {
        2
    } else {
        1
    })
}

#[test]
fn info_matches_what_the_kernel_offers() -> Result<()> {
    if !require_root("info_matches_what_the_kernel_offers") {
        return Ok(());
    }
    let ns = Netns::create(&format!("fl-{}-{}-i", std::process::id(), unique()))?;
    let agent = Agent::start(&ns)?;
    let info: Value = serde_json::from_str(&agent.cli_ok(&["info", "-o", "json"])?)?;

    let netem = capability(&info, "netem")?;
    let has_netem = kernel_has_netem();
    ensure!(
        netem["available"] == has_netem,
        "info says netem available={}, the kernel says {has_netem}: {}",
        netem["available"],
        netem["detail"]
    );
    if !has_netem {
        let detail = netem["detail"].as_str().unwrap_or_default();
        ensure!(
            detail.contains("sch_netem") && detail.contains("loss"),
            "a missing netem must be named, with what works instead: {detail}"
        );
    }
    let version = cgroup_version()?;
    ensure!(
        info["cgroup_version"] == version,
        "info says cgroup v{}, /sys/fs/cgroup is v{version}",
        info["cgroup_version"]
    );
    let release = fs::read_to_string("/proc/sys/kernel/osrelease")?;
    ensure!(
        info["kernel_release"] == release.trim(),
        "kernel release differs"
    );
    ensure!(
        capability(&info, "nftables")?["available"] == true,
        "nftables not detected"
    );
    ensure!(
        capability(&info, "cls_bpf")?["available"] == true,
        "tc classifiers not detected"
    );
    // Both this host's kernel and Debian's stock kernel have them.
    for name in ["tbf", "ifb"] {
        ensure!(
            capability(&info, name)?["available"] == true,
            "{name} not detected: {}",
            capability(&info, name)?["detail"]
        );
    }
    // Per-device I/O limits: blkio's throttle files on v1, the io controller on v2.
    let has_io_limits = if version == 2 {
        fs::read_to_string("/sys/fs/cgroup/cgroup.controllers")?
            .split_whitespace()
            .any(|c| c == "io")
    } else {
        std::path::Path::new("/sys/fs/cgroup/blkio/blkio.throttle.read_bps_device").exists()
    };
    let io_limits = capability(&info, "io_limits")?;
    ensure!(
        io_limits["available"] == has_io_limits,
        "info says io_limits available={}, the cgroup files say {has_io_limits}: {}",
        io_limits["available"],
        io_limits["detail"]
    );
    let fallocate = capability(&info, "fallocate")?;
    ensure!(
        fallocate["detail"]
            .as_str()
            .is_some_and(|d| d.contains("state directory")),
        "fallocate does not say where it was probed: {fallocate}"
    );
    note(
        "info_matches_what_the_kernel_offers",
        format!(
            "kernel {}: netem {}, cgroup v{version}, tcx {}, io_limits {has_io_limits}, \
             fallocate {}",
            release.trim(),
            has_netem,
            capability(&info, "tcx")?["available"],
            fallocate["available"]
        ),
    );
    Ok(())
}

/// `faultline health`, the command Kubernetes' exec probes run: the agent's gRPC health
/// check, exit status 0 while it serves, 5 once it is gone.
#[test]
fn health_answers_serving_and_fails_once_the_agent_is_gone() -> Result<()> {
    if !require_root("health_answers_serving_and_fails_once_the_agent_is_gone") {
        return Ok(());
    }
    let ns = Netns::create(&format!("fl-{}-{}-health", std::process::id(), unique()))?;
    let mut agent = Agent::start(&ns)?;
    ensure!(agent.cli_ok(&["health"])?.trim() == "SERVING");
    let json: Value = serde_json::from_str(&agent.cli_ok(&[
        "health",
        "--service",
        "faultline.v1.Faults",
        "-o",
        "json",
    ])?)?;
    ensure!(
        json["service"] == "faultline.v1.Faults" && json["status"] == "SERVING",
        "health -o json printed {json}"
    );
    agent.terminate()?;
    agent.cli_fails(&["health"], 5)?;
    Ok(())
}
