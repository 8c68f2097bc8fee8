//! Fault leases: a fault applied with `--lease` lives as long as it is renewed, and is reverted
//! within the lease (plus a second) once nobody renews it -- not renewed at all, renewed for a
//! while and then no more, or renewed by a one-shot CLI that is killed -- and leases that mean
//! nothing are refused. A restart
//! reverts what the killed agent left, with the reason the journalled lease gives.
//!
//! The agent runs in host `b` and rejects TCP connects to a listener there; host `a` connects.
//! A connect that is refused means the block is in effect, one that succeeds that it is gone.

use std::{
    net::SocketAddr,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{ensure, Context as _, Result};
use faultline_tests::{
    note, process, require_root,
    traffic::{tcp_connect, tcp_listen},
    Agent, Lab,
};

const P: u16 = 8080;
const Q: u16 = 8081;
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// What the agent promises: a lease that is not renewed ends the fault within this much more.
const GRACE: Duration = Duration::from_secs(1);
const LEASE: Duration = Duration::from_secs(2);

/// Whether a TCP connect from `a` to `to` goes through now.
fn connects(lab: &Lab, to: SocketAddr) -> Result<bool> {
    Ok(tcp_connect(&lab.a.ns, to, CONNECT_TIMEOUT)?.is_ok())
}

/// Connects to `to` every 50 ms until one succeeds, and returns how long after `since` that
/// connect had returned: an upper bound of when the block was removed. Fails if the block is
/// still there `limit` after `since`.
fn unblocked_after(lab: &Lab, to: SocketAddr, since: Instant, limit: Duration) -> Result<Duration> {
    loop {
        if connects(lab, to)? {
            return Ok(since.elapsed());
        }
        ensure!(
            since.elapsed() < limit,
            "connects to {to} were still refused {limit:?} on: the fault was not reverted"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// Fails unless the agent reports fault `id` reverted for `reason` (once it has settled: the
/// effect ends a moment before the state says so).
fn ended_for(agent: &Agent, id: &str, reason: &str) -> Result<()> {
    let fault = agent.settled_fault(id, Duration::from_millis(500))?;
    ensure!(
        fault["state"] == "reverted" && fault["reason"] == reason,
        "fault {id}: expected reverted ({reason}), got {fault:#}"
    );
    Ok(())
}

fn block_args<'a>(port: &'a str, lease: &'a str) -> Vec<&'a str> {
    vec![
        "block", "--dir", "in", "--proto", "tcp", "--port", port, "--reject", "--lease", lease,
        "--for", "60s",
    ]
}

#[test]
fn an_unrenewed_lease_reverts_the_fault() -> Result<()> {
    let test = "an_unrenewed_lease_reverts_the_fault";
    if !require_root(test) {
        return Ok(());
    }
    let lab = Lab::new()?;
    let to = SocketAddr::from((lab.b.v4, P));
    let _listener = tcp_listen(&lab.b.ns, to)?;
    let agent = Agent::start(&lab.b.ns)?;

    // The lease starts when the fault is active: after the request, before the answer. So the
    // earliest end is measured from the request and the latest from the answer (in the
    // emulated guest the CLI took over a second between the two).
    let started = Instant::now();
    let id = agent.apply(&block_args("8080", "2s"))?;
    let answer = started.elapsed();
    ensure!(!connects(&lab, to)?, "the block is not in effect");
    let fault = agent.fault(&id)?;
    ensure!(
        fault["lease_secs"] == 2.0 && fault["lease_expires_at"].is_string(),
        "get does not show the lease: {fault:#}"
    );

    let took = unblocked_after(&lab, to, started, LEASE + GRACE + Duration::from_secs(2))?;
    let after_answer = took.saturating_sub(answer);
    note(
        test,
        format!(
            "connects went through {took:?} after the apply's request, {after_answer:?} after its answer"
        ),
    );
    ensure!(
        took >= LEASE,
        "the fault ended {took:?} after the apply's request, before its lease ran out"
    );
    ensure!(
        after_answer <= LEASE + GRACE,
        "the fault ended {after_answer:?} after the apply's answer, later than its lease and {GRACE:?}"
    );
    ended_for(&agent, &id, "lease expired")?;
    agent.assert_clean()
}

#[test]
fn renewals_keep_the_fault_until_they_stop() -> Result<()> {
    let test = "renewals_keep_the_fault_until_they_stop";
    if !require_root(test) {
        return Ok(());
    }
    let lab = Lab::new()?;
    let to = SocketAddr::from((lab.b.v4, P));
    let _listener = tcp_listen(&lab.b.ns, to)?;
    let agent = Agent::start(&lab.b.ns)?;

    let applied = Instant::now();
    let id = agent.apply(&block_args("8080", "2s"))?;
    // The last renewal's request and answer: the lease restarts between the two (in the
    // emulated guest a CLI call takes about a second), so the earliest end is counted from the
    // request and the latest from the answer.
    let mut last_renewal = applied;
    let mut last_answer = Duration::ZERO;
    for second in 1..=5 {
        thread::sleep(Duration::from_secs(second).saturating_sub(applied.elapsed()));
        last_renewal = Instant::now();
        if second == 3 {
            // Once as a script would, with the period restated and JSON out.
            let stdout = agent.cli_ok(&["renew", &id, "--lease", "2s", "-o", "json"])?;
            let renewed: serde_json::Value = serde_json::from_str(&stdout)
                .with_context(|| format!("renew -o json printed {stdout}"))?;
            ensure!(
                renewed["renewed"][0]["id"] == id.as_str()
                    && renewed["renewed"][0]["lease_secs"] == 2.0
                    && renewed["not_renewed"].as_array().is_some_and(Vec::is_empty),
                "renew -o json: {renewed:#}"
            );
        } else {
            agent.cli_ok(&["renew", &id])?;
        }
        last_answer = last_renewal.elapsed();
        ensure!(
            !connects(&lab, to)?,
            "the block is gone at {:?} although its lease was renewed every second",
            applied.elapsed()
        );
    }
    let fault = agent.fault(&id)?;
    ensure!(
        fault["state"] == "active",
        "the fault is not active at {:?} despite renewals: {fault:#}",
        applied.elapsed()
    );

    // No more renewals.
    let took = unblocked_after(
        &lab,
        to,
        last_renewal,
        LEASE + GRACE + Duration::from_secs(2),
    )?;
    note(
        test,
        format!(
            "active at {:?} after 5 renewals; connects went through {took:?} after the last renewal",
            last_renewal.duration_since(applied)
        ),
    );
    ensure!(
        took >= LEASE,
        "the fault ended {took:?} after the last renewal, before its lease ran out"
    );
    let after_answer = took.saturating_sub(last_answer);
    ensure!(
        after_answer <= LEASE + GRACE,
        "the fault ended {after_answer:?} after the last renewal's answer, later than its lease and {GRACE:?}"
    );
    ended_for(&agent, &id, "lease expired")?;
    agent.assert_clean()
}

/// A child process killed when the test is done with it, also when the test fails.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_killed_one_shot_cli_stops_renewing() -> Result<()> {
    let test = "a_killed_one_shot_cli_stops_renewing";
    if !require_root(test) {
        return Ok(());
    }
    let lab = Lab::new()?;
    let to = SocketAddr::from((lab.b.v4, P));
    let _listener = tcp_listen(&lab.b.ns, to)?;
    let agent = Agent::start(&lab.b.ns)?;

    // Left alone, the one-shot CLI renews its fault until the deadline ends it.
    let started = Instant::now();
    let lived = agent.cli(&[
        "block", "--dir", "in", "--proto", "tcp", "--port", "8080", "--reject", "--lease", "1s",
        "--for", "3s",
    ])?;
    let stderr = String::from_utf8_lossy(&lived.stderr);
    ensure!(
        lived.status.success() && stderr.contains("reverted (deadline)"),
        "a one-shot fault with a lease did not live to its deadline after {:?}: {lived:?}",
        started.elapsed()
    );
    ensure!(
        !stderr.contains("not renewed"),
        "a renewal failed on the way: {stderr}"
    );
    agent.assert_clean()?;

    let mut cli = Killed(
        Command::new(process::faultline_bin()?)
            .arg("--agent")
            .arg(agent.socket())
            .args(block_args("8080", "2s"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?,
    );
    let started = Instant::now();
    let id = loop {
        let active = agent.faults()?.into_iter().find(|f| f["state"] == "active");
        if let Some(id) = active.and_then(|f| f["id"].as_str().map(str::to_owned)) {
            break id;
        }
        ensure!(
            started.elapsed() < Duration::from_secs(10),
            "the fault never became active"
        );
        thread::sleep(Duration::from_millis(50));
    };
    let active = Instant::now();
    // Twice the lease: only the CLI's own renewals can keep the fault this long.
    thread::sleep(2 * LEASE);
    ensure!(
        !connects(&lab, to)? && agent.fault(&id)?["state"] == "active",
        "the one-shot CLI did not keep its fault alive for {:?}: {:#}",
        active.elapsed(),
        agent.fault(&id)?
    );

    cli.0.kill()?;
    cli.0.wait()?;
    let killed = Instant::now();
    let took = unblocked_after(&lab, to, killed, LEASE + GRACE + Duration::from_secs(2))?;
    note(
        test,
        format!(
            "the CLI held its fault for {:?}; connects went through {took:?} after SIGKILL",
            killed.duration_since(active)
        ),
    );
    ensure!(
        took <= LEASE + GRACE,
        "the fault ended {took:?} after the CLI was killed, later than its lease and {GRACE:?}"
    );
    ended_for(&agent, &id, "lease expired")?;
    agent.assert_clean()
}

#[test]
fn leases_that_mean_nothing_are_refused() -> Result<()> {
    let test = "leases_that_mean_nothing_are_refused";
    if !require_root(test) {
        return Ok(());
    }
    let lab = Lab::new()?;
    let agent = Agent::start(&lab.b.ns)?;
    for lease in ["0s", "500ms", "90s"] {
        let stderr = agent.cli_fails(&block_args("8080", lease), 2)?;
        ensure!(
            stderr.contains("lease"),
            "--lease {lease} --for 60s: stderr does not name the lease: {stderr}"
        );
        note(
            test,
            format!("--lease {lease} --for 60s: {}", stderr.trim()),
        );
    }
    ensure!(
        agent.faults()?.is_empty(),
        "refused requests left faults: {:?}",
        agent.faults()?
    );
    ensure!(
        !lab.b.ns.nft_table_exists()?,
        "refused requests created table inet faultline"
    );

    let leased = agent.apply(&block_args("8080", "10s"))?;
    let unleased = agent.apply(&[
        "block", "--dir", "in", "--proto", "tcp", "--port", "8081", "--for", "60s",
    ])?;
    for lease in ["0s", "90s"] {
        let stderr = agent.cli_fails(&["renew", &leased, "--lease", lease], 2)?;
        ensure!(
            stderr.contains("lease"),
            "renew --lease {lease}: stderr does not name the lease: {stderr}"
        );
    }
    let stderr = agent.cli_fails(&["renew", &unleased], 4)?;
    ensure!(
        stderr.contains("without a lease"),
        "renew of a fault without a lease: {stderr}"
    );
    // An unknown id among others: exit 3, and the others are renewed all the same.
    let before = agent.fault(&leased)?["lease_expires_at"].clone();
    thread::sleep(Duration::from_millis(100));
    let output = agent.cli(&["renew", "deadbeef0000", &leased])?;
    ensure!(
        output.status.code() == Some(3),
        "renew of an unknown id: {output:?}"
    );
    let after = agent.fault(&leased)?["lease_expires_at"].clone();
    ensure!(
        after != before,
        "the known fault was not renewed beside the unknown one ({before} -> {after})"
    );

    agent.revert(&leased)?;
    agent.revert(&unleased)?;
    let stderr = agent.cli_fails(&["renew", &leased], 4)?;
    ensure!(
        stderr.contains("ended"),
        "renew of a reverted fault: {stderr}"
    );
    agent.assert_clean()
}

#[test]
fn a_restart_reverts_with_the_journalled_lease() -> Result<()> {
    let test = "a_restart_reverts_with_the_journalled_lease";
    if !require_root(test) {
        return Ok(());
    }
    let lab = Lab::new()?;
    let to_p = SocketAddr::from((lab.b.v4, P));
    let to_q = SocketAddr::from((lab.b.v4, Q));
    let _p = tcp_listen(&lab.b.ns, to_p)?;
    let _q = tcp_listen(&lab.b.ns, to_q)?;
    let mut agent = Agent::start(&lab.b.ns)?;

    let short = agent.apply(&block_args("8080", "3s"))?;
    let long = agent.apply(&block_args("8081", "30s"))?;
    agent.kill()?;
    thread::sleep(Duration::from_secs(4));
    // Nothing enforces a lease while no agent runs (the kernel holds only the deadline).
    ensure!(!connects(&lab, to_p)?, "the block went away with the agent");

    let started = Instant::now();
    agent.restart()?;
    note(
        test,
        format!("the new agent was ready after {:?}", started.elapsed()),
    );
    ensure!(
        connects(&lab, to_p)?,
        "the expired lease's block survived the restart"
    );
    ensure!(
        connects(&lab, to_q)?,
        "the running lease's block survived the restart"
    );
    ended_for(&agent, &short, "lease expired")?;
    // Still within its lease, but a restart ends every fault an earlier run left.
    ended_for(&agent, &long, "recovered")?;
    agent.assert_clean()
}
