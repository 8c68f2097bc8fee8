//! Overhead: what a running agent costs the host. Its connect-health eBPF programs run on every
//! TCP connect of the host, so the loopback connect rate of a client is measured with and
//! without an agent, in alternating rounds, and the agent's counts are checked against the
//! connects made; its idle CPU and memory; and the time of a Prometheus scrape of its
//! `/metrics` against prometheus-node-exporter's, both serving from the same namespace.

use std::{
    fs,
    net::{Ipv4Addr, SocketAddr, TcpListener},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use serde_json::json;

use super::{
    bpfstats, faster, interrupted,
    lab::{Daemon, Netns},
    median, pause,
    traffic::{connect_rate, scrape},
    Ctx, Row, Section, Summary,
};

const ROUNDS: usize = 10;
const ROUND: Duration = Duration::from_secs(3);
const CONNECT_PORT: u16 = 7400;
const IDLE: Duration = Duration::from_secs(60);
const SCRAPES: usize = 200;
const AGENT_METRICS_PORT: u16 = 19464;
const EXPORTER_PORT: u16 = 19100;

/// CPU time (user + system) the process has used, in clock ticks, from /proc/PID/stat.
fn cpu_ticks(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/stat");
    let stat = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    parse_ticks(&stat).with_context(|| format!("reading {path}"))
}

/// utime + stime from a /proc/PID/stat line. The command name, in parentheses, may hold spaces
/// and parentheses: fields are counted after its last `)`. utime and stime are fields 14 and
/// 15, the 12th and 13th after it (field 3, the state, is the first).
fn parse_ticks(stat: &str) -> Result<u64> {
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .context("no ')' after the command name")?
        .1
        .split_whitespace()
        .collect();
    let field = |i: usize| -> Result<u64> {
        fields
            .get(i)
            .context("too few fields")?
            .parse()
            .context("a non-numeric CPU time")
    };
    Ok(field(11)? + field(12)?)
}

/// Resident memory (VmRSS) in bytes.
pub fn rss_bytes(pid: u32) -> Result<u64> {
    status_bytes(pid, "VmRSS")
}

/// A size field of /proc/<pid>/status (`VmRSS`, `RssAnon`, `RssFile`), in bytes.
pub fn status_bytes(pid: u32, field: &str) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kib| kib * 1024)
        .with_context(|| format!("no {field} in {path}"))
}

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

/// Scrape times in milliseconds, and the last body's size, of each server.
#[derive(Default)]
struct Scrapes {
    faultline: Vec<f64>,
    exporter: Vec<f64>,
    faultline_bytes: usize,
    exporter_bytes: usize,
}

/// Scrapes `addr` from inside `ns` until it answers 200, for up to 15 s.
fn wait_scrapable(ns: &Netns, addr: SocketAddr, what: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match ns.run(|| scrape(addr))? {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() > deadline => {
                return Err(e).with_context(|| format!("{what} does not serve {addr}/metrics"))
            }
            Err(_) => pause(Duration::from_millis(100))?,
        }
    }
}

