//! `faultline pause`: a container-like workload's processes make no progress while it is
//! paused (their CPU time, measured by the kernel, stands still) and run again after the
//! revert, also when the agent was SIGKILLed while the workload was frozen and thawed it when it
//! started again; a set of pids is stopped and continued; PID 1, the agent, the agent's own
//! cgroup, unknown workloads and a second pause of one workload are refused.

use std::{
    fs, thread,
    time::{Duration, Instant},
};

use anyhow::{ensure, Result};
use faultline_tests::{
    cgroup::{container_id, TestCgroup},
    note, require_root, unique, Agent, Netns,
};

fn agent() -> Result<(Netns, Agent)> {
    let ns = Netns::create(&format!("flw-{}-{}-p", std::process::id(), unique()))?;
    let agent = Agent::start(&ns)?;
    Ok((ns, agent))
}

/// A container-like workload with a process that spins.
fn spinning() -> Result<(String, TestCgroup)> {
    let id = container_id()?;
    let mut workload = TestCgroup::create(
        &format!("docker-{id}.scope"),
        &["cpu", "cpuacct", "freezer"],
    )?;
    workload.spawn("while :; do :; done")?;
    Ok((id, workload))
}

/// CPU seconds the workload used in `window`.
fn progress(workload: &TestCgroup, window: Duration) -> Result<f64> {
    let before = workload.cpu_seconds()?;
    thread::sleep(window);
    Ok(workload.cpu_seconds()? - before)
}

const WINDOW: Duration = Duration::from_secs(1);

#[test]
fn a_paused_container_makes_no_progress_and_runs_again_after_revert() -> Result<()> {
    const T: &str = "a_paused_container_makes_no_progress_and_runs_again_after_revert";
    if !require_root(T) {
        return Ok(());
    }
    let (_ns, agent) = agent()?;
    let (id, workload) = spinning()?;
    let running = progress(&workload, WINDOW)?;
    let fault = agent.apply(&["pause", "--container", &id[..12], "--for", "30s"])?;
    thread::sleep(Duration::from_millis(200));
    let paused = progress(&workload, WINDOW)?;
    let status = agent.fault(&fault)?["status"].to_string();
    ensure!(status.contains("froze"), "status: {status}");
    agent.revert(&fault)?;
    let thawed = progress(&workload, WINDOW)?;
    note(
        T,
        format!(
            "CPU seconds per second: {running:.3} running, {paused:.4} paused, {thawed:.3} \
             after revert; {status}"
        ),
    );
    ensure!(
        running > 0.3,
        "the workload did not run before: {running:.3}"
    );
    ensure!(
        paused < 0.005,
        "the paused workload used {paused:.4} s of CPU"
    );
    ensure!(thawed > 0.3, "the workload did not run again: {thawed:.3}");
    agent.assert_clean()
}

#[test]
fn the_agent_thaws_at_start_up_what_it_froze_before_it_was_killed() -> Result<()> {
    const T: &str = "the_agent_thaws_at_start_up_what_it_froze_before_it_was_killed";
    if !require_root(T) {
        return Ok(());
    }
    let (_ns, mut agent) = agent()?;
    let (_id, workload) = spinning()?;
    let fault = agent.apply(&["pause", "--cgroup", &workload.path, "--for", "60s"])?;
    agent.kill()?;
    thread::sleep(Duration::from_millis(200));
    let dead = progress(&workload, WINDOW)?;
    ensure!(
        dead < 0.005,
        "the workload ran with the agent dead: {dead:.4}"
    );
    let started = Instant::now();
    agent.restart()?;
    let restarted = started.elapsed();
    let after = progress(&workload, WINDOW)?;
    let f = agent.fault(&fault)?;
    note(
        T,
        format!(
            "frozen while the agent was dead ({dead:.4} CPU s/s); restart took {restarted:.1?}, \
             then {after:.3} CPU s/s; the fault: {} ({})",
            f["state"], f["reason"]
        ),
    );
    ensure!(
        after > 0.3,
        "the workload was not thawed at start-up: {after:.3}"
    );
    ensure!(
        f["state"] == "reverted" && f["reason"] == "recovered",
        "{f:#}"
    );
    agent.assert_clean()
}

/// `R`, `S`, `T` (stopped)... from /proc/PID/stat.
fn state(pid: u32) -> Option<char> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 2..].chars().next()
}

