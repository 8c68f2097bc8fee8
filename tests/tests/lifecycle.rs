//! The agent's own life: faults that outlive a killed agent and are reverted by the next one,
//! a classifier that stops at its deadline with no agent at all, a clean SIGTERM, and a
//! clean-up that a crash cut short, finished at the next start.

use std::{
    net::SocketAddr,
    thread,
    time::{Duration, Instant},
};

use anyhow::{ensure, Result};
use faultline_tests::{
    agent::entries,
    note, require_root,
    traffic::{tcp_connect, tcp_listen, udp_loss},
    Agent, Lab,
};

const P: u16 = 8080;
const CONNECT_TIMEOUT: Duration = Duration::from_millis(1500);

#[test]
fn crash_then_restart() -> Result<()> {
    if !require_root("crash_then_restart") {
        return Ok(());
    }
    let lab = Lab::new()?;
    let udp = SocketAddr::from((lab.b.v4, P));
    let tcp = SocketAddr::from((lab.b.v4, 9));
    let _listener = tcp_listen(&lab.b.ns, tcp)?;
    let mut agent = Agent::start(&lab.a.ns)?;

    let loss = agent.apply(&[
        "loss",
        "--dev",
        &lab.a.dev,
        "--dir",
        "out",
        "--percent",
        "100",
        "--proto",
        "udp",
        "--for",
        "60s",
    ])?;
    agent.apply(&[
        "block", "--dir", "out", "--proto", "tcp", "--port", "9", "--for", "60s",
    ])?;
    ensure!(udp_loss(&lab.a.ns, &lab.b.ns, udp, 200)? == 1.0);

    agent.kill()?;
    let lost = udp_loss(&lab.a.ns, &lab.b.ns, udp, 200)?;
    ensure!(
        lost == 1.0,
        "only {:.1}% lost once the agent died",
        lost * 100.0
    );
    ensure!(
        lab.a.ns.nft_table_exists()?,
        "the block vanished with the agent"
    );
    ensure!(
        tcp_connect(&lab.a.ns, tcp, CONNECT_TIMEOUT)?.is_err(),
        "the block stopped blocking once the agent died"
    );
    ensure!(!entries(&agent.pin_dir().join(&loss))?.is_empty());
    ensure!(
        entries(&agent.journal_dir())?.len() == 2,
        "expected 2 journal entries: {:?}",
        entries(&agent.journal_dir())?
    );

    let started = Instant::now();
    agent.restart()?;
    note(
        "crash_then_restart",
        format!("the new agent was ready after {:?}", started.elapsed()),
    );
    let lost = udp_loss(&lab.a.ns, &lab.b.ns, udp, 200)?;
    ensure!(lost == 0.0, "{:.1}% lost after the restart", lost * 100.0);
    tcp_connect(&lab.a.ns, tcp, CONNECT_TIMEOUT)?
        .map_err(|e| anyhow::anyhow!("connect after the restart: {e}"))?;
    ensure!(
        !lab.a.ns.nft_table_exists()?,
        "table inet faultline survived the restart"
    );
    agent.assert_clean()
}

#[test]
fn deadline_without_agent() -> Result<()> {
    if !require_root("deadline_without_agent") {
        return Ok(());
    }
    let lab = Lab::new()?;
    let udp = SocketAddr::from((lab.b.v4, P));
    let mut agent = Agent::start(&lab.a.ns)?;

    agent.apply(&[
        "loss",
        "--dev",
        &lab.a.dev,
        "--dir",
        "out",
        "--percent",
        "100",
        "--proto",
        "udp",
        "--for",
        "5s",
    ])?;
    expires_without_agent("deadline_without_agent", &lab, &mut agent, udp)
}

/// Kills the agent right after it applied a 5 s fault that stops all UDP to `udp`, and checks
/// the kernel ends the fault on time by itself: everything lost at 1 s, nothing at 6 s. (The
/// deadline counts from the request; loading eBPF under software emulation can take seconds of
/// it, hence the margin.)
fn expires_without_agent(test: &str, lab: &Lab, agent: &mut Agent, udp: SocketAddr) -> Result<()> {
    let applied = Instant::now();
    agent.kill()?;
    for (at, count, expected) in [(1, 200, 1.0), (6, 1000, 0.0)] {
        thread::sleep(Duration::from_secs(at).saturating_sub(applied.elapsed()));
        let elapsed = applied.elapsed();
        let lost = udp_loss(&lab.a.ns, &lab.b.ns, udp, count)?;
        note(
            test,
            format!("t={elapsed:.2?}: {:.1}% lost (no agent)", lost * 100.0),
        );
        ensure!(
            lost == expected,
            "{:.1}% lost at t={elapsed:.2?}, expected {:.0}%: the fault does not end at its deadline by itself",
            lost * 100.0,
            expected * 100.0
        );
    }
    agent.restart()?;
    agent.assert_clean()
}

