//! Fan-out: one block fault on 10, 50 and 100 agents at once with `faultline fleet run`, each
//! agent in a network namespace of its own, and how the wall times of apply and revert grow
//! with the number of agents. The baseline, run in turn with each experiment on the same
//! agents, is the plain loop: xtask's gRPC client applying to one agent after the other, then
//! reverting likewise.

use std::{
    fmt::Write as _,
    fs,
    io::{BufRead as _, BufReader, ErrorKind, Read as _},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    process::Stdio,
    sync::mpsc,
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{bail, ensure, Context as _, Result};
use serde_json::{json, Value};

use super::{
    agent::Agent,
    grpc::{self, Client},
    interrupted,
    lab::Netns,
    median, pause, Ctx, Row, Section,
};
use crate::exec;

/// Experiments (and loops) per agent count; the medians are reported.
const REPEATS: usize = 3;
const PORT: u16 = 7000;
/// Each experiment's duration: far longer than it runs, as it is ended once its faults are
/// active (see [`fleet_run`]).
const DURATION: &str = "10m";
const LEASE: &str = "10s";
/// The guards' interval of the abort experiment, and how long after every fault is applied its
/// guard is broken (its streams are open and have sent several snapshots by then).
const ABORT_INTERVAL: &str = "100ms";
const ABORT_AFTER: Duration = Duration::from_millis(1500);
/// Nothing listens there: a connect is refused, and fails the abort experiment's guard.
const CLOSED_PORT: u16 = 7001;
/// How long one experiment may take before its controller is killed.
const FLEET_TIMEOUT: Duration = Duration::from_secs(180);

/// The least-squares slope of `y` over `x`.
fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    let (mx, my) = (
        points.iter().map(|p| p.0).sum::<f64>() / n,
        points.iter().map(|p| p.1).sum::<f64>() / n,
    );
    let cov: f64 = points.iter().map(|(x, y)| (x - mx) * (y - my)).sum();
    let var: f64 = points.iter().map(|(x, _)| (x - mx) * (x - mx)).sum();
    cov / var
}

fn experiment(name: &str, agents: &[Agent]) -> String {
    let mut text = format!("name: {name}\ntargets:\n");
    for a in agents {
        let _ = writeln!(text, "  - address: unix:{}", a.socket().display());
    }
    let _ = write!(
        text,
        "duration: {DURATION}\nlease: {LEASE}\nfaults:\n  - fault:\n      kind: block\n      \
         direction: ingress\n      match: {{protocol: tcp, ports: [{{first: {PORT}, last: \
         {PORT}}}]}}\n"
    );
    text
}

/// A running `faultline fleet run FILE -o json`: its stdout (the report) and stderr (the
/// progress) read by threads of their own, and the instant it said every fault was applied.
struct Controller {
    child: std::process::Child,
    shown: String,
    output: thread::JoinHandle<String>,
    progress: thread::JoinHandle<String>,
    applied: mpsc::Receiver<Instant>,
    applied_at: Option<Instant>,
    deadline: Instant,
}

