//! Shaping faults (tbf rate, netem) on the running kernel: the cap measured with real TCP
//! transfers between two namespaces, only the targeted traffic touched (a port, a cgroup),
//! shaping in both directions through an IFB of the fault's own while the interface's root qdisc
//! (the kernel's default, or another tool's, with no force) stays as it was, recovery after the
//! agent is killed, and the plain refusal where the kernel has no netem. netem's own fidelity is measured in `netem.rs` (the VM guest).

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::{ensure, Context as _, Result};
use faultline_tests::{
    note, process, require_root, settled, skip,
    traffic::{receive_rate_bps, tcp_listen, tcp_rate_bps},
    unique, Agent, Lab, Netns, AFTER_REVERT,
};
use serde_json::Value;

const P: u16 = 8080;
const Q: u16 = 8081;
const TRANSFER: usize = 3 << 20;
/// What a shell sends through bash's /dev/tcp: a slow sender under emulation (tens of Mbit/s),
/// so its cap is lower too.
const SHELL_TRANSFER: usize = 1 << 20;
const TIMEOUT: Duration = Duration::from_secs(30);

fn root_kind(ns: &Netns, dev: &str) -> Result<(String, String)> {
    let list = ns.qdiscs(dev)?;
    let root = list
        .as_array()
        .and_then(|l| l.iter().find(|q| q["root"] == true))
        .with_context(|| format!("no root qdisc on {dev}: {list}"))?;
    Ok((
        root["kind"].as_str().unwrap_or_default().to_owned(),
        root["handle"].as_str().unwrap_or_default().to_owned(),
    ))
}

fn mbit(bps: f64) -> f64 {
    bps / 1e6
}

#[test]
fn rate_egress_caps_only_the_targeted_port() -> Result<()> {
    const T: &str = "rate_egress_caps_only_the_targeted_port";
    if !require_root(T) {
        return Ok(());
    }
    let lab = Lab::new()?;
    let agent = Agent::start(&lab.a.ns)?;
    let before = lab.a.ns.qdiscs(&lab.a.dev)?;
    let to_p = SocketAddr::from((lab.b.v4, P));
    let to_q = SocketAddr::from((lab.b.v4, Q));
    let free = tcp_rate_bps(&lab.a.ns, &lab.b.ns, to_q, TRANSFER, TIMEOUT)?;

    let root = root_kind(&lab.a.ns, &lab.a.dev)?;
    let id = agent.apply(&[
        "rate", "--dev", &lab.a.dev, "--rate", "20mbit", "--proto", "tcp", "--port", "8080",
        "--for", "60s",
    ])?;
    ensure!(
        root_kind(&lab.a.ns, &lab.a.dev)? == root,
        "the fault changed the root qdisc: {}",
        lab.a.ns.qdiscs(&lab.a.dev)?
    );
    let ifb = format!("fl-{id}");
    ensure!(
        lab.a.ns.exec_succeeds(&["ip", "link", "show", &ifb])?,
        "no IFB device {ifb} while an egress fault is active"
    );
    let capped = tcp_rate_bps(&lab.a.ns, &lab.b.ns, to_p, TRANSFER, TIMEOUT)?;
    let other = tcp_rate_bps(&lab.a.ns, &lab.b.ns, to_q, TRANSFER, TIMEOUT)?;
    note(
        T,
        format!(
            "rate 20mbit on tcp/{P}: {:.2} Mbit/s to {P}, {:.0} Mbit/s to {Q} (unfaulted {:.0} Mbit/s)",
            mbit(capped),
            mbit(other),
            mbit(free)
        ),
    );
    ensure!(
        (mbit(capped) - 20.0).abs() <= 2.0,
        "{:.2} Mbit/s to the capped port, expected 20 ± 2",
        mbit(capped)
    );
    ensure!(
        other > 5.0 * capped,
        "the untargeted port got {:.1} Mbit/s, barely more than the capped one",
        mbit(other)
    );

    agent.revert(&id)?;
    ensure!(
        !settled(&false, || lab
            .a
            .ns
            .exec_succeeds(&["ip", "link", "show", &ifb]))?,
        "{ifb} is still there {AFTER_REVERT:?} after revert"
    );
    let after = settled(&before, || lab.a.ns.qdiscs(&lab.a.dev))?;
    ensure!(
        after == before,
        "the qdiscs {AFTER_REVERT:?} after revert differ from before:\n{after}\n{before}"
    );
    let after = tcp_rate_bps(&lab.a.ns, &lab.b.ns, to_p, TRANSFER, TIMEOUT)?;
    ensure!(
        after > 5.0 * capped,
        "{:.1} Mbit/s after revert",
        mbit(after)
    );
    agent.assert_clean()
}

