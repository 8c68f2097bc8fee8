//! What a fault did, as the agent reads it from the kernel (`faultline get`'s effect), against
//! what the test itself counted: datagrams a block dropped are the datagrams the receiver
//! missed, one for one; the same for a loss fault's drops; a rate fault's qdisc carried the
//! transfer its classifier steered to it; a CPU stress is charged CPU time. A fault aimed at an idle port is
//! flagged ineffective once the grace period has passed, and a fault with traffic is not.

use std::{
    net::SocketAddr,
    thread,
    time::{Duration, Instant},
};

use anyhow::{ensure, Context as _, Result};
use faultline_tests::{
    note, require_root,
    traffic::{tcp_transfer, udp_loss},
    Agent, Lab,
};
use serde_json::Value;

const P: u16 = 8090;
const IDLE: u16 = 8091;
const DATAGRAMS: usize = 10_000;

fn counter(fault: &Value, name: &str) -> Result<u64> {
    fault["effect"]["counters"][name]
        .as_u64()
        .with_context(|| format!("no counter {name} in {}", fault["effect"]))
}

/// Datagrams the receiver missed, from the fraction `udp_loss` measured over `count`.
fn missing(loss: f64, count: usize) -> u64 {
    (loss * count as f64).round() as u64
}

/// Sends `DATAGRAMS` from `a` to `b` through fault `id` and checks its counters against the
/// receiver's count: every datagram matched, and dropped exactly as many as went missing.
fn drops_are_the_datagrams_missed(agent: &Agent, lab: &Lab, id: &str, what: &str) -> Result<Value> {
    let loss = udp_loss(
        &lab.a.ns,
        &lab.b.ns,
        SocketAddr::from((lab.b.v4, P)),
        DATAGRAMS,
    )?;
    let fault = agent.fault(id)?;
    let (matched, dropped) = (
        counter(&fault, "packets_matched")?,
        counter(&fault, "packets_dropped")?,
    );
    let missed = missing(loss, DATAGRAMS);
    note(
        "effect",
        format!("{what}: {DATAGRAMS} sent, {missed} missed, agent says matched {matched} dropped {dropped}"),
    );
    ensure!(
        matched == DATAGRAMS as u64,
        "matched {matched} of {DATAGRAMS}"
    );
    ensure!(
        dropped == missed,
        "the agent says {dropped} dropped, the receiver missed {missed}"
    );
    ensure!(fault["effect"]["hits"] == matched);
    ensure!(fault["ineffective"] == false);
    Ok(fault)
}

#[test]
fn a_blocks_counters_are_the_datagrams_it_took() -> Result<()> {
    if !require_root("a_blocks_counters_are_the_datagrams_it_took") {
        return Ok(());
    }
    let lab = Lab::new()?;
    let agent = Agent::start(&lab.b.ns)?;
    let id = agent.apply(&[
        "block",
        "--dir",
        "in",
        "--proto",
        "udp",
        "--port",
        "8090",
        "--percent",
        "40",
        "--for",
        "60s",
    ])?;
    drops_are_the_datagrams_missed(&agent, &lab, &id, "block 40%")?;
    agent.revert(&id)?;
    // The last reading stays with the ended fault.
    let ended = agent.settled_fault(&id, Duration::from_millis(500))?;
    ensure!(
        ended["effect"]["hits"].as_u64().is_some(),
        "the reverted fault lost its effect: {ended}"
    );
    agent.assert_clean()
}

#[test]
fn a_loss_faults_drops_are_the_datagrams_missed() -> Result<()> {
    if !require_root("a_loss_faults_drops_are_the_datagrams_missed") {
        return Ok(());
    }
    let lab = Lab::new()?;
    let agent = Agent::start(&lab.a.ns)?;
    let id = agent.apply(&[
        "loss",
        "--dev",
        &lab.a.dev,
        "--dir",
        "out",
        "--percent",
        "30",
        "--proto",
        "udp",
        "--port",
        "8090",
        "--for",
        "60s",
    ])?;
    drops_are_the_datagrams_missed(&agent, &lab, &id, "loss 30%")?;
    agent.revert(&id)?;
    agent.assert_clean()
}

