//! `faultline metrics` (one snapshot) and `faultline top` (a live view): what the agent sees
//! of the host, of TCP connects and of its probes, next to the faults that are active.

use std::{
    io::{IsTerminal as _, Write as _},
    time::Duration,
};

use clap::Args;
use faultline_proto::v1::{self as pb, metrics_client::MetricsClient};
use tokio::signal::unix::{signal, SignalKind};

use super::{
    args::{parse_duration, Global, Output},
    connect::channel,
    output::{self, Failure},
};
use crate::{
    api::metrics::from_proto,
    monitor::{host::HostSnapshot, tcp::DestHealth, MetricsSnapshot},
};

#[derive(Debug, Args)]
pub(crate) struct MetricsOptions {}

#[derive(Debug, Args)]
pub(crate) struct TopOptions {
    /// Time between updates
    #[arg(long, value_parser = parse_duration, default_value = "1s")]
    pub(crate) interval: Duration,
    /// Stop after this many updates (default: until Ctrl-C)
    #[arg(long, short = 'n')]
    pub(crate) iterations: Option<u64>,
}

async fn client(global: &Global) -> Result<MetricsClient<tonic::transport::Channel>, Failure> {
    Ok(MetricsClient::new(channel(global).await?))
}

fn domain(s: pb::MetricsSnapshot) -> Result<MetricsSnapshot, Failure> {
    from_proto(s)
        .map_err(|e| Failure::internal(format!("the agent sent an unreadable snapshot: {e}")))
}

pub(crate) async fn metrics(global: &Global, _o: MetricsOptions) -> Result<(), Failure> {
    let mut metrics = client(global).await?;
    let snapshot = domain(metrics.snapshot(pb::SnapshotRequest {}).await?.into_inner())?;
    match global.output {
        Output::Json => {
            output::print_json(&serde_json::to_value(&snapshot).map_err(|e| {
                Failure::internal(format!("cannot encode the snapshot as JSON: {e}"))
            })?)
        }
        Output::Text => print!("{}", render(&snapshot, None)),
    }
    Ok(())
}

pub(crate) async fn top(global: &Global, o: TopOptions) -> Result<(), Failure> {
    let mut metrics = client(global).await?;
    let mut stream = metrics
        .stream(pb::StreamRequest {
            interval: prost_types::Duration::try_from(o.interval).ok(),
        })
        .await?
        .into_inner();
    let mut int = signal(SignalKind::interrupt())
        .map_err(|e| Failure::internal(format!("SIGINT handler: {e}")))?;
    let tty = std::io::stdout().is_terminal();
    let mut previous: Option<MetricsSnapshot> = None;
    let mut shown = 0;
    loop {
        tokio::select! {
            message = stream.message() => {
                let Some(message) = message? else {
                    return Err(Failure::unreachable(&"the agent", "it closed the stream (shutting down)"));
                };
                let snapshot = domain(message)?;
                let frame = render(&snapshot, previous.as_ref());
                let mut out = std::io::stdout().lock();
                if tty {
                    // Home and clear: each frame replaces the last.
                    let _ = write!(out, "\x1b[H\x1b[2J");
                } else if shown > 0 {
                    let _ = writeln!(out);
                }
                let _ = write!(out, "{frame}");
                let _ = out.flush();
                previous = Some(snapshot);
                shown += 1;
                if o.iterations.is_some_and(|n| shown >= n) {
                    return Ok(());
                }
            }
            _ = int.recv() => return Ok(()),
        }
    }
}

fn bytes(n: f64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n;
    let mut unit = 0;
    while value >= 1024.0 && unit < units.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{value:.0} {}", units[unit])
    } else {
        format!("{value:.1} {}", units[unit])
    }
}

fn busy(h: &crate::monitor::host::CpuTimes) -> (f64, f64) {
    let idle = h.idle + h.iowait;
    let total = h.user + h.nice + h.system + idle + h.irq + h.softirq + h.steal;
    (total - idle, total)
}

