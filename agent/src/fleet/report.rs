//! What an experiment measured: guard and SLO values computed from two metrics snapshots of an
//! agent (counters are cumulative, so a window is their difference), summed over agents for the
//! overall figure, and the scorecard that grades the SLOs.

use std::collections::BTreeMap;

use serde::Serialize;

use super::experiment::{Destination, Measure};
use crate::monitor::MetricsSnapshot;

/// The counts behind every measure, over one window on one agent (or summed over agents).
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Window {
    /// TCP connects that ended (succeeded or failed).
    pub(crate) ended: u64,
    pub(crate) failed: u64,
    /// Connect latency histogram: (upper bound, count in bucket).
    pub(crate) latency: Vec<(f64, u64)>,
    pub(crate) cpu_busy_seconds: f64,
    pub(crate) cpu_total_seconds: f64,
    pub(crate) probe_checks: u64,
    pub(crate) probe_failures: u64,
}

impl Window {
    /// The difference `after - before`, for connects to `dest` (all destinations when `None`).
    pub(crate) fn between(
        before: &MetricsSnapshot,
        after: &MetricsSnapshot,
        dest: Option<&Destination>,
    ) -> Self {
        let mut w = Window::default();
        for d in &after.tcp {
            if dest.is_some_and(|f| !f.matches(d.addr, d.port)) {
                continue;
            }
            let old = before
                .tcp
                .iter()
                .find(|b| b.addr == d.addr && b.port == d.port);
            let failures =
                |x: &crate::monitor::tcp::DestHealth| x.refused + x.timed_out + x.other_failures;
            let (old_ok, old_failed) = old.map_or((0, 0), |o| (o.successes, failures(o)));
            let failed = failures(d).saturating_sub(old_failed);
            w.ended += d.successes.saturating_sub(old_ok) + failed;
            w.failed += failed;
            for (i, (le, n)) in d.latency_buckets.iter().enumerate() {
                let was = old
                    .and_then(|o| o.latency_buckets.get(i))
                    .map_or(0, |(_, n)| *n);
                add_bucket(&mut w.latency, *le, n.saturating_sub(was));
            }
        }
        let busy = |c: &crate::monitor::host::CpuTimes| {
            let idle = c.idle + c.iowait;
            let total = c.user + c.nice + c.system + idle + c.irq + c.softirq + c.steal;
            (total - idle, total)
        };
        let (b1, t1) = busy(&after.host.cpu_total);
        let (b0, t0) = busy(&before.host.cpu_total);
        w.cpu_busy_seconds = (b1 - b0).max(0.0);
        w.cpu_total_seconds = (t1 - t0).max(0.0);
        for p in &after.probes {
            let old = before.probes.iter().find(|o| o.target == p.target);
            let (ok0, fail0) = old.map_or((0, 0), |o| (o.successes, o.failures));
            let fails = p.failures.saturating_sub(fail0);
            w.probe_checks += p.successes.saturating_sub(ok0) + fails;
            w.probe_failures += fails;
        }
        w
    }

    pub(crate) fn add(&mut self, other: &Window) {
        self.ended += other.ended;
        self.failed += other.failed;
        for (le, n) in &other.latency {
            add_bucket(&mut self.latency, *le, *n);
        }
        self.cpu_busy_seconds += other.cpu_busy_seconds;
        self.cpu_total_seconds += other.cpu_total_seconds;
        self.probe_checks += other.probe_checks;
        self.probe_failures += other.probe_failures;
    }

