//! The `Metrics` gRPC service, and the conversion of a metrics snapshot to its protobuf form and
//! back (the CLI prints the domain form).

use std::{sync::Arc, time::Duration};

use faultline_proto::v1 as pb;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::{authz::Rpc, convert, gate::Gate};
use crate::{
    engine::Engine,
    errors::InvalidSpec,
    monitor::{
        host::{CpuTimes, DiskIo, HostSnapshot, Memory, NetIo, TcpCounters},
        probes::ProbeStatus,
        tcp::DestHealth,
        MetricsSnapshot, Monitor,
    },
};

const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);
const MIN_INTERVAL: Duration = Duration::from_millis(100);

pub(crate) struct MetricsService {
    monitor: Arc<Monitor>,
    engine: Arc<Engine>,
    gate: Arc<Gate>,
}

impl MetricsService {
    pub(crate) fn new(monitor: Arc<Monitor>, engine: Arc<Engine>, gate: Arc<Gate>) -> Self {
        Self {
            monitor,
            engine,
            gate,
        }
    }
}

fn snapshot(monitor: &Monitor) -> Result<pb::MetricsSnapshot, Status> {
    monitor
        .snapshot()
        .map(|s| to_proto(&s))
        .map_err(|e| Status::internal(format!("cannot read host metrics: {e}")))
}

#[tonic::async_trait]
impl pb::metrics_server::Metrics for MetricsService {
    async fn snapshot(
        &self,
        request: Request<pb::SnapshotRequest>,
    ) -> Result<Response<pb::MetricsSnapshot>, Status> {
        self.gate.admit(&request, Rpc::MetricsSnapshot, None)?;
        snapshot(&self.monitor).map(Response::new)
    }

    type StreamStream = ReceiverStream<Result<pb::MetricsSnapshot, Status>>;

