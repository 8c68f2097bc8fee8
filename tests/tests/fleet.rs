//! `faultline fleet run` across real agents, each in its own network namespace: ten agents
//! faulted and reverted at once, a guard that a fault breaks aborting the experiment, a guard
//! broken and read from an agent's metrics stream reverting every agent, a killed
//! controller whose faults the agents revert when its leases run out, a controller that stops
//! waiting for an agent that never answers its revert, and experiment files with mistakes
//! refused before anything is applied.

use std::{
    fs,
    net::SocketAddr,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{ensure, Context as _, Result};
use faultline_tests::{
    note, process, require_root, traffic::tcp_listen, unique, Agent, Lab, Netns,
};
use serde_json::Value;

fn fleet(args: &[&str], timeout: Duration) -> Result<std::process::Output> {
    let mut command = Command::new(process::faultline_bin()?);
    command.arg("fleet").args(args);
    process::run(command, timeout)
}

/// The id of the first fault a controller made active on `agent` (within 20 s).
fn first_active(agent: &Agent) -> Result<String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let active = agent.faults()?.into_iter().find(|f| f["state"] == "active");
        if let Some(f) = active {
            return Ok(f["id"].as_str().context("no id")?.to_owned());
        }
        ensure!(Instant::now() < deadline, "the controller applied nothing");
        thread::sleep(Duration::from_millis(50));
    }
}

/// Fault `id` once `agent` has reverted it, which must happen within `limit`.
fn reverted_within(agent: &Agent, id: &str, limit: Duration) -> Result<Value> {
    let started = Instant::now();
    loop {
        let fault = agent.fault(id)?;
        if fault["state"] == "reverted" {
            return Ok(fault);
        }
        ensure!(
            started.elapsed() < limit,
            "fault {id} still {} after {limit:?}",
            fault["state"]
        );
        thread::sleep(Duration::from_millis(50));
    }
}

fn targets(agents: &[&Agent]) -> String {
    agents
        .iter()
        .map(|a| format!("  - address: unix:{}\n", a.socket().display()))
        .collect()
}

#[test]
fn ten_agents_are_faulted_and_reverted_at_once() -> Result<()> {
    const T: &str = "ten_agents_are_faulted_and_reverted_at_once";
    if !require_root(T) {
        return Ok(());
    }
    let pid = std::process::id();
    let namespaces: Vec<Netns> = (0..10)
        .map(|i| Netns::create(&format!("fl-{pid}-{}-f{i}", unique())))
        .collect::<Result<_>>()?;
    let agents: Vec<Agent> = namespaces.iter().map(Agent::start).collect::<Result<_>>()?;
    // Each agent loads its connect-health programs in the background after start-up. Under
    // emulation ten such loads at once took the guest's CPUs for seconds, and the controller's
    // lease renewals went unanswered: the experiment starts once every agent is done.
    for agent in &agents {
        agent.wait_for_tcp_health()?;
    }
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("ten.yaml");
    fs::write(
        &file,
        format!(
            "name: ten agents\ntargets:\n{}duration: 12s\nlease: 3s\nfaults:\n  - fault:\n      kind: block\n      direction: ingress\n      match: {{protocol: tcp, ports: [{{first: 7100, last: 7100}}]}}\n",
            targets(&agents.iter().collect::<Vec<_>>())
        ),
    )?;
    let path = file.display().to_string();
    let started = Instant::now();
    let output = fleet(&["run", &path, "-o", "json"], Duration::from_secs(90))?;
    ensure!(
        output.status.success(),
        "{}",
        process::describe("fleet run", &output)
    );
    // Each agent's own record: the experiment's block was active there (a fault that never
    // became active ends `failed`) and the controller's revert ended it. Asked afterwards:
    // asking each agent while the experiment ran lost the race in the emulated guest, where a
    // CLI call takes about a second and ten at once longer still.
    let held: Vec<bool> = agents
        .iter()
        .map(|a| -> Result<bool> {
            Ok(a.faults()?.iter().any(|f| {
                f["labels"]["experiment"] == "ten agents"
                    && f["state"] == "reverted"
                    && f["reason"] == "requested"
            }))
        })
        .collect::<Result<_>>()?;
    ensure!(
        held.iter().all(|h| *h),
        "not every agent held the fault until the controller reverted it: {held:?}"
    );
    let report: Value = serde_json::from_slice(&output.stdout)?;
    note(
        T,
        format!(
            "10 agents: applied in {:.3}s, reverted in {:.3}s, whole run {:.2?} ({})",
            report["apply_seconds"].as_f64().unwrap_or(-1.0),
            report["revert_seconds"].as_f64().unwrap_or(-1.0),
            started.elapsed(),
            report["outcome"]
        ),
    );
    ensure!(report["faults_applied"] == 10, "{report}");
    for a in &agents {
        a.assert_clean()?;
    }
    Ok(())
}

