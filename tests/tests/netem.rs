//! netem faults measured with real traffic between two namespaces: delay with jitter, loss,
//! ingress delay through an IFB, a port and an IPv6 network targeted while other traffic is left
//! alone, and the qdisc tree put back exactly on revert and after the agent is killed.
//!
//! These need sch_netem, which this development host's kernel lacks: here they skip with a
//! visible line, and `cargo xtask test` runs them in the VM guest on Debian's stock kernel.

use std::{net::SocketAddr, time::Duration};

use anyhow::{ensure, Context as _, Result};
use faultline_tests::{
    note, require_root, settled, skip,
    traffic::{median_rtt, udp_loss, udp_rtts},
    Agent, Lab, Netns,
};
use serde_json::Value;

const P: u16 = 9090;
const Q: u16 = 9091;
const PROBES: usize = 1000;
const INTERVAL: Duration = Duration::from_millis(2);

/// Whether the kernel has netem, per the agent (which the `info` test checks independently).
fn netem_available(test: &str, agent: &Agent) -> Result<bool> {
    let info: Value = serde_json::from_str(&agent.cli_ok(&["info", "-o", "json"])?)?;
    let netem = info["capabilities"]
        .as_array()
        .and_then(|l| l.iter().find(|c| c["name"] == "netem"))
        .context("info lists no netem")?;
    if netem["available"] != true {
        skip(
            test,
            format!(
                "this kernel has no sch_netem ({}); the VM layer runs it on a stock kernel",
                netem["detail"]
            ),
        );
        return Ok(false);
    }
    Ok(true)
}

/// Median RTT of probes from `from` to `addr` in `to`, and the share that came back.
fn probe(from: &Netns, to: &Netns, addr: SocketAddr, count: usize) -> Result<(Duration, f64)> {
    let rtts = udp_rtts(from, to, addr, count, INTERVAL)?;
    let (median, got) = median_rtt(&rtts).context("no probe came back")?;
    Ok((median, got as f64 / count as f64))
}

/// The round trip through netem itself, without its delay: the median RTT under a 1 ms delay
/// fault with the same target, less that 1 ms. Delays are measured against this floor, not
/// against an unfaulted round trip, because a delayed packet leaves when a timer fires, and
/// under software emulation (the VM guest) timers fire a millisecond or more late; that
/// lateness is the emulator's, and it is the same for 1 ms as for 100 ms.
fn netem_floor(
    agent: &Agent,
    (from, to): (&Netns, &Netns),
    addr: SocketAddr,
    target: &[&str],
) -> Result<Duration> {
    let id = agent.apply(&[&["delay", "--delay", "1ms", "--for", "60s"][..], target].concat())?;
    let (median, _) = probe(from, to, addr, 300)?;
    agent.revert(&id)?;
    Ok(median.saturating_sub(Duration::from_millis(1)))
}

/// The half-width of a uniform jitter, as the probes show it: 95 % of a uniform spread lies
/// between its 2.5th and 97.5th percentiles, so half that distance over 0.95. Percentiles, not
/// the extremes, so that a probe late for the emulator's reasons does not count.
fn uniform_half_width(rtts: &[Option<Duration>]) -> Option<f64> {
    let mut got: Vec<f64> = rtts.iter().flatten().map(|d| ms(*d)).collect();
    if got.len() < 40 {
        return None;
    }
    got.sort_by(f64::total_cmp);
    let at = |p: f64| got[((p * got.len() as f64) as usize).min(got.len() - 1)];
    Some((at(0.975) - at(0.025)) / 2.0 / 0.95)
}