#[test]
fn a_rate_faults_qdisc_carries_what_was_steered_to_it() -> Result<()> {
    if !require_root("a_rate_faults_qdisc_carries_what_was_steered_to_it") {
        return Ok(());
    }
    let lab = Lab::new()?;
    let agent = Agent::start(&lab.a.ns)?;
    let id = agent.apply(&[
        "rate", "--dev", &lab.a.dev, "--rate", "20mbit", "--proto", "tcp", "--port", "8090",
        "--for", "60s",
    ])?;
    tcp_transfer(
        &lab.a.ns,
        &lab.b.ns,
        SocketAddr::from((lab.b.v4, P)),
        1 << 20,
        Duration::from_secs(20),
    )?;
    // The transfer's last ACKs may still be on their way: the queue drains in a moment.
    thread::sleep(Duration::from_millis(200));
    let fault = agent.fault(&id)?;
    let steered = counter(&fault, "packets_steered")?;
    let sent = counter(&fault, "qdisc_packets_sent")?;
    let dropped = counter(&fault, "qdisc_packets_dropped")?;
    note(
        "effect",
        format!("rate: steered {steered}, the tbf sent {sent} and dropped {dropped}"),
    );
    // The classifier counts what the stack hands it (GSO packets of up to 64 KiB); tbf sends
    // and drops segments. So the counts differ, but every byte of the transfer went through
    // the fault's qdisc, and the qdisc held some of it back.
    ensure!(steered > 10, "only {steered} packets steered for 1 MiB");
    let bytes = counter(&fault, "qdisc_bytes_sent")?;
    ensure!(
        bytes >= 1 << 20,
        "the qdisc sent {bytes} bytes of a 1 MiB transfer"
    );
    ensure!(
        counter(&fault, "qdisc_overlimits")? > 0,
        "20 Mbit/s never held the transfer back"
    );
    agent.revert(&id)?;
    agent.assert_clean()
}

#[test]
fn a_cpu_stress_is_charged_cpu_time() -> Result<()> {
    if !require_root("a_cpu_stress_is_charged_cpu_time") {
        return Ok(());
    }
    let lab = Lab::new()?;
    let agent = Agent::start(&lab.a.ns)?;
    // The cgroup exists only between these two instants: the CPU it was charged cannot
    // exceed half of that time (plus one 100 ms period the quota is counted in).
    let before = Instant::now();
    let id = agent.apply(&[
        "stress", "cpu", "--load", "50", "--cores", "1", "--for", "30s",
    ])?;
    thread::sleep(Duration::from_secs(2));
    let fault = agent.fault(&id)?;
    let lived = before.elapsed();
    let cpu = counter(&fault, "cpu_usec")?;
    let throttled = counter(&fault, "throttled_periods")?;
    note(
        "effect",
        format!(
            "stress cpu 50% of one core for at most {lived:.2?}: {cpu} us of CPU, {throttled} throttled periods"
        ),
    );
    let most = (lived.as_micros() as u64) / 2 + 100_000;
    // A busy machine may give the workers less than their quota, but not nothing.
    ensure!(
        (200_000..=most).contains(&cpu),
        "{cpu} us of CPU in {lived:?} at 50 % of one core (at most {most})"
    );
    ensure!(throttled > 0, "a 50 % quota never throttled the workers");
    agent.revert(&id)?;
    agent.assert_clean()
}

#[test]
fn a_fault_aimed_at_nothing_is_flagged_and_one_that_acts_is_not() -> Result<()> {
    if !require_root("a_fault_aimed_at_nothing_is_flagged_and_one_that_acts_is_not") {
        return Ok(());
    }
    let lab = Lab::new()?;
    let agent = Agent::start_with(&lab.b.ns, &["--ineffective-after", "1s"])?;
    let idle = agent.apply(&[
        "block", "--dir", "in", "--proto", "udp", "--port", "8091", "--for", "60s",
    ])?;
    let busy = agent.apply(&[
        "block", "--dir", "in", "--proto", "udp", "--port", "8090", "--for", "60s",
    ])?;
    // Traffic to the busy fault's port only, past the grace period.
    udp_loss(&lab.a.ns, &lab.b.ns, SocketAddr::from((lab.b.v4, P)), 200)?;
    thread::sleep(Duration::from_millis(2500));
    let flagged = agent.fault(&idle)?;
    ensure!(
        flagged["ineffective"] == true,
        "a block of idle port {IDLE} is not flagged: {flagged}"
    );
    let acting = agent.fault(&busy)?;
    ensure!(
        acting["ineffective"] == false && acting["effect"]["hits"] == 200,
        "the block with traffic: {acting}"
    );
    let listing = agent.cli_ok(&["ls"])?;
    let line = listing
        .lines()
        .find(|l| l.starts_with(&idle))
        .with_context(|| format!("{idle} is not listed:\n{listing}"))?;
    ensure!(line.contains(" 0! "), "ls does not mark it: {line}");
    let shown = agent.cli_ok(&["get", &idle])?;
    ensure!(
        shown.contains("INEFFECTIVE"),
        "get does not say so:\n{shown}"
    );
    for id in [&idle, &busy] {
        agent.revert(id)?;
    }
    agent.assert_clean()
}