#[test]
fn a_breached_guard_aborts_the_experiment_and_reverts() -> Result<()> {
    const T: &str = "a_breached_guard_aborts_the_experiment_and_reverts";
    if !require_root(T) {
        return Ok(());
    }
    let lab = Lab::new()?;
    let target = SocketAddr::from((lab.b.v4, 7200));
    let _listener = tcp_listen(&lab.b.ns, target)?;
    let agent = Agent::start_with(
        &lab.a.ns,
        &[
            "--probe",
            &target.to_string(),
            "--probe-interval",
            "200ms",
            "--probe-timeout",
            "500ms",
        ],
    )?;
    agent.wait_for_tcp_health()?;
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("guard.yaml");
    fs::write(
        &file,
        format!(
            "name: lossy db\ntargets:\n{}duration: 60s\nlease: 5s\ninterval: 500ms\nfaults:\n  - fault:\n      kind: loss\n      device: {}\n      direction: egress\n      percent: 100\n      match: {{protocol: tcp, ports: [{{first: 7200, last: 7200}}]}}\nguards:\n  - name: db connects\n    metric: connect_failure_ratio\n    destination: {target}\n    max: 0.5\nslos:\n  - name: Availability\n    metric: connect_success_ratio\n    destination: {target}\n    target: 0.999\n",
            targets(&[&agent]),
            lab.a.dev
        ),
    )?;
    let started = Instant::now();
    let output = fleet(
        &["run", &file.display().to_string()],
        Duration::from_secs(60),
    )?;
    let took = started.elapsed();
    let stdout = String::from_utf8_lossy(&output.stdout);
    note(T, format!("aborted after {took:.2?}:\n{stdout}"));
    ensure!(
        output.status.code() == Some(7),
        "{}",
        process::describe("fleet run", &output)
    );
    ensure!(
        took < Duration::from_secs(15),
        "the guard took {took:?} to abort a 60 s experiment"
    );
    ensure!(
        stdout.contains("aborted: guard db connects breached")
            && stdout.contains("breach: guard db connects"),
        "{stdout}"
    );
    ensure!(
        stdout.contains("Availability") && stdout.contains("❌"),
        "{stdout}"
    );
    agent.assert_clean()
}

