//! Block faults (nftables) between two namespaces: reject and drop, IPv6 by address, a share
//! of the packets, and expiry at the deadline. The agent runs in host `b` and blocks what `b`
//! receives; host `a` sends.

use std::{
    io,
    net::SocketAddr,
    thread,
    time::{Duration, Instant},
};

use anyhow::{ensure, Result};
use faultline_tests::{
    note, require_root,
    traffic::{tcp_connect, tcp_listen, udp_loss},
    Agent, Lab,
};

const P: u16 = 8080;
const Q: u16 = 8081;
const CONNECT_TIMEOUT: Duration = Duration::from_millis(1500);

#[test]
fn block_reject_tcp() -> Result<()> {
    if !require_root("block_reject_tcp") {
        return Ok(());
    }
    let lab = Lab::new()?;
    let to_p = SocketAddr::from((lab.b.v4, P));
    let to_q = SocketAddr::from((lab.b.v4, Q));
    let _p = tcp_listen(&lab.b.ns, to_p)?;
    let _q = tcp_listen(&lab.b.ns, to_q)?;
    tcp_connect(&lab.a.ns, to_p, CONNECT_TIMEOUT)??;
    let agent = Agent::start(&lab.b.ns)?;

    let id = agent.apply(&[
        "block", "--dir", "in", "--proto", "tcp", "--port", "8080", "--reject", "--for", "60s",
    ])?;
    let started = Instant::now();
    let refused = tcp_connect(&lab.a.ns, to_p, CONNECT_TIMEOUT)?;
    let took = started.elapsed();
    note(
        "block_reject_tcp",
        format!("connect to the blocked port failed after {took:?}"),
    );
    ensure!(
        matches!(&refused, Err(e) if e.kind() == io::ErrorKind::ConnectionRefused),
        "connect to {to_p} under a reject block: expected ECONNREFUSED, got {refused:?}"
    );
    ensure!(took < Duration::from_secs(1), "the reject took {took:?}");
    tcp_connect(&lab.a.ns, to_q, CONNECT_TIMEOUT)?
        .map_err(|e| anyhow::anyhow!("connect to the unblocked port {to_q}: {e}"))?;

    agent.revert(&id)?;
    tcp_connect(&lab.a.ns, to_p, CONNECT_TIMEOUT)?
        .map_err(|e| anyhow::anyhow!("connect to {to_p} after revert: {e}"))?;
    // The table goes in the revert's clean-up, which runs right after its answer.
    let until = Instant::now() + Duration::from_secs(2);
    while lab.b.ns.nft_table_exists()? {
        ensure!(
            Instant::now() < until,
            "table inet faultline still exists 2 s after the last block was reverted"
        );
        thread::sleep(Duration::from_millis(20));
    }
    agent.assert_clean()
}

#[test]
fn block_drop_timeout() -> Result<()> {
    if !require_root("block_drop_timeout") {
        return Ok(());
    }
    let lab = Lab::new()?;
    let to_p = SocketAddr::from((lab.b.v4, P));
    let _p = tcp_listen(&lab.b.ns, to_p)?;
    let agent = Agent::start(&lab.b.ns)?;

    let id = agent.apply(&[
        "block", "--dir", "in", "--proto", "tcp", "--port", "8080", "--for", "60s",
    ])?;
    let started = Instant::now();
    let dropped = tcp_connect(&lab.a.ns, to_p, CONNECT_TIMEOUT)?;
    let took = started.elapsed();
    ensure!(
        matches!(&dropped, Err(e) if e.kind() == io::ErrorKind::TimedOut),
        "connect to {to_p} under a drop block: expected a timeout, got {dropped:?} after {took:?}"
    );
    ensure!(took >= CONNECT_TIMEOUT - Duration::from_millis(100));

    agent.revert(&id)?;
    tcp_connect(&lab.a.ns, to_p, CONNECT_TIMEOUT)?
        .map_err(|e| anyhow::anyhow!("connect to {to_p} after revert: {e}"))?;
    agent.assert_clean()
}

