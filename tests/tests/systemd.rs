//! The systemd unit in systemd/: systemd accepts it, and the agent does its work (block, loss,
//! stress) with exactly the capabilities the unit grants, no more (run under `setpriv` with the
//! unit's bounding set).

use std::{
    fs, io,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{bail, ensure, Context as _, Result};
use faultline_tests::{
    note, process, require_root, skip,
    traffic::{tcp_connect, tcp_listen, udp_loss},
    Agent, Lab,
};

const P: u16 = 8080;
const U: u16 = 9000;

fn unit_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../systemd/faultline.service")
}

/// The unit's `CapabilityBoundingSet=`, as setpriv names capabilities (`net_admin`).
fn unit_capabilities() -> Result<Vec<String>> {
    let text = fs::read_to_string(unit_path())?;
    let line = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("CapabilityBoundingSet="))
        .context("the unit has no CapabilityBoundingSet=")?;
    let caps: Vec<String> = line
        .split_whitespace()
        .map(|c| c.trim_start_matches("CAP_").to_ascii_lowercase())
        .collect();
    ensure!(
        !caps.is_empty(),
        "the unit's CapabilityBoundingSet= is empty"
    );
    Ok(caps)
}

#[test]
fn systemd_accepts_the_unit() -> Result<()> {
    let Ok(analyze) = which("systemd-analyze") else {
        skip(
            "systemd_accepts_the_unit",
            "systemd-analyze is not installed (no systemd)",
        );
        return Ok(());
    };
    // verify insists that ExecStart's program exists: point it at the binary under test.
    let dir = tempfile::tempdir()?;
    let unit = dir.path().join("faultline.service");
    let text = fs::read_to_string(unit_path())?.replace(
        "/usr/bin/faultline",
        &process::faultline_bin()?.display().to_string(),
    );
    fs::write(&unit, text)?;
    // --man=no: the unit's Documentation= names man pages that the Debian package installs,
    // not the build host.
    let out = Command::new(analyze)
        .args(["verify", "--man=no"])
        .arg(&unit)
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.success() && stderr.trim().is_empty(),
        "systemd-analyze verify: {}{stderr}",
        out.status
    );
    Ok(())
}