#[test]
fn a_guard_breach_streamed_by_an_agent_reverts_every_agent() -> Result<()> {
    const T: &str = "a_guard_breach_streamed_by_an_agent_reverts_every_agent";
    if !require_root(T) {
        return Ok(());
    }
    let pid = std::process::id();
    let namespaces: Vec<Netns> = (0..2)
        .map(|i| Netns::create(&format!("fl-{pid}-{}-g{i}", unique())))
        .collect::<Result<_>>()?;
    let agents: Vec<Agent> = namespaces.iter().map(Agent::start).collect::<Result<_>>()?;
    for a in &agents {
        a.wait_for_tcp_health()?;
    }
    let closed = SocketAddr::from(([127, 0, 0, 1], 7301));
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("streamed.yaml");
    fs::write(
        &file,
        format!(
            "name: streamed guard\ntargets:\n{}duration: 60s\nlease: 5s\ninterval: 100ms\nfaults:\n  - fault:\n      kind: block\n      direction: ingress\n      match: {{protocol: tcp, ports: [{{first: 7302, last: 7302}}]}}\nguards:\n  - name: closed port\n    metric: connect_failure_ratio\n    destination: {closed}\n    max: 0.5\n",
            targets(&agents.iter().collect::<Vec<_>>())
        ),
    )?;
    let path = file.display().to_string();
    let (output, crossed) = thread::scope(|scope| -> Result<_> {
        let run = scope.spawn(|| fleet(&["run", &path, "-o", "json"], Duration::from_secs(60)));
        // Once both agents hold their fault, one refused connect in the second agent's
        // namespace fails the guard; nothing else connects to that port.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let mut held = 0;
            for a in &agents {
                if a.faults()?.iter().any(|f| {
                    f["state"] == "active" && f["labels"]["experiment"] == "streamed guard"
                }) {
                    held += 1;
                }
            }
            ensure!(
                !run.is_finished() && Instant::now() < deadline,
                "the faults were not active on both agents while the experiment ran"
            );
            if held == agents.len() {
                break;
            }
            thread::sleep(Duration::from_millis(50));
        }
        let before = std::time::SystemTime::now();
        let refused = namespaces[1].run(|| std::net::TcpStream::connect(closed))?;
        ensure!(refused.is_err(), "{closed} accepted a connect");
        Ok((run.join().expect("fleet thread panicked")?, before))
    })?;
    ensure!(
        output.status.code() == Some(7),
        "{}",
        process::describe("fleet run", &output)
    );
    let report: Value = serde_json::from_slice(&output.stdout)?;
    let breach = &report["guard_breach"];
    let unix = |t: std::time::SystemTime| {
        t.duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64())
    };
    let (crossed, seen, reverted) = (
        unix(crossed),
        breach["seen_at_unix"].as_f64().unwrap_or(0.0),
        report["reverted_at_unix"].as_f64().unwrap_or(0.0),
    );
    note(
        T,
        format!(
            "{}: seen {:.0} ms after the refused connect, every fault reverted {:.0} ms after it",
            report["outcome"],
            (seen - crossed) * 1e3,
            (reverted - crossed) * 1e3
        ),
    );
    // Connect health counts the host's connects, whatever their namespace: either agent may
    // be the first to report the breach.
    let by = breach["agent"].as_str().unwrap_or_default();
    ensure!(
        agents
            .iter()
            .any(|a| by == format!("unix:{}", a.socket().display()))
            && report["outcome"] == format!("aborted: guard closed port breached on {by}")
            && breach["guard"] == "closed port",
        "{report}"
    );
    ensure!(
        breach["sampled_at_unix"].as_f64().is_some_and(|t| t > 0.0)
            && crossed <= seen
            && seen <= reverted,
        "breach sampled, seen and reverted out of order: {report}"
    );
    ensure!(report["faults_applied"] == 2, "{report}");
    for a in &agents {
        a.assert_clean()?;
    }
    Ok(())
}