    /// The measure over this window; `None` when there was nothing to measure (no connect
    /// ended, no probe ran).
    pub(crate) fn measure(&self, m: Measure) -> Option<f64> {
        match m {
            Measure::ConnectFailureRatio => {
                (self.ended > 0).then(|| self.failed as f64 / self.ended as f64)
            }
            Measure::ConnectSuccessRatio => {
                (self.ended > 0).then(|| 1.0 - self.failed as f64 / self.ended as f64)
            }
            Measure::ConnectP95Seconds => quantile(&self.latency, 0.95),
            Measure::CpuBusyPercent => (self.cpu_total_seconds > 0.0)
                .then(|| 100.0 * self.cpu_busy_seconds / self.cpu_total_seconds),
            Measure::ProbeFailureRatio => (self.probe_checks > 0)
                .then(|| self.probe_failures as f64 / self.probe_checks as f64),
        }
    }
}

fn add_bucket(buckets: &mut Vec<(f64, u64)>, le: f64, n: u64) {
    match buckets.iter_mut().find(|(l, _)| *l == le) {
        Some((_, count)) => *count += n,
        None => {
            buckets.push((le, n));
            buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        }
    }
}

/// The upper bound of the bucket the `q` quantile falls in.
fn quantile(buckets: &[(f64, u64)], q: f64) -> Option<f64> {
    let total: u64 = buckets.iter().map(|(_, n)| n).sum();
    if total == 0 {
        return None;
    }
    let rank = (q * total as f64).ceil().max(1.0) as u64;
    let mut seen = 0;
    for (le, n) in buckets {
        seen += n;
        if seen >= rank {
            return Some(*le);
        }
    }
    None
}

/// One graded SLO.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct Score {
    pub(crate) name: String,
    pub(crate) metric: String,
    pub(crate) target: f64,
    /// `None`: nothing to measure in the window (counts neither as pass nor fail).
    pub(crate) measured: Option<f64>,
    pub(crate) pass: Option<bool>,
    /// For people: `Availability 99.95 % (target 99.90 %) ✅`.
    pub(crate) line: String,
}

pub(crate) fn score(name: &str, metric: Measure, target: f64, measured: Option<f64>) -> Score {
    let pass = measured.map(|v| {
        if metric.higher_is_better() {
            v >= target
        } else {
            v <= target
        }
    });
    let line = format!(
        "{name} {} (target {}) {}",
        measured.map_or("no data".to_owned(), |v| metric.show(v)),
        metric.show(target),
        match pass {
            Some(true) => "✅",
            Some(false) => "❌",
            None => "—",
        }
    );
    Score {
        name: name.to_owned(),
        metric: metric.to_string(),
        target,
        measured,
        pass,
        line,
    }
}

/// A letter for the share of graded SLOs that passed: A all, B 80 %, C 60 %, D 40 %, F less.
pub(crate) fn grade(scores: &[Score]) -> String {
    let graded: Vec<bool> = scores.iter().filter_map(|s| s.pass).collect();
    if graded.is_empty() {
        return "-".to_owned();
    }
    let share = graded.iter().filter(|p| **p).count() as f64 / graded.len() as f64;
    match share {
        s if s >= 1.0 => "A",
        s if s >= 0.8 => "B",
        s if s >= 0.6 => "C",
        s if s >= 0.4 => "D",
        _ => "F",
    }
    .to_owned()
}

/// The scorecard of one agent, or of all of them.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Scorecard {
    pub(crate) scores: Vec<Score>,
    pub(crate) grade: String,
}

/// The experiment's outcome, for the table and for `--output json`.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Report {
    pub(crate) experiment: String,
    /// `completed`, `aborted: <why>`.
    pub(crate) outcome: String,
    pub(crate) agents: usize,
    pub(crate) faults_applied: usize,
    /// Seconds from the first apply request to the last fault active.
    pub(crate) apply_seconds: f64,
    /// Seconds from the first revert request to the last fault gone.
    pub(crate) revert_seconds: f64,
    pub(crate) breaches: Vec<String>,
    /// Faults that acted on nothing, one line each (`host: fault id (kind) ...`): flagged by
    /// their agent while they ran, or with no hits when they ended.
    pub(crate) ineffective: Vec<String>,
    /// Faults whose revert this controller could not get an answer for, one line each (`host:
    /// fault id: why`): their agent reverts them when their lease runs out.
    pub(crate) unreverted: Vec<String>,
    /// The guard breach that aborted the experiment, when one did: when it was sampled, seen
    /// and answered.
    pub(crate) guard_breach: Option<BreachTiming>,
    /// When the last revert answered (Unix seconds): every fault had stopped acting. None when
    /// the experiment ended before anything was applied.
    pub(crate) reverted_at_unix: Option<f64>,
    pub(crate) hosts: BTreeMap<String, Scorecard>,
    pub(crate) overall: Scorecard,
}