impl Controller {
    fn start(ctx: &Ctx, file: &std::path::Path) -> Result<Self> {
        let mut command = exec::command(&ctx.bin.to_string_lossy(), ["fleet", "run"]);
        command
            .arg(file)
            .args(["-o", "json"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let shown = exec::display(&command);
        let mut child = command
            .spawn()
            .with_context(|| format!("cannot start `{shown}`"))?;
        let mut stdout = child.stdout.take().context("stdout is piped")?;
        let stderr = child.stderr.take().context("stderr is piped")?;
        let output = thread::spawn(move || {
            let mut text = String::new();
            let _ = stdout.read_to_string(&mut text);
            text
        });
        let (applied_tx, applied) = mpsc::channel();
        let progress = thread::spawn(move || {
            let mut progress = String::new();
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if line.starts_with("fleet: applied ") {
                    let _ = applied_tx.send(Instant::now());
                }
                progress.push_str(&line);
                progress.push('\n');
            }
            progress
        });
        Ok(Self {
            child,
            shown,
            output,
            progress,
            applied,
            applied_at: None,
            deadline: Instant::now() + FLEET_TIMEOUT,
        })
    }

    /// Polls every 10 ms until it exits; `poke` runs at each poll with the instant it reported
    /// every fault applied, if it has. Returns its exit code, its progress and its report.
    fn wait(
        mut self,
        mut poke: impl FnMut(Option<Instant>, u32) -> Result<()>,
    ) -> Result<(Option<i32>, String, Value)> {
        let status = loop {
            if let Some(status) = self.child.try_wait()? {
                break status;
            }
            self.applied_at = self.applied_at.or_else(|| self.applied.try_recv().ok());
            if let Err(e) = poke(self.applied_at, self.child.id()) {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return Err(e);
            }
            if Instant::now() > self.deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                bail!(
                    "`{}` did not finish within {FLEET_TIMEOUT:?}; killed",
                    self.shown
                );
            }
            thread::sleep(Duration::from_millis(10));
        };
        let progress = self.progress.join().unwrap_or_default();
        let out = self.output.join().unwrap_or_default();
        let report: Value = serde_json::from_str(&out).with_context(|| {
            format!(
                "`{}` printed {out}; its progress: {}",
                self.shown,
                progress.trim()
            )
        })?;
        Ok((status.code(), progress, report))
    }
}

/// `faultline fleet run FILE -o json` on `agents`, ended like an operator's Ctrl-C once every
/// fault is active: (apply, revert) seconds from its report.
///
/// At an experiment's natural end its faults' own deadlines (their duration is the
/// experiment's, counted by each agent from its apply) come due just before the controller's
/// reverts, so those would only time answers about faults already gone. SIGINT makes the
/// controller revert everything, everywhere, at once while the faults still have minutes left.
fn fleet_run(ctx: &Ctx, agents: &[Agent], tag: &str) -> Result<(f64, f64)> {
    let file = ctx.dir.join(format!("{tag}.yaml"));
    fs::write(&file, experiment(tag, agents))
        .with_context(|| format!("writing {}", file.display()))?;
    let controller = Controller::start(ctx, &file)?;
    let shown = controller.shown.clone();
    let mut signalled = false;
    let (code, progress, report) = controller.wait(|applied_at, pid| {
        // The controller starts listening for Ctrl-C as it begins to watch, right after it
        // reports the faults applied; a signal before that would kill it instead.
        if applied_at.is_some_and(|t| t.elapsed() >= Duration::from_millis(500)) && !signalled {
            // SAFETY: kill(2) on our own child, which try_wait has just found running and only
            // this thread reaps.
            unsafe { libc::kill(pid as i32, libc::SIGINT) };
            signalled = true;
        }
        Ok(())
    })?;
    ensure!(
        signalled && code == Some(7),
        "`{shown}` ended with {code:?} without an operator abort after its faults were \
         applied; its progress: {}",
        progress.trim()
    );
    ensure!(
        report["outcome"] == "aborted by the operator" && report["faults_applied"] == agents.len(),
        "the experiment on {} agents did not end by the operator with a fault on each: {report}",
        agents.len()
    );
    let seconds = |field: &str| {
        report[field]
            .as_f64()
            .with_context(|| format!("no {field} in the report: {report}"))
    };
    Ok((seconds("apply_seconds")?, seconds("revert_seconds")?))
}

/// One guard breach's abort, timed: from the connect that crossed the guard's limit to the
/// instant the report says the last revert answered; and, within that, until the controller
/// saw the breach.
struct Abort {
    total: f64,
    seen: f64,
}