#[test]
fn block_ipv6_cidr() -> Result<()> {
    if !require_root("block_ipv6_cidr") {
        return Ok(());
    }
    let lab = Lab::new()?;
    let v6 = SocketAddr::from((lab.b.v6, P));
    let v4 = SocketAddr::from((lab.b.v4, P));
    let _l6 = tcp_listen(&lab.b.ns, v6)?;
    let _l4 = tcp_listen(&lab.b.ns, v4)?;
    tcp_connect(&lab.a.ns, v6, CONNECT_TIMEOUT)??;
    let agent = Agent::start(&lab.b.ns)?;

    let a_v6 = format!("{}/128", lab.a.v6);
    let id = agent.apply(&["block", "--dir", "in", "--cidr", &a_v6, "--for", "60s"])?;
    let blocked = tcp_connect(&lab.a.ns, v6, CONNECT_TIMEOUT)?;
    ensure!(
        blocked.is_err(),
        "IPv6 connect from {} got through a block of {a_v6}",
        lab.a.v6
    );
    tcp_connect(&lab.a.ns, v4, CONNECT_TIMEOUT)?
        .map_err(|e| anyhow::anyhow!("IPv4 connect under an IPv6-only block: {e}"))?;

    agent.revert(&id)?;
    tcp_connect(&lab.a.ns, v6, CONNECT_TIMEOUT)?
        .map_err(|e| anyhow::anyhow!("IPv6 connect after revert: {e}"))?;
    agent.assert_clean()
}

#[test]
fn block_percent() -> Result<()> {
    if !require_root("block_percent") {
        return Ok(());
    }
    let lab = Lab::new()?;
    let to_p = SocketAddr::from((lab.b.v4, P));
    let agent = Agent::start(&lab.b.ns)?;
    let before = udp_loss(&lab.a.ns, &lab.b.ns, to_p, 1000)?;
    ensure!(
        before == 0.0,
        "{:.1}% loss before any fault",
        before * 100.0
    );

    let id = agent.apply(&[
        "block",
        "--dir",
        "in",
        "--proto",
        "udp",
        "--port",
        "8080",
        "--percent",
        "30",
        "--for",
        "60s",
    ])?;
    let loss = udp_loss(&lab.a.ns, &lab.b.ns, to_p, 5000)?;
    note(
        "block_percent",
        format!(
            "--percent 30 block: {:.2}% of 5000 datagrams lost",
            loss * 100.0
        ),
    );
    ensure!(
        (loss * 100.0 - 30.0).abs() <= 3.0,
        "measured {:.2}% loss, expected 30 ± 3",
        loss * 100.0
    );

    agent.revert(&id)?;
    let after = udp_loss(&lab.a.ns, &lab.b.ns, to_p, 1000)?;
    ensure!(after == 0.0, "{:.1}% loss after revert", after * 100.0);
    agent.assert_clean()
}

#[test]
fn expiry() -> Result<()> {
    if !require_root("expiry") {
        return Ok(());
    }
    let lab = Lab::new()?;
    let to_p = SocketAddr::from((lab.b.v4, P));
    let _p = tcp_listen(&lab.b.ns, to_p)?;
    let agent = Agent::start(&lab.b.ns)?;

    let id = agent.apply(&[
        "block", "--dir", "in", "--proto", "tcp", "--port", "8080", "--reject", "--for", "2s",
    ])?;
    let applied = Instant::now();
    let fault = agent.fault(&id)?;
    ensure!(fault["state"] == "active", "just applied: {fault:#}");
    ensure!(
        tcp_connect(&lab.a.ns, to_p, CONNECT_TIMEOUT)?.is_err(),
        "connect got through an active block"
    );

    thread::sleep(Duration::from_millis(3500).saturating_sub(applied.elapsed()));
    let get = agent.cli(&["get", &id, "-o", "json"])?;
    match get.status.code() {
        Some(0) => {
            let fault: serde_json::Value = serde_json::from_slice(&get.stdout)?;
            ensure!(
                fault["state"] == "reverted",
                "3.5 s into a 2 s fault: {fault:#}"
            );
            note(
                "expiry",
                format!("state reverted, reason {:?}", fault["reason"]),
            );
        }
        Some(3) => note("expiry", "the expired fault is no longer known (exit 3)"),
        _ => anyhow::bail!(
            "get {id} after expiry: {}",
            faultline_tests::process::describe("faultline get", &get)
        ),
    }
    ensure!(
        !lab.b.ns.nft_table_exists()?,
        "table inet faultline still exists after the block expired"
    );
    tcp_connect(&lab.a.ns, to_p, CONNECT_TIMEOUT)?
        .map_err(|e| anyhow::anyhow!("connect after expiry: {e}"))?;
    agent.assert_clean()
}
