//! Reverts verified against the kernel: the agent reads a fault's objects back while it runs
//! and after its revert. A test changes them behind the agent's back (deletes a rate fault's
//! qdisc, adds a rule to a block's chain, makes a cgroup inside a stress fault's cgroup) and
//! checks that the agent names exactly what changed or what was left, and that what was left
//! is cleaned once it can be.

use std::{fs, path::PathBuf, thread, time::Duration};

use anyhow::{ensure, Context as _, Result};
use faultline_tests::{note, require_root, settled, Agent, Lab};
use serde_json::Value;

fn lines(fault: &Value, field: &str) -> Vec<String> {
    fault[field]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect()
}

/// Waits (up to 5 s) until `field` of fault `id` holds a line for which `wanted` is true.
fn wait_for_line(
    agent: &Agent,
    id: &str,
    field: &str,
    wanted: impl Fn(&str) -> bool,
) -> Result<Value> {
    for _ in 0..50 {
        let fault = agent.fault(id)?;
        if lines(&fault, field).iter().any(|l| wanted(l)) {
            return Ok(fault);
        }
        thread::sleep(Duration::from_millis(100));
    }
    let fault = agent.fault(id)?;
    anyhow::bail!("no such line in {field} within 5 s: {fault}")
}

#[test]
fn a_qdisc_deleted_behind_the_agents_back_is_reported() -> Result<()> {
    const T: &str = "a_qdisc_deleted_behind_the_agents_back_is_reported";
    if !require_root(T) {
        return Ok(());
    }
    let lab = Lab::new()?;
    let agent = Agent::start(&lab.a.ns)?;
    let id = agent.apply(&[
        "rate", "--dev", &lab.a.dev, "--rate", "10mbit", "--proto", "tcp", "--port", "8095",
        "--for", "60s",
    ])?;
    // The agent's first reading of the fault's objects names its leaf, the root of its IFB.
    let fault = wait_for_line(&agent, &id, "objects", |l| l.starts_with("qdisc tbf"))?;
    let leaf = lines(&fault, "objects")
        .into_iter()
        .find(|l| l.starts_with("qdisc tbf"))
        .context("no leaf")?;
    let ifb = format!("fl-{id}");
    ensure!(
        leaf.ends_with(&format!("on {ifb}")),
        "the leaf is not on {ifb}: {leaf}"
    );
    lab.a
        .ns
        .exec_ok(&["tc", "qdisc", "del", "dev", &ifb, "root"])?;
    let fault = wait_for_line(&agent, &id, "changes", |l| {
        l.ends_with(&format!("gone: {leaf}"))
    })?;
    note(T, format!("changes: {:?}", lines(&fault, "changes")));
    let shown = agent.cli_ok(&["get", &id])?;
    ensure!(
        shown.contains(&format!("gone: {leaf}")) && shown.contains("(not by faultline)"),
        "get does not show the change:\n{shown}"
    );
    // The revert removes the IFB, whatever happened to its qdisc.
    agent.revert(&id)?;
    let ended = agent.settled_fault(&id, Duration::from_millis(500))?;
    ensure!(ended["state"] == "reverted", "{ended}");
    ensure!(lines(&ended, "residue").is_empty(), "{ended}");
    agent.assert_clean()
}

#[test]
fn a_rule_added_to_a_blocks_chain_is_reported() -> Result<()> {
    const T: &str = "a_rule_added_to_a_blocks_chain_is_reported";
    if !require_root(T) {
        return Ok(());
    }
    let lab = Lab::new()?;
    let agent = Agent::start(&lab.a.ns)?;
    let id = agent.apply(&[
        "block", "--dir", "in", "--proto", "tcp", "--port", "8096", "--for", "60s",
    ])?;
    let chain = format!("fl-{id}-in");
    wait_for_line(&agent, &id, "objects", |l| {
        l.ends_with(&format!("{chain}: 1 rule(s)"))
    })?;
    lab.a
        .ns
        .exec_ok(&["nft", "add", "rule", "inet", "faultline", &chain, "counter"])?;
    let fault = wait_for_line(&agent, &id, "changes", |l| {
        l.ends_with(&format!(
            "appeared: nftables chain inet faultline {chain}: 2 rule(s)"
        ))
    })?;
    ensure!(
        lines(&fault, "changes")
            .iter()
            .any(|l| l.ends_with(&format!(
                "gone: nftables chain inet faultline {chain}: 1 rule(s)"
            ))),
        "{fault}"
    );
    agent.revert(&id)?;
    ensure!(
        !settled(&false, || lab.a.ns.nft_table_exists())?,
        "the table (with the added rule) is still there"
    );
    agent.assert_clean()
}

#[test]
fn what_a_revert_leaves_is_named_and_removed_once_it_can_be() -> Result<()> {
    const T: &str = "what_a_revert_leaves_is_named_and_removed_once_it_can_be";
    if !require_root(T) {
        return Ok(());
    }
    let lab = Lab::new()?;
    let agent = Agent::start(&lab.a.ns)?;
    let id = agent.apply(&[
        "stress", "cpu", "--load", "5", "--cores", "1", "--for", "60s",
    ])?;
    let fault = wait_for_line(&agent, &id, "objects", |l| l.starts_with("cgroup "))?;
    let cgroup = PathBuf::from(
        lines(&fault, "objects")
            .into_iter()
            .find_map(|l| l.strip_prefix("cgroup ").map(str::to_owned))
            .context("no cgroup")?,
    );
    // A cgroup of someone else's inside the fault's: the fault's cgroup cannot be removed.
    let intruder = cgroup.join("intruder");
    fs::create_dir(&intruder)?;
    let reverted = agent.cli(&["revert", &id])?;
    let residue = wait_for_line(&agent, &id, "residue", |l| {
        l == format!("cgroup {}", cgroup.display())
    });
    // Whatever happened, the intruder goes, so that the test leaves nothing behind.
    let removed = fs::remove_dir(&intruder);
    let residue = residue?;
    note(
        T,
        format!(
            "revert exit {:?}; state {}, residue {:?}",
            reverted.status.code(),
            residue["state"],
            lines(&residue, "residue")
        ),
    );
    ensure!(
        residue["state"] == "failed" || residue["state"] == "reverted-with-residue",
        "{residue}"
    );
    removed?;
    // The agent retries every second: with the intruder gone, the fault's cgroup goes too.
    let mut state = Value::Null;
    for _ in 0..50 {
        state = agent.fault(&id)?;
        if state["state"] == "reverted" {
            break;
        }
        thread::sleep(Duration::from_millis(100));
    }
    ensure!(
        state["state"] == "reverted",
        "not cleaned within 5 s: {state}"
    );
    ensure!(!cgroup.exists(), "{} is still there", cgroup.display());
    agent.assert_clean()
}