pub fn run(ctx: &Ctx) -> Result<Section> {
    let mut rows = Vec::new();

    // Loopback connects in a fresh namespace, with and without an agent, in ABBA order so
    // that a steady drift of the machine's speed cancels out.
    let ns = ctx.netns()?;
    let dest = SocketAddr::from((Ipv4Addr::LOCALHOST, CONNECT_PORT));
    let listener = ns
        .run(|| TcpListener::bind(dest))?
        .with_context(|| format!("listening on {dest}"))?;
    ns.run(|| connect_rate(&listener, Duration::from_secs(1)))??;
    let (mut without, mut with, mut counts) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        interrupted()?;
        let mut bare = || -> Result<()> {
            without.push(ns.run(|| connect_rate(&listener, ROUND))??.0);
            Ok(())
        };
        if round % 2 == 0 {
            bare()?;
        }
        let agent = ctx.agent(&ns, &[])?;
        agent.wait_tcp_health()?;
        // Past its start-up work: the agent is as it will be for the rest of its life.
        pause(Duration::from_secs(1))?;
        let (rate, made) = ns.run(|| connect_rate(&listener, ROUND))??;
        with.push(rate);
        // The kernel updates the maps synchronously; a connect's end may trail by a tick.
        let deadline = Instant::now() + Duration::from_secs(5);
        let counted = loop {
            let counted = agent.connects_counted(dest)?;
            if counted == (made, made) || Instant::now() > deadline {
                break counted;
            }
            pause(Duration::from_millis(100))?;
        };
        counts.push(json!({ "made": made, "attempts": counted.0, "successes": counted.1 }));
        drop(agent);
        if round % 2 == 1 {
            bare()?;
        }
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let (rate_with, rate_without) = (mean(&with), mean(&without));
    let slower = (1.0 - rate_with / rate_without) * 100.0;
    rows.push(
        Row::new("loopback TCP connect rate, agent running", "connects/s")
            .values(rate_with, rate_without, "no agent")
            .ratio(|r| format!("{r:.3} ({:+.1} %)", (r - 1.0) * 100.0))
            .goal(
                "< 2 % slower",
                slower < 2.0,
                format!("{:.1} % slower", slower.max(0.0)),
            )
            .note(format!(
                "mean of {ROUNDS} rounds of {} s each way",
                ROUND.as_secs()
            )),
    );
    let made: u64 = counts.iter().filter_map(|c| c["made"].as_u64()).sum();
    let attempts: u64 = counts.iter().filter_map(|c| c["attempts"].as_u64()).sum();
    let successes: u64 = counts.iter().filter_map(|c| c["successes"].as_u64()).sum();
    let exact = counts
        .iter()
        .all(|c| c["attempts"] == c["made"] && c["successes"] == c["made"]);
    let lost = made.abs_diff(attempts) + made.abs_diff(successes);
    rows.push(
        Row::new("connects counted by the agent", "connects")
            .values(attempts as f64, made as f64, "connects made")
            .ratio(|r| format!("{r:.6}"))
            .goal(
                "0 lost counts",
                exact,
                format!("{lost} attempts or successes off"),
            )
            .note(format!(
                "attempts and successes for {dest} in `faultline metrics -o json`, every round: \
                 {attempts} attempts, {successes} successes"
            )),
    );

    // What each hook costs, in one more round with the kernel's run-time statistics on: they
    // take time of their own, so they stay off in the rounds above.
    let agent = ctx.agent(&ns, &[])?;
    agent.wait_tcp_health()?;
    pause(Duration::from_secs(1))?;
    let pid = agent.pid().context("the agent has no pid")?;
    let stats_on = bpfstats::StatsOn::enable()?;
    let before = bpfstats::by_tracepoint(pid)?;
    let (rate_stats, made_stats) = ns.run(|| connect_rate(&listener, ROUND))??;
    let after = bpfstats::by_tracepoint(pid)?;
    drop(stats_on);
    drop(agent);
    let hooks = bpfstats::since(&before, &after);
    anyhow::ensure!(
        !hooks.is_empty() && made_stats > 0,
        "the agent holds no raw tracepoint programs, or no connect was made"
    );
    // A whole connect (connect, accept, both closes) of the loop without an agent.
    let connect_ns = 1e9 / rate_without;
    let per_connect = |n: u64| n as f64 / made_stats as f64;
    let total_ns: u64 = hooks.values().map(|r| r.nanos).sum();
    let total_runs: u64 = hooks.values().map(|r| r.count).sum();
    for (tp, runs) in &hooks {
        rows.push(
            Row::new(format!("connect-health cost per connect: {tp}"), "ns")
                .values(
                    per_connect(runs.nanos),
                    connect_ns,
                    "a whole connect without an agent",
                )
                .ratio(|r| format!("{:.2} %", r * 100.0))
                .note(format!(
                    "{:.2} runs per connect, {:.0} ns per run",
                    per_connect(runs.count),
                    runs.nanos as f64 / runs.count.max(1) as f64
                )),
        );
    }
    rows.push(
        Row::new("connect-health cost per connect, all hooks", "ns")
            .values(
                per_connect(total_ns),
                connect_ns,
                "a whole connect without an agent",
            )
            .ratio(|r| format!("{:.2} %", r * 100.0))
            .note(format!(
                "{:.2} program runs per connect over {} tracepoints; the kernel's run-time \
                 statistics, one more round of {} s ({made_stats} connects, {rate_stats:.0}/s \
                 with the statistics' own cost); the tracepoints' dispatch is not in them",
                per_connect(total_runs),
                hooks.len(),
                ROUND.as_secs()
            )),
    );
    drop(listener);
    drop(ns);

    // Idle: the agent with default settings beside an idle node exporter, one window.
    let ns = ctx.netns()?;
    let exporter_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, EXPORTER_PORT));
    let log = ctx.dir.join("node-exporter.log");
    let mut exporter = Daemon::spawn(
        "prometheus-node-exporter",
        super::lab::command(
            &ns,
            "prometheus-node-exporter",
            [format!("--web.listen-address={exporter_addr}")],
        ),
        &log,
        Duration::from_secs(10),
    )?;
    wait_scrapable(&ns, exporter_addr, "prometheus-node-exporter").with_context(|| {
        format!(
            "its log: {}",
            fs::read_to_string(&log).unwrap_or_default().trim()
        )
    })?;
    let agent = ctx.agent(&ns, &[])?;
    agent.wait_tcp_health()?;
    pause(Duration::from_secs(5))?;
    let (agent_pid, exporter_pid) = (
        agent.pid().context("the agent has no pid")?,
        exporter.pid().context("the node exporter has no pid")?,
    );
    let started = Instant::now();
    let (a0, e0) = (cpu_ticks(agent_pid)?, cpu_ticks(exporter_pid)?);
    pause(IDLE)?;
    let (a1, e1) = (cpu_ticks(agent_pid)?, cpu_ticks(exporter_pid)?);
    let wall = started.elapsed().as_secs_f64();
    let (agent_rss, exporter_rss) = (rss_bytes(agent_pid)?, rss_bytes(exporter_pid)?);
    exporter.check_running()?;
    drop(agent);
    let hz = clock_ticks_per_second();
    let share = |ticks: u64| ticks as f64 / hz / wall * 100.0;
    let (agent_cpu, exporter_cpu) = (share(a1 - a0), share(e1 - e0));
    let mut idle_cpu = Row::new("agent idle CPU, 60 s", "% of one core").values(
        agent_cpu,
        exporter_cpu,
        "prometheus-node-exporter, idle (reference)",
    );
    idle_cpu = if e1 > e0 {
        idle_cpu.ratio(|r| format!("{r:.2}x"))
    } else {
        idle_cpu
    };
    rows.push(idle_cpu.note(format!(
        "{} ticks of {hz:.0}/s in {wall:.1} s (node exporter: {} ticks; one tick is {:.3} % \
         here); default settings, TCP connect health loaded",
        a1 - a0,
        e1 - e0,
        share(1)
    )));
    let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
    rows.push(
        Row::new("agent resident memory (VmRSS), idle", "MiB")
            .values(
                mib(agent_rss),
                mib(exporter_rss),
                "prometheus-node-exporter, idle (reference)",
            )
            .ratio(|r| format!("{r:.2}x")),
    );

    // Scrapes: an agent with its Prometheus listener, and the node exporter, taking turns.
    let agent_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, AGENT_METRICS_PORT));
    let agent = ctx.agent(&ns, &["--metrics-listen", &agent_addr.to_string()])?;
    agent.wait_tcp_health()?;
    wait_scrapable(&ns, agent_addr, "the agent")?;
    let scrapes = ns.run(|| -> Result<Scrapes> {
        let mut s = Scrapes::default();
        for i in 0..SCRAPES + 5 {
            interrupted()?;
            let one = |addr, into: &mut Vec<f64>, size: &mut usize| -> Result<()> {
                let (took, bytes) = scrape(addr)?;
                if i >= 5 {
                    into.push(took.as_secs_f64() * 1e3);
                }
                *size = bytes;
                Ok(())
            };
            if i % 2 == 0 {
                one(agent_addr, &mut s.faultline, &mut s.faultline_bytes)?;
                one(exporter_addr, &mut s.exporter, &mut s.exporter_bytes)?;
            } else {
                one(exporter_addr, &mut s.exporter, &mut s.exporter_bytes)?;
                one(agent_addr, &mut s.faultline, &mut s.faultline_bytes)?;
            }
        }
        Ok(s)
    })??;
    let Scrapes {
        faultline: fl,
        exporter: ne,
        faultline_bytes,
        exporter_bytes,
    } = scrapes;
    exporter.check_running()?;
    drop(agent);
    drop(exporter);
    let (fl_ms, ne_ms) = (median(&fl), median(&ne));
    let speedup = ne_ms / fl_ms;
    rows.push(
        Row::new("Prometheus scrape of /metrics, median", "ms")
            .values(fl_ms, ne_ms, "prometheus-node-exporter, default collectors")
            .speedup()
            .goal("≥ 10x faster", speedup >= 10.0, faster(speedup))
            .note(format!(
                "{SCRAPES} scrapes each, taking turns; bodies of {faultline_bytes} and \
                 {exporter_bytes} bytes"
            )),
    );
    drop(ns);

    Ok(Section {
        title: "Overhead".to_owned(),
        method: format!(
            "Connect rate: in a fresh namespace, one thread connects to a listener on \
             {dest}, accepts, and closes both ends (the client's with a reset), for {} s per \
             round; {ROUNDS} rounds without and {ROUNDS} with an agent started in that \
             namespace (its eBPF connect-health raw tracepoints are attached host-wide; each round \
             waits until `faultline metrics` no longer says `tcp_unavailable`), in ABBA order. \
             After each round with the agent, its attempts and successes for {dest} are \
             compared with the connects made. Per hook: one more round with an agent and the \
             kernel's eBPF run-time statistics on (bpf(BPF_ENABLE_STATS), for that round \
             only: they cost time of their own), each program's `run_cnt` and `run_time_ns` \
             from /proc/PID/fdinfo of the agent's program descriptors, before and after, by the \
             raw tracepoint its link names (`tp_name`); per connect made, beside the time of a \
             whole connect of the loop without an agent. Idle: an agent with default settings (only its \
             socket, state, pin and cgroup names are the bench's) beside an idle \
             prometheus-node-exporter in one namespace; user + system ticks from /proc/PID/stat \
             over {} s starting 5 s after TCP connect health loaded, and VmRSS at its end. \
             Scrape: `GET /metrics` over a new HTTP/1.0 connection, timed from the connect until \
             the whole body arrived, to an agent started with `--metrics-listen {agent_addr}` \
             and to `prometheus-node-exporter --web.listen-address={exporter_addr}` (default \
             collectors) in the same namespace, {SCRAPES} each in turn after 5 uncounted.",
            ROUND.as_secs(),
            IDLE.as_secs()
        ),
        rows,
        details: json!({
            "connects_per_second_without": without,
            "connects_per_second_with": with,
            "counts_per_round": counts,
            "hooks": hooks.iter().map(|(tp, r)| (tp.clone(), json!({ "runs": r.count, "run_time_ns": r.nanos }))).collect::<serde_json::Map<_, _>>(),
            "hooks_connects": made_stats,
            "idle": {
                "wall_seconds": wall, "clock_ticks_per_second": hz,
                "agent_ticks": a1 - a0, "node_exporter_ticks": e1 - e0,
                "agent_rss_bytes": agent_rss, "node_exporter_rss_bytes": exporter_rss,
            },
            "scrape_ms": { "faultline": Summary::of(&fl).json(), "node_exporter": Summary::of(&ne).json() },
            "scrape_body_bytes": { "faultline": faultline_bytes, "node_exporter": exporter_bytes },
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_are_read_past_a_command_name_with_spaces() {
        let stat = "4242 (tokio (rt) 1) S 1 4242 4242 0 -1 4194560 1500 0 0 0 37 12 0 0 20 0 \
                    9 0 123456 40960000 2048 18446744073709551615\n";
        assert_eq!(parse_ticks(stat).unwrap(), 49);
        assert!(parse_ticks("4242 (x) S 1").is_err());
        assert!(cpu_ticks(std::process::id()).is_ok());
        assert!(rss_bytes(std::process::id()).unwrap() > 0);
    }
}