/// The share of CPU time that was busy between two snapshots, in percent.
fn cpu_percent(
    now: &crate::monitor::host::CpuTimes,
    before: &crate::monitor::host::CpuTimes,
) -> f64 {
    let (b1, t1) = busy(now);
    let (b0, t0) = busy(before);
    if t1 > t0 {
        100.0 * (b1 - b0) / (t1 - t0)
    } else {
        0.0
    }
}

/// The latency below which `q` of the connects fell, as the bucket's upper bound.
pub(crate) fn quantile(d: &DestHealth, q: f64) -> Option<f64> {
    let total: u64 = d.latency_buckets.iter().map(|(_, n)| n).sum();
    if total == 0 {
        return None;
    }
    let rank = (q * total as f64).ceil().max(1.0) as u64;
    let mut seen = 0;
    for (le, n) in &d.latency_buckets {
        seen += n;
        if seen >= rank {
            return Some(*le);
        }
    }
    d.latency_buckets.last().map(|(le, _)| *le)
}

fn seconds(s: f64) -> String {
    if s < 1e-3 {
        format!("{:.0}µs", s * 1e6)
    } else if s < 1.0 {
        format!("{:.1}ms", s * 1e3)
    } else {
        format!("{s:.2}s")
    }
}

/// One screen of text. With `before`, rates and CPU shares are computed over the interval.
pub(crate) fn render(s: &MetricsSnapshot, before: Option<&MetricsSnapshot>) -> String {
    let h = &s.host;
    let mut out = String::new();
    let elapsed = before
        .map(|b| (s.taken_at_unix_ms.saturating_sub(b.taken_at_unix_ms)) as f64 / 1000.0)
        .filter(|e| *e > 0.0);
    let push = |out: &mut String, line: String| {
        out.push_str(&line);
        out.push('\n');
    };
    // CPU
    match before.map(|b| &b.host) {
        Some(b) if elapsed.is_some() => {
            let total = cpu_percent(&h.cpu_total, &b.cpu_total);
            let cores: Vec<String> = h
                .cpus
                .iter()
                .zip(&b.cpus)
                .map(|(n, p)| format!("{:.0}%", cpu_percent(n, p)))
                .collect();
            push(
                &mut out,
                format!("CPU   {total:5.1}% busy   per core: {}", cores.join(" ")),
            );
        }
        _ => push(
            &mut out,
            format!(
                "CPU   {} cores, since boot: user {:.0}s system {:.0}s iowait {:.0}s steal {:.0}s",
                h.cpus.len(),
                h.cpu_total.user,
                h.cpu_total.system,
                h.cpu_total.iowait,
                h.cpu_total.steal
            ),
        ),
    }
    push(
        &mut out,
        format!("Load  {:.2} {:.2} {:.2}", h.load[0], h.load[1], h.load[2]),
    );
    let m = &h.memory;
    push(
        &mut out,
        format!(
            "Mem   {} used of {} ({} available)",
            bytes(m.total.saturating_sub(m.available) as f64),
            bytes(m.total as f64),
            bytes(m.available as f64)
        ),
    );
    render_io(&mut out, h, before.map(|b| &b.host), elapsed);
    // TCP
    push(
        &mut out,
        format!(
            "TCP   retransmitted segments {}  listen overflows {}  established {}",
            h.tcp.retrans_segs, h.tcp.listen_overflows, h.tcp.curr_estab
        ),
    );
    if let Some(reason) = &s.tcp_unavailable {
        push(
            &mut out,
            format!("      connect health unavailable: {reason}"),
        );
    } else if !s.tcp.is_empty() {
        push(
            &mut out,
            format!(
                "      {:<40} {:>8} {:>8} {:>8} {:>8} {:>6} {:>7} {:>8} {:>8}",
                "destination",
                "attempts",
                "ok",
                "refused",
                "timeout",
                "other",
                "retrans",
                "p50",
                "p95"
            ),
        );
        let mut list: Vec<&DestHealth> = s.tcp.iter().collect();
        list.sort_by_key(|d| std::cmp::Reverse(d.attempts));
        for d in list.iter().take(15) {
            let dest = match d.addr {
                std::net::IpAddr::V6(a) => format!("[{a}]:{}", d.port),
                a => format!("{a}:{}", d.port),
            };
            push(
                &mut out,
                format!(
                    "      {:<40} {:>8} {:>8} {:>8} {:>8} {:>6} {:>7} {:>8} {:>8}",
                    dest,
                    d.attempts,
                    d.successes,
                    d.refused,
                    d.timed_out,
                    d.other_failures,
                    d.retransmits,
                    quantile(d, 0.5).map(seconds).unwrap_or_else(|| "-".into()),
                    quantile(d, 0.95).map(seconds).unwrap_or_else(|| "-".into())
                ),
            );
        }
        if list.len() > 15 {
            push(
                &mut out,
                format!("      ... and {} more destinations", list.len() - 15),
            );
        }
    }
    for p in &s.probes {
        let state = if p.up {
            format!(
                "up, {}",
                p.last_latency_seconds.map(seconds).unwrap_or_default()
            )
        } else {
            format!("DOWN: {}", p.last_error)
        };
        push(
            &mut out,
            format!(
                "Probe {}  {state}  ({} ok, {} failed)",
                p.target, p.successes, p.failures
            ),
        );
    }
    let now = std::time::SystemTime::now();
    if s.faults.is_empty() {
        push(&mut out, "Faults none active".to_owned());
    } else {
        for f in &s.faults {
            push(
                &mut out,
                format!(
                    "Fault {}  {}  {} left",
                    f.id,
                    f.spec.family().summary(),
                    humantime::format_duration(Duration::from_secs(f.remaining(now).as_secs()))
                ),
            );
        }
    }
    out
}

