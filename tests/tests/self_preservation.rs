//! The agent protects itself from what it injects. Under CPU stress on every core plus busy
//! loops outside faultline, a 2 s block still ends within 150 ms of its deadline (as the agent's
//! audit line of the revert dates it), the agent's threads are in none of the stress cgroups,
//! the stress parent's CPU weight is below the default, and the OOM scores are set: -900 for the
//! agent, 1000 for stress workers. Under memory pressure up to the OOM killer, the killer takes
//! something other than the agent, and the agent reverts its fault on time.
//!
//! Where the memory test may push: in the VM guest (`FAULTLINE_VM_GUEST`, set by its `/init`),
//! which has memory of its own, the whole host, with a memory stress and a hog outside
//! faultline; anywhere else only a memory cgroup of the test's own (300 MiB) holding the agent
//! and the hog, so that the host itself never comes near its OOM killer.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{bail, ensure, Context as _, Result};
use faultline::api::{connect, AgentAddress};
use faultline_proto::v1::{self as pb, faults_client::FaultsClient};
use faultline_tests::{note, require_root, unique, Agent, Netns};
use serde_json::Value;

/// Busy or growing processes outside faultline's control, killed on drop.
struct Hogs(Vec<Child>);

impl Hogs {
    fn spawn(script: &str, count: usize) -> Result<Self> {
        let mut hogs = Self(Vec::new());
        for _ in 0..count {
            hogs.0.push(
                Command::new("sh")
                    .args(["-c", script])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()?,
            );
        }
        Ok(hogs)
    }
}

impl Drop for Hogs {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Doubles a shell string until something stops it: a hog of memory.
const MEMORY_HOG: &str = "x=0123456789abcdef; while :; do x=\"$x$x\"; done";

/// The fault's deadline, as the agent holds it.
fn deadline(agent: &Agent, id: &str) -> Result<SystemTime> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let channel = connect(&AgentAddress::Unix(agent.socket())).await?;
        let fault = FaultsClient::new(channel)
            .get(pb::GetRequest { id: id.to_owned() })
            .await?
            .into_inner();
        let at = fault.deadline.context("no deadline")?;
        Ok(SystemTime::UNIX_EPOCH + Duration::new(at.seconds as u64, at.nanos as u32))
    })
}

/// `2026-12-07T11:44:19.769Z` (the audit log's times) as a time.
fn parse_rfc3339_ms(text: &str) -> Result<SystemTime> {
    let bad = || anyhow::anyhow!("not an RFC 3339 UTC time: {text}");
    let (date, time) = text.trim_end_matches('Z').split_once('T').ok_or_else(bad)?;
    let d: Vec<i64> = date.split('-').map(str::parse).collect::<Result<_, _>>()?;
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let t: Vec<i64> = hms.split(':').map(str::parse).collect::<Result<_, _>>()?;
    ensure!(d.len() == 3 && t.len() == 3, "{}", bad());
    // Days from the civil date (Howard Hinnant's algorithm).
    let (y, m, day) = (d[0] - i64::from(d[1] <= 2), d[1], d[2]);
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + t[0] * 3600 + t[1] * 60 + t[2];
    let millis: u64 = format!("{frac:0<3}")[..3].parse()?;
    Ok(SystemTime::UNIX_EPOCH + Duration::from_secs(secs as u64) + Duration::from_millis(millis))
}

/// How long after its deadline the agent reverted fault `id`, by its audit line.
fn revert_lateness(agent: &Agent, id: &str, deadline: SystemTime) -> Result<Duration> {
    let wait = Instant::now() + Duration::from_secs(10);
    loop {
        let text = fs::read_to_string(agent.state_dir().join("audit.log"))?;
        let line = text
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|l| l["rpc"] == "automatic-revert" && l["fault"]["id"] == id);
        if let Some(line) = line {
            ensure!(
                line["reason"] == "deadline" && line["result"] == "ok",
                "the fault ended as {line:#}"
            );
            let at = parse_rfc3339_ms(line["time"].as_str().context("no time")?)?;
            return Ok(at.duration_since(deadline).unwrap_or_default());
        }
        ensure!(Instant::now() < wait, "no revert of {id} in the audit log");
        thread::sleep(Duration::from_millis(50));
    }
}

/// Whether this process has CAP_SYS_RESOURCE, which lowering an OOM score needs (root on
/// some machines runs without it).
fn can_lower_oom_scores() -> Result<bool> {
    let status = fs::read_to_string("/proc/self/status")?;
    let effective = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .context("no CapEff in /proc/self/status")?;
    let caps = u64::from_str_radix(effective.trim(), 16)?;
    // CAP_SYS_RESOURCE is capability 24 (linux/capability.h).
    Ok(caps & (1 << 24) != 0)
}

