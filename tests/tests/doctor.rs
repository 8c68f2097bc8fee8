//! `faultline doctor` against the kernel itself: whether it says block, rate, netem and the
//! stress families work is checked by doing what each needs by hand, with iproute2, nft and
//! the cgroup filesystem, in a namespace of the test's own. Runs on this host (no sch_netem,
//! cgroup v1) and in the real-kernel guest (netem, cgroup v2), where the answers differ.

use std::{fs, net::SocketAddr, process::Output};

use anyhow::{ensure, Context as _, Result};
use faultline_tests::{note, process, require_root, traffic::tcp_listen, unique, Agent, Netns};
use serde_json::Value;

/// Whether `argv` succeeds in a fresh namespace (which is deleted with whatever it made).
fn works_by_hand(argv: &[&str]) -> Result<bool> {
    let ns = Netns::create(&format!("fl-{}-{}-dp", std::process::id(), unique()))?;
    ns.exec_succeeds(argv)
}

/// Whether the cgroup `controller` can be used: listed in the v2 root's controllers, or
/// mounted as a v1 hierarchy.
fn controller_usable(controller: &str) -> bool {
    match fs::read_to_string("/sys/fs/cgroup/cgroup.controllers") {
        Ok(list) => list.split_whitespace().any(|c| c == controller),
        Err(_) => fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(" - cgroup "))
            .any(|l| {
                l.rsplit(' ')
                    .next()
                    .is_some_and(|opts| opts.split(',').any(|o| o == controller))
            }),
    }
}

fn family<'a>(report: &'a Value, kind: &str) -> Result<&'a Value> {
    report["families"]
        .as_array()
        .context("no families in the report")?
        .iter()
        .find(|f| f["kind"] == kind)
        .with_context(|| format!("the doctor says nothing of {kind}"))
}

fn json_of(output: &Output) -> Result<Value> {
    serde_json::from_slice(&output.stdout)
        .with_context(|| format!("not JSON: {}", String::from_utf8_lossy(&output.stdout)))
}

#[test]
fn doctor_says_what_works_as_the_kernel_does() -> Result<()> {
    if !require_root("doctor_says_what_works_as_the_kernel_does") {
        return Ok(());
    }
    let ns = Netns::create(&format!("fl-{}-{}-d", std::process::id(), unique()))?;
    // A protected port with a listener, and one without: the guard line tells them apart.
    let listening = 20_000 + (unique() % 1000) as u16 + (std::process::id() % 20_000) as u16;
    let quiet = listening + 1;
    let _listener = tcp_listen(&ns, SocketAddr::from(([127, 0, 0, 1], listening)))?;
    let (first, second) = (listening.to_string(), quiet.to_string());
    let agent = Agent::start_with(
        &ns,
        &["--protected-port", &first, "--protected-port", &second],
    )?;

    let output = agent.cli(&["doctor", "-o", "json"])?;
    let report = json_of(&output)?;

    let by_hand = [
        (
            "netem",
            works_by_hand(&[
                "tc", "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms",
            ])?,
        ),
        (
            "rate",
            works_by_hand(&[
                "tc", "qdisc", "add", "dev", "lo", "root", "tbf", "rate", "1mbit", "burst", "32kb",
                "latency", "50ms",
            ])?,
        ),
        (
            "block",
            works_by_hand(&["nft", "add", "table", "inet", "fl_doctor_probe"])?,
        ),
        ("cpu", controller_usable("cpu")),
        ("memory", controller_usable("memory")),
    ];
    for (kind, works) in by_hand {
        let said = family(&report, kind)?;
        ensure!(
            said["works"] == works,
            "the doctor says {kind} works: {}, by hand it {}: {said}",
            said["works"],
            if works { "does" } else { "does not" }
        );
        if !works {
            ensure!(
                said["instead"].as_str().is_some_and(|s| !s.is_empty()),
                "{kind} does not work, and the doctor says nothing to do instead: {said}"
            );
        }
        note(
            "doctor",
            format!("{kind}: works={works} ({})", said["detail"]),
        );
    }
    let kinds = report["families"].as_array().context("families")?.len();
    ensure!(kinds >= 6, "only {kinds} families in {report}");
    let all_work = report["all_work"] == true;
    ensure!(
        output.status.code() == Some(if all_work { 0 } else { 4 }),
        "exit status {:?} with all_work={all_work}",
        output.status.code()
    );
    ensure!(
        report["examined_by"] == format!("agent pid {}", agent.pid().context("agent pid")?),
        "examined by {}",
        report["examined_by"]
    );

    let guard = report["checks"]
        .as_array()
        .context("checks")?
        .iter()
        .find(|c| c["area"] == "guard")
        .context("no guard check")?;
    let detail = guard["detail"].as_str().unwrap_or_default();
    ensure!(
        detail.contains(&format!("listening on {listening}"))
            && detail.contains(&format!("nothing on {quiet}")),
        "the guard check does not see the listener on {listening}: {detail}"
    );
    let journal = report["checks"]
        .as_array()
        .context("checks")?
        .iter()
        .find(|c| c["area"] == "journal")
        .context("no journal check")?;
    ensure!(
        journal["detail"]
            .as_str()
            .is_some_and(|d| d.starts_with(&agent.state_dir().display().to_string())),
        "the journal check is not about the agent's state directory: {journal}"
    );

    // The same families, with the same answers, from the CLI alone (no agent involved).
    let mut local = std::process::Command::new(process::faultline_bin()?);
    local.args(["doctor", "--local", "-o", "json"]);
    let local = process::run(local, process::COMMAND_TIMEOUT)?;
    let local_report = json_of(&local)?;
    let verdicts = |r: &Value| -> Vec<(String, bool)> {
        r["families"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|f| {
                (
                    f["kind"].as_str().unwrap_or("").to_owned(),
                    f["works"] == true,
                )
            })
            .collect()
    };
    ensure!(
        verdicts(&local_report) == verdicts(&report),
        "--local says {:?}, the agent {:?}",
        verdicts(&local_report),
        verdicts(&report)
    );
    ensure!(local.status.code() == output.status.code());

    // People read the text: one line per family, and what to use instead where one fails.
    let text = agent.cli(&["doctor"])?;
    let text = String::from_utf8_lossy(&text.stdout).into_owned();
    for (kind, works) in verdicts(&report) {
        let line = text
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{kind} ")))
            .with_context(|| format!("no line for {kind} in\n{text}"))?;
        ensure!(
            line.contains(if works { "works" } else { "does not work" }),
            "{line}"
        );
    }
    agent.assert_clean()
}
