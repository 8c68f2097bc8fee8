//! Loss faults (eBPF tc classifier) on a veth interface: a share of egress UDP, ingress UDP to
//! one port only, and what reverting leaves behind.

use std::{
    net::SocketAddr,
    thread,
    time::{Duration, Instant},
};

use anyhow::{ensure, Result};
use faultline_tests::{
    note, require_root,
    traffic::{tcp_transfer, udp_loss},
    Agent, Lab,
};

const P: u16 = 8080;
const Q: u16 = 8081;

#[test]
fn loss_egress_udp() -> Result<()> {
    if !require_root("loss_egress_udp") {
        return Ok(());
    }
    let lab = Lab::new()?;
    let to_p = SocketAddr::from((lab.b.v4, P));
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
        "--for",
        "60s",
    ])?;
    ensure!(
        agent.pin_dir().join(&id).exists(),
        "no pins under {} for an active loss fault",
        agent.pin_dir().join(&id).display()
    );
    let loss = udp_loss(&lab.a.ns, &lab.b.ns, to_p, 5000)?;
    note(
        "loss_egress_udp",
        format!(
            "--percent 30 egress loss: {:.2}% of 5000 datagrams lost",
            loss * 100.0
        ),
    );
    ensure!(
        (loss * 100.0 - 30.0).abs() <= 3.0,
        "measured {:.2}% loss, expected 30 ± 3",
        loss * 100.0
    );
    // Only UDP is dropped: TCP carries a few MB as if nothing happened.
    let took = tcp_transfer(
        &lab.a.ns,
        &lab.b.ns,
        SocketAddr::from((lab.b.v4, Q)),
        4 << 20,
        Duration::from_secs(10),
    )?;
    note(
        "loss_egress_udp",
        format!("4 MiB over TCP meanwhile: {took:?}"),
    );
    ensure!(
        took < Duration::from_secs(3),
        "4 MiB over TCP took {took:?}"
    );

    agent.revert(&id)?;
    let after = udp_loss(&lab.a.ns, &lab.b.ns, to_p, 1000)?;
    ensure!(after == 0.0, "{:.1}% loss after revert", after * 100.0);
    // The answer comes once the classifier drops nothing (its deadline moved to the past);
    // its detach and pins go in the revert's clean-up, within milliseconds.
    let until = Instant::now() + Duration::from_secs(2);
    while agent.pin_dir().join(&id).exists() {
        ensure!(
            Instant::now() < until,
            "{} still exists 2 s after the revert",
            agent.pin_dir().join(&id).display()
        );
        thread::sleep(Duration::from_millis(20));
    }
    agent.assert_clean()
}

#[test]
fn loss_ingress_with_filter() -> Result<()> {
    if !require_root("loss_ingress_with_filter") {
        return Ok(());
    }
    let lab = Lab::new()?;
    let to_p = SocketAddr::from((lab.b.v4, P));
    let to_q = SocketAddr::from((lab.b.v4, Q));
    let agent = Agent::start(&lab.b.ns)?;

    let id = agent.apply(&[
        "loss",
        "--dev",
        &lab.b.dev,
        "--dir",
        "in",
        "--percent",
        "100",
        "--proto",
        "udp",
        "--port",
        "8080",
        "--for",
        "60s",
    ])?;
    let loss_p = udp_loss(&lab.a.ns, &lab.b.ns, to_p, 1000)?;
    let loss_q = udp_loss(&lab.a.ns, &lab.b.ns, to_q, 1000)?;
    note(
        "loss_ingress_with_filter",
        format!(
            "ingress loss 100% on port {P}: {:.1}% lost to {P}, {:.1}% to {Q}",
            loss_p * 100.0,
            loss_q * 100.0
        ),
    );
    ensure!(
        loss_p == 1.0,
        "{:.1}% lost to the faulted port",
        loss_p * 100.0
    );
    ensure!(loss_q == 0.0, "{:.1}% lost to another port", loss_q * 100.0);

    agent.revert(&id)?;
    let after = udp_loss(&lab.a.ns, &lab.b.ns, to_p, 1000)?;
    ensure!(after == 0.0, "{:.1}% loss after revert", after * 100.0);
    agent.assert_clean()
}
