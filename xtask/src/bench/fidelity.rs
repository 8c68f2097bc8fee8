//! Fidelity: what a fault asked for against what was measured, with the methods of the
//! integration tests — eBPF loss counted per datagram between two namespaces, CPU and memory
//! read from the fault's own cgroup, tbf goodput of a TCP transfer (beside a plain `tc` tbf of
//! the same rate, in the same run) — and netem's figures from the VM guest, whose kernel has
//! sch_netem (this host's has not), parsed from the `[test] ...` lines its netem tests print.

use std::{
    fs,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use faultline_lab::traffic::{tcp_rate_bps, udp_loss};
use serde_json::json;

use super::{agent::Agent, pause, Ctx, Row, Section};
use crate::vm;

const LOSS_PERCENT: f64 = 30.0;
const DATAGRAMS: usize = 20_000;
const CPU_LOAD: f64 = 50.0;
const CPU_WINDOW: Duration = Duration::from_secs(10);
const MEMORY: u64 = 256 << 20;
const RATE_MBIT: f64 = 20.0;
/// 8 MiB take 3.4 s at 20 Mbit/s: long enough that tbf's initial burst does not count.
const TRANSFER: usize = 8 << 20;
/// What one transfer may take before the run fails; 3.4 s expected.
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(60);
/// faultline's default burst at 20 Mbit/s (20 ms of the rate), for the plain tc baseline.
const TC_BURST: &str = "50000";

/// The fault's cgroup directory holding `file`, in a v1 controller's hierarchy or in v2.
fn cgroup_file(agent: &Agent, id: &str, v1_controller: &str, file: &str) -> Option<PathBuf> {
    [
        Path::new("/sys/fs/cgroup").join(v1_controller),
        PathBuf::from("/sys/fs/cgroup/unified"),
        PathBuf::from("/sys/fs/cgroup"),
    ]
    .into_iter()
    .map(|root| root.join(agent.name()).join(id).join(file))
    .find(|p| p.exists())
}

/// CPU time charged to the fault's cgroup, in seconds.
fn cpu_seconds(agent: &Agent, id: &str) -> Result<f64> {
    if let Some(path) = cgroup_file(agent, id, "cpuacct", "cpuacct.usage") {
        let text = fs::read_to_string(&path).with_context(|| format!("{}", path.display()))?;
        return Ok(text.trim().parse::<f64>()? / 1e9);
    }
    let path = cgroup_file(agent, id, "cpu", "cpu.stat").context("the fault has no CPU cgroup")?;
    let text = fs::read_to_string(&path).with_context(|| format!("{}", path.display()))?;
    let usec = text
        .lines()
        .find_map(|l| l.strip_prefix("usage_usec "))
        .with_context(|| format!("no usage_usec in {}", path.display()))?;
    Ok(usec.trim().parse::<f64>()? / 1e6)
}

/// Memory charged to the fault's cgroup, in bytes.
fn memory_bytes(agent: &Agent, id: &str) -> Result<u64> {
    let path = cgroup_file(agent, id, "memory", "memory.usage_in_bytes")
        .or_else(|| cgroup_file(agent, id, "memory", "memory.current"))
        .context("the fault has no memory cgroup")?;
    let text = fs::read_to_string(&path).with_context(|| format!("{}", path.display()))?;
    Ok(text.trim().parse()?)
}

pub fn run(ctx: &Ctx) -> Result<Section> {
    let lab = ctx.lab()?;
    let (a, b) = (&lab.a, &lab.b);
    let agent = ctx.agent(&a.ns, &[])?;
    let mut rows = Vec::new();

    // eBPF loss, egress UDP.
    let to = SocketAddr::from((b.v4, 8080));
    let unfaulted = udp_loss(&a.ns, &b.ns, to, 5_000)?;
    let id = agent.apply_cli(&[
        "loss",
        "--dev",
        &a.dev,
        "--dir",
        "out",
        "--percent",
        "30",
        "--proto",
        "udp",
        "--for",
        "10m",
    ])?;
    let loss = udp_loss(&a.ns, &b.ns, to, DATAGRAMS)? * 100.0;
    agent.revert_cli(&id)?;
    // One standard deviation of a binomial share: what chance alone moves the figure by.
    let sigma = (LOSS_PERCENT * (100.0 - LOSS_PERCENT) / DATAGRAMS as f64).sqrt();
    rows.push(
        Row::new("eBPF loss, 30 % of egress UDP", "% of datagrams lost")
            .values(loss, LOSS_PERCENT, "requested")
            .ratio(|r| format!("{r:.3} of requested"))
            .note(format!(
                "{DATAGRAMS} datagrams (chance alone: σ = {sigma:.2} points); {:.2} % lost \
                 before the fault",
                unfaulted * 100.0
            )),
    );

    // CPU stress: 50 % of one core over a 10 s window inside the fault's life.
    let id = agent.apply_cli(&[
        "stress", "cpu", "--load", "50", "--cores", "1", "--for", "15s",
    ])?;
    pause(Duration::from_millis(500))?;
    let (start, cpu_start) = (Instant::now(), cpu_seconds(&agent, &id)?);
    pause(CPU_WINDOW)?;
    let (wall, cpu) = (
        start.elapsed().as_secs_f64(),
        cpu_seconds(&agent, &id)? - cpu_start,
    );
    agent.revert_cli(&id)?;
    let share = cpu / wall * 100.0;
    rows.push(
        Row::new("CPU stress, 50 % of one core", "% of one core")
            .values(share, CPU_LOAD, "requested")
            .ratio(|r| format!("{r:.3} of requested"))
            .note(format!(
                "{cpu:.3} s of CPU in {wall:.3} s, from the fault cgroup's CPU accounting"
            )),
    );

    // Memory stress: what the cgroup holds once the worker has allocated.
    let id = agent.apply_cli(&["stress", "memory", "--size", "256MiB", "--for", "1m"])?;
    let started = Instant::now();
    let mut usage = memory_bytes(&agent, &id)?;
    while started.elapsed() < Duration::from_secs(20) && (usage as f64) < MEMORY as f64 * 0.98 {
        pause(Duration::from_millis(100))?;
        usage = memory_bytes(&agent, &id)?;
    }
    // Let the worker finish: it stops allocating at the size.
    pause(Duration::from_millis(500))?;
    usage = memory_bytes(&agent, &id)?;
    let reached = started.elapsed();
    agent.revert_cli(&id)?;
    let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
    rows.push(
        Row::new("memory stress, 256 MiB", "MiB")
            .values(mib(usage), mib(MEMORY), "requested")
            .ratio(|r| format!("{r:.3} of requested"))
            .note(format!(
                "the fault cgroup's memory usage, {:.1} s after the apply",
                reached.as_secs_f64()
            )),
    );

    // tbf rate: goodput of a TCP transfer through faultline's cap, and through a plain tbf.
    let to = SocketAddr::from((b.v4, 8081));
    let free = tcp_rate_bps(&a.ns, &b.ns, to, TRANSFER, TRANSFER_TIMEOUT)? / 1e6;
    let id = agent.apply_cli(&[
        "rate", "--dev", &a.dev, "--rate", "20mbit", "--proto", "tcp", "--port", "8081", "--for",
        "10m",
    ])?;
    let capped = tcp_rate_bps(&a.ns, &b.ns, to, TRANSFER, TRANSFER_TIMEOUT)? / 1e6;
    agent.revert_cli(&id)?;
    a.ns.exec_ok(&[
        "tc", "qdisc", "replace", "dev", &a.dev, "root", "tbf", "rate", "20mbit", "burst",
        TC_BURST, "latency", "50ms",
    ])?;
    let plain = tcp_rate_bps(&a.ns, &b.ns, to, TRANSFER, TRANSFER_TIMEOUT);
    a.ns.exec_ok(&["tc", "qdisc", "del", "dev", &a.dev, "root"])?;
    let plain = plain? / 1e6;
    rows.push(
        Row::new("tbf rate 20mbit, TCP goodput", "Mbit/s")
            .values(capped, RATE_MBIT, "requested")
            .ratio(|r| format!("{r:.3} of requested"))
            .note(format!(
                "8 MiB over TCP; a plain `tc` root tbf of 20mbit gave {plain:.2} Mbit/s in the \
                 same run (goodput leaves out the TCP/IP and Ethernet headers tbf counts); \
                 {free:.0} Mbit/s without a cap"
            )),
    );
    drop(agent);
    Ok(Section {
        title: "Fidelity".to_owned(),
        method: format!(
            "One agent in namespace a of a veth pair a–b; faults applied and reverted with the \
             CLI. Loss: `loss --dev <veth> --dir out --percent 30 --proto udp`, {DATAGRAMS} \
             numbered UDP datagrams a→b, paced in bursts of 100, counted by the receiver. CPU: \
             `stress cpu --load 50 --cores 1`, CPU time charged to the fault's cgroup \
             (cpuacct.usage, or cpu.stat on cgroup v2) over a {}-s window starting 0.5 s after \
             the apply. Memory: `stress memory --size 256MiB`, the fault cgroup's memory usage \
             (memory.usage_in_bytes or memory.current) once it reached 98 % or 20 s passed, plus \
             0.5 s. Rate: `rate --dev <veth> --rate 20mbit --proto tcp --port 8081`, goodput of \
             8 MiB sent a→b over one TCP connection, timed from the connect until the receiver \
             had it all.",
            CPU_WINDOW.as_secs()
        ),
        rows,
        details: json!({
            "loss_percent": loss, "loss_before_percent": unfaulted * 100.0,
            "datagrams": DATAGRAMS, "cpu_seconds": cpu, "cpu_wall_seconds": wall,
            "memory_bytes": usage, "goodput_mbit": capped, "plain_tbf_goodput_mbit": plain,
            "uncapped_goodput_mbit": free,
        }),
    })
}

/// A netem figure the VM guest's tests print: the test, what it asked for, and how to find
/// the measured value in its `[test] ...` line (the number before `unit` after `after`).
struct NetemFigure {
    test: &'static str,
    figure: &'static str,
    requested: f64,
    unit: &'static str,
    after: &'static str,
    suffix: &'static str,
}

const NETEM: &[NetemFigure] = &[
    NetemFigure {
        test: "netem_delay_with_jitter_adds_the_requested_median",
        figure: "netem delay 100ms ± 10ms, added median RTT",
        requested: 100.0,
        unit: "ms",
        after: "added ",
        suffix: " ms",
    },
    NetemFigure {
        test: "netem_delay_with_jitter_adds_the_requested_median",
        figure: "netem jitter ± 10ms (uniform), measured half-width",
        requested: 10.0,
        unit: "ms",
        after: "jitter ± ",
        suffix: " ms",
    },
    NetemFigure {
        test: "netem_ingress_delay_is_seen_from_the_other_host",
        figure: "netem ingress delay 50ms, added median RTT",
        requested: 50.0,
        unit: "ms",
        after: "added ",
        suffix: " ms",
    },
    NetemFigure {
        test: "netem_loss_matches_the_requested_share",
        figure: "netem loss 10 % of egress UDP",
        requested: 10.0,
        unit: "% of datagrams lost",
        after: "netem loss 10%: ",
        suffix: "%",
    },
];

/// The value `figure`'s test printed on `console`, if it did.
fn netem_value(console: &str, figure: &NetemFigure) -> Option<f64> {
    let tag = format!("[{}] ", figure.test);
    console.lines().find_map(|line| {
        // libtest has printed `test NAME ... ` on the same line before the test's note.
        let text = &line[line.find(&tag)? + tag.len()..];
        let rest = &text[text.find(figure.after)? + figure.after.len()..];
        rest[..rest.find(figure.suffix)?].trim().parse().ok()
    })
}

/// The netem rows: run the VM guest's netem tests (`cargo xtask vm-test -- netem_`) and read
/// their figures, or say plainly why they are not measured.
pub fn netem_in_vm(skip: bool) -> Result<Section> {
    let method = "netem needs sch_netem, which this host's kernel lacks. These figures come \
                  from the integration tests `netem_*` run in the VM guest (`cargo xtask \
                  vm-test -- netem_`: Debian 12's stock kernel under qemu with software \
                  emulation, 2 vCPUs), parsed from the `[test] ...` lines they print; the \
                  delays are median UDP round trips minus the median through a netem qdisc \
                  without delay; the jitter is half the spread between the 2.5th and 97.5th \
                  percentiles of the delayed round trips, over 0.95 (where 95 % of a uniform \
                  spread lies); the loss is counted over 10 000 datagrams. They describe the \
                  emulated guest, not this host."
        .to_owned();
    let unmeasured = |why: &str| Section {
        title: "netem fidelity (VM guest)".to_owned(),
        method: method.clone(),
        rows: NETEM
            .iter()
            .map(|f| Row::new(f.figure, f.unit).note(format!("not measured here: {why}")))
            .collect(),
        details: json!({ "not_measured": why }),
    };
    if skip {
        return Ok(unmeasured(
            "--no-vm was given; see the VM test notes (`cargo xtask vm-test -- netem_`)",
        ));
    }
    if let Err(e) = vm::ensure_qemu() {
        return Ok(unmeasured(&format!(
            "qemu-system-x86_64 is not available and could not be installed ({e:#}); see the \
             VM test notes"
        )));
    }
    let guest = vm::run_guest(vm::Options::with_test_args(&["netem_"]))?;
    let verdict = guest.verdict.as_ref().err().map(|e| format!("{e:#}"));
    let mut rows = Vec::new();
    let mut values = serde_json::Map::new();
    for figure in NETEM {
        let row = Row::new(figure.figure, figure.unit);
        rows.push(match netem_value(&guest.console, figure) {
            Some(value) => {
                values.insert(figure.test.to_owned(), json!(value));
                row.values(value, figure.requested, "requested")
                    .ratio(|r| format!("{r:.3} of requested"))
                    .note(match &verdict {
                        None => "VM guest (emulated), not this host".to_owned(),
                        Some(e) => format!("VM guest (emulated); the guest's tests failed: {e}"),
                    })
            }
            None => row.note(format!(
                "not measured: the guest printed no `[{}]` line{}",
                figure.test,
                verdict
                    .as_ref()
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default()
            )),
        });
    }
    Ok(Section {
        title: "netem fidelity (VM guest)".to_owned(),
        method,
        rows,
        details: json!({ "values": values, "guest_verdict": verdict.unwrap_or_else(|| "pass".to_owned()) }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netem_figures_are_read_from_the_guest_console() {
        let console = "\
test netem_delay_with_jitter_adds_the_requested_median ... \
[netem_delay_with_jitter_adds_the_requested_median] delay 100ms ± 10ms: median RTT 0.312 ms \
unfaulted, 0.820 ms through netem without delay, 101.104 ms delayed: added 100.284 ms over \
1000 probes (100.0% answered); jitter ± 9.951 ms (half the 2.5th to 97.5th percentile spread, \
over 0.95)\r\n\
[netem_loss_matches_the_requested_share] netem loss 10%: 9.87% of 10000 datagrams lost\r\n\
[netem_ingress_delay_is_seen_from_the_other_host] ingress delay 50ms on b, probed from a: \
median RTT 0.901 ms through netem without delay -> 51.0 ms, added 50.099 ms (99.9% answered)\r\n";
        let values: Vec<Option<f64>> = NETEM.iter().map(|f| netem_value(console, f)).collect();
        assert_eq!(
            values,
            [Some(100.284), Some(9.951), Some(50.099), Some(9.87)]
        );
        assert_eq!(netem_value("nothing here", &NETEM[0]), None);
    }
}