/// The bar: within 2 % of the requested delay, or 0.2 ms, whichever is larger.
fn close_enough(added: Duration, requested: Duration) -> bool {
    let tolerance = (requested.as_secs_f64() * 0.02).max(0.0002);
    (added.as_secs_f64() - requested.as_secs_f64()).abs() <= tolerance
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[test]
fn netem_delay_with_jitter_adds_the_requested_median() -> Result<()> {
    const T: &str = "netem_delay_with_jitter_adds_the_requested_median";
    if !require_root(T) {
        return Ok(());
    }
    let lab = Lab::new()?;
    let agent = Agent::start(&lab.a.ns)?;
    if !netem_available(T, &agent)? {
        return Ok(());
    }
    let to = SocketAddr::from((lab.b.v4, P));
    let (base, _) = probe(&lab.a.ns, &lab.b.ns, to, 300)?;
    let floor = netem_floor(&agent, (&lab.a.ns, &lab.b.ns), to, &["--dev", &lab.a.dev])?;
    let id = agent.apply(&[
        "delay", "--dev", &lab.a.dev, "--delay", "100ms", "--jitter", "10ms", "--for", "120s",
    ])?;
    let rtts = udp_rtts(&lab.a.ns, &lab.b.ns, to, PROBES, INTERVAL)?;
    let (delayed, got) = median_rtt(&rtts).context("no probe came back")?;
    let jitter = uniform_half_width(&rtts).context("too few probes came back")?;
    let added = delayed.saturating_sub(floor);
    note(
        T,
        format!(
            "delay 100ms ± 10ms: median RTT {:.3} ms unfaulted, {:.3} ms through netem without \
             delay, {:.3} ms delayed: added {:.3} ms over {PROBES} probes ({:.1}% answered); \
             jitter ± {jitter:.3} ms (half the 2.5th to 97.5th percentile spread, over 0.95)",
            ms(base),
            ms(floor),
            ms(delayed),
            ms(added),
            got as f64 * 100.0 / PROBES as f64
        ),
    );
    ensure!(
        close_enough(added, Duration::from_millis(100)),
        "added median {:.3} ms, expected 100 ms within 2%",
        ms(added)
    );
    // A looser bar than the median's: the tails carry the emulator's timer lateness.
    ensure!(
        (8.0..=12.0).contains(&jitter),
        "jitter ± {jitter:.3} ms, expected ± 10 ms within 20 %"
    );
    agent.revert(&id)?;
    let (after, _) = probe(&lab.a.ns, &lab.b.ns, to, 200)?;
    ensure!(
        after < base + Duration::from_millis(20),
        "still delayed after revert: {:.3} ms",
        ms(after)
    );
    agent.assert_clean()
}

#[test]
fn netem_loss_matches_the_requested_share() -> Result<()> {
    const T: &str = "netem_loss_matches_the_requested_share";
    if !require_root(T) {
        return Ok(());
    }
    let lab = Lab::new()?;
    let agent = Agent::start(&lab.a.ns)?;
    if !netem_available(T, &agent)? {
        return Ok(());
    }
    let id = agent.apply(&[
        "netem", "--dev", &lab.a.dev, "--loss", "10", "--proto", "udp", "--for", "120s",
    ])?;
    let loss = udp_loss(
        &lab.a.ns,
        &lab.b.ns,
        SocketAddr::from((lab.b.v4, P)),
        10_000,
    )?;
    note(
        T,
        format!(
            "netem loss 10%: {:.2}% of 10000 datagrams lost",
            loss * 100.0
        ),
    );
    ensure!(
        (loss * 100.0 - 10.0).abs() <= 1.5,
        "{:.2}% lost, expected 10 ± 1.5",
        loss * 100.0
    );
    agent.revert(&id)?;
    agent.assert_clean()
}

#[test]
fn netem_ingress_delay_is_seen_from_the_other_host() -> Result<()> {
    const T: &str = "netem_ingress_delay_is_seen_from_the_other_host";
    if !require_root(T) {
        return Ok(());
    }
    let lab = Lab::new()?;
    let agent = Agent::start(&lab.b.ns)?;
    if !netem_available(T, &agent)? {
        return Ok(());
    }
    let to = SocketAddr::from((lab.b.v4, P));
    let floor = netem_floor(
        &agent,
        (&lab.a.ns, &lab.b.ns),
        to,
        &["--dev", &lab.b.dev, "--dir", "in"],
    )?;
    let id = agent.apply(&[
        "delay", "--dev", &lab.b.dev, "--dir", "in", "--delay", "50ms", "--for", "120s",
    ])?;
    let (delayed, back) = probe(&lab.a.ns, &lab.b.ns, to, PROBES)?;
    let added = delayed.saturating_sub(floor);
    note(
        T,
        format!(
            "ingress delay 50ms on b, probed from a: median RTT {:.3} ms through netem without \
             delay -> {:.3} ms, added {:.3} ms ({:.1}% answered)",
            ms(floor),
            ms(delayed),
            ms(added),
            back * 100.0
        ),
    );
    ensure!(
        close_enough(added, Duration::from_millis(50)),
        "added {:.3} ms, expected 50 ms within 2%",
        ms(added)
    );
    agent.revert(&id)?;
    agent.assert_clean()
}

#[test]
fn netem_touches_only_the_targeted_port_and_network() -> Result<()> {
    const T: &str = "netem_touches_only_the_targeted_port_and_network";
    if !require_root(T) {
        return Ok(());
    }
    let lab = Lab::new()?;
    let agent = Agent::start(&lab.a.ns)?;
    if !netem_available(T, &agent)? {
        return Ok(());
    }
    let p4 = SocketAddr::from((lab.b.v4, P));
    let q4 = SocketAddr::from((lab.b.v4, Q));
    let p6 = SocketAddr::from((lab.b.v6, P));
    let (base, _) = probe(&lab.a.ns, &lab.b.ns, q4, 300)?;
    let port = P.to_string();
    let by_port = ["--dev", &lab.a.dev, "--proto", "udp", "--port", &port];
    let floor = netem_floor(&agent, (&lab.a.ns, &lab.b.ns), p4, &by_port)?;

    // A port: only datagrams to P wait.
    let id = agent.apply(&[
        "delay",
        "--dev",
        &lab.a.dev,
        "--delay",
        "100ms",
        "--proto",
        "udp",
        "--port",
        &P.to_string(),
        "--for",
        "120s",
    ])?;
    let (on_p, _) = probe(&lab.a.ns, &lab.b.ns, p4, PROBES)?;
    let (on_q, _) = probe(&lab.a.ns, &lab.b.ns, q4, PROBES)?;
    note(
        T,
        format!(
            "delay 100ms on udp/{P}: median RTT {:.3} ms to {P}, {:.3} ms to {Q} (unfaulted \
             {:.3} ms, through netem without delay {:.3} ms)",
            ms(on_p),
            ms(on_q),
            ms(base),
            ms(floor)
        ),
    );
    ensure!(
        close_enough(on_p.saturating_sub(floor), Duration::from_millis(100)),
        "{:.3} ms to the targeted port",
        ms(on_p)
    );
    ensure!(
        on_q < base + Duration::from_millis(5),
        "the untargeted port is delayed too: {:.3} ms",
        ms(on_q)
    );
    agent.revert(&id)?;

    // An IPv6 network: the same port over IPv4 does not wait.
    let net = format!("{}/128", lab.b.v6);
    let id = agent.apply(&[
        "delay", "--dev", &lab.a.dev, "--delay", "100ms", "--cidr", &net, "--for", "120s",
    ])?;
    let (v6, _) = probe(&lab.a.ns, &lab.b.ns, p6, PROBES)?;
    let (v4, _) = probe(&lab.a.ns, &lab.b.ns, p4, PROBES)?;
    note(
        T,
        format!(
            "delay 100ms to {net}: median RTT {:.3} ms over IPv6, {:.3} ms over IPv4",
            ms(v6),
            ms(v4)
        ),
    );
    ensure!(
        close_enough(v6.saturating_sub(floor), Duration::from_millis(100)),
        "{:.3} ms over IPv6",
        ms(v6)
    );
    ensure!(
        v4 < base + Duration::from_millis(5),
        "IPv4 is delayed too: {:.3} ms",
        ms(v4)
    );
    agent.revert(&id)?;
    agent.assert_clean()
}

#[test]
fn netem_revert_and_crash_restore_the_exact_prior_tree() -> Result<()> {
    const T: &str = "netem_revert_and_crash_restore_the_exact_prior_tree";
    if !require_root(T) {
        return Ok(());
    }
    let lab = Lab::new()?;
    let mut agent = Agent::start(&lab.a.ns)?;
    if !netem_available(T, &agent)? {
        return Ok(());
    }
    let dev = lab.a.dev.clone();
    let pristine = lab.a.ns.qdiscs(&dev)?;
    let delay = [
        "netem",
        "--dev",
        &dev,
        "--delay",
        "20ms",
        "--duplicate",
        "1",
        "--corrupt",
        "1",
        "--reorder",
        "5",
        "--gap",
        "3",
        "--for",
        "120s",
    ];
    let id = agent.apply(&delay)?;
    agent.revert(&id)?;
    ensure!(
        settled(&pristine, || lab.a.ns.qdiscs(&dev))? == pristine,
        "the qdiscs are not as they were with the kernel's default root"
    );

    lab.a.ns.exec_ok(&[
        "tc", "qdisc", "add", "dev", &dev, "root", "handle", "8001:", "tbf", "rate", "900mbit",
        "burst", "256kb", "latency", "40ms",
    ])?;
    let before = lab.a.ns.qdiscs(&dev)?;
    // Another tool's root needs no force: the fault does not replace it.
    let id = agent.apply(&delay)?;
    agent.revert(&id)?;
    ensure!(
        settled(&before, || lab.a.ns.qdiscs(&dev))? == before,
        "the tbf root is not as it was"
    );

    agent.apply(&delay)?;
    agent.kill()?;
    agent.restart()?;
    let after = lab.a.ns.qdiscs(&dev)?;
    note(T, format!("after SIGKILL and restart: {after}"));
    ensure!(
        after == before,
        "after restart:\nbefore {before}\nafter  {after}"
    );
    agent.assert_clean()
}
