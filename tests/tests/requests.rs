//! Requests the agent must refuse or only plan: invalid input (exit 2), unknown ids (exit 3),
//! conflicts and the safety guard (exit 4), and dry runs. Each one must leave nothing behind.

use std::{net::SocketAddr, time::Duration};

use anyhow::{ensure, Result};
use faultline_tests::{
    note, require_root,
    traffic::{tcp_connect, tcp_listen},
    Agent, Lab,
};

#[test]
fn bad_input() -> Result<()> {
    if !require_root("bad_input") {
        return Ok(());
    }
    let lab = Lab::new()?;
    let agent = Agent::start(&lab.b.ns)?;
    // (request, words of which stderr must mention one)
    let cases: &[(&[&str], &[&str])] = &[
        (
            &["block", "--dir", "in", "--percent", "0", "--for", "60s"],
            &["percent"],
        ),
        (
            &["block", "--dir", "in", "--percent", "150", "--for", "60s"],
            &["percent"],
        ),
        (
            &["block", "--dir", "in", "--port", "70000", "--for", "60s"],
            &["port"],
        ),
        (
            &[
                "block",
                "--dir",
                "in",
                "--cidr",
                "10.0.0.300/8",
                "--for",
                "60s",
            ],
            &["cidr"],
        ),
        (
            &[
                "loss",
                "--dev",
                "nosuchdev0",
                "--percent",
                "10",
                "--for",
                "60s",
            ],
            &["dev"],
        ),
        (
            &["block", "--dir", "in", "--for", "0s"],
            &["duration", "--for"],
        ),
        (
            &["block", "--dir", "in", "--for", "48h"],
            &["duration", "--for"],
        ),
    ];
    for (request, fields) in cases {
        let stderr = agent.cli_fails(request, 2)?;
        ensure!(
            fields.iter().any(|f| stderr.contains(f)),
            "faultline {}: stderr does not mention {fields:?}: {stderr}",
            request.join(" ")
        );
        note(
            "bad_input",
            format!("{}: {}", request.join(" "), stderr.trim()),
        );
    }
    let faults = agent.faults()?;
    ensure!(
        faults.is_empty(),
        "refused requests left faults: {faults:?}"
    );
    ensure!(
        !lab.b.ns.nft_table_exists()?,
        "refused requests created table inet faultline"
    );
    agent.cli_fails(&["get", "deadbeef0000"], 3)?;
    agent.cli_fails(&["revert", "deadbeef0000"], 3)?;
    agent.assert_clean()
}

#[test]
fn conflict() -> Result<()> {
    if !require_root("conflict") {
        return Ok(());
    }
    let lab = Lab::new()?;
    let agent = Agent::start(&lab.a.ns)?;
    let first = agent.apply(&[
        "loss",
        "--dev",
        &lab.a.dev,
        "--dir",
        "out",
        "--percent",
        "10",
        "--for",
        "60s",
    ])?;
    let stderr = agent.cli_fails(
        &[
            "loss",
            "--dev",
            &lab.a.dev,
            "--dir",
            "out",
            "--percent",
            "20",
            "--proto",
            "udp",
            "--for",
            "60s",
            "--detach",
        ],
        4,
    )?;
    ensure!(
        stderr.contains(&first),
        "the refusal does not name the fault in the way ({first}): {stderr}"
    );
    let faults = agent.faults()?;
    ensure!(faults.len() == 1, "expected only {first}: {faults:?}");
    agent.revert(&first)?;
    agent.assert_clean()
}

#[test]
fn guard() -> Result<()> {
    if !require_root("guard") {
        return Ok(());
    }
    let lab = Lab::new()?;
    let protected = SocketAddr::from((lab.b.v4, 8022));
    let listener = tcp_listen(&lab.b.ns, protected)?;
    let agent = Agent::start_with(&lab.b.ns, &["--protected-port", "8022"])?;
    let _session = tcp_connect(&lab.a.ns, protected, Duration::from_secs(2))??;
    let (_accepted, _) = listener.accept()?;

    let block = [
        "block", "--dir", "in", "--proto", "tcp", "--port", "8022", "--for", "60s",
    ];
    let mut refused = block.to_vec();
    refused.push("--detach");
    let stderr = agent.cli_fails(&refused, 4)?;
    ensure!(
        stderr.contains("guard"),
        "the refusal does not mention the guard: {stderr}"
    );
    ensure!(agent.faults()?.is_empty(), "a refused fault was recorded");
    ensure!(
        !lab.b.ns.nft_table_exists()?,
        "a refused fault created the table"
    );

    // A block that does not touch the session needs no --force.
    let other = agent.apply(&[
        "block", "--dir", "in", "--proto", "tcp", "--port", "8023", "--for", "60s",
    ])?;
    agent.revert(&other)?;

    let mut forced = block.to_vec();
    forced.push("--force");
    let id = agent.apply(&forced)?;
    agent.revert(&id)?;
    agent.assert_clean()
}

#[test]
fn dry_run() -> Result<()> {
    if !require_root("dry_run") {
        return Ok(());
    }
    let lab = Lab::new()?;
    let agent = Agent::start(&lab.b.ns)?;
    let plan = agent.cli_ok(&[
        "block",
        "--dir",
        "in",
        "--proto",
        "tcp",
        "--port",
        "8080",
        "--for",
        "60s",
        "--dry-run",
    ])?;
    ensure!(
        plan.starts_with("dry run: nothing was applied"),
        "dry run printed: {plan}"
    );
    ensure!(
        plan.contains("nftables") || plan.contains("add chain"),
        "the block plan does not mention nftables: {plan}"
    );
    let plan = agent.cli_ok(&[
        "loss",
        "--dev",
        &lab.b.dev,
        "--percent",
        "50",
        "--for",
        "60s",
        "--dry-run",
    ])?;
    ensure!(
        plan.starts_with("dry run: nothing was applied"),
        "dry run printed: {plan}"
    );
    let faults = agent.faults()?;
    ensure!(faults.is_empty(), "dry runs left faults: {faults:?}");
    ensure!(!lab.b.ns.nft_table_exists()?, "a dry run created the table");
    agent.assert_clean()
}
