//! What the agent watches while faults run: host metrics from procfs ([`host`]), TCP connect
//! health from eBPF raw tracepoints ([`tcp`]), active connect probes ([`probes`]), and one snapshot
//! of all of them with the active faults ([`Monitor::snapshot`]), served over gRPC and as
//! Prometheus text ([`exposition`], [`http`]).

use std::{
    sync::{Arc, OnceLock},
    time::SystemTime,
};

use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::engine::{Engine, Fault, FaultState};

pub(crate) mod counters;
mod effects;
pub(crate) mod exposition;
pub(crate) mod host;
pub(crate) mod http;
pub(crate) mod probes;
pub(crate) mod tcp;

use counters::AgentCounters;
use exposition::Exposition;
use host::HostSnapshot;
use probes::{ProbeStatus, Probes};
use tcp::{DestHealth, TcpHealth};

/// Everything the agent knows at one moment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct MetricsSnapshot {
    pub(crate) taken_at_unix_ms: u64,
    pub(crate) host: HostSnapshot,
    pub(crate) tcp: Vec<DestHealth>,
    /// Why TCP connect health is not available, when it is not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) tcp_unavailable: Option<String>,
    pub(crate) probes: Vec<ProbeStatus>,
    /// Faults active now.
    pub(crate) faults: Vec<Fault>,
}

/// What snapshots say while the TCP programs are still being loaded.
pub(crate) const TCP_LOADING: &str = "the TCP connect health programs are still loading";

/// The watchers the agent runs, and the engine whose faults it reports.
pub(crate) struct Monitor {
    engine: Arc<Engine>,
    tcp: Arc<OnceLock<Result<TcpHealth, String>>>,
    probes: Probes,
    counters: Arc<AgentCounters>,
    /// procfs files kept open across snapshots.
    files: host::Files,
}

impl Monitor {
    /// Starts TCP connect health in the background (loading and verifying eBPF programs can
    /// take a while on a small or emulated host, and the agent must not wait for it to serve;
    /// a host without it still gets host metrics and probes: the reason is logged and reported
    /// in every snapshot) and the probes.
    pub(crate) fn start(engine: Arc<Engine>, probes: Probes, counters: Arc<AgentCounters>) -> Self {
        let tcp = Arc::new(OnceLock::new());
        let slot = Arc::clone(&tcp);
        std::thread::spawn(move || {
            let started = std::time::Instant::now();
            let health = TcpHealth::start().map_err(|e| {
                warn!(error = %e, "TCP connect health is not available");
                e.to_string()
            });
            if health.is_ok() {
                tracing::info!(took = ?started.elapsed(), "TCP connect health is watching");
            }
            let _ = slot.set(health);
        });
        Self {
            engine,
            tcp,
            probes,
            counters,
            files: host::Files::default(),
        }
    }

    /// What the agent refused, slowed down or shed to protect itself.
    pub(crate) fn counters(&self) -> &AgentCounters {
        &self.counters
    }

    pub(crate) fn snapshot(&self) -> Result<MetricsSnapshot, host::HostError> {
        let host = host::read(&self.files)?;
        let (tcp, tcp_unavailable) = match self.tcp.get() {
            Some(Ok(health)) => match health.snapshot() {
                Ok(list) => (list, None),
                Err(e) => (Vec::new(), Some(e.to_string())),
            },
            Some(Err(reason)) => (Vec::new(), Some(reason.clone())),
            None => (Vec::new(), Some(TCP_LOADING.to_owned())),
        };
        let faults = self
            .engine
            .list()
            .into_iter()
            .filter(|f| f.state == FaultState::Active)
            .collect();
        Ok(MetricsSnapshot {
            taken_at_unix_ms: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or_default(),
            host,
            tcp,
            tcp_unavailable,
            probes: self.probes.snapshot(),
            faults,
        })
    }
}

/// The whole snapshot, and the agent's own counters, as Prometheus text.
pub(crate) fn prometheus_text(s: &MetricsSnapshot, counters: &AgentCounters) -> String {
    let mut e = Exposition::new();
    exposition::host_metrics(&mut e, &s.host);
    tcp_metrics(&mut e, &s.tcp);
    probe_metrics(&mut e, &s.probes);
    fault_metrics(&mut e, &s.faults);
    effects::effect_metrics(&mut e, &s.faults);
    agent_metrics(&mut e);
    counters.render(&mut e);
    e.finish()
}

/// The agent's own resident memory, under the name Prometheus client libraries give it, for
/// alerting on growth. Read from /proc/self/statm at each scrape; left out if unreadable.
fn agent_metrics(e: &mut Exposition) {
    let resident_pages = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|statm| statm.split_whitespace().nth(1)?.parse::<u64>().ok());
    // SAFETY: sysconf has no preconditions.
    let page_size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if let (Some(pages), Ok(page_size @ 1..)) = (resident_pages, u64::try_from(page_size)) {
        e.gauge(
            "process_resident_memory_bytes",
            "Resident memory size of the agent process in bytes.",
            &[(&[][..], (pages * page_size) as f64)],
        );
    }
}