/// The guard breach that aborted an experiment, timed.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct BreachTiming {
    pub(crate) guard: String,
    /// The agent whose snapshot showed it.
    pub(crate) agent: String,
    /// When that agent took the snapshot (Unix seconds, the agent's clock; millisecond
    /// resolution).
    pub(crate) sampled_at_unix: f64,
    /// When the snapshot reached this controller (Unix seconds).
    pub(crate) seen_at_unix: f64,
    /// From then until the last revert answered, every fault on every agent gone.
    pub(crate) seen_to_reverted_seconds: f64,
}

impl Report {
    /// The table people read.
    pub(crate) fn text(&self) -> String {
        let mut out = format!(
            "experiment {}: {}\n{} agents, {} faults applied in {:.3}s, reverted in {:.3}s\n",
            self.experiment,
            self.outcome,
            self.agents,
            self.faults_applied,
            self.apply_seconds,
            self.revert_seconds
        );
        for b in &self.breaches {
            out.push_str(&format!("breach: {b}\n"));
        }
        if let Some(b) = &self.guard_breach {
            out.push_str(&format!(
                "guard {} on {}: every fault reverted {:.3}s after its breach reached this controller\n",
                b.guard, b.agent, b.seen_to_reverted_seconds
            ));
        }
        for line in &self.ineffective {
            out.push_str(&format!("ineffective: {line}\n"));
        }
        for line in &self.unreverted {
            out.push_str(&format!("not reverted: {line}\n"));
        }
        for (host, card) in &self.hosts {
            out.push_str(&format!("\n{host}  grade {}\n", card.grade));
            for s in &card.scores {
                out.push_str(&format!("  {}\n", s.line));
            }
        }
        out.push_str(&format!("\noverall  grade {}\n", self.overall.grade));
        for s in &self.overall.scores {
            out.push_str(&format!("  {}\n", s.line));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_measure_and_add() {
        let a = Window {
            ended: 1000,
            failed: 1,
            latency: vec![(0.001, 900), (0.002, 100)],
            cpu_busy_seconds: 1.0,
            cpu_total_seconds: 4.0,
            probe_checks: 10,
            probe_failures: 0,
        };
        assert_eq!(a.measure(Measure::ConnectFailureRatio), Some(0.001));
        assert_eq!(a.measure(Measure::ConnectP95Seconds), Some(0.002));
        assert_eq!(a.measure(Measure::CpuBusyPercent), Some(25.0));
        let mut sum = a.clone();
        sum.add(&a);
        assert_eq!(sum.ended, 2000);
        assert_eq!(sum.latency, vec![(0.001, 1800), (0.002, 200)]);
        assert_eq!(
            Window::default().measure(Measure::ConnectSuccessRatio),
            None
        );
    }

    #[test]
    fn scores_read_like_a_scorecard() {
        let s = score(
            "Availability",
            Measure::ConnectSuccessRatio,
            0.999,
            Some(0.9995),
        );
        assert_eq!(s.line, "Availability 99.95 % (target 99.90 %) ✅");
        let f = score("Latency", Measure::ConnectP95Seconds, 0.1, Some(0.25));
        assert_eq!(f.pass, Some(false));
        assert_eq!(grade(&[s.clone(), f.clone()]), "D");
        assert_eq!(grade(&[s]), "A");
        assert_eq!(grade(&[]), "-");
    }
}
