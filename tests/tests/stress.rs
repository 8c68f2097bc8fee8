//! CPU and memory stress: the load and the memory the kernel charges to the fault's cgroup, the
//! guards, and that nothing (cgroup, worker) is left behind. Works on cgroup v1 (this machine)
//! and v2. The agent runs in a namespace of its own only so that each test has its own agent.

use std::{
    fs,
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _, Result};
use faultline_tests::{note, require_root, unique, Agent, Netns};

/// The fault's cgroup directory holding `file`, wherever this host's hierarchy puts it.
fn cgroup_file(agent: &Agent, id: &str, v1_controller: &str, file: &str) -> Option<PathBuf> {
    [
        Path::new("/sys/fs/cgroup").join(v1_controller),
        PathBuf::from("/sys/fs/cgroup"),
    ]
    .into_iter()
    .map(|root| root.join(agent.cgroup_parent()).join(id).join(file))
    .find(|p| p.exists())
}

/// CPU time charged to the fault's cgroup, in seconds.
fn cpu_seconds(agent: &Agent, id: &str) -> Result<f64> {
    if let Some(path) = cgroup_file(agent, id, "cpuacct", "cpuacct.usage") {
        return Ok(fs::read_to_string(path)?.trim().parse::<f64>()? / 1e9);
    }
    let path = cgroup_file(agent, id, "cpu", "cpu.stat").context("the fault has no CPU cgroup")?;
    let text = fs::read_to_string(path)?;
    let usec = text
        .lines()
        .find_map(|l| l.strip_prefix("usage_usec "))
        .context("no usage_usec in cpu.stat")?;
    Ok(usec.trim().parse::<f64>()? / 1e6)
}

fn memory_bytes(agent: &Agent, id: &str) -> Result<u64> {
    let path = cgroup_file(agent, id, "memory", "memory.usage_in_bytes")
        .or_else(|| cgroup_file(agent, id, "memory", "memory.current"))
        .context("the fault has no memory cgroup")?;
    Ok(fs::read_to_string(path)?.trim().parse()?)
}

/// No `faultline/<id>` directory in any hierarchy.
fn cgroup_gone(agent: &Agent, id: &str) -> bool {
    agent
        .cgroup_parents()
        .iter()
        .all(|parent| !parent.join(id).exists())
}