#[test]
fn block_deadline_without_agent() -> Result<()> {
    if !require_root("block_deadline_without_agent") {
        return Ok(());
    }
    let lab = Lab::new()?;
    let udp = SocketAddr::from((lab.b.v4, P));
    let mut agent = Agent::start(&lab.b.ns)?;

    agent.apply(&[
        "block",
        "--dir",
        "in",
        "--proto",
        "udp",
        "--port",
        &P.to_string(),
        "--for",
        "5s",
    ])?;
    // The rules stay until an agent removes them, but the kernel expires what they look up.
    expires_without_agent("block_deadline_without_agent", &lab, &mut agent, udp)
}

#[test]
fn sigterm_cleanup() -> Result<()> {
    if !require_root("sigterm_cleanup") {
        return Ok(());
    }
    let lab = Lab::new()?;
    let udp = SocketAddr::from((lab.b.v4, P));
    let mut agent = Agent::start(&lab.a.ns)?;
    agent.apply(&[
        "block", "--dir", "out", "--proto", "tcp", "--port", "9", "--for", "60s",
    ])?;
    agent.apply(&[
        "loss",
        "--dev",
        &lab.a.dev,
        "--percent",
        "100",
        "--proto",
        "udp",
        "--for",
        "60s",
    ])?;
    ensure!(udp_loss(&lab.a.ns, &lab.b.ns, udp, 200)? == 1.0);

    let (status, took) = agent.terminate()?;
    note(
        "sigterm_cleanup",
        format!("the agent exited {status} {took:?} after SIGTERM"),
    );
    ensure!(status.success(), "the agent exited {status} on SIGTERM");
    ensure!(!agent.socket().exists(), "the socket is still there");
    ensure!(
        !lab.a.ns.nft_table_exists()?,
        "table inet faultline survived the shutdown"
    );
    let lost = udp_loss(&lab.a.ns, &lab.b.ns, udp, 200)?;
    ensure!(lost == 0.0, "{:.1}% lost after the shutdown", lost * 100.0);
    agent.assert_clean()
}