#[test]
fn rate_ingress_goes_through_an_ifb() -> Result<()> {
    const T: &str = "rate_ingress_goes_through_an_ifb";
    if !require_root(T) {
        return Ok(());
    }
    let lab = Lab::new()?;
    let agent = Agent::start(&lab.b.ns)?;
    let to_p = SocketAddr::from((lab.b.v4, P));
    let to_q = SocketAddr::from((lab.b.v4, Q));

    let id = agent.apply(&[
        "rate", "--dev", &lab.b.dev, "--dir", "in", "--rate", "20mbit", "--proto", "tcp", "--port",
        "8080", "--for", "60s",
    ])?;
    let ifb = format!("fl-{id}");
    ensure!(
        lab.b.ns.exec_succeeds(&["ip", "link", "show", &ifb])?,
        "no IFB device {ifb} while an ingress fault is active"
    );
    let capped = tcp_rate_bps(&lab.a.ns, &lab.b.ns, to_p, TRANSFER, TIMEOUT)?;
    let other = tcp_rate_bps(&lab.a.ns, &lab.b.ns, to_q, TRANSFER, TIMEOUT)?;
    note(
        T,
        format!(
            "ingress rate 20mbit on tcp/{P}: {:.2} Mbit/s received on {P}, {:.0} Mbit/s on {Q}",
            mbit(capped),
            mbit(other)
        ),
    );
    ensure!(
        (mbit(capped) - 20.0).abs() <= 2.0,
        "{:.2} Mbit/s into the capped port, expected 20 ± 2",
        mbit(capped)
    );
    ensure!(
        other > 5.0 * capped,
        "the untargeted port got {:.1} Mbit/s",
        mbit(other)
    );

    agent.revert(&id)?;
    ensure!(
        !settled(&false, || lab
            .b
            .ns
            .exec_succeeds(&["ip", "link", "show", &ifb]))?,
        "{ifb} is still there {AFTER_REVERT:?} after revert"
    );
    agent.assert_clean()
}

/// The cgroup v2 hierarchy's mount point on this host.
fn cgroup2_mount() -> Option<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    text.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        (right.split_whitespace().next()? == "cgroup2")
            .then(|| left.split_whitespace().nth(4).map(PathBuf::from))
            .flatten()
    })
}

/// A cgroup v2 directory for one test, removed on drop.
struct TestCgroup(PathBuf);

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// Goodput of a transfer sent by a shell that first moves itself into `cgroup` (or stays where
/// it is), so its socket belongs to that cgroup.
/// A goodput under a 5 Mbit/s cap, measured again once when it falls below 4.5: a sender
/// that loses the CPU (the emulated guest under load: 4.12 once, with 99 Mbit/s uncapped
/// beside it) does not fill the cap, while a cap set too low stays low the second time. Above
/// the cap is never measured again.
fn under_the_cap(test: &str, measure: impl Fn() -> Result<f64>) -> Result<f64> {
    let first = measure()?;
    if mbit(first) >= 4.5 {
        return Ok(first);
    }
    let second = measure()?;
    note(
        test,
        format!(
            "{:.2} Mbit/s under the cap, measured again: {:.2} Mbit/s",
            mbit(first),
            mbit(second)
        ),
    );
    Ok(second)
}

fn rate_from_cgroup(lab: &Lab, cgroup: Option<&PathBuf>, port: u16) -> Result<f64> {
    let addr = SocketAddr::from((lab.b.v4, port));
    let listener = tcp_listen(&lab.b.ns, addr)?;
    let join = cgroup
        .map(|c| format!("echo $$ > {}/cgroup.procs && ", c.display()))
        .unwrap_or_default();
    let script = format!(
        "{join}exec 3<>/dev/tcp/{}/{port} && head -c {SHELL_TRANSFER} /dev/zero >&3",
        lab.b.v4
    );
    let mut sender = lab.a.ns.command("bash");
    sender.args(["-c", &script]);
    std::thread::scope(|scope| {
        let receiving = scope.spawn(|| receive_rate_bps(&listener, TIMEOUT));
        let sent = process::run(sender, TIMEOUT);
        let (bytes, rate) = receiving.join().expect("receiver panicked")?;
        let sent = sent?;
        ensure!(
            sent.status.success(),
            "{}",
            process::describe("the sender", &sent)
        );
        ensure!(
            bytes == SHELL_TRANSFER,
            "received {bytes} of {SHELL_TRANSFER} bytes"
        );
        Ok(rate)
    })
}