/// The agent's own score is -900, where this machine lets it lower it; otherwise it says why
/// in its log (and the VM guest checks the value).
fn check_agent_score(test: &str, agent: &Agent, pid: u32) -> Result<()> {
    if can_lower_oom_scores()? {
        let adj = oom_score_adj(pid)?;
        ensure!(adj == -900, "the agent's oom_score_adj is {adj}");
    } else {
        ensure!(
            agent
                .log()
                .contains("cannot lower the agent's OOM score adjustment (needs CAP_SYS_RESOURCE"),
            "the agent did not say it could not lower its OOM score"
        );
        faultline_tests::skip(
            test,
            "root here has no CAP_SYS_RESOURCE, so the agent's -900 cannot be set (it says so in \
             its log); the VM guest checks it",
        );
    }
    Ok(())
}

fn oom_score_adj(pid: u32) -> Result<i32> {
    let path = format!("/proc/{pid}/oom_score_adj");
    Ok(fs::read_to_string(&path)
        .with_context(|| format!("reading {path}"))?
        .trim()
        .parse()?)
}

fn block(agent: &Agent, duration: &str) -> Result<String> {
    agent.apply(&[
        "block", "--dir", "in", "--proto", "tcp", "--port", "8080", "--for", duration,
    ])
}

#[test]
fn under_cpu_stress_and_hogs_a_block_still_ends_on_time() -> Result<()> {
    const T: &str = "under_cpu_stress_and_hogs_a_block_still_ends_on_time";
    if !require_root(T) {
        return Ok(());
    }
    let ns = Netns::create(&format!("ffl-{}-{}-c", std::process::id(), unique()))?;
    let agent = Agent::start(&ns)?;
    let pid = agent.pid().context("the agent is not running")?;
    check_agent_score(T, &agent, pid)?;
    let stress = agent.apply(&["stress", "cpu", "--load", "100", "--for", "30s"])?;
    let cores = thread::available_parallelism()?.get();
    let _hogs = Hogs::spawn("while :; do :; done", cores)?;
    thread::sleep(Duration::from_secs(1));

    let cpu = Path::new("/sys/fs/cgroup/cpu").join(agent.cgroup_parent());
    let workers: Vec<u32> = fs::read_to_string(cpu.join(&stress).join("cgroup.procs"))
        .or_else(|_| {
            fs::read_to_string(
                Path::new("/sys/fs/cgroup")
                    .join(agent.cgroup_parent())
                    .join(&stress)
                    .join("cgroup.procs"),
            )
        })?
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    ensure!(!workers.is_empty(), "the CPU stress has no workers");
    for worker in &workers {
        ensure!(
            oom_score_adj(*worker)? == 1000,
            "worker {worker}'s oom_score_adj is {}",
            oom_score_adj(*worker)?
        );
    }
    for parent in agent.cgroup_parents() {
        for (file, expected) in [("cpu.shares", "512"), ("cpu.weight", "50")] {
            if let Ok(weight) = fs::read_to_string(parent.join(file)) {
                ensure!(
                    weight.trim() == expected,
                    "{file} of the stress parent is {weight}"
                );
            }
        }
    }
    let parent = format!("/{}", agent.cgroup_parent());
    for task in fs::read_dir(format!("/proc/{pid}/task"))? {
        let cgroups = fs::read_to_string(task?.path().join("cgroup"))?;
        ensure!(
            !cgroups.lines().any(|l| l.contains(&parent)),
            "an agent thread is in a stress cgroup: {cgroups}"
        );
    }

    let mut late = Vec::new();
    for _ in 0..3 {
        let started = Instant::now();
        let id = block(&agent, "2s")?;
        let due = deadline(&agent, &id)?;
        late.push((revert_lateness(&agent, &id, due)?, started.elapsed()));
    }
    agent.revert(&stress)?;
    note(
        T,
        format!(
            "CPU stress 100 % on {cores} cores and {cores} busy loops outside faultline: 2 s blocks \
             reverted after their deadline by (revert, whole test step): {late:.1?}"
        ),
    );
    // The VM guest's two vCPUs are threads of a software emulator competing with the host's
    // own work: with both saturated, the guest's timers fire hundreds of milliseconds late
    // whatever runs in it (measured: 22-358 ms). The 150 ms bound is for real CPUs.
    let bound = if std::env::var_os("FAULTLINE_VM_GUEST").is_some() {
        Duration::from_secs(1)
    } else {
        Duration::from_millis(150)
    };
    for (lateness, _) in &late {
        ensure!(
            *lateness <= bound,
            "a 2 s block was reverted {lateness:?} after its deadline: {late:?}"
        );
    }
    agent.assert_clean()
}

/// A memory cgroup (v1) of the test's own with a limit, removed on drop after its processes
/// are killed.
struct MemoryCgroup(PathBuf);

impl MemoryCgroup {
    fn new(limit: u64) -> Result<Self> {
        let dir = PathBuf::from(format!(
            "/sys/fs/cgroup/memory/ffl-oom-{}-{}",
            std::process::id(),
            unique()
        ));
        fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let cgroup = Self(dir);
        fs::write(cgroup.0.join("memory.limit_in_bytes"), limit.to_string())?;
        // Pages of the hog are not swapped out: the limit is met, not postponed.
        let _ = fs::write(cgroup.0.join("memory.swappiness"), "0");
        Ok(cgroup)
    }