#[test]
fn an_experiment_aimed_at_nothing_aborts_when_asked_to() -> Result<()> {
    const T: &str = "an_experiment_aimed_at_nothing_aborts_when_asked_to";
    if !require_root(T) {
        return Ok(());
    }
    let ns = Netns::create(&format!("fl-{}-{}-n", std::process::id(), unique()))?;
    let agent = Agent::start_with(&ns, &["--ineffective-after", "1s"])?;
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("nothing.yaml");
    // Port 7300 has no traffic here: the block acts on nothing.
    fs::write(
        &file,
        format!(
            "name: aimed at nothing\ntargets:\n{}duration: 60s\nlease: 5s\ninterval: 500ms\nabort: {{on_ineffective: true}}\nfaults:\n  - fault:\n      kind: block\n      direction: ingress\n      match: {{protocol: tcp, ports: [{{first: 7300, last: 7300}}]}}\n",
            targets(&[&agent])
        ),
    )?;
    let started = Instant::now();
    let output = fleet(
        &["run", &file.display().to_string(), "-o", "json"],
        Duration::from_secs(60),
    )?;
    let took = started.elapsed();
    ensure!(
        output.status.code() == Some(7),
        "{}",
        process::describe("fleet run", &output)
    );
    let report: Value = serde_json::from_slice(&output.stdout)?;
    note(
        T,
        format!("aborted after {took:.2?}: {}", report["outcome"]),
    );
    ensure!(
        took < Duration::from_secs(15),
        "flagged only after {took:?} (grace 1 s)"
    );
    let outcome = report["outcome"].as_str().unwrap_or_default();
    ensure!(
        outcome.starts_with("aborted: fault") && outcome.ends_with("acts on nothing"),
        "{outcome}"
    );
    let lines = report["ineffective"]
        .as_array()
        .context("no ineffective lines")?;
    ensure!(
        lines.len() == 1 && lines[0].as_str().is_some_and(|l| l.contains("block")),
        "{lines:?}"
    );
    agent.assert_clean()
}