/// `faultline fleet run` on `agents` with a guard on connect failures to a closed port
/// (`interval: 100ms`); once every fault has been active for a while, one refused connect in
/// the last agent's namespace breaks the guard.
fn fleet_abort(ctx: &Ctx, agents: &[Agent], breaker: &Netns, tag: &str) -> Result<Abort> {
    let file = ctx.dir.join(format!("{tag}.yaml"));
    let mut text = experiment(tag, agents);
    let _ = write!(
        text,
        "interval: {ABORT_INTERVAL}\nguards:\n  - name: closed port\n    metric: \
         connect_failure_ratio\n    destination: 127.0.0.1:{CLOSED_PORT}\n    max: 0.5\n"
    );
    fs::write(&file, text).with_context(|| format!("writing {}", file.display()))?;
    let controller = Controller::start(ctx, &file)?;
    let shown = controller.shown.clone();
    let mut crossed: Option<SystemTime> = None;
    let (code, progress, report) = controller.wait(|applied_at, _| {
        if crossed.is_none() && applied_at.is_some_and(|t| t.elapsed() >= ABORT_AFTER) {
            let dest = SocketAddr::from((Ipv4Addr::LOCALHOST, CLOSED_PORT));
            // The connect's failure is counted by the kernel before connect() returns: the
            // guard's metric crosses its limit within this call.
            let before = SystemTime::now();
            let refused = breaker.run(|| TcpStream::connect(dest))?;
            ensure!(
                refused
                    .as_ref()
                    .is_err_and(|e| e.kind() == ErrorKind::ConnectionRefused),
                "a connect to {dest} in {} was not refused: {refused:?}",
                breaker.name()
            );
            crossed = Some(before);
        }
        Ok(())
    })?;
    let crossed = crossed.with_context(|| {
        format!(
            "`{shown}` ended before the guard was broken; its progress: {}",
            progress.trim()
        )
    })?;
    ensure!(
        code == Some(7)
            && report["outcome"]
                .as_str()
                .is_some_and(|o| o.starts_with("aborted: guard closed port breached"))
            && report["faults_applied"] == agents.len(),
        "`{shown}` did not abort on the guard with a fault on each of {} agents ({code:?}): \
         {report}",
        agents.len()
    );
    let unix = |t: SystemTime| {
        t.duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64())
    };
    let at = |field: &Value, name: &str| {
        field
            .as_f64()
            .with_context(|| format!("no {name} in the report: {report}"))
    };
    let reverted = at(&report["reverted_at_unix"], "reverted_at_unix")?;
    let seen = at(
        &report["guard_breach"]["seen_at_unix"],
        "guard_breach.seen_at_unix",
    )?;
    Ok(Abort {
        total: reverted - unix(crossed),
        seen: seen - unix(crossed),
    })
}

/// One agent after the other over open channels: (apply, revert) seconds.
fn sequential(ctx: &Ctx, clients: &mut [Client]) -> Result<(f64, f64)> {
    let spec = grpc::block_in_tcp(PORT);
    let started = Instant::now();
    let mut ids = Vec::with_capacity(clients.len());
    for client in clients.iter_mut() {
        ids.push(
            ctx.rt
                .block_on(client.apply(spec.clone(), Duration::from_secs(60)))?,
        );
    }
    let apply = started.elapsed().as_secs_f64();
    let started = Instant::now();
    for (client, id) in clients.iter_mut().zip(&ids) {
        ctx.rt.block_on(client.revert(id))?;
    }
    Ok((apply, started.elapsed().as_secs_f64()))
}