#[test]
fn a_pid_set_is_stopped_and_continued() -> Result<()> {
    const T: &str = "a_pid_set_is_stopped_and_continued";
    if !require_root(T) {
        return Ok(());
    }
    let (_ns, agent) = agent()?;
    let mut workload = TestCgroup::create(&format!("flw-{}.service", unique()), &["cpu"])?;
    let a = workload.spawn("exec sleep 600")?;
    let b = workload.spawn("exec sleep 601")?;
    let list = format!("{a},{b}");
    let fault = agent.apply(&["pause", "--pid", &list, "--for", "30s"])?;
    let stopped = (state(a), state(b));
    agent.revert(&fault)?;
    let continued = (state(a), state(b));
    note(
        T,
        format!("states paused {stopped:?}, after revert {continued:?}"),
    );
    ensure!(
        stopped == (Some('T'), Some('T')),
        "not stopped: {stopped:?}"
    );
    ensure!(
        continued.0 != Some('T') && continued.1 != Some('T'),
        "not continued: {continued:?}"
    );
    agent.assert_clean()
}

#[test]
fn init_the_agent_its_cgroup_and_a_second_pause_are_refused() -> Result<()> {
    const T: &str = "init_the_agent_its_cgroup_and_a_second_pause_are_refused";
    if !require_root(T) {
        return Ok(());
    }
    let (_ns, agent) = agent()?;
    let me = agent.pid().unwrap_or_default();
    let cases: [(&[&str], &str); 3] = [
        (&["--pid", "1"], "PID 1"),
        (&["--pid", &me.to_string()], "agent"),
        (&["--container", "0123456789abcdef"], "no container"),
    ];
    for (args, word) in cases {
        let args = [&["pause"], args, &["--for", "10s"]].concat();
        let stderr = agent.cli_fails(&args, 2)?;
        ensure!(stderr.contains(word), "{args:?}: no {word:?} in {stderr}");
    }
    // The agent's own cgroup, wherever it is not the root.
    let own = fs::read_to_string(format!("/proc/{me}/cgroup"))?;
    if let Some(path) = own
        .lines()
        .filter_map(|l| l.splitn(3, ':').nth(2))
        .find(|p| *p != "/")
    {
        let stderr = agent.cli_fails(&["pause", "--cgroup", path, "--for", "10s"], 2)?;
        ensure!(stderr.contains("agent's own cgroup"), "{stderr}");
    } else {
        note(
            T,
            "the agent is in the root cgroup everywhere: no own cgroup to refuse",
        );
    }

    let (id, _workload) = spinning()?;
    let first = agent.apply(&["pause", "--container", &id, "--for", "30s"])?;
    let stderr = agent.cli_fails(&["pause", "--container", &id[..8], "--for", "10s"], 4)?;
    ensure!(
        stderr.contains(&first),
        "the refusal does not name {first}: {stderr}"
    );
    agent.revert(&first)?;
    ensure!(agent.faults()?.len() == 1, "a refused pause left a fault");
    agent.assert_clean()
}

#[test]
fn a_workload_holding_a_protected_session_is_refused_without_force() -> Result<()> {
    const T: &str = "a_workload_holding_a_protected_session_is_refused_without_force";
    if !require_root(T) {
        return Ok(());
    }
    if std::process::Command::new("python3")
        .args(["-c", "pass"])
        .status()
        .map_or(true, |s| !s.success())
    {
        faultline_tests::skip(
            T,
            "no python3 here to hold a TCP session (the VM guest has none)",
        );
        return Ok(());
    }
    let ns = Netns::create(&format!("flw-{}-{}-p", std::process::id(), unique()))?;
    let agent = Agent::start_with(&ns, &["--protected-port", "8022"])?;
    let mut workload = TestCgroup::create(&format!("flw-{}.service", unique()), &["freezer"])?;
    let net = format!("nsenter --net={}", ns.path().display());
    let server = workload.spawn(&format!(
        "exec {net} python3 -c 'import socket,time
s=socket.socket(); s.bind((\"127.0.0.1\",8022)); s.listen()
c,_=s.accept(); time.sleep(600)'"
    ))?;
    thread::sleep(Duration::from_millis(500));
    // The client is outside the workload: only the server's end is on the protected port.
    let mut client = ns.command("python3");
    client.args([
        "-c",
        "import socket,time\nc=socket.create_connection((\"127.0.0.1\",8022)); time.sleep(600)",
    ]);
    let mut client = client.spawn()?;
    thread::sleep(Duration::from_millis(500));

    let args = ["pause", "--cgroup", &workload.path, "--for", "10s"];
    let stderr = agent.cli_fails(&args, 4)?;
    let _ = client.kill();
    let _ = client.wait();
    note(T, format!("refused: {}", stderr.trim()));
    ensure!(
        stderr.contains("protected port 8022") && stderr.contains(&server.to_string()),
        "the refusal does not name the session: {stderr}"
    );
    ensure!(agent.faults()?.is_empty(), "a refused pause left a fault");
    let forced = agent.apply(&[&args[..], &["--force"]].concat())?;
    agent.revert(&forced)?;
    agent.assert_clean()
}