    async fn stream(
        &self,
        request: Request<pb::StreamRequest>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        let admitted = self.gate.admit(&request, Rpc::MetricsStream, None)?;
        let subscription = self.gate.subscribe(&admitted, Rpc::MetricsStream)?;
        let interval = match request.into_inner().interval {
            None => DEFAULT_INTERVAL,
            Some(d) => {
                let d =
                    convert::duration(d).map_err(|e| Status::invalid_argument(e.to_string()))?;
                if d < MIN_INTERVAL {
                    return Err(Status::invalid_argument(format!(
                        "interval: {} is too short, at least {} is accepted",
                        humantime::format_duration(d),
                        humantime::format_duration(MIN_INTERVAL)
                    )));
                }
                d
            }
        };
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let monitor = Arc::clone(&self.monitor);
        let mut closing = self.engine.closing();
        tokio::spawn(async move {
            let _subscription = subscription;
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        if tx.send(snapshot(&monitor)).await.is_err() {
                            return; // the client went away
                        }
                    }
                    _ = closing.changed() => return,
                    _ = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

fn cpu(c: &CpuTimes) -> pb::CpuTimes {
    pb::CpuTimes {
        cpu: c.cpu,
        user: c.user,
        nice: c.nice,
        system: c.system,
        idle: c.idle,
        iowait: c.iowait,
        irq: c.irq,
        softirq: c.softirq,
        steal: c.steal,
    }
}

fn cpu_back(c: pb::CpuTimes) -> CpuTimes {
    CpuTimes {
        cpu: c.cpu,
        user: c.user,
        nice: c.nice,
        system: c.system,
        idle: c.idle,
        iowait: c.iowait,
        irq: c.irq,
        softirq: c.softirq,
        steal: c.steal,
    }
}

pub(crate) fn to_proto(s: &MetricsSnapshot) -> pb::MetricsSnapshot {
    let h = &s.host;
    let m = &h.memory;
    let t = &h.tcp;
    pb::MetricsSnapshot {
        at: Some(prost_types::Timestamp {
            seconds: (s.taken_at_unix_ms / 1000) as i64,
            nanos: ((s.taken_at_unix_ms % 1000) * 1_000_000) as i32,
        }),
        host: Some(pb::HostMetrics {
            cpu_total: Some(cpu(&h.cpu_total)),
            cpus: h.cpus.iter().map(cpu).collect(),
            load1: h.load[0],
            load5: h.load[1],
            load15: h.load[2],
            memory: Some(pb::Memory {
                total: m.total,
                free: m.free,
                available: m.available,
                buffers: m.buffers,
                cached: m.cached,
                swap_total: m.swap_total,
                swap_free: m.swap_free,
            }),
            disks: h
                .disks
                .iter()
                .map(|d| pb::DiskIo {
                    name: d.name.clone(),
                    reads: d.reads,
                    writes: d.writes,
                    read_bytes: d.read_bytes,
                    written_bytes: d.written_bytes,
                    read_time_seconds: d.read_time_seconds,
                    write_time_seconds: d.write_time_seconds,
                    io_time_seconds: d.io_time_seconds,
                    in_progress: d.in_progress,
                })
                .collect(),
            networks: h
                .networks
                .iter()
                .map(|n| pb::NetIo {
                    name: n.name.clone(),
                    rx_bytes: n.rx_bytes,
                    rx_packets: n.rx_packets,
                    rx_errors: n.rx_errors,
                    rx_drops: n.rx_drops,
                    tx_bytes: n.tx_bytes,
                    tx_packets: n.tx_packets,
                    tx_errors: n.tx_errors,
                    tx_drops: n.tx_drops,
                })
                .collect(),
            tcp: Some(pb::TcpCounters {
                active_opens: t.active_opens,
                passive_opens: t.passive_opens,
                attempt_fails: t.attempt_fails,
                estab_resets: t.estab_resets,
                curr_estab: t.curr_estab,
                in_segs: t.in_segs,
                out_segs: t.out_segs,
                retrans_segs: t.retrans_segs,
                in_errs: t.in_errs,
                out_rsts: t.out_rsts,
                listen_overflows: t.listen_overflows,
                listen_drops: t.listen_drops,
                syn_retrans: t.syn_retrans,
                timeouts: t.timeouts,
            }),
        }),
        tcp: s
            .tcp
            .iter()
            .map(|d| pb::TcpDestination {
                addr: d.addr.to_string(),
                port: d.port.into(),
                attempts: d.attempts,
                successes: d.successes,
                refused: d.refused,
                timed_out: d.timed_out,
                other_failures: d.other_failures,
                retransmits: d.retransmits,
                syn_retransmits: d.syn_retransmits,
                latency: d
                    .latency_buckets
                    .iter()
                    .map(|(le, count)| pb::LatencyBucket {
                        le: *le,
                        count: *count,
                    })
                    .collect(),
                latency_sum_seconds: d.latency_sum_seconds,
            })
            .collect(),
        tcp_unavailable: s.tcp_unavailable.clone().unwrap_or_default(),
        probes: s
            .probes
            .iter()
            .map(|p| pb::ProbeResult {
                target: p.target.clone(),
                up: p.up,
                last_latency_seconds: p.last_latency_seconds,
                last_error: p.last_error.clone(),
                successes: p.successes,
                failures: p.failures,
                last_checked: (p.last_checked_unix_ms > 0).then(|| prost_types::Timestamp {
                    seconds: (p.last_checked_unix_ms / 1000) as i64,
                    nanos: ((p.last_checked_unix_ms % 1000) * 1_000_000) as i32,
                }),
            })
            .collect(),
        faults: s.faults.iter().map(convert::proto_fault).collect(),
    }
}

fn unix_ms(t: Option<prost_types::Timestamp>) -> u64 {
    t.map(|t| t.seconds.max(0) as u64 * 1000 + (t.nanos.max(0) as u64) / 1_000_000)
        .unwrap_or_default()
}

/// The way back, for the CLI.
pub(crate) fn from_proto(s: pb::MetricsSnapshot) -> Result<MetricsSnapshot, InvalidSpec> {
    let h = s
        .host
        .ok_or_else(|| InvalidSpec::new("host", "missing from the agent's snapshot"))?;
    let m = h.memory.unwrap_or_default();
    let t = h.tcp.unwrap_or_default();
    Ok(MetricsSnapshot {
        taken_at_unix_ms: unix_ms(s.at),
        host: HostSnapshot {
            taken_at_unix_ms: unix_ms(s.at),
            cpu_total: cpu_back(h.cpu_total.unwrap_or_default()),
            cpus: h.cpus.into_iter().map(cpu_back).collect(),
            load: [h.load1, h.load5, h.load15],
            memory: Memory {
                total: m.total,
                free: m.free,
                available: m.available,
                buffers: m.buffers,
                cached: m.cached,
                swap_total: m.swap_total,
                swap_free: m.swap_free,
            },
            disks: h
                .disks
                .into_iter()
                .map(|d| DiskIo {
                    name: d.name,
                    reads: d.reads,
                    writes: d.writes,
                    read_bytes: d.read_bytes,
                    written_bytes: d.written_bytes,
                    read_time_seconds: d.read_time_seconds,
                    write_time_seconds: d.write_time_seconds,
                    io_time_seconds: d.io_time_seconds,
                    in_progress: d.in_progress,
                })
                .collect(),
            networks: h
                .networks
                .into_iter()
                .map(|n| NetIo {
                    name: n.name,
                    rx_bytes: n.rx_bytes,
                    rx_packets: n.rx_packets,
                    rx_errors: n.rx_errors,
                    rx_drops: n.rx_drops,
                    tx_bytes: n.tx_bytes,
                    tx_packets: n.tx_packets,
                    tx_errors: n.tx_errors,
                    tx_drops: n.tx_drops,
                })
                .collect(),
            tcp: TcpCounters {
                active_opens: t.active_opens,
                passive_opens: t.passive_opens,
                attempt_fails: t.attempt_fails,
                estab_resets: t.estab_resets,
                curr_estab: t.curr_estab,
                in_segs: t.in_segs,
                out_segs: t.out_segs,
                retrans_segs: t.retrans_segs,
                in_errs: t.in_errs,
                out_rsts: t.out_rsts,
                listen_overflows: t.listen_overflows,
                listen_drops: t.listen_drops,
                syn_retrans: t.syn_retrans,
                timeouts: t.timeouts,
            },
        },
        tcp: s
            .tcp
            .into_iter()
            .map(|d| {
                Ok(DestHealth {
                    addr: d.addr.parse().map_err(|_| {
                        InvalidSpec::new("tcp.addr", format!("{:?} is not an address", d.addr))
                    })?,
                    port: u16::try_from(d.port)
                        .map_err(|_| InvalidSpec::new("tcp.port", "out of range"))?,
                    attempts: d.attempts,
                    successes: d.successes,
                    refused: d.refused,
                    timed_out: d.timed_out,
                    other_failures: d.other_failures,
                    retransmits: d.retransmits,
                    syn_retransmits: d.syn_retransmits,
                    latency_buckets: d.latency.iter().map(|b| (b.le, b.count)).collect(),
                    latency_sum_seconds: d.latency_sum_seconds,
                })
            })
            .collect::<Result<_, InvalidSpec>>()?,
        tcp_unavailable: Some(s.tcp_unavailable).filter(|t| !t.is_empty()),
        probes: s
            .probes
            .into_iter()
            .map(|p| ProbeStatus {
                target: p.target,
                up: p.up,
                last_latency_seconds: p.last_latency_seconds,
                last_error: p.last_error,
                successes: p.successes,
                failures: p.failures,
                last_checked_unix_ms: unix_ms(p.last_checked),
            })
            .collect(),
        // A fault of a kind this client does not know (the agent is newer) is left out: a
        // snapshot is for computing with, and this client could not.
        faults: s
            .faults
            .into_iter()
            .filter_map(|f| convert::fault(f).ok())
            .collect(),
    })
}