#[test]
fn rate_targets_a_cgroup() -> Result<()> {
    const T: &str = "rate_targets_a_cgroup";
    if !require_root(T) {
        return Ok(());
    }
    let Some(mount) = cgroup2_mount() else {
        skip(T, "no cgroup v2 hierarchy is mounted on this host");
        return Ok(());
    };
    let lab = Lab::new()?;
    let agent = Agent::start(&lab.a.ns)?;
    let name = format!("faultline-test-{}-{}", std::process::id(), unique());
    let cgroup = TestCgroup(mount.join(&name));
    std::fs::create_dir(&cgroup.0).with_context(|| format!("creating {}", cgroup.0.display()))?;
    // A cgroup below the target (a pod's container, a unit's sub-cgroup) is the target's too.
    let below = TestCgroup(cgroup.0.join("sub"));
    std::fs::create_dir(&below.0).with_context(|| format!("creating {}", below.0.display()))?;

    let id = agent.apply(&[
        "rate", "--dev", &lab.a.dev, "--rate", "5mbit", "--cgroup", &name, "--for", "60s",
    ])?;
    let inside = under_the_cap(T, || rate_from_cgroup(&lab, Some(&cgroup.0), P))?;
    let sub = under_the_cap(T, || rate_from_cgroup(&lab, Some(&below.0), P + 2))?;
    let outside = rate_from_cgroup(&lab, None, Q)?;
    note(
        T,
        format!(
            "rate 5mbit on cgroup {name}: {:.2} Mbit/s from inside it, {:.2} Mbit/s from a \
             cgroup below it, {:.0} Mbit/s from outside",
            mbit(inside),
            mbit(sub),
            mbit(outside)
        ),
    );
    ensure!(
        (mbit(sub) - 5.0).abs() <= 0.5,
        "{:.2} Mbit/s from a cgroup below the target, expected 5 ± 0.5",
        mbit(sub)
    );
    ensure!(
        (mbit(inside) - 5.0).abs() <= 0.5,
        "{:.2} Mbit/s from the cgroup, expected 5 ± 0.5",
        mbit(inside)
    );
    ensure!(
        outside > 3.0 * inside,
        "{:.1} Mbit/s from outside the cgroup",
        mbit(outside)
    );
    agent.revert(&id)?;
    agent.assert_clean()
}

/// `tc qdisc add dev DEV root handle 8001: tbf ...`, another tool's root.
fn install_foreign_tbf(ns: &Netns, dev: &str) -> Result<()> {
    ns.exec_ok(&[
        "tc", "qdisc", "add", "dev", dev, "root", "handle", "8001:", "tbf", "rate", "900mbit",
        "burst", "256kb", "latency", "40ms",
    ])
    .map(drop)
}

#[test]
fn another_tools_root_is_left_alone_without_force() -> Result<()> {
    const T: &str = "another_tools_root_is_left_alone_without_force";
    if !require_root(T) {
        return Ok(());
    }
    let lab = Lab::new()?;
    let agent = Agent::start(&lab.a.ns)?;
    install_foreign_tbf(&lab.a.ns, &lab.a.dev)?;
    let before = lab.a.ns.qdiscs(&lab.a.dev)?;
    let root = root_kind(&lab.a.ns, &lab.a.dev)?;

    // A low cap, so that the emulated guest's sender is not what limits the transfer.
    let args = [
        "rate", "--dev", &lab.a.dev, "--rate", "5mbit", "--proto", "tcp", "--port", "8080",
        "--for", "60s",
    ];
    let dry = agent.cli_ok(&[&args[..], &["--dry-run"]].concat())?;
    ensure!(
        dry.contains("netlink:") && dry.contains("left as it is"),
        "the dry run must show the netlink plan and that the root stays: {dry}"
    );
    let id = agent.apply(&args)?;
    ensure!(
        root_kind(&lab.a.ns, &lab.a.dev)? == root,
        "the fault replaced another tool's root: {}",
        lab.a.ns.qdiscs(&lab.a.dev)?
    );
    // Timed from the first byte received, as the cgroup test does: a 1 MiB transfer timed
    // from its connect counts TCP's start too (4.35 Mbit/s for 5 on this host).
    let capped = rate_from_cgroup(&lab, None, P)?;
    note(
        T,
        format!(
            "beside tbf 8001: (900mbit), rate 5mbit on tcp/{P}: {:.2} Mbit/s",
            mbit(capped)
        ),
    );
    // The cap holds beside the other tool's root: never above it, and traffic still flows.
    // Its precision is the other tests' (5 ± 0.5 without a foreign root, here and in the
    // guest); beside this root the emulated guest's shell sender fell to 4.07 Mbit/s.
    ensure!(
        (3.0..=5.5).contains(&mbit(capped)),
        "{:.2} Mbit/s to the capped port, expected at most 5.5 and at least 3",
        mbit(capped)
    );
    agent.revert(&id)?;
    let after = settled(&before, || lab.a.ns.qdiscs(&lab.a.dev))?;
    note(T, format!("qdiscs before and after: {before}"));
    ensure!(
        after == before,
        "not as before:\nbefore {before}\nafter  {after}"
    );
    agent.assert_clean()
}