#[test]
fn a_killed_controller_leaves_the_agents_to_revert_on_lease_expiry() -> Result<()> {
    const T: &str = "a_killed_controller_leaves_the_agents_to_revert_on_lease_expiry";
    if !require_root(T) {
        return Ok(());
    }
    let ns = Netns::create(&format!("fl-{}-{}-k", std::process::id(), unique()))?;
    let agent = Agent::start(&ns)?;
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("kill.yaml");
    fs::write(
        &file,
        format!(
            "name: orphaned\ntargets:\n{}duration: 5m\nlease: 2s\nfaults:\n  - fault:\n      kind: block\n      direction: ingress\n      match: {{protocol: udp, ports: [{{first: 7300, last: 7300}}]}}\n",
            targets(&[&agent])
        ),
    )?;
    let mut controller = Command::new(process::faultline_bin()?)
        .args(["fleet", "run", &file.display().to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let id = first_active(&agent)?;
    // Renewals are every lease / 3; let a few happen, then kill the controller.
    thread::sleep(Duration::from_secs(3));
    controller.kill()?;
    let killed = Instant::now();
    controller.wait()?;
    let fault = reverted_within(&agent, &id, Duration::from_secs(10))?;
    let reverted_after = killed.elapsed();
    ensure!(
        fault["reason"] == "lease expired",
        "reverted for another reason: {fault}"
    );
    note(
        T,
        format!("controller SIGKILLed; the agent reverted {reverted_after:.2?} later (lease 2 s)"),
    );
    ensure!(
        reverted_after <= Duration::from_secs(3),
        "reverted {reverted_after:?} after the controller died, expected within lease + 1 s"
    );
    agent.assert_clean()
}

/// SIGCONTs a stopped process when dropped, so that a failing test leaves no agent frozen.
struct Stopped(libc::pid_t);

impl Stopped {
    fn stop(pid: u32) -> Result<Self> {
        let pid = libc::pid_t::try_from(pid)?;
        // SAFETY: kill(2) with a pid this test started and still owns.
        ensure!(
            unsafe { libc::kill(pid, libc::SIGSTOP) } == 0,
            "SIGSTOP {pid}"
        );
        Ok(Self(pid))
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        // SAFETY: as above.
        unsafe { libc::kill(self.0, libc::SIGCONT) };
    }
}

#[test]
fn a_controller_stops_waiting_for_an_agent_that_never_answers_its_revert() -> Result<()> {
    const T: &str = "a_controller_stops_waiting_for_an_agent_that_never_answers_its_revert";
    if !require_root(T) {
        return Ok(());
    }
    let ns = Netns::create(&format!("fl-{}-{}-s", std::process::id(), unique()))?;
    let agent = Agent::start(&ns)?;
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("frozen.yaml");
    fs::write(
        &file,
        format!(
            "name: frozen\ntargets:\n{}duration: 3s\nlease: 2s\nabort: {{on_agent_lost: false}}\nfaults:\n  - fault:\n      kind: block\n      direction: ingress\n      match: {{protocol: udp, ports: [{{first: 7302, last: 7302}}]}}\n",
            targets(&[&agent])
        ),
    )?;
    let mut command = Command::new(process::faultline_bin()?);
    command.args(["fleet", "run", &file.display().to_string()]);
    let controller = thread::spawn(move || process::run(command, Duration::from_secs(60)));
    let id = first_active(&agent)?;
    // A frozen agent keeps its socket: connections are accepted by the kernel and never
    // answered, as from a host whose packets are dropped.
    let frozen = Stopped::stop(agent.pid().context("the agent's pid")?)?;
    let stopped = Instant::now();
    let output = controller
        .join()
        .map_err(|_| anyhow::anyhow!("the controller's thread panicked"))??;
    let took = stopped.elapsed();
    drop(frozen);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    note(
        T,
        format!("the controller ended {took:.2?} after the agent froze:\n{stdout}{stderr}"),
    );
    ensure!(
        stdout.contains(&format!("not reverted: unix:{}: fault {id}: no answer within 5s; its lease (2s) reverts it on the agent", agent.socket().display())),
        "{stdout}"
    );
    // 3 s of experiment, then 5 s for the revert and 5 s for the last snapshot.
    ensure!(
        took < Duration::from_secs(20),
        "the controller waited {took:?} for a frozen agent"
    );
    // Thawed, the agent finds its lease and its own deadline (the experiment's end plus the
    // lease) long run out, and reverts at once for whichever its timers see first.
    let fault = reverted_within(&agent, &id, Duration::from_secs(3))?;
    ensure!(
        fault["reason"] == "lease expired" || fault["reason"] == "deadline",
        "reverted for another reason: {fault}"
    );
    agent.assert_clean()
}

#[test]
fn experiment_files_with_mistakes_are_refused_before_anything_is_applied() -> Result<()> {
    const T: &str = "experiment_files_with_mistakes_are_refused_before_anything_is_applied";
    if !require_root(T) {
        return Ok(());
    }
    let ns = Netns::create(&format!("fl-{}-{}-e", std::process::id(), unique()))?;
    let agent = Agent::start(&ns)?;
    let good = format!(
        "name: check\ntargets:\n{}duration: 30s\nfaults:\n  - fault:\n      kind: block\n      direction: ingress\n",
        targets(&[&agent])
    );
    let dir = tempfile::tempdir()?;
    for (label, text, expect) in [
        ("unknown key", good.replace("duration:", "durration:"), "unknown field `durration`"),
        ("bad duration", good.replace("30s", "thirty seconds"), "invalid duration"),
        (
            "empty targets",
            "name: check\ntargets: []\nduration: 30s\nfaults:\n  - fault:\n      kind: block\n      direction: ingress\n".to_owned(),
            "targets: empty",
        ),
    ] {
        let file = dir.path().join(format!("{}.yaml", label.replace(' ', "-")));
        fs::write(&file, &text)?;
        let output = fleet(&["run", &file.display().to_string()], Duration::from_secs(30))?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        note(T, format!("{label}: {}", stderr.trim()));
        ensure!(output.status.code() == Some(2), "{label}: {}", process::describe("fleet run", &output));
        ensure!(stderr.contains(expect), "{label}: expected {expect:?} in: {stderr}");
        ensure!(
            label == "empty targets" || stderr.contains("line"),
            "{label}: the error must give the line: {stderr}"
        );
        ensure!(agent.faults()?.is_empty(), "{label}: something was applied");
    }
    agent.assert_clean()
}