    /// `sh -c` that joins the cgroup and then runs its arguments.
    fn join_script(&self) -> String {
        format!(
            "echo $$ > {} && exec \"$@\"",
            self.0.join("cgroup.procs").display()
        )
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        for _ in 0..50 {
            let procs = fs::read_to_string(self.0.join("cgroup.procs")).unwrap_or_default();
            if procs.trim().is_empty() {
                break;
            }
            for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                // SAFETY: kill(2) with a pid read from the test's own cgroup.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = fs::remove_dir(&self.0);
    }
}

#[test]
fn under_memory_pressure_the_oom_killer_takes_another_and_faults_revert_on_time() -> Result<()> {
    const T: &str = "under_memory_pressure_the_oom_killer_takes_another_and_faults_revert_on_time";
    if !require_root(T) {
        return Ok(());
    }
    let guest = std::env::var_os("FAULTLINE_VM_GUEST").is_some();
    let ns = Netns::create(&format!("ffl-{}-{}-m", std::process::id(), unique()))?;
    let cgroup = if guest {
        None
    } else {
        if !Path::new("/sys/fs/cgroup/memory/cgroup.procs").exists() {
            faultline_tests::skip(
                T,
                "no cgroup v1 memory hierarchy to hold the pressure off this host (the VM \
                 guest runs the whole-host version)",
            );
            return Ok(());
        }
        Some(MemoryCgroup::new(300 << 20)?)
    };
    // Declared after the cgroup: stopped before the cgroup's guard kills what is left in it.
    let agent = match &cgroup {
        Some(cgroup) => {
            let script = cgroup.join_script();
            Agent::start_wrapped(&ns, &["sh", "-c", &script, "sh"], &[])?
        }
        None => Agent::start(&ns)?,
    };
    let pid = agent.pid().context("the agent is not running")?;
    check_agent_score(T, &agent, pid)?;
    let id = block(&agent, "8s")?;
    let due = deadline(&agent, &id)?;
    // In the guest, a memory stress besides: its workers are the first the killer takes.
    let stress = if guest {
        Some(agent.apply(&["stress", "memory", "--size", "40%", "--for", "30s"])?)
    } else {
        None
    };
    let hog_script = match &cgroup {
        Some(cgroup) => format!(
            "echo $$ > {} && {MEMORY_HOG}",
            cgroup.0.join("cgroup.procs").display()
        ),
        None => MEMORY_HOG.to_owned(),
    };
    let mut hog = Hogs::spawn(&hog_script, 1)?;
    let started = Instant::now();
    // In the emulated guest the hog grows the whole host's memory at emulated speed, and the
    // killer takes the stress's workers first: it took 93.8 s there, alone on a 2-core host
    // (2026-12-08), where a minute was allowed. The time it took is in the note below.
    let hog_limit = Duration::from_secs(if guest { 180 } else { 60 });
    let status = loop {
        if let Some(status) = hog.0[0].try_wait()? {
            break status;
        }
        if started.elapsed() > hog_limit {
            bail!("the memory hog was still running after {hog_limit:?}");
        }
        thread::sleep(Duration::from_millis(50));
    };
    hog.0.clear();
    use std::os::unix::process::ExitStatusExt as _;
    ensure!(
        status.signal() == Some(libc::SIGKILL),
        "the memory hog ended with {status}, not killed by the OOM killer"
    );
    if let Some(cgroup) = &cgroup {
        let control = fs::read_to_string(cgroup.0.join("memory.oom_control"))?;
        let kills: u64 = control
            .lines()
            .find_map(|l| l.strip_prefix("oom_kill "))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0);
        ensure!(kills >= 1, "the cgroup's OOM killer never ran: {control}");
    }
    ensure!(
        Path::new(&format!("/proc/{pid}")).exists() && agent.cli(&["info"])?.status.success(),
        "the agent did not survive the OOM killer"
    );
    let lateness = revert_lateness(&agent, &id, due)?;
    let stress_state = match &stress {
        Some(stress) => {
            let fault = agent.settled_fault(stress, Duration::from_secs(2))?;
            let _ = agent.revert(stress);
            format!(", the memory stress is {}", fault["state"])
        }
        None => String::new(),
    };
    note(
        T,
        format!(
            "{}: the hog was OOM-killed after {:.1?}{stress_state}; the agent lives; the 8 s \
             block was reverted {lateness:.1?} after its deadline",
            if guest {
                "whole host (VM guest)"
            } else {
                "memory cgroup of 300 MiB holding the agent and the hog"
            },
            started.elapsed()
        ),
    );
    let limit = if guest { 500 } else { 150 };
    ensure!(
        lateness <= Duration::from_millis(limit),
        "the block was reverted {lateness:?} after its deadline"
    );
    agent.assert_clean()
}