#[test]
fn killed_agent_removes_the_shaping_at_restart() -> Result<()> {
    const T: &str = "killed_agent_removes_the_shaping_at_restart";
    if !require_root(T) {
        return Ok(());
    }
    let lab = Lab::new()?;
    let mut agent = Agent::start(&lab.a.ns)?;
    install_foreign_tbf(&lab.a.ns, &lab.a.dev)?;
    let before = lab.a.ns.qdiscs(&lab.a.dev)?;
    let mut ifbs = Vec::new();
    for dir in ["out", "in"] {
        let id = agent.apply(&[
            "rate", "--dev", &lab.a.dev, "--dir", dir, "--rate", "20mbit", "--for", "60s",
        ])?;
        ifbs.push(format!("fl-{id}"));
    }
    agent.kill()?;
    for ifb in &ifbs {
        ensure!(
            lab.a.ns.exec_succeeds(&["ip", "link", "show", ifb])?,
            "the fault's {ifb} should outlive a SIGKILLed agent"
        );
    }
    agent.restart()?;
    for ifb in &ifbs {
        ensure!(
            !lab.a.ns.exec_succeeds(&["ip", "link", "show", ifb])?,
            "{ifb} is still there after the restart"
        );
    }
    let after = lab.a.ns.qdiscs(&lab.a.dev)?;
    ensure!(
        after == before,
        "after restart:\nbefore {before}\nafter  {after}"
    );
    agent.assert_clean()
}

/// An older agent replaced the egress root with its htb (`fa00:`) and recorded what was there;
/// an agent of this design, started over that state, puts the recorded root back exactly.
#[test]
fn a_root_an_older_agent_replaced_is_restored_from_its_record() -> Result<()> {
    const T: &str = "a_root_an_older_agent_replaced_is_restored_from_its_record";
    if !require_root(T) {
        return Ok(());
    }
    let lab = Lab::new()?;
    let mut agent = Agent::start(&lab.a.ns)?;
    agent.kill()?;
    let before = lab.a.ns.qdiscs(&lab.a.dev)?;
    let (kind, _) = root_kind(&lab.a.ns, &lab.a.dev)?;
    lab.a.ns.exec_ok(&[
        "tc", "qdisc", "replace", "dev", &lab.a.dev, "root", "handle", "fa00:", "htb", "default",
        "1",
    ])?;
    let records = agent.state_dir().join("qdisc");
    std::fs::create_dir_all(&records)?;
    let record = serde_json::json!({
        "device": lab.a.dev,
        "prior": { "prior": "kernel_default", "kind": kind },
    });
    std::fs::write(records.join("0123abcd.json"), record.to_string())?;
    agent.restart()?;
    let after = lab.a.ns.qdiscs(&lab.a.dev)?;
    note(
        T,
        format!("before the old agent's htb and after the restart: {after}"),
    );
    ensure!(
        after == before,
        "not restored:\nbefore {before}\nafter  {after}"
    );
    ensure!(
        !records.join("0123abcd.json").exists(),
        "the record is still there after the restore"
    );
    agent.assert_clean()
}

#[test]
fn netem_where_the_kernel_has_none_is_refused_with_what_works() -> Result<()> {
    const T: &str = "netem_where_the_kernel_has_none_is_refused_with_what_works";
    if !require_root(T) {
        return Ok(());
    }
    let ns = Netns::create(&format!("fl-{}-{}-n", std::process::id(), unique()))?;
    let agent = Agent::start(&ns)?;
    let info: Value = serde_json::from_str(&agent.cli_ok(&["info", "-o", "json"])?)?;
    let netem = info["capabilities"]
        .as_array()
        .and_then(|l| l.iter().find(|c| c["name"] == "netem"))
        .context("info lists no netem")?
        .clone();
    if netem["available"] == true {
        skip(
            T,
            "this kernel has sch_netem (netem.rs measures it instead)",
        );
        return Ok(());
    }
    let refused = agent.cli_fails(
        &["delay", "--dev", "lo", "--delay", "100ms", "--for", "10s"],
        4,
    )?;
    note(T, format!("refusal: {}", refused.trim()));
    ensure!(
        refused.contains("sch_netem") && refused.contains("faultline loss"),
        "the refusal must name the missing module and what works instead: {refused}"
    );
    ensure!(
        root_kind(&ns, "lo")?.1 != "fa00:",
        "a refused fault touched lo"
    );
    agent.assert_clean()
}
