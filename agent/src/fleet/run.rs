//! Running an experiment: reach every agent, observe a baseline, apply the faults to all targets
//! at once with leases, keep the leases renewed and the guards evaluated while the faults run,
//! revert everything at the end, on a breach, on a lost agent or on Ctrl-C, and grade the SLOs.
//! The controller is only a client of the agents: if it dies, the leases revert the faults.

use std::{
    collections::BTreeMap,
    future::Future,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use faultline_proto::v1::{self as pb, faults_client::FaultsClient, metrics_client::MetricsClient};
use futures_util::future::join_all;
use thiserror::Error;
use tonic::transport::Channel;

use super::{
    experiment::{selects, Destination, Experiment, Target},
    report::{grade, score, BreachTiming, Report, Scorecard, Window},
    watch::{Reading, Streams},
};
use crate::{
    api::{convert, metrics::from_proto},
    monitor::MetricsSnapshot,
};

/// Consecutive failed contacts (snapshots or renewals) after which an agent counts as lost.
const LOST_AFTER: u32 = 3;

#[derive(Debug, Error)]
pub(crate) enum FleetError {
    #[error("cannot reach agent {address}: {reason} (nothing was applied)")]
    Unreachable { address: String, reason: String },
}

struct Agent {
    target: Target,
    faults: FaultsClient<Channel>,
    metrics: MetricsClient<Channel>,
    ids: Vec<String>,
    failures: u32,
    /// Counted as lost (said once).
    lost: bool,
    /// What the last failed contact said.
    last_failure: String,
}

impl Agent {
    async fn snapshot(&mut self) -> Result<MetricsSnapshot, String> {
        let reply = tokio::time::timeout(
            Duration::from_secs(5),
            self.metrics.snapshot(pb::SnapshotRequest {}),
        )
        .await
        .map_err(|_| "no answer within 5s".to_owned())?
        .map_err(|s| s.message().to_owned())?;
        from_proto(reply.into_inner()).map_err(|e| e.to_string())
    }
}

/// The experiment's faults that acted on nothing, each said once.
#[derive(Default)]
struct Ineffective {
    seen: std::collections::BTreeSet<String>,
    lines: Vec<String>,
}

impl Ineffective {
    /// Records `fault` on `host`; true the first time.
    fn note(&mut self, host: &str, fault: &crate::engine::Fault) -> bool {
        if !self.seen.insert(fault.id.clone()) {
            return false;
        }
        self.lines.push(format!(
            "{host}: fault {} ({}) acted on nothing: {}",
            fault.id,
            fault.spec.kind(),
            fault.spec.family().summary()
        ));
        true
    }
}

/// Connects to every target; a channel function is given so that TLS settings stay with the
/// caller.
pub(crate) async fn connect_all<F, Fut>(
    targets: &[Target],
    connect: F,
) -> Result<Vec<(Target, Channel)>, FleetError>
where
    F: Fn(String) -> Fut,
    Fut: Future<Output = Result<Channel, String>>,
{
    let attempts = join_all(targets.iter().map(|t| {
        let connecting = connect(t.address.clone());
        async move { (t.clone(), connecting.await) }
    }))
    .await;
    attempts
        .into_iter()
        .map(|(t, r)| match r {
            Ok(channel) => Ok((t, channel)),
            Err(reason) => Err(FleetError::Unreachable {
                address: t.address,
                reason,
            }),
        })
        .collect()
}

fn proto_duration(d: Duration) -> Option<prost_types::Duration> {
    prost_types::Duration::try_from(d).ok()
}

/// The guard breach that ended an experiment, as the controller saw it.
struct BreachSeen {
    guard: String,
    agent: String,
    /// When the agent took the snapshot that showed it (Unix seconds, the agent's clock).
    sampled_at_unix: f64,
    /// When the snapshot reached the controller (Unix seconds).
    seen_at_unix: f64,
}

fn unix_seconds(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Whether agent `a` has just become lost (too many failed contacts): the outcome when that
/// aborts the experiment. Said once per agent.
fn lost(experiment: &Experiment, a: &mut Agent, breaches: &mut Vec<String>) -> Option<String> {
    if a.failures < LOST_AFTER || a.lost {
        return None;
    }
    a.lost = true;
    breaches.push(format!(
        "agent {} lost ({} contacts failed, the last: {})",
        a.target.address, a.failures, a.last_failure
    ));
    experiment
        .abort
        .on_agent_lost
        .then(|| format!("aborted: agent {} lost", a.target.address))
}

/// Evaluates agent `a`'s newest snapshot `now` against its baseline `start`: its faults that act
/// on nothing, its guards. The outcome when that aborts the experiment, and the guard when a
/// guard's breach does.
fn judge(
    experiment: &Experiment,
    a: &Agent,
    start: Option<&MetricsSnapshot>,
    now: Option<&MetricsSnapshot>,
    ineffective: &mut Ineffective,
    breaches: &mut Vec<String>,
) -> Option<(String, Option<String>)> {
    let now = now?;
    let mut verdict = None;
    for f in now
        .faults
        .iter()
        .filter(|f| f.ineffective && a.ids.contains(&f.id))
    {
        if ineffective.note(&a.target.address, f) && experiment.abort.on_ineffective {
            verdict = Some((
                format!(
                    "aborted: fault {} ({}) on {} acts on nothing",
                    f.id,
                    f.spec.kind(),
                    a.target.address
                ),
                None,
            ));
        }
    }
    let start = start?;
    for g in &experiment.guards {
        let dest = g
            .destination
            .as_deref()
            .and_then(|d| Destination::parse(d).ok());
        let Some(v) = Window::between(start, now, dest.as_ref()).measure(g.metric) else {
            continue;
        };
        if v > g.max {
            breaches.push(format!(
                "guard {} on {}: {} {} > max {}",
                g.name,
                a.target.address,
                g.metric,
                g.metric.show(v),
                g.metric.show(g.max)
            ));
            if experiment.abort.on_guard_breach {
                verdict = Some((
                    format!("aborted: guard {} breached on {}", g.name, a.target.address),
                    Some(g.name.clone()),
                ));
            }
        }
    }
    verdict
}

/// How long the last revert waits before it tries a broken connection again.
const RETRY: Duration = Duration::from_millis(500);

/// Whether a failed call failed on the way (the connection), not at the agent, which answers
/// with what it decided (not found, denied, failed).
fn transient(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::Unavailable
            | tonic::Code::Unknown
            | tonic::Code::Internal
            | tonic::Code::Cancelled
    ) && !status.message().starts_with("reverting fault")
}

/// Runs `experiment` on the connected agents until it ends or `stop` resolves (Ctrl-C);
/// `progress` receives a line for each step, for the operator.
pub(crate) async fn run(
    experiment: &Experiment,
    agents: Vec<(Target, Channel)>,
    force: bool,
    stop: impl Future<Output = ()>,
    progress: impl Fn(String),
) -> Report {
    let mut agents: Vec<Agent> = agents
        .into_iter()
        .map(|(target, channel)| Agent {
            target,
            faults: FaultsClient::new(channel.clone()),
            metrics: MetricsClient::new(channel),
            ids: Vec::new(),
            failures: 0,
            lost: false,
            last_failure: String::new(),
        })
        .collect();
    tokio::pin!(stop);
    let mut outcome = "completed".to_owned();
    let mut breaches = Vec::new();
    let mut ineffective = Ineffective::default();

    // Baseline: the steady state before anything is injected.
    let mut start: Vec<Option<MetricsSnapshot>> = join_all(agents.iter_mut().map(|a| a.snapshot()))
        .await
        .into_iter()
        .map(Result::ok)
        .collect();
    if !experiment.baseline.is_zero() {
        progress(format!(
            "baseline: observing {} agents for {}",
            agents.len(),
            humantime::format_duration(experiment.baseline)
        ));
        tokio::select! {
            _ = tokio::time::sleep(experiment.baseline) => {}
            _ = &mut stop => outcome = "aborted by the operator during the baseline".to_owned(),
        }
        let after: Vec<Option<MetricsSnapshot>> = join_all(agents.iter_mut().map(|a| a.snapshot()))
            .await
            .into_iter()
            .map(Result::ok)
            .collect();
        for g in &experiment.guards {
            let dest = g
                .destination
                .as_deref()
                .and_then(|d| Destination::parse(d).ok());
            let mut total = Window::default();
            for (b, a) in start.iter().zip(&after) {
                if let (Some(b), Some(a)) = (b, a) {
                    total.add(&Window::between(b, a, dest.as_ref()));
                }
            }
            progress(format!(
                "baseline: guard {} ({}) at {} (max {})",
                g.name,
                g.metric,
                total
                    .measure(g.metric)
                    .map_or("no data".to_owned(), |v| g.metric.show(v)),
                g.metric.show(g.max)
            ));
        }
        start = after;
    }
    if outcome != "completed" {
        return report(
            experiment, &agents, outcome, breaches, 0.0, 0.0, &start, &start,
        );
    }

    // Apply everywhere at once.
    let applying = Instant::now();
    let results = join_all(agents.iter_mut().map(|a| {
        let groups: Vec<pb::FaultSpec> = experiment
            .faults
            .iter()
            .filter(|g| selects(&g.select, &a.target))
            .map(|g| convert::proto_spec(&g.fault))
            .collect();
        let name = experiment.name.clone();
        async move {
            let mut errors = Vec::new();
            for spec in groups {
                let request = pb::ApplyRequest {
                    spec: Some(spec),
                    // The controller ends the experiment itself (and times the revert); the
                    // agents' own deadline, a lease later, is only the backstop.
                    duration: proto_duration(experiment.duration + experiment.lease),
                    labels: [("experiment".to_owned(), name.clone())].into(),
                    dry_run: false,
                    force,
                    lease: proto_duration(experiment.lease),
                };
                match a.faults.apply(request).await {
                    Ok(reply) => a.ids.extend(reply.into_inner().fault.map(|f| f.id)),
                    Err(status) => {
                        errors.push(format!("{}: {}", a.target.address, status.message()))
                    }
                }
            }
            errors
        }
    }))
    .await;
    let apply_seconds = applying.elapsed().as_secs_f64();
    let errors: Vec<String> = results.into_iter().flatten().collect();
    let applied: usize = agents.iter().map(|a| a.ids.len()).sum();
    progress(format!(
        "applied {applied} faults on {} agents in {apply_seconds:.3}s",
        agents.len()
    ));
    if !errors.is_empty() {
        outcome = format!("aborted: apply failed ({})", errors.join("; "));
    }

    // Watch: renew leases, and evaluate each agent's guards as its streamed snapshot arrives,
    // until the duration is over.
    let ends = Instant::now() + experiment.duration;
    let renew_every = (experiment.lease / 3).max(Duration::from_millis(200));
    let mut renew = tokio::time::interval(renew_every);
    let mut last: Vec<Option<MetricsSnapshot>> = start.clone();
    let mut breach_seen: Option<BreachSeen> = None;
    let mut streams = (outcome == "completed").then(|| {
        Streams::open(
            agents.iter().map(|a| a.metrics.clone()).collect(),
            experiment.interval,
        )
    });
    while let Some(readings) = streams.as_mut() {
        tokio::select! {
            _ = tokio::time::sleep_until(ends.into()) => break,
            _ = &mut stop => { outcome = "aborted by the operator".to_owned(); break; }
            _ = renew.tick() => {
                // All at once: the readings wait while this runs.
                let renewed = join_all(agents.iter_mut().filter(|a| !a.ids.is_empty()).map(|a| async {
                    let request = pb::RenewLeaseRequest { ids: a.ids.clone(), lease: None };
                    let renewed = tokio::time::timeout(renew_every, a.faults.renew_lease(request)).await;
                    match renewed {
                        Ok(Ok(_)) => a.failures = 0,
                        Ok(Err(status)) => {
                            a.failures += 1;
                            a.last_failure = format!("lease renewal: {}", status.message());
                        }
                        Err(_) => {
                            a.failures += 1;
                            a.last_failure = format!(
                                "lease renewal: no answer within {}",
                                humantime::format_duration(renew_every)
                            );
                        }
                    }
                })).await;
                drop(renewed);
                for a in agents.iter_mut() {
                    if let Some(why) = lost(experiment, a, &mut breaches) {
                        outcome = why;
                    }
                }
            }
            reading = readings.next() => {
                let Some((i, reading)) = reading else { break };
                let a = &mut agents[i];
                match reading {
                    Reading::Snapshot(s, arrived) => {
                        a.failures = 0;
                        let sampled = s.taken_at_unix_ms;
                        last[i] = Some(*s);
                        let verdict = judge(
                            experiment, a, start[i].as_ref(), last[i].as_ref(),
                            &mut ineffective, &mut breaches,
                        );
                        if let Some((why, guard)) = verdict {
                            if let Some(guard) = guard {
                                breach_seen = Some(BreachSeen {
                                    guard,
                                    agent: a.target.address.clone(),
                                    sampled_at_unix: sampled as f64 / 1e3,
                                    seen_at_unix: unix_seconds(arrived),
                                });
                            }
                            outcome = why;
                        }
                    }
                    Reading::Failed(why) => {
                        a.failures += 1;
                        a.last_failure = format!("metrics stream: {why}");
                        if let Some(why) = lost(experiment, a, &mut breaches) {
                            outcome = why;
                        }
                    }
                }
            }
        }
        if outcome != "completed" {
            break;
        }
    }
    // Ends the streams: their readings would only compete with the reverts.
    drop(streams);
    if outcome != "completed" {
        progress(format!("{outcome}; reverting everything"));
    }

    // Revert everything, everywhere, at once. An agent cut off from this controller may never
    // answer (its packets dropped); waiting longer than the lease gains nothing, since the
    // agent reverts on its own when the lease runs out.
    let reverting = Instant::now();
    let patience = experiment.lease.max(Duration::from_secs(5));
    let (ended, unreverted): (Vec<Vec<pb::Fault>>, Vec<Vec<String>>) =
        join_all(agents.iter_mut().map(|a| async move {
            let (mut ended, mut unreverted) = (Vec::new(), Vec::new());
            let until = Instant::now() + patience;
            for id in std::mem::take(&mut a.ids) {
                // A fault that already ended (deadline, lease) answers with its final state.
                // A connection that broke (the network between us was cut, and may be back:
                // a fault of this experiment may have cut it) is tried again on a new one.
                let why = loop {
                    let request = pb::RevertRequest { id: id.clone() };
                    let left = until.saturating_duration_since(Instant::now());
                    match tokio::time::timeout(left, a.faults.revert(request)).await {
                        Ok(Ok(reply)) => {
                            ended.push(reply.into_inner());
                            break None;
                        }
                        Ok(Err(status)) if transient(&status) && Instant::now() + RETRY < until => {
                            tokio::time::sleep(RETRY).await;
                        }
                        Ok(Err(status)) => break Some(status.message().to_owned()),
                        Err(_) => {
                            break Some(format!(
                                "no answer within {}",
                                humantime::format_duration(patience)
                            ))
                        }
                    }
                };
                let Some(why) = why else { continue };
                unreverted.push(format!(
                    "{}: fault {id}: {why}; its lease ({}) reverts it on the agent",
                    a.target.address,
                    humantime::format_duration(experiment.lease)
                ));
            }
            (ended, unreverted)
        }))
        .await
        .into_iter()
        .unzip();
    let unreverted: Vec<String> = unreverted.into_iter().flatten().collect();
    for line in &unreverted {
        progress(format!("not reverted: {line}"));
    }
    let revert_seconds = reverting.elapsed().as_secs_f64();
    let reverted_at = SystemTime::now();
    progress(format!("reverted in {revert_seconds:.3}s"));
    // A fault shorter than the agents' grace period is never flagged while it runs; its last
    // reading says whether it acted at all.
    for (a, faults) in agents.iter().zip(&ended) {
        for f in faults {
            if f.effect.as_ref().is_some_and(|e| e.hits == 0) {
                if let Ok(fault) = convert::fault(f.clone()) {
                    ineffective.note(&a.target.address, &fault);
                }
            }
        }
    }
    let end: Vec<Option<MetricsSnapshot>> = join_all(agents.iter_mut().map(|a| a.snapshot()))
        .await
        .into_iter()
        .zip(last)
        .map(|(now, last)| now.ok().or(last))
        .collect();
    let mut report = report(
        experiment,
        &agents,
        outcome,
        breaches,
        apply_seconds,
        revert_seconds,
        &start,
        &end,
    )
    .with_applied(applied);
    report.ineffective = ineffective.lines;
    report.unreverted = unreverted;
    report.reverted_at_unix = Some(unix_seconds(reverted_at));
    report.guard_breach = breach_seen.map(|b| BreachTiming {
        guard: b.guard,
        agent: b.agent,
        sampled_at_unix: b.sampled_at_unix,
        seen_at_unix: b.seen_at_unix,
        seen_to_reverted_seconds: unix_seconds(reverted_at) - b.seen_at_unix,
    });
    report
}

#[allow(clippy::too_many_arguments)]
fn report(
    experiment: &Experiment,
    agents: &[Agent],
    outcome: String,
    breaches: Vec<String>,
    apply_seconds: f64,
    revert_seconds: f64,
    start: &[Option<MetricsSnapshot>],
    end: &[Option<MetricsSnapshot>],
) -> Report {
    let mut hosts = BTreeMap::new();
    let mut overall_scores = Vec::new();
    let mut totals: Vec<Window> = vec![Window::default(); experiment.slos.len()];
    for (i, a) in agents.iter().enumerate() {
        let mut scores = Vec::new();
        for (k, slo) in experiment.slos.iter().enumerate() {
            let dest = slo
                .destination
                .as_deref()
                .and_then(|d| Destination::parse(d).ok());
            let window = match (&start[i], &end[i]) {
                (Some(b), Some(e)) => Window::between(b, e, dest.as_ref()),
                _ => Window::default(),
            };
            totals[k].add(&window);
            scores.push(score(
                &slo.name,
                slo.metric,
                slo.target,
                window.measure(slo.metric),
            ));
        }
        hosts.insert(
            a.target.address.clone(),
            Scorecard {
                grade: grade(&scores),
                scores,
            },
        );
    }
    for (k, slo) in experiment.slos.iter().enumerate() {
        overall_scores.push(score(
            &slo.name,
            slo.metric,
            slo.target,
            totals[k].measure(slo.metric),
        ));
    }
    Report {
        experiment: experiment.name.clone(),
        outcome,
        agents: agents.len(),
        faults_applied: 0,
        apply_seconds,
        revert_seconds,
        breaches,
        ineffective: Vec::new(),
        unreverted: Vec::new(),
        guard_breach: None,
        reverted_at_unix: None,
        hosts,
        overall: Scorecard {
            grade: grade(&overall_scores),
            scores: overall_scores,
        },
    }
}

impl Report {
    fn with_applied(mut self, applied: usize) -> Self {
        self.faults_applied = applied;
        self
    }
}