pub fn run(ctx: &Ctx, sizes: &[usize]) -> Result<Section> {
    let most = sizes.iter().copied().max().unwrap_or(0);
    ensure!(
        most > 0 && !sizes.contains(&0),
        "--fanout needs agent counts above 0"
    );
    let namespaces = (0..most).map(|_| ctx.netns()).collect::<Result<Vec<_>>>()?;
    // Declared after the namespaces, so dropped before them: each agent stops (and reverts)
    // before its namespace is deleted.
    let started = Instant::now();
    let mut agents = namespaces
        .iter()
        .map(|ns| Agent::spawn(&ctx.bin, ns, &ctx.dir, &ctx.name().0, &[]))
        .collect::<Result<Vec<_>>>()?;
    let mut ready = vec![false; most];
    let deadline = Instant::now() + Duration::from_secs(300);
    while ready.iter().any(|r| !r) {
        for (agent, ready) in agents.iter_mut().zip(ready.iter_mut()) {
            if !*ready {
                *ready = agent.answers(&ctx.rt)?;
            }
        }
        if Instant::now() > deadline {
            bail!(
                "{} of {most} agents did not answer within 300 s of their start",
                ready.iter().filter(|r| !**r).count()
            );
        }
        pause(Duration::from_millis(50))?;
    }
    let start_all = started.elapsed().as_secs_f64();
    println!("    {most} agents started in parallel, all answering after {start_all:.1}s");
    let mut clients = agents
        .iter()
        .map(|a| ctx.rt.block_on(Client::connect(&a.socket())))
        .collect::<Result<Vec<_>>>()?;

    let mut measured = Vec::new();
    for &n in sizes {
        let (mut fleet, mut plain) = (Vec::new(), Vec::new());
        for rep in 0..REPEATS {
            interrupted()?;
            fleet.push(fleet_run(ctx, &agents[..n], &format!("fan-out-{n}-{rep}"))?);
            plain.push(sequential(ctx, &mut clients[..n])?);
        }
        measured.push((n, fleet, plain));
    }
    let mut aborts = Vec::new();
    for rep in 0..REPEATS {
        interrupted()?;
        let tag = format!("abort-{most}-{rep}");
        aborts.push(fleet_abort(ctx, &agents, &namespaces[most - 1], &tag)?);
    }
    drop(clients);
    for ns in &namespaces {
        ensure!(
            ns.exec_ok(&["nft", "list", "table", "inet", "faultline"])
                .is_err(),
            "table inet faultline is still in {} after the experiments",
            ns.name()
        );
    }
    // All stop at once; the drops below wait for each.
    for agent in &mut agents {
        agent.terminate();
    }
    drop(agents);
    drop(namespaces);

    let ms = |v: Vec<f64>| median(&v) * 1e3;
    let mut rows = Vec::new();
    let mut slopes: [Vec<(f64, f64)>; 4] = Default::default();
    let mut details = Vec::new();
    for (n, fleet, plain) in &measured {
        let fa = ms(fleet.iter().map(|r| r.0).collect());
        let fr = ms(fleet.iter().map(|r| r.1).collect());
        let pa = ms(plain.iter().map(|r| r.0).collect());
        let pr = ms(plain.iter().map(|r| r.1).collect());
        for (i, v) in [fa, fr, pa, pr].into_iter().enumerate() {
            slopes[i].push((*n as f64, v));
        }
        for (what, f, p) in [("apply", fa, pa), ("revert", fr, pr)] {
            rows.push(
                Row::new(format!("fleet {what}, {n} agents"), "ms")
                    .values(f, p, "one agent after another (gRPC)")
                    .speedup()
                    .note(format!(
                        "median of {REPEATS}; {:.2} ms per agent",
                        f / *n as f64
                    )),
            );
        }
        details.push(json!({
            "agents": n,
            "fleet_apply_seconds": fleet.iter().map(|r| r.0).collect::<Vec<_>>(),
            "fleet_revert_seconds": fleet.iter().map(|r| r.1).collect::<Vec<_>>(),
            "sequential_apply_seconds": plain.iter().map(|r| r.0).collect::<Vec<_>>(),
            "sequential_revert_seconds": plain.iter().map(|r| r.1).collect::<Vec<_>>(),
        }));
    }
    let total_ms: Vec<f64> = aborts.iter().map(|a| a.total * 1e3).collect();
    let seen_ms: Vec<f64> = aborts.iter().map(|a| a.seen * 1e3).collect();
    let abort_ms = median(&total_ms);
    // The same agents' revert alone, when an operator aborts: what the abort cannot beat.
    let revert_alone = measured
        .iter()
        .find(|(n, ..)| *n == most)
        .map(|(_, fleet, _)| ms(fleet.iter().map(|r| r.1).collect()));
    let row = Row::new(
        format!("fleet abort on a guard breach, {most} agents, interval {ABORT_INTERVAL}"),
        "ms",
    );
    let row = match revert_alone {
        Some(r) => row
            .values(
                abort_ms,
                r,
                "the revert alone (operator abort), same agents",
            )
            .ratio(|r| format!("{r:.1}x the revert alone")),
        None => row,
    };
    rows.push(
        row.goal("< 250 ms", abort_ms < 250.0, format!("{abort_ms:.0} ms"))
            .note(format!(
                "median of {REPEATS} ({} ms); of that, until the controller saw the breach: {:.0} \
             ms (median)",
                total_ms
                    .iter()
                    .map(|v| format!("{v:.0}"))
                    .collect::<Vec<_>>()
                    .join(", "),
                median(&seen_ms)
            )),
    );
    if measured.len() >= 2 {
        let span = format!(
            "{}→{} agents",
            sizes.iter().min().unwrap_or(&0),
            sizes.iter().max().unwrap_or(&0)
        );
        for (what, f, p) in [("apply", 0, 2), ("revert", 1, 3)] {
            let (f, p) = (slope(&slopes[f]), slope(&slopes[p]));
            let row = Row::new(
                format!("fleet {what}, cost per added agent ({span})"),
                "ms/agent",
            )
            .values(f, p, "one agent after another (gRPC)");
            // A slope at or below zero means the times did not grow beyond their noise.
            rows.push(if f > 0.0 && p > 0.0 {
                row.speedup()
                    .note("least-squares slope of the medians over the agent counts")
            } else {
                row.note(
                    "least-squares slope of the medians over the agent counts; at or below \
                     zero: no growth beyond the noise, so no ratio",
                )
            });
        }
    }
    Ok(Section {
        title: "Fan-out".to_owned(),
        method: format!(
            "{most} agents, each in a network namespace of its own with its own socket, state, \
             pin and cgroup names, started in parallel (all answering after {start_all:.1} s). \
             For each agent count, {REPEATS} times: `faultline fleet run FILE -o json` on an \
             experiment listing the first N unix sockets, one `block` fault (ingress tcp/{PORT}, \
             duration {DURATION}, lease {LEASE}); 0.5 s after it reports every fault applied, \
             SIGINT (an operator's Ctrl-C) makes it revert everything at once — at an \
             experiment's natural end the agents' own deadlines come due first, and its revert \
             time would then only time answers about faults already gone. Figures from its \
             report: `apply_seconds` (first apply request to the last fault active, all agents \
             at once) and `revert_seconds` (first revert request to the last fault gone). Then, \
             in turn, the baseline: xtask applies the same fault to the N agents one after \
             another over open gRPC channels, then reverts them likewise, timed as a whole. \
             Medians are shown. Abort: {REPEATS} times on all {most} agents, the same \
             experiment with `interval: {ABORT_INTERVAL}` and a guard `connect_failure_ratio` \
             for 127.0.0.1:{CLOSED_PORT} (nothing listens there), max 0.5; {} ms after the \
             controller reports every fault applied, one connect to that port in the last \
             agent's namespace is refused (the kernel counts it before connect() returns), and \
             the guard breaks. Timed from just before that connect to the controller's \
             `reverted_at_unix` (the last revert answered: every fault on every agent gone); \
             the part until the breaching snapshot reached the controller is \
             `guard_breach.seen_at_unix`. The controller reads guards from each agent's \
             `Metrics/Stream`. Afterwards no namespace held faultline's table.",
            ABORT_AFTER.as_millis()
        ),
        rows,
        details: json!({
            "agents_started_seconds": start_all,
            "runs": details,
            "abort": { "agents": most, "interval": ABORT_INTERVAL, "total_ms": total_ms, "breach_seen_ms": seen_ms },
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slope_of_a_line() {
        let points = [(10.0, 7.0), (50.0, 27.0), (100.0, 52.0)];
        assert!((slope(&points) - 0.5).abs() < 1e-12);
    }
}
