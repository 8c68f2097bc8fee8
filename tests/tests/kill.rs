//! `faultline kill`: the processes of a container-like workload are gone and reported (pid,
//! name, time) in `faultline get`; `--name`, `--count` and `--every` pick and repeat; sessions
//! on protected ports are spared without `--force`; PID 1, the agent, unknown workloads and
//! bad expressions are refused before anything is signalled. The workloads are cgroups the
//! tests make (`flw-<pid>-<n>.slice/docker-<id>.scope`) in the hierarchies they need.

use std::{
    path::Path,
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Result};
use faultline_tests::{
    cgroup::{container_id, TestCgroup},
    note, require_root, unique, Agent, Netns,
};
use serde_json::Value;

fn agent(extra: &[&str]) -> Result<(Netns, Agent)> {
    let ns = Netns::create(&format!("flw-{}-{}-k", std::process::id(), unique()))?;
    let agent = Agent::start_with(&ns, extra)?;
    Ok((ns, agent))
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// The fault's status lines.
fn status(fault: &Value) -> Vec<String> {
    fault["status"]
        .as_array()
        .map(|lines| {
            lines
                .iter()
                .filter_map(|l| l.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Waits until `done` holds, for at most `within`.
fn wait_for(within: Duration, mut done: impl FnMut() -> Result<bool>) -> Result<bool> {
    let started = Instant::now();
    while started.elapsed() < within {
        if done()? {
            return Ok(true);
        }
        thread::sleep(Duration::from_millis(50));
    }
    done()
}

#[test]
fn a_containers_processes_are_killed_gone_and_reported() -> Result<()> {
    const T: &str = "a_containers_processes_are_killed_gone_and_reported";
    if !require_root(T) {
        return Ok(());
    }
    let (_ns, agent) = agent(&[])?;
    let id = container_id()?;
    let mut workload = TestCgroup::create(&format!("docker-{id}.scope"), &["cpu", "memory"])?;
    let pids = [
        workload.spawn("exec sleep 600")?,
        workload.spawn("exec sleep 601")?,
    ];

    let fault = agent.apply(&["kill", "--container", &id[..10], "--for", "30s"])?;
    ensure!(
        wait_for(Duration::from_secs(5), || {
            workload.reap();
            Ok(pids.iter().all(|p| !alive(*p)))
        })?,
        "processes {pids:?} survived the kill"
    );
    let f = agent.fault(&fault)?;
    let lines = status(&f);
    note(T, format!("status: {lines:#?}"));
    ensure!(
        lines[0].contains(&format!("container {}", &id[..12])) && lines[0].contains("2 processes"),
        "the first status line is not the resolved container: {lines:?}"
    );
    let round = lines.get(1).cloned().unwrap_or_default();
    for pid in pids {
        ensure!(
            round.contains(&format!("{pid} (sleep)")) && round.contains("SIGKILL"),
            "the kill of {pid} is not reported: {round:?}"
        );
    }
    // The audit log has the same, as the agent's report of the fault.
    let audit = std::fs::read_to_string(agent.state_dir().join("audit.log"))?;
    ensure!(
        audit.lines().any(|l| l.contains("\"fault-report\"")
            && l.contains(&fault)
            && l.contains(&format!("{} (sleep)", pids[0]))),
        "no fault-report line with the kill in the audit log:\n{audit}"
    );
    // The container is gone with its processes: the fault ends by itself, saying so.
    let ended = agent.settled_fault(&fault, Duration::from_secs(5))?;
    ensure!(
        wait_for(Duration::from_secs(5), || Ok(
            agent.fault(&fault)?["state"] == "reverted"
        ))?,
        "the fault did not end with its workload: {ended:#}"
    );
    let reason = agent.fault(&fault)?["reason"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    ensure!(reason.starts_with("target gone"), "reason {reason:?}");
    agent.assert_clean()
}

#[test]
fn name_count_and_every_pick_and_repeat() -> Result<()> {
    const T: &str = "name_count_and_every_pick_and_repeat";
    if !require_root(T) {
        return Ok(());
    }
    let (_ns, agent) = agent(&[])?;
    let mut workload = TestCgroup::create(&format!("flw-{}.service", unique()), &["cpu"])?;
    let sleeps: Vec<u32> = (0..5)
        .map(|n| workload.spawn(&format!("exec sleep {}", 600 + n)))
        .collect::<Result<_>>()?;
    let other = workload.spawn("exec tail -f /dev/null")?;

    // From before the apply: its first round runs while it is applied.
    let started = Instant::now();
    let fault = agent.apply(&[
        "kill",
        "--cgroup",
        &workload.path,
        "--name",
        "^sleep$",
        "--count",
        "2",
        "--every",
        "1s",
        "--for",
        "30s",
    ])?;
    ensure!(
        wait_for(Duration::from_secs(8), || {
            workload.reap();
            Ok(sleeps.iter().all(|p| !alive(*p)))
        })?,
        "sleeps left after 8 s: {:?}",
        sleeps.iter().filter(|p| alive(**p)).collect::<Vec<_>>()
    );
    let took = started.elapsed();
    ensure!(
        alive(other),
        "tail ({other}) does not match ^sleep$ and was killed"
    );
    let f = agent.fault(&fault)?;
    let lines = status(&f);
    note(
        T,
        format!("5 sleeps gone in {took:.1?}; status: {lines:#?}"),
    );
    // Its effect counts what it signalled: the five sleeps, not tail.
    ensure!(
        f["effect"]["counters"]["processes_signalled"] == 5 && f["effect"]["hits"] == 5,
        "the effect is not the five kills: {}",
        f["effect"]
    );
    let killed: Vec<usize> = lines[1..]
        .iter()
        .filter(|l| !l.contains("no process"))
        .map(|l| l.matches("(sleep)").count())
        .collect();
    ensure!(
        killed == [2, 2, 1],
        "expected rounds of 2, 2 and 1 kills, got {killed:?}"
    );
    ensure!(
        took >= Duration::from_millis(1950),
        "three rounds a second apart took {took:?}"
    );
    agent.revert(&fault)?;
    ensure!(alive(other), "the revert killed tail");
    agent.assert_clean()
}

#[test]
fn sessions_on_protected_ports_are_spared_without_force() -> Result<()> {
    const T: &str = "sessions_on_protected_ports_are_spared_without_force";
    if !require_root(T) {
        return Ok(());
    }
    if std::process::Command::new("python3")
        .arg("-c")
        .arg("pass")
        .status()
        .map_or(true, |s| !s.success())
    {
        faultline_tests::skip(
            T,
            "no python3 here to hold a TCP session (the VM guest has none)",
        );
        return Ok(());
    }
    let (ns, agent) = agent(&["--protected-port", "8022"])?;
    let mut workload = TestCgroup::create(&format!("flw-{}.service", unique()), &["cpu"])?;
    let net = format!("nsenter --net={}", ns.path().display());
    let server = workload.spawn(&format!(
        "exec {net} python3 -c 'import socket,time
s=socket.socket(); s.bind((\"127.0.0.1\",8022)); s.listen()
c,_=s.accept(); time.sleep(600)'"
    ))?;
    thread::sleep(Duration::from_millis(500));
    let client = workload.spawn(&format!(
        "exec {net} python3 -c 'import socket,time
c=socket.create_connection((\"127.0.0.1\",8022)); time.sleep(600)'"
    ))?;
    thread::sleep(Duration::from_millis(500));

    let fault = agent.apply(&["kill", "--cgroup", &workload.path, "--for", "30s"])?;
    ensure!(
        wait_for(Duration::from_secs(5), || {
            workload.reap();
            Ok(!alive(client))
        })?,
        "the client ({client}) was not killed"
    );
    ensure!(
        alive(server),
        "the server holding port 8022's session was killed"
    );
    let lines = status(&agent.fault(&fault)?);
    note(T, format!("status: {lines:#?}"));
    ensure!(
        lines
            .iter()
            .any(|l| l.contains(&format!("spared: {server} (python3)")) && l.contains("8022")),
        "the spared server is not reported: {lines:?}"
    );
    agent.revert(&fault)?;
    ensure!(alive(server), "the revert killed the server");
    agent.assert_clean()
}

#[test]
fn init_the_agent_and_unknown_workloads_are_refused() -> Result<()> {
    const T: &str = "init_the_agent_and_unknown_workloads_are_refused";
    if !require_root(T) {
        return Ok(());
    }
    let (_ns, agent) = agent(&[])?;
    let me = agent.pid().unwrap_or_default().to_string();
    let cases: [(&[&str], &str); 6] = [
        (&["--pid", "1"], "PID 1"),
        (&["--pid", &me], "agent"),
        (&["--container", "0123456789abcdef"], "no container"),
        (&["--unit", "flw-no-such"], "flw-no-such.service"),
        (&["--name", "("], "regular expression"),
        (&["--name", "x", "--count", "0"], "count"),
    ];
    for (args, word) in cases {
        let args = [&["kill"], args, &["--for", "10s"]].concat();
        let stderr = agent.cli_fails(&args, 2)?;
        ensure!(stderr.contains(word), "{args:?}: no {word:?} in {stderr}");
    }
    // Without a workload or a name there is nothing to kill.
    agent.cli_fails(&["kill", "--for", "10s"], 2)?;
    ensure!(agent.faults()?.is_empty(), "a refused kill left a fault");
    if !alive(1) {
        bail!("PID 1 is gone");
    }
    agent.assert_clean()
}