fn tcp_metrics(e: &mut Exposition, list: &[DestHealth]) {
    let labels: Vec<(String, String)> = list
        .iter()
        .map(|d| (d.addr.to_string(), d.port.to_string()))
        .collect();
    let dest = |i: usize| {
        [
            ("addr", labels[i].0.as_str()),
            ("port", labels[i].1.as_str()),
        ]
    };
    let dests: Vec<[(&str, &str); 2]> = (0..list.len()).map(dest).collect();
    let series = |f: &dyn Fn(&DestHealth) -> u64| -> Vec<(&[(&str, &str)], f64)> {
        list.iter()
            .enumerate()
            .map(|(i, d)| (&dests[i][..], f(d) as f64))
            .collect()
    };
    e.counter(
        "faultline_tcp_connect_attempts_total",
        "TCP connects this host started, by destination (eBPF, since the agent started).",
        &series(&|d| d.attempts),
    );
    e.counter(
        "faultline_tcp_connect_successes_total",
        "TCP connects that reached ESTABLISHED, by destination.",
        &series(&|d| d.successes),
    );
    let causes: Vec<[(&str, &str); 3]> = list
        .iter()
        .enumerate()
        .flat_map(|(i, _)| {
            ["refused", "timed_out", "other"].map(|cause| {
                [
                    ("addr", labels[i].0.as_str()),
                    ("port", labels[i].1.as_str()),
                    ("cause", cause),
                ]
            })
        })
        .collect();
    let failures: Vec<(&[(&str, &str)], f64)> = list
        .iter()
        .flat_map(|d| [d.refused, d.timed_out, d.other_failures])
        .enumerate()
        .map(|(i, v)| (&causes[i][..], v as f64))
        .collect();
    e.counter(
        "faultline_tcp_connect_failures_total",
        "TCP connects that failed, by destination and cause (refused by a reset, timed out, other).",
        &failures,
    );
    e.counter(
        "faultline_tcp_retransmits_total",
        "TCP segments retransmitted to a destination.",
        &series(&|d| d.retransmits),
    );
    e.counter(
        "faultline_tcp_syn_retransmits_total",
        "SYN segments retransmitted while connecting to a destination.",
        &series(&|d| d.syn_retransmits),
    );
    let buckets: Vec<Vec<(f64, u64)>> = list
        .iter()
        .map(|d| {
            let mut total = 0;
            d.latency_buckets
                .iter()
                .map(|(le, n)| {
                    total += n;
                    (*le, total)
                })
                // The open last bucket is the +Inf the exposition writes from the count.
                .filter(|(le, _)| le.is_finite())
                .collect()
        })
        .collect();
    let histograms: Vec<exposition::HistogramSeries<'_>> = list
        .iter()
        .enumerate()
        .map(|(i, d)| {
            (
                &dests[i][..],
                &buckets[i][..],
                d.latency_sum_seconds,
                d.latency_buckets.iter().map(|(_, n)| n).sum(),
            )
        })
        .collect();
    e.histogram(
        "faultline_tcp_connect_duration_seconds",
        "Time from SYN sent to ESTABLISHED of successful TCP connects, by destination.",
        &histograms,
    );
}

fn probe_metrics(e: &mut Exposition, probes: &[ProbeStatus]) {
    let targets: Vec<[(&str, &str); 1]> = probes
        .iter()
        .map(|p| [("target", p.target.as_str())])
        .collect();
    e.gauge(
        "faultline_probe_up",
        "Whether the last connect probe to the target succeeded (1) or not (0).",
        &probes
            .iter()
            .enumerate()
            .map(|(i, p)| (&targets[i][..], f64::from(u8::from(p.up))))
            .collect::<Vec<_>>(),
    );
    e.gauge(
        "faultline_probe_duration_seconds",
        "Connect time of the last successful probe to the target.",
        &probes
            .iter()
            .enumerate()
            .filter_map(|(i, p)| p.last_latency_seconds.map(|l| (&targets[i][..], l)))
            .collect::<Vec<_>>(),
    );
    let results: Vec<[(&str, &str); 2]> = probes
        .iter()
        .flat_map(|p| {
            ["success", "failure"].map(|r| [("target", p.target.as_str()), ("result", r)])
        })
        .collect();
    e.counter(
        "faultline_probe_checks_total",
        "Connect probes to the target, by result.",
        &probes
            .iter()
            .flat_map(|p| [p.successes, p.failures])
            .enumerate()
            .map(|(i, n)| (&results[i][..], n as f64))
            .collect::<Vec<_>>(),
    );
}

fn fault_metrics(e: &mut Exposition, faults: &[Fault]) {
    let now = SystemTime::now();
    let summaries: Vec<String> = faults.iter().map(|f| f.spec.family().summary()).collect();
    let labels: Vec<[(&str, &str); 3]> = faults
        .iter()
        .enumerate()
        .map(|(i, f)| {
            [
                ("id", f.id.as_str()),
                ("kind", f.spec.kind()),
                ("summary", summaries[i].as_str()),
            ]
        })
        .collect();
    e.gauge(
        "faultline_fault_active",
        "1 for each fault active now, for overlaying faults on dashboards.",
        &labels.iter().map(|l| (&l[..], 1.0)).collect::<Vec<_>>(),
    );
    e.gauge(
        "faultline_fault_remaining_seconds",
        "Time until an active fault's deadline.",
        &faults
            .iter()
            .enumerate()
            .map(|(i, f)| (&labels[i][..], f.remaining(now).as_secs_f64()))
            .collect::<Vec<_>>(),
    );
}