#[test]
fn one_shot_fault_waits_and_ctrl_c_reverts_it() -> Result<()> {
    if !require_root("one_shot_fault_waits_and_ctrl_c_reverts_it") {
        return Ok(());
    }
    let lab = Lab::new()?;
    let udp = SocketAddr::from((lab.b.v4, P));
    let agent = Agent::start(&lab.b.ns)?;

    // Without --detach the CLI stays with its fault until the fault ends.
    let started = Instant::now();
    let expired = agent.cli(&["block", "--dir", "in", "--proto", "udp", "--for", "2s"])?;
    let waited = started.elapsed();
    ensure!(
        expired.status.success(),
        "the one-shot CLI failed: {expired:?}"
    );
    ensure!(
        waited >= Duration::from_secs(2),
        "the CLI returned after {waited:?}, before its 2 s fault ended"
    );
    let stderr = String::from_utf8_lossy(&expired.stderr);
    ensure!(
        stderr.contains("reverted"),
        "the CLI did not report the end: {stderr}"
    );

    // Ctrl-C (SIGINT) in the CLI reverts its fault at once.
    let mut child = std::process::Command::new(faultline_tests::process::faultline_bin()?)
        .arg("--agent")
        .arg(agent.socket())
        .args(["block", "--dir", "in", "--proto", "udp", "--for", "60s"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let started = Instant::now();
    while agent.faults()?.iter().all(|f| f["state"] != "active") {
        ensure!(
            started.elapsed() < Duration::from_secs(10),
            "the fault never became active"
        );
        thread::sleep(Duration::from_millis(50));
    }
    ensure!(
        udp_loss(&lab.a.ns, &lab.b.ns, udp, 100)? == 1.0,
        "the block is not in effect"
    );
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = child.wait()?;
    note(
        "one_shot_fault_waits_and_ctrl_c_reverts_it",
        format!("CLI exit after Ctrl-C: {status}"),
    );
    ensure!(
        agent.faults()?.iter().all(|f| f["state"] == "reverted"),
        "Ctrl-C left the fault active: {:?}",
        agent.faults()?
    );
    ensure!(
        udp_loss(&lab.a.ns, &lab.b.ns, udp, 200)? == 0.0,
        "packets still blocked after Ctrl-C"
    );
    agent.assert_clean()
}

/// Reverts nobody asked for are in the audit log all the same, as the agent's, with why: one at
/// its deadline, one at shutdown.
#[test]
fn automatic_reverts_are_audited_as_the_agents() -> Result<()> {
    if !require_root("automatic_reverts_are_audited_as_the_agents") {
        return Ok(());
    }
    let lab = Lab::new()?;
    let mut agent = Agent::start(&lab.a.ns)?;
    let short = agent.apply(&[
        "block", "--dir", "out", "--proto", "tcp", "--port", "9", "--for", "1s",
    ])?;
    let started = Instant::now();
    while agent.fault(&short)?["state"] != "reverted" {
        ensure!(
            started.elapsed() < Duration::from_secs(10),
            "fault {short} was not reverted at its deadline: {:#}",
            agent.fault(&short)?
        );
        thread::sleep(Duration::from_millis(100));
    }
    let long = agent.apply(&[
        "block", "--dir", "out", "--proto", "tcp", "--port", "10", "--for", "60s",
    ])?;
    let (status, _) = agent.terminate()?;
    ensure!(status.success(), "the agent exited {status} on SIGTERM");

    let log = std::fs::read_to_string(agent.state_dir().join("audit.log"))?;
    let automatic: Vec<serde_json::Value> = log
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<Vec<serde_json::Value>, _>>()?
        .into_iter()
        .filter(|line| line["rpc"] == "automatic-revert")
        .collect();
    for (id, reason) in [(&short, "deadline"), (&long, "shutdown")] {
        let line = automatic
            .iter()
            .find(|line| line["fault"]["id"] == id.as_str())
            .ok_or_else(|| anyhow::anyhow!("no automatic-revert line for {id}: {log}"))?;
        ensure!(line["reason"] == reason, "{id}: {line:#}");
        ensure!(line["who"]["auth"] == "agent", "{id}: {line:#}");
        ensure!(line["result"] == "ok", "{id}: {line:#}");
        ensure!(line["fault"]["kind"] == "block", "{id}: {line:#}");
    }
    agent.assert_clean()
}

/// A crash after a revert was answered but before its clean-up was done: the journal entry
/// then holds the fault as reverted (the engine rewrites it so before cleaning up). Start-up
/// finishes the clean-up, lists the fault with the reason it ended for, and does not report
/// or audit it reverted a second time. The entry is written here as the engine writes it,
/// over the record of a block whose objects a SIGKILLed agent left, so the window need not
/// be hit by chance.
#[test]
fn a_clean_up_cut_short_by_a_crash_is_finished_without_a_second_revert() -> Result<()> {
    const T: &str = "a_clean_up_cut_short_by_a_crash_is_finished_without_a_second_revert";
    if !require_root(T) {
        return Ok(());
    }
    let lab = Lab::new()?;
    let mut agent = Agent::start(&lab.a.ns)?;
    let id = agent.apply(&[
        "block", "--dir", "out", "--proto", "tcp", "--port", "9", "--for", "60s",
    ])?;
    agent.kill()?;
    ensure!(
        lab.a.ns.nft_table_exists()?,
        "the block vanished with the agent"
    );
    let entry = agent.journal_dir().join(format!("{id}.json"));
    let mut fault: serde_json::Value = serde_json::from_slice(&std::fs::read(&entry)?)?;
    fault["state"] = "reverted".into();
    fault["reason"] = "requested".into();
    std::fs::write(&entry, serde_json::to_vec_pretty(&fault)?)?;

    agent.restart()?;
    ensure!(
        !lab.a.ns.nft_table_exists()?,
        "the block's table survived the restart"
    );
    ensure!(
        entries(&agent.journal_dir())?.is_empty(),
        "journal entries left: {:?}",
        entries(&agent.journal_dir())?
    );
    let listed = agent.fault(&id)?;
    ensure!(
        listed["state"] == "reverted" && listed["reason"] == "requested",
        "after the restart: {listed:#}"
    );
    let log = std::fs::read_to_string(agent.state_dir().join("audit.log"))?;
    let again: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("automatic-revert") && l.contains(id.as_str()))
        .collect();
    ensure!(
        again.is_empty(),
        "the fault was audited reverted again: {again:?}"
    );
    note(
        T,
        "the clean-up was finished at start-up; no second revert was audited",
    );
    agent.assert_clean()
}