#[test]
fn faults_work_with_only_the_units_capabilities() -> Result<()> {
    if !require_root("faults_work_with_only_the_units_capabilities") {
        return Ok(());
    }
    let caps = unit_capabilities()?;
    // Root gets exactly the bounding set at exec, as under systemd with the unit's settings.
    let bounding = format!(
        "-all,{}",
        caps.iter()
            .map(|c| format!("+{c}"))
            .collect::<Vec<_>>()
            .join(",")
    );
    let lab = Lab::new()?;
    let tcp = SocketAddr::from((lab.b.v4, P));
    let udp = SocketAddr::from((lab.b.v4, U));
    let _listener = tcp_listen(&lab.b.ns, tcp)?;
    let agent = Agent::start_wrapped(&lab.b.ns, &["setpriv", "--bounding-set", &bounding], &[])?;
    let pid = agent.pid().context("the agent is not running")?;
    let effective = effective_capabilities(pid)?;
    let expected = caps
        .iter()
        .map(|c| capability_bit(c))
        .sum::<Result<u64>>()?;
    ensure!(
        effective == expected,
        "the agent runs with capabilities {effective:#x}, expected exactly {expected:#x}"
    );
    note(
        "faults_work_with_only_the_units_capabilities",
        format!("agent runs with {} (CapEff {effective:#x})", caps.join(" ")),
    );

    let block = agent.apply(&[
        "block",
        "--dir",
        "in",
        "--proto",
        "tcp",
        "--port",
        &P.to_string(),
        "--reject",
        "--for",
        "60s",
    ])?;
    match tcp_connect(&lab.a.ns, tcp, Duration::from_millis(1500))? {
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {}
        other => bail!("a rejected port answered {other:?}"),
    }
    let loss = agent.apply(&[
        "loss",
        "--dev",
        &lab.b.dev,
        "--dir",
        "in",
        "--percent",
        "100",
        "--proto",
        "udp",
        "--for",
        "60s",
    ])?;
    let lost = udp_loss(&lab.a.ns, &lab.b.ns, udp, 200)?;
    ensure!(
        lost == 1.0,
        "only {:.1}% lost under 100% loss",
        lost * 100.0
    );

    // Stress too: its cgroups and workers need no capability beyond the unit's.
    let cpu = agent.apply(&[
        "stress", "cpu", "--load", "10", "--cores", "1", "--for", "60s",
    ])?;
    let memory = agent.apply(&["stress", "memory", "--size", "16MiB", "--for", "60s"])?;
    for id in [&cpu, &memory] {
        let fault = agent.fault(id)?;
        ensure!(
            fault["state"] == "active",
            "stress under the unit's capabilities: {fault}"
        );
    }
    agent.revert(&cpu)?;
    agent.revert(&memory)?;

    // Pause and kill a workload whose process runs as another user (nobody): the freezer, and
    // a signal across users (CAP_KILL).
    {
        let mut workload = faultline_tests::cgroup::TestCgroup::create(
            &format!("flw-{}.service", faultline_tests::unique()),
            &["freezer", "cpu"],
        )?;
        // setpriv by its path: a shell that prefers its own applets (busybox's, in the VM
        // guest) would run one that knows no --reuid, and the workload would be gone.
        let setpriv = which("setpriv").context("setpriv")?;
        let pid = workload.spawn(&format!(
            "exec {} --reuid=65534 --regid=65534 --clear-groups sleep 600",
            setpriv.display()
        ))?;
        let started = std::time::Instant::now();
        while process_uid(pid) != Some(65534) {
            ensure!(
                started.elapsed() < Duration::from_secs(10),
                "the workload ({pid}) does not run as nobody: {:?}",
                fs::read_to_string(format!("/proc/{pid}/status"))
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let pause = agent.apply(&["pause", "--cgroup", &workload.path, "--for", "60s"])?;
        agent.revert(&pause)?;
        let kill = agent.apply(&["kill", "--cgroup", &workload.path, "--for", "60s"])?;
        let status = agent.fault(&kill)?["status"].to_string();
        ensure!(
            status.contains(&format!("SIGKILL to {pid} (sleep)")) && !status.contains("failed"),
            "kill of another user's process under the unit's capabilities: {status}"
        );
        agent.revert(&kill)?;
        drop(workload);
    }

    // TCP connect health: raw tracepoints and maps with the unit's capabilities (loaded in the
    // background after start-up). Raw tracepoints attach through bpf(), not perf_event_open, so
    // kernel.perf_event_paranoid is left as it is: Debian's default 3 (the VM's) allows perf
    // events only to CAP_SYS_ADMIN, and must not matter.
    note(
        "faults_work_with_only_the_units_capabilities",
        format!(
            "kernel.perf_event_paranoid is {}",
            fs::read_to_string("/proc/sys/kernel/perf_event_paranoid")?.trim()
        ),
    );
    agent
        .wait_for_tcp_health()
        .context("TCP connect health under the unit's capabilities")?;

    // Shaping on both sides: tbf, the steering classifier, an IFB device.
    for dir in ["out", "in"] {
        let rate = agent.apply(&[
            "rate", "--dev", &lab.b.dev, "--dir", dir, "--rate", "50mbit", "--for", "60s",
        ])?;
        agent.revert(&rate)?;
    }

    agent.revert(&block)?;
    agent.revert(&loss)?;
    tcp_connect(&lab.a.ns, tcp, Duration::from_millis(1500))?.context("connect after revert")?;
    ensure!(
        udp_loss(&lab.a.ns, &lab.b.ns, udp, 200)? == 0.0,
        "loss after revert"
    );
    agent.assert_clean()
}

fn effective_capabilities(pid: u32) -> Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .context("no CapEff in /proc/PID/status")?;
    Ok(u64::from_str_radix(hex.trim(), 16)?)
}

/// The bit of a capability the unit may name (linux/capability.h).
fn capability_bit(name: &str) -> Result<u64> {
    let number = match name {
        "dac_override" => 1,
        "kill" => 5,
        "net_admin" => 12,
        "net_raw" => 13,
        "sys_ptrace" => 19,
        "sys_admin" => 21,
        "sys_resource" => 24,
        "perfmon" => 38,
        "bpf" => 39,
        other => bail!("capability {other} is not known to this test; add its number"),
    };
    Ok(1 << number)
}

/// The real uid of a running process (not a zombie).
fn process_uid(pid: u32) -> Option<u32> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    if status
        .lines()
        .any(|l| l.starts_with("State:") && l.contains("zombie"))
    {
        return None;
    }
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn which(program: &str) -> Result<PathBuf> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
        .context("not found")
}