fn render_io(
    out: &mut String,
    h: &HostSnapshot,
    before: Option<&HostSnapshot>,
    elapsed: Option<f64>,
) {
    let rate = |now: u64, then: Option<u64>| match (then, elapsed) {
        (Some(then), Some(e)) => format!("{}/s", bytes(now.saturating_sub(then) as f64 / e)),
        _ => bytes(now as f64),
    };
    for d in &h.disks {
        let prev = before.and_then(|b| b.disks.iter().find(|p| p.name == d.name));
        out.push_str(&format!(
            "Disk  {:<12} read {:>12}  written {:>12}\n",
            d.name,
            rate(d.read_bytes, prev.map(|p| p.read_bytes)),
            rate(d.written_bytes, prev.map(|p| p.written_bytes))
        ));
    }
    for n in &h.networks {
        let prev = before.and_then(|b| b.networks.iter().find(|p| p.name == n.name));
        out.push_str(&format!(
            "Net   {:<12} rx {:>12}  tx {:>12}  errors {}  drops {}\n",
            n.name,
            rate(n.rx_bytes, prev.map(|p| p.rx_bytes)),
            rate(n.tx_bytes, prev.map(|p| p.tx_bytes)),
            n.rx_errors + n.tx_errors,
            n.rx_drops + n.tx_drops
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_come_from_bucket_bounds() {
        let d = DestHealth {
            addr: "127.0.0.1".parse().unwrap(),
            port: 80,
            attempts: 10,
            successes: 10,
            refused: 0,
            timed_out: 0,
            other_failures: 0,
            retransmits: 0,
            syn_retransmits: 0,
            latency_buckets: vec![(0.001, 9), (0.002, 0), (0.004, 1)],
            latency_sum_seconds: 0.01,
        };
        assert_eq!(quantile(&d, 0.5), Some(0.001));
        assert_eq!(quantile(&d, 0.95), Some(0.004));
        assert_eq!(bytes(1536.0), "1.5 KiB");
        assert_eq!(seconds(0.0025), "2.5ms");
    }
}