/// The processes in the fault's cgroup(s): its workers.
fn workers_of(agent: &Agent, id: &str) -> Vec<u32> {
    let mut pids: Vec<u32> = agent
        .cgroup_parents()
        .iter()
        .map(|parent| parent.join(id).join("cgroup.procs"))
        .filter_map(|p| fs::read_to_string(p).ok())
        .flat_map(|text| {
            text.lines()
                .filter_map(|l| l.trim().parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect();
    pids.sort_unstable();
    pids.dedup();
    pids
}

/// Which of `pids` still run as a stress worker.
fn alive(pids: &[u32]) -> Vec<u32> {
    pids.iter()
        .copied()
        .filter(|pid| {
            fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| c.split(|b| *b == 0).any(|arg| arg == b"__worker"))
                .unwrap_or(false)
        })
        .collect()
}

/// Reverts the fault and checks its workers and cgroup are gone.
fn revert_leaves_nothing(agent: &Agent, id: &str) -> Result<()> {
    let pids = workers_of(agent, id);
    ensure!(!pids.is_empty(), "no worker in the fault's cgroup");
    agent.revert(id)?;
    // The answer comes once the workers are killed; their exit and the cgroup's removal follow
    // within milliseconds, in the revert's clean-up.
    let until = Instant::now() + Duration::from_secs(2);
    while !(cgroup_gone(agent, id) && alive(&pids).is_empty()) {
        ensure!(
            Instant::now() < until,
            "2 s after the revert: cgroup gone {}, workers {:?} alive",
            cgroup_gone(agent, id),
            alive(&pids)
        );
        thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Held by the tests that measure a CPU load: run at once on a small host, their loads would
/// compete and none would measure its own.
static CPU_MEASURED: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn cpu_measured() -> std::sync::MutexGuard<'static, ()> {
    CPU_MEASURED.lock().unwrap_or_else(|p| p.into_inner())
}

fn agent() -> Result<(Netns, Agent)> {
    let ns = Netns::create(&format!("fl-{}-{}-s", std::process::id(), unique()))?;
    let agent = Agent::start(&ns)?;
    Ok((ns, agent))
}

#[test]
fn cpu_load_is_held_at_the_requested_share() -> Result<()> {
    let _cpu = cpu_measured();
    if !require_root("cpu_load_is_held_at_the_requested_share") {
        return Ok(());
    }
    let (_ns, agent) = agent()?;
    let id = agent.apply(&[
        "stress", "cpu", "--load", "50", "--cores", "1", "--for", "13s",
    ])?;
    // Measure a 10 s window well inside the fault's life.
    thread::sleep(Duration::from_millis(500));
    let (start, cpu_start) = (Instant::now(), cpu_seconds(&agent, &id)?);
    thread::sleep(Duration::from_secs(10));
    let (wall, cpu) = (
        start.elapsed().as_secs_f64(),
        cpu_seconds(&agent, &id)? - cpu_start,
    );
    let share = cpu / wall * 100.0;
    note(
        "cpu_load_is_held_at_the_requested_share",
        format!("requested 50% of 1 CPU, measured {share:.2}% ({cpu:.3} s CPU in {wall:.3} s)"),
    );
    ensure!(
        (share - 50.0).abs() <= 3.0,
        "measured {share:.2}% for a 50% load"
    );

    revert_leaves_nothing(&agent, &id)
}

#[test]
fn memory_is_held_at_the_requested_size() -> Result<()> {
    if !require_root("memory_is_held_at_the_requested_size") {
        return Ok(());
    }
    let (_ns, agent) = agent()?;
    let size: u64 = 256 << 20;
    let id = agent.apply(&["stress", "memory", "--size", "256MiB", "--for", "30s"])?;
    let started = Instant::now();
    let mut usage = 0;
    while started.elapsed() < Duration::from_secs(15) {
        usage = memory_bytes(&agent, &id)?;
        if usage as f64 >= size as f64 * 0.98 {
            // Let the worker finish; it stops allocating at the size.
            thread::sleep(Duration::from_millis(500));
            usage = memory_bytes(&agent, &id)?;
            break;
        }
        thread::sleep(Duration::from_millis(100));
    }
    let error = (usage as f64 - size as f64) / size as f64 * 100.0;
    note(
        "memory_is_held_at_the_requested_size",
        format!(
            "requested 256 MiB, cgroup holds {:.2} MiB ({error:+.2}%)",
            usage as f64 / (1 << 20) as f64
        ),
    );
    ensure!(
        error.abs() <= 2.0,
        "cgroup holds {usage} bytes for a 256 MiB request ({error:+.2}%)"
    );

    revert_leaves_nothing(&agent, &id)
}

#[test]
fn bad_stress_requests_name_the_field_and_touch_nothing() -> Result<()> {
    if !require_root("bad_stress_requests_name_the_field_and_touch_nothing") {
        return Ok(());
    }
    let (_ns, agent) = agent()?;
    let cases: [(&[&str], &str); 7] = [
        (&["stress", "cpu", "--load", "0"], "load"),
        (&["stress", "cpu", "--load", "150"], "load"),
        (&["stress", "cpu", "--load", "50", "--cpus", "4096"], "cpus"),
        (&["stress", "cpu", "--load", "50", "--cores", "0"], "cores"),
        (&["stress", "memory", "--size", "64TiB"], "size"),
        (&["stress", "memory", "--size", "12parsecs"], "size"),
        (
            &["stress", "memory", "--size", "256MiB", "--rate", "fast"],
            "rate",
        ),
    ];
    for (args, field) in cases {
        let mut args = args.to_vec();
        args.extend(["--for", "10s"]);
        let stderr = agent.cli_fails(&args, 2)?;
        ensure!(
            stderr.contains(field),
            "{args:?}: stderr does not name {field}: {stderr}"
        );
    }
    ensure!(agent.faults()?.is_empty(), "a refused request left a fault");
    Ok(())
}

#[test]
fn memory_beyond_the_reserve_is_refused() -> Result<()> {
    if !require_root("memory_beyond_the_reserve_is_refused") {
        return Ok(());
    }
    let (_ns, agent) = agent()?;
    let meminfo = fs::read_to_string("/proc/meminfo")?;
    let available_kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no MemAvailable")?;
    // All that is available: less than total memory (valid), more than the reserve allows.
    let size = format!("{}KiB", available_kib);
    let stderr = agent.cli_fails(&["stress", "memory", "--size", &size, "--for", "10s"], 4)?;
    ensure!(
        stderr.contains("reserve"),
        "the refusal does not mention the reserve: {stderr}"
    );
    ensure!(agent.faults()?.is_empty(), "a refused request left a fault");
    Ok(())
}

#[test]
fn workers_die_with_the_agent_and_restart_cleans_up() -> Result<()> {
    if !require_root("workers_die_with_the_agent_and_restart_cleans_up") {
        return Ok(());
    }
    let (_ns, mut agent) = agent()?;
    let cpu = agent.apply(&[
        "stress", "cpu", "--load", "20", "--cores", "1", "--for", "60s",
    ])?;
    let mem = agent.apply(&["stress", "memory", "--size", "64MiB", "--for", "60s"])?;
    let pids = [workers_of(&agent, &cpu), workers_of(&agent, &mem)].concat();
    ensure!(
        pids.len() >= 2,
        "expected a CPU and a memory worker, found {pids:?}"
    );
    agent.kill()?;
    let started = Instant::now();
    while !alive(&pids).is_empty() {
        if started.elapsed() > Duration::from_secs(5) {
            bail!("workers {:?} outlived the agent by 5 s", alive(&pids));
        }
        thread::sleep(Duration::from_millis(50));
    }
    note(
        "workers_die_with_the_agent_and_restart_cleans_up",
        format!("workers gone {:.0?} after SIGKILL", started.elapsed()),
    );
    agent.restart()?;
    ensure!(
        cgroup_gone(&agent, &cpu) && cgroup_gone(&agent, &mem),
        "restart left the faults' cgroups"
    );
    agent.assert_clean()
}

#[test]
fn cpu_ramp_rises_to_the_load() -> Result<()> {
    let _cpu = cpu_measured();
    if !require_root("cpu_ramp_rises_to_the_load") {
        return Ok(());
    }
    let (_ns, agent) = agent()?;
    let id = agent.apply(&[
        "stress", "cpu", "--load", "60", "--cores", "1", "--ramp", "4s", "--for", "15s",
    ])?;
    let share = |from: Duration, to: Duration, start: Instant| -> Result<f64> {
        thread::sleep(from.saturating_sub(start.elapsed()));
        let (t0, c0) = (Instant::now(), cpu_seconds(&agent, &id)?);
        thread::sleep(to.saturating_sub(start.elapsed()));
        Ok((cpu_seconds(&agent, &id)? - c0) / t0.elapsed().as_secs_f64() * 100.0)
    };
    let start = Instant::now();
    // The first second of a 4 s ramp to 60 % averages under 10 %; after the ramp it is 60 %.
    let early = share(Duration::ZERO, Duration::from_secs(1), start)?;
    let late = share(Duration::from_secs(5), Duration::from_secs(8), start)?;
    note(
        "cpu_ramp_rises_to_the_load",
        format!("60% over a 4 s ramp: {early:.1}% in the first second, {late:.1}% after the ramp"),
    );
    ensure!(early < 20.0, "{early:.1}% in the first second of the ramp");
    ensure!(
        (late - 60.0).abs() <= 3.0,
        "{late:.1}% after the ramp, expected 60%"
    );
    revert_leaves_nothing(&agent, &id)
}

/// A container-like workload (`flw-...slice/docker-<id>.scope`) in the hierarchies stress uses,
/// with one idle process in it.
fn container(controllers: &[&str]) -> Result<(String, faultline_tests::cgroup::TestCgroup)> {
    let id = faultline_tests::cgroup::container_id()?;
    let mut workload =
        faultline_tests::cgroup::TestCgroup::create(&format!("docker-{id}.scope"), controllers)?;
    workload.spawn("exec sleep 600")?;
    Ok((id, workload))
}

#[test]
fn cpu_stress_inside_a_container_is_charged_to_it() -> Result<()> {
    let _cpu = cpu_measured();
    const T: &str = "cpu_stress_inside_a_container_is_charged_to_it";
    if !require_root(T) {
        return Ok(());
    }
    let (_ns, agent) = agent()?;
    let (id, workload) = container(&["cpu", "cpuacct"])?;
    let idle = workload.cpu_seconds()?;
    let fault = agent.apply(&[
        "stress",
        "cpu",
        "--load",
        "50",
        "--cores",
        "1",
        "--container",
        &id[..12],
        "--for",
        "20s",
    ])?;
    let nested = agent.nested_cgroups();
    ensure!(
        !nested.is_empty()
            && nested.iter().all(|d| d
                .parent()
                .is_some_and(|p| workload.dirs.iter().any(|w| w == p))),
        "the workers' cgroup is not inside the container: {nested:?}"
    );
    thread::sleep(Duration::from_millis(500));
    let (start, before) = (Instant::now(), workload.cpu_seconds()?);
    thread::sleep(Duration::from_secs(4));
    let share = (workload.cpu_seconds()? - before) / start.elapsed().as_secs_f64() * 100.0;
    let status = agent.fault(&fault)?["status"][0].to_string();
    note(
        T,
        format!(
            "50% of 1 CPU inside the container: the container was charged {share:.1}% \
             (idle before: {idle:.3} s in all); {status}"
        ),
    );
    ensure!(
        (share - 50.0).abs() <= 5.0,
        "the container was charged {share:.1}% for a 50% load inside it"
    );
    agent.revert(&fault)?;
    // The answer comes once the workers are killed; their cgroup goes in the revert's
    // clean-up, within milliseconds.
    let until = Instant::now() + Duration::from_secs(2);
    while !agent.nested_cgroups().is_empty() {
        ensure!(
            Instant::now() < until,
            "2 s after the revert, the workers' cgroup is left in the container: {:?}",
            agent.nested_cgroups()
        );
        thread::sleep(Duration::from_millis(20));
    }
    agent.assert_clean()
}

#[test]
fn memory_stress_inside_a_unit_counts_against_it_and_the_sweep_removes_it() -> Result<()> {
    const T: &str = "memory_stress_inside_a_unit_counts_against_it_and_the_sweep_removes_it";
    if !require_root(T) {
        return Ok(());
    }
    let (_ns, mut agent) = agent()?;
    let unit = format!("flw-{}-{}", std::process::id(), unique());
    let mut workload =
        faultline_tests::cgroup::TestCgroup::create(&format!("{unit}.service"), &["memory"])?;
    workload.spawn("exec sleep 600")?;
    let before = workload.memory_bytes()?;
    let size: u64 = 64 << 20;
    agent.apply(&[
        "stress", "memory", "--size", "64MiB", "--unit", &unit, "--for", "60s",
    ])?;
    let started = Instant::now();
    let mut charged = 0;
    while started.elapsed() < Duration::from_secs(10) {
        charged = workload.memory_bytes()?.saturating_sub(before);
        if charged as f64 >= size as f64 * 0.98 {
            break;
        }
        thread::sleep(Duration::from_millis(100));
    }
    note(
        T,
        format!(
            "64 MiB inside unit {unit}.service: its memory rose by {:.1} MiB",
            charged as f64 / (1 << 20) as f64
        ),
    );
    ensure!(
        charged as f64 >= size as f64 * 0.98,
        "the unit was charged {charged} bytes for 64 MiB inside it"
    );
    // A crash, then start-up: the record of the workload finds the nested cgroup.
    agent.kill()?;
    agent.restart()?;
    ensure!(
        agent.nested_cgroups().is_empty(),
        "start-up left the workers' cgroup in the unit: {:?}",
        agent.nested_cgroups()
    );
    agent.assert_clean()
}
