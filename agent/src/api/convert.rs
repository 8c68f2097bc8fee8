//! proto <-> domain conversion, the only place that knows both. Parsing a request here is the
//! first half of validation: every field that cannot be turned into a domain value is refused
//! with its name and what would be accepted.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    time::{Duration, SystemTime},
};

use faultline_proto::v1 as pb;
use ipnet::IpNet;

use crate::{
    engine::{ApplyRequest, Fault, FaultState, NotRenewed, Renewal},
    errors::InvalidSpec,
    faults::{
        disk::{
            fill::FillAmount,
            io::{IoMode, DEFAULT_BLOCK, DEFAULT_SIZE},
            DiskFillSpec, DiskIoSpec, DiskSlowSpec,
        },
        effect::{Counter, Effect},
        kill::{KillSpec, Pick},
        pause::PauseSpec,
        shape::{DelayDistribution, NetemParams, RateParams, ShapeSpec, ShapeTarget},
        stress::{CpuStressSpec, MemSize, MemoryStressSpec},
        BlockSpec, Direction, FaultSpec, LossSpec, PacketMatch, PortRange, Protocol, Target,
    },
    kernel::disk::throttle::IoLimits,
};

pub(crate) fn apply_request(req: pb::ApplyRequest) -> Result<ApplyRequest, InvalidSpec> {
    let spec = fault_spec(req.spec.ok_or_else(missing_spec)?)?;
    let duration = duration(req.duration.ok_or_else(|| {
        InvalidSpec::new("duration", "missing: every fault needs one (e.g. 30s)")
    })?)?;
    Ok(ApplyRequest {
        spec,
        duration,
        lease: req.lease.map(lease).transpose()?,
        labels: req.labels.into_iter().collect(),
        dry_run: req.dry_run,
        force: req.force,
    })
}

fn missing_spec() -> InvalidSpec {
    InvalidSpec::new(
        "spec",
        format!(
            "missing: set one fault kind ({})",
            FaultSpec::KINDS.join(", ")
        ),
    )
}

pub(crate) fn fault_spec(spec: pb::FaultSpec) -> Result<FaultSpec, InvalidSpec> {
    match spec.kind.ok_or_else(missing_spec)? {
        pb::fault_spec::Kind::Block(b) => Ok(FaultSpec::Block(BlockSpec {
            direction: direction(b.direction, None)?,
            matcher: packet_match(b.r#match.unwrap_or_default())?,
            reject: b.reject,
            percent: b.percent,
            device: Some(b.device).filter(|d| !d.is_empty()),
        })),
        pb::fault_spec::Kind::Loss(l) => Ok(FaultSpec::Loss(LossSpec {
            device: if l.device.is_empty() {
                return Err(InvalidSpec::new(
                    "dev",
                    "missing: name the interface whose packets to drop",
                ));
            } else {
                l.device
            },
            direction: direction(l.direction, Some(Direction::Egress))?,
            percent: l.percent,
            matcher: packet_match(l.r#match.unwrap_or_default())?,
        })),
        pb::fault_spec::Kind::Cpu(c) => Ok(FaultSpec::CpuStress(CpuStressSpec {
            load: c.load,
            cpus: c.cpus,
            cores: c.cores,
            ramp: c
                .ramp
                .map(|d| {
                    Duration::try_from(d)
                        .map_err(|_| InvalidSpec::new("ramp", "negative: expected e.g. 30s"))
                })
                .transpose()?,
            target: c.target.map(workload).transpose()?.flatten(),
        })),
        pb::fault_spec::Kind::Memory(m) => Ok(FaultSpec::MemoryStress(MemoryStressSpec {
            size: match m.size {
                Some(pb::memory_stress_spec::Size::Bytes(b)) => MemSize::Bytes(b),
                Some(pb::memory_stress_spec::Size::Percent(p)) => MemSize::Percent(p),
                None => {
                    return Err(InvalidSpec::new(
                        "size",
                        "missing: expected bytes (512MiB) or a percent of total memory (25%)",
                    ))
                }
            },
            rate: m.rate,
            lock: m.lock,
            target: m.target.map(workload).transpose()?.flatten(),
        })),
        pb::fault_spec::Kind::Netem(n) => Ok(FaultSpec::Netem(ShapeSpec {
            target: shape_target(n.target)?,
            params: NetemParams {
                delay: opt_duration(n.delay, "delay")?.unwrap_or_default(),
                jitter: opt_duration(n.jitter, "jitter")?.unwrap_or_default(),
                delay_correlation: n.delay_correlation,
                distribution: match pb::DelayDistribution::try_from(n.distribution) {
                    Ok(pb::DelayDistribution::Unspecified | pb::DelayDistribution::Uniform) => {
                        DelayDistribution::Uniform
                    }
                    Ok(pb::DelayDistribution::Normal) => DelayDistribution::Normal,
                    Ok(pb::DelayDistribution::Pareto) => DelayDistribution::Pareto,
                    Ok(pb::DelayDistribution::Paretonormal) => DelayDistribution::Paretonormal,
                    Err(_) => {
                        return Err(InvalidSpec::new(
                            "distribution",
                            format!(
                                "unknown distribution {}, expected uniform, normal, pareto or \
                                 paretonormal",
                                n.distribution
                            ),
                        ))
                    }
                },
                loss: n.loss,
                loss_correlation: n.loss_correlation,
                duplicate: n.duplicate,
                duplicate_correlation: n.duplicate_correlation,
                corrupt: n.corrupt,
                corrupt_correlation: n.corrupt_correlation,
                reorder: n.reorder,
                reorder_correlation: n.reorder_correlation,
                gap: n.gap,
                rate_bps: n.rate_bps,
                limit: n.limit,
            },
        })),
        pb::fault_spec::Kind::Kill(k) => Ok(FaultSpec::Kill(KillSpec {
            target: k.target.map(workload).transpose()?.flatten(),
            name: Some(k.name).filter(|n| !n.is_empty()),
            cmdline: k.cmdline,
            signal: if k.signal == 0 {
                libc::SIGKILL
            } else {
                k.signal
            },
            every: opt_duration(k.every, "every")?,
            pick: match k.pick {
                None => Pick::All,
                Some(pb::kill_spec::Pick::Count(n)) => Pick::Count(n),
                Some(pb::kill_spec::Pick::Percent(p)) => Pick::Percent(p),
            },
        })),
        pb::fault_spec::Kind::Pause(p) => Ok(FaultSpec::Pause(PauseSpec {
            target: p
                .target
                .map(workload)
                .transpose()?
                .flatten()
                .ok_or_else(|| {
                    InvalidSpec::new(
                        "target",
                        "missing: name the workload to pause (unit, container, pod, cgroup or pid)",
                    )
                })?,
        })),
        pb::fault_spec::Kind::Rate(r) => Ok(FaultSpec::Rate(ShapeSpec {
            target: shape_target(r.target)?,
            params: RateParams {
                rate_bps: r.rate_bps,
                burst: r.burst,
                latency: opt_duration(r.latency, "latency")?,
            },
        })),
        pb::fault_spec::Kind::DiskFill(f) => Ok(FaultSpec::DiskFill(DiskFillSpec {
            path: disk_path(f.path)?,
            amount: match f.amount {
                Some(pb::disk_fill_spec::Amount::Bytes(b)) => FillAmount::Bytes(b),
                Some(pb::disk_fill_spec::Amount::Percent(p)) => FillAmount::Percent(p),
                None => {
                    return Err(InvalidSpec::new(
                        "size",
                        "missing: expected --size (10GiB) or --percent (target usage, 95)",
                    ))
                }
            },
            floor: f.floor,
        })),
        pb::fault_spec::Kind::DiskIo(d) => Ok(FaultSpec::DiskIo(DiskIoSpec {
            path: disk_path(d.path)?,
            mode: match pb::DiskIoMode::try_from(d.mode) {
                Ok(pb::DiskIoMode::Unspecified | pb::DiskIoMode::Write) => IoMode::Write,
                Ok(pb::DiskIoMode::Read) => IoMode::Read,
                Ok(pb::DiskIoMode::Mixed) => IoMode::Mixed,
                Err(_) => {
                    return Err(InvalidSpec::new(
                        "mode",
                        format!("unknown mode {}, expected read, write or mixed", d.mode),
                    ))
                }
            },
            block_size: if d.block_size == 0 {
                DEFAULT_BLOCK
            } else {
                d.block_size
            },
            workers: d.workers.max(1),
            size: if d.size == 0 { DEFAULT_SIZE } else { d.size },
            limits: io_limits(d.limits),
            floor: d.floor,
        })),
        pb::fault_spec::Kind::DiskSlow(d) => Ok(FaultSpec::DiskSlow(DiskSlowSpec {
            target: d
                .target
                .map(workload)
                .transpose()?
                .flatten()
                .ok_or_else(|| {
                    InvalidSpec::new(
                        "target",
                        "missing: name the workload whose I/O to slow (--unit, --container, --pod \
                     or --cgroup)",
                    )
                })?,
            device: if d.device.is_empty() {
                return Err(InvalidSpec::new(
                    "device",
                    "missing: name the disk (/dev/sdb, sdb or 8:16)",
                ));
            } else {
                d.device
            },
            limits: io_limits(d.limits),
        })),
    }
}

fn disk_path(path: String) -> Result<std::path::PathBuf, InvalidSpec> {
    if path.is_empty() {
        return Err(InvalidSpec::new(
            "path",
            "missing: name a directory on the filesystem (an absolute path)",
        ));
    }
    Ok(path.into())
}

fn io_limits(l: Option<pb::IoLimits>) -> IoLimits {
    let l = l.unwrap_or_default();
    IoLimits {
        read_bps: l.read_bps,
        write_bps: l.write_bps,
        read_iops: l.read_iops,
        write_iops: l.write_iops,
    }
}

fn proto_io_limits(l: &IoLimits) -> pb::IoLimits {
    pb::IoLimits {
        read_bps: l.read_bps,
        write_bps: l.write_bps,
        read_iops: l.read_iops,
        write_iops: l.write_iops,
    }
}

fn shape_target(target: Option<pb::ShapeTarget>) -> Result<ShapeTarget, InvalidSpec> {
    let t = target
        .ok_or_else(|| InvalidSpec::new("target", "missing: name the interface (dev) to shape"))?;
    if t.device.is_empty() {
        return Err(InvalidSpec::new(
            "dev",
            "missing: name the interface whose traffic to shape",
        ));
    }
    Ok(ShapeTarget {
        device: t.device,
        direction: direction(t.direction, Some(Direction::Egress))?,
        matcher: packet_match(t.r#match.unwrap_or_default())?,
        workload: match t.workload {
            Some(w) => workload(w)?,
            // What a client older than `workload` sends.
            None => Some(t.cgroup).filter(|c| !c.is_empty()).map(Target::Cgroup),
        },
    })
}

/// A workload target; an empty one (no kind set) is none.
pub(crate) fn workload(t: pb::Target) -> Result<Option<Target>, InvalidSpec> {
    use pb::target::Kind;
    let nonempty = |field: &str, value: String| {
        if value.trim().is_empty() {
            Err(InvalidSpec::new(field, "empty: name the workload"))
        } else {
            Ok(value)
        }
    };
    Ok(match t.kind {
        None => None,
        Some(Kind::Unit(u)) => Some(Target::Unit(nonempty("unit", u)?)),
        Some(Kind::Container(c)) => Some(Target::Container(nonempty("container", c)?)),
        Some(Kind::Pod(p)) => Some(Target::Pod(nonempty("pod", p)?)),
        Some(Kind::Cgroup(c)) => Some(Target::Cgroup(nonempty("cgroup", c)?)),
        Some(Kind::Pids(p)) => Some(Target::Pids(p.pids)),
    })
}

pub(crate) fn proto_workload(t: &Target) -> pb::Target {
    use pb::target::Kind;
    pb::Target {
        kind: Some(match t {
            Target::Unit(u) => Kind::Unit(u.clone()),
            Target::Container(c) => Kind::Container(c.clone()),
            Target::Pod(p) => Kind::Pod(p.clone()),
            Target::Cgroup(c) => Kind::Cgroup(c.clone()),
            Target::Pids(p) => Kind::Pids(pb::PidSet { pids: p.clone() }),
        }),
    }
}

fn opt_duration(
    d: Option<prost_types::Duration>,
    field: &str,
) -> Result<Option<Duration>, InvalidSpec> {
    d.map(|d| {
        Duration::try_from(d).map_err(|_| InvalidSpec::new(field, "negative: expected e.g. 100ms"))
    })
    .transpose()
}

fn direction(value: i32, default: Option<Direction>) -> Result<Direction, InvalidSpec> {
    match pb::Direction::try_from(value) {
        Ok(pb::Direction::Ingress) => Ok(Direction::Ingress),
        Ok(pb::Direction::Egress) => Ok(Direction::Egress),
        Ok(pb::Direction::Unspecified) => default.ok_or_else(|| {
            InvalidSpec::new("dir", "missing: expected in (ingress) or out (egress)")
        }),
        Err(_) => Err(InvalidSpec::new(
            "dir",
            format!("unknown direction {value}, expected in (ingress) or out (egress)"),
        )),
    }
}

fn packet_match(m: pb::PacketMatch) -> Result<PacketMatch, InvalidSpec> {
    let protocol = match pb::Protocol::try_from(m.protocol) {
        Ok(pb::Protocol::Unspecified | pb::Protocol::Any) => Protocol::Any,
        Ok(pb::Protocol::Tcp) => Protocol::Tcp,
        Ok(pb::Protocol::Udp) => Protocol::Udp,
        Err(_) => {
            return Err(InvalidSpec::new(
                "proto",
                format!("unknown protocol {}, expected tcp, udp or any", m.protocol),
            ))
        }
    };
    let ports = m
        .ports
        .iter()
        .map(|r| PortRange::new(r.first, if r.last == 0 { r.first } else { r.last }, "port"))
        .collect::<Result<Vec<_>, _>>()?;
    let cidrs = m
        .cidrs
        .iter()
        .map(|c| parse_cidr(c))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(PacketMatch {
        protocol,
        ports,
        cidrs,
    })
}

/// `10.0.0.0/8`, `2001:db8::/32`, or a bare address (a /32 or /128). Host bits are cleared.
pub(crate) fn parse_cidr(text: &str) -> Result<IpNet, InvalidSpec> {
    let text = text.trim();
    text.parse::<IpNet>()
        .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
        .map(|net| net.trunc())
        .map_err(|_| {
            InvalidSpec::new(
                "cidr",
                format!("{text:?} is not a CIDR, expected e.g. 10.0.0.0/8, 2001:db8::/32 or a single address"),
            )
        })
}

pub(crate) fn duration(d: prost_types::Duration) -> Result<Duration, InvalidSpec> {
    Duration::try_from(d).map_err(|_| InvalidSpec::new("duration", "must not be negative"))
}

/// A lease period as given; how long it may be is the engine's to check.
pub(crate) fn lease(d: prost_types::Duration) -> Result<Duration, InvalidSpec> {
    Duration::try_from(d).map_err(|_| InvalidSpec::new("lease", "negative: expected e.g. 10s"))
}

pub(crate) fn proto_renewals(outcomes: Vec<Renewal>) -> pb::RenewLeaseResponse {
    let mut response = pb::RenewLeaseResponse::default();
    for outcome in outcomes {
        match outcome {
            Renewal::Renewed(fault) => response.renewed.push(proto_fault(&fault)),
            Renewal::NotRenewed { id, why } => response.not_renewed.push(pb::NotRenewed {
                id,
                reason: match why {
                    NotRenewed::Unknown => pb::NotRenewedReason::Unknown,
                    NotRenewed::Ended { .. } => pb::NotRenewedReason::Ended,
                    NotRenewed::NoLease => pb::NotRenewedReason::NoLease,
                    NotRenewed::Pending => pb::NotRenewedReason::Pending,
                }
                .into(),
                detail: why.to_string(),
            }),
        }
    }
    response
}

fn proto_duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration::try_from(d).unwrap_or(prost_types::Duration {
        seconds: i64::MAX,
        nanos: 0,
    })
}

fn proto_direction(d: Direction) -> i32 {
    match d {
        Direction::Ingress => pb::Direction::Ingress,
        Direction::Egress => pb::Direction::Egress,
    }
    .into()
}

fn proto_match(m: &PacketMatch) -> pb::PacketMatch {
    pb::PacketMatch {
        protocol: match m.protocol {
            Protocol::Any => pb::Protocol::Any,
            Protocol::Tcp => pb::Protocol::Tcp,
            Protocol::Udp => pb::Protocol::Udp,
        }
        .into(),
        ports: m
            .ports
            .iter()
            .map(|r| pb::PortRange {
                first: r.first.into(),
                last: r.last.into(),
            })
            .collect(),
        cidrs: m.cidrs.iter().map(ToString::to_string).collect(),
    }
}

pub(crate) fn proto_spec(spec: &FaultSpec) -> pb::FaultSpec {
    let kind = match spec {
        FaultSpec::Block(b) => pb::fault_spec::Kind::Block(pb::BlockSpec {
            direction: proto_direction(b.direction),
            r#match: Some(proto_match(&b.matcher)),
            reject: b.reject,
            percent: b.percent,
            device: b.device.clone().unwrap_or_default(),
        }),
        FaultSpec::Loss(l) => pb::fault_spec::Kind::Loss(pb::LossSpec {
            device: l.device.clone(),
            direction: proto_direction(l.direction),
            percent: l.percent,
            r#match: Some(proto_match(&l.matcher)),
        }),
        FaultSpec::CpuStress(c) => pb::fault_spec::Kind::Cpu(pb::CpuStressSpec {
            load: c.load,
            cpus: c.cpus.clone(),
            cores: c.cores,
            ramp: c.ramp.and_then(|d| prost_types::Duration::try_from(d).ok()),
            target: c.target.as_ref().map(proto_workload),
        }),
        FaultSpec::MemoryStress(m) => pb::fault_spec::Kind::Memory(pb::MemoryStressSpec {
            size: Some(match m.size {
                MemSize::Bytes(b) => pb::memory_stress_spec::Size::Bytes(b),
                MemSize::Percent(p) => pb::memory_stress_spec::Size::Percent(p),
            }),
            rate: m.rate,
            lock: m.lock,
            target: m.target.as_ref().map(proto_workload),
        }),
        FaultSpec::Netem(n) => {
            let p = &n.params;
            let nonzero = |d: Duration| {
                (!d.is_zero())
                    .then(|| prost_types::Duration::try_from(d).ok())
                    .flatten()
            };
            pb::fault_spec::Kind::Netem(pb::NetemSpec {
                target: Some(proto_target(&n.target)),
                delay: nonzero(p.delay),
                jitter: nonzero(p.jitter),
                delay_correlation: p.delay_correlation,
                distribution: match p.distribution {
                    DelayDistribution::Uniform => pb::DelayDistribution::Uniform,
                    DelayDistribution::Normal => pb::DelayDistribution::Normal,
                    DelayDistribution::Pareto => pb::DelayDistribution::Pareto,
                    DelayDistribution::Paretonormal => pb::DelayDistribution::Paretonormal,
                }
                .into(),
                loss: p.loss,
                loss_correlation: p.loss_correlation,
                duplicate: p.duplicate,
                duplicate_correlation: p.duplicate_correlation,
                corrupt: p.corrupt,
                corrupt_correlation: p.corrupt_correlation,
                reorder: p.reorder,
                reorder_correlation: p.reorder_correlation,
                gap: p.gap,
                rate_bps: p.rate_bps,
                limit: p.limit,
            })
        }
        FaultSpec::Kill(k) => pb::fault_spec::Kind::Kill(pb::KillSpec {
            target: k.target.as_ref().map(proto_workload),
            name: k.name.clone().unwrap_or_default(),
            cmdline: k.cmdline,
            signal: k.signal,
            every: k
                .every
                .and_then(|d| prost_types::Duration::try_from(d).ok()),
            pick: match k.pick {
                Pick::All => None,
                Pick::Count(n) => Some(pb::kill_spec::Pick::Count(n)),
                Pick::Percent(p) => Some(pb::kill_spec::Pick::Percent(p)),
            },
        }),
        FaultSpec::Pause(p) => pb::fault_spec::Kind::Pause(pb::PauseSpec {
            target: Some(proto_workload(&p.target)),
        }),
        FaultSpec::Rate(r) => pb::fault_spec::Kind::Rate(pb::RateSpec {
            target: Some(proto_target(&r.target)),
            rate_bps: r.params.rate_bps,
            burst: r.params.burst,
            latency: r
                .params
                .latency
                .and_then(|d| prost_types::Duration::try_from(d).ok()),
        }),
        FaultSpec::DiskFill(f) => pb::fault_spec::Kind::DiskFill(pb::DiskFillSpec {
            path: f.path.display().to_string(),
            amount: Some(match f.amount {
                FillAmount::Bytes(b) => pb::disk_fill_spec::Amount::Bytes(b),
                FillAmount::Percent(p) => pb::disk_fill_spec::Amount::Percent(p),
            }),
            floor: f.floor,
        }),
        FaultSpec::DiskIo(d) => pb::fault_spec::Kind::DiskIo(pb::DiskIoSpec {
            path: d.path.display().to_string(),
            mode: match d.mode {
                IoMode::Read => pb::DiskIoMode::Read,
                IoMode::Write => pb::DiskIoMode::Write,
                IoMode::Mixed => pb::DiskIoMode::Mixed,
            }
            .into(),
            block_size: d.block_size,
            workers: d.workers,
            size: d.size,
            limits: Some(proto_io_limits(&d.limits)),
            floor: d.floor,
        }),
        FaultSpec::DiskSlow(d) => pb::fault_spec::Kind::DiskSlow(pb::DiskSlowSpec {
            target: Some(proto_workload(&d.target)),
            device: d.device.clone(),
            limits: Some(proto_io_limits(&d.limits)),
        }),
    };
    pb::FaultSpec { kind: Some(kind) }
}

fn proto_target(t: &ShapeTarget) -> pb::ShapeTarget {
    pb::ShapeTarget {
        device: t.device.clone(),
        direction: proto_direction(t.direction),
        r#match: Some(proto_match(&t.matcher)),
        // For clients older than `workload`.
        cgroup: match &t.workload {
            Some(Target::Cgroup(path)) => path.clone(),
            _ => String::new(),
        },
        workload: t.workload.as_ref().map(proto_workload),
    }
}

fn proto_state(state: FaultState) -> i32 {
    match state {
        FaultState::Pending => pb::FaultState::Pending,
        FaultState::Active => pb::FaultState::Active,
        FaultState::Reverting => pb::FaultState::Reverting,
        FaultState::Reverted => pb::FaultState::Reverted,
        FaultState::RevertedWithResidue => pb::FaultState::RevertedWithResidue,
        FaultState::Failed => pb::FaultState::Failed,
    }
    .into()
}

pub(crate) fn proto_fault(f: &Fault) -> pb::Fault {
    pb::Fault {
        id: f.id.clone(),
        spec: Some(proto_spec(&f.spec)),
        labels: f.labels.clone().into_iter().collect(),
        state: proto_state(f.state),
        created_at: Some(f.created_at.into()),
        deadline: Some(f.deadline.into()),
        duration: Some(proto_duration(f.duration)),
        reason: f.reason.clone(),
        plan: f.plan.clone(),
        lease: f.lease.map(proto_duration),
        lease_expires_at: f.lease_expires_at.map(Into::into),
        kind: f.spec.kind().to_owned(),
        summary: f.spec.family().summary(),
        effect: f.effect.as_ref().map(|e| pb::Effect {
            hits: e.hits,
            hits_are: e.hits_are.clone(),
            counters: e
                .counters
                .iter()
                .map(|c| pb::Counter {
                    name: c.name.clone(),
                    value: c.value,
                })
                .collect(),
        }),
        ineffective: f.ineffective,
        objects: f.objects.clone(),
        changes: f.changes.clone(),
        residue: f.residue.clone(),
        status: f.status.clone(),
    }
}

/// The way back, for clients that compute with faults (metrics snapshots, experiments); the
/// CLI prints from the protobuf types instead (`cli::view`).
pub(crate) fn fault(f: pb::Fault) -> Result<Fault, InvalidSpec> {
    let time = |t: Option<prost_types::Timestamp>, field: &str| {
        t.and_then(|t| SystemTime::try_from(t).ok())
            .ok_or_else(|| InvalidSpec::new(field, "missing or out of range"))
    };
    let state = match pb::FaultState::try_from(f.state) {
        Ok(pb::FaultState::Pending) => FaultState::Pending,
        Ok(pb::FaultState::Active) => FaultState::Active,
        Ok(pb::FaultState::Reverting) => FaultState::Reverting,
        Ok(pb::FaultState::Reverted) => FaultState::Reverted,
        Ok(pb::FaultState::RevertedWithResidue) => FaultState::RevertedWithResidue,
        Ok(pb::FaultState::Failed) => FaultState::Failed,
        _ => {
            return Err(InvalidSpec::new(
                "state",
                format!("unknown fault state {}", f.state),
            ))
        }
    };
    Ok(Fault {
        spec: fault_spec(f.spec.ok_or_else(missing_spec)?)?,
        labels: f.labels.into_iter().collect::<BTreeMap<_, _>>(),
        state,
        created_at: time(f.created_at, "created_at")?,
        deadline: time(f.deadline, "deadline")?,
        duration: duration(f.duration.unwrap_or_default())?,
        reason: f.reason,
        plan: f.plan,
        lease: f.lease.map(lease).transpose()?,
        lease_expires_at: f
            .lease_expires_at
            .map(|t| {
                SystemTime::try_from(t)
                    .map_err(|_| InvalidSpec::new("lease_expires_at", "out of range"))
            })
            .transpose()?,
        effect: f.effect.map(|e| Effect {
            hits: e.hits,
            hits_are: e.hits_are,
            counters: e
                .counters
                .into_iter()
                .map(|c| Counter {
                    name: c.name,
                    value: c.value,
                })
                .collect(),
        }),
        ineffective: f.ineffective,
        objects: f.objects,
        changes: f.changes,
        residue: f.residue,
        status: f.status,
        id: f.id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loss(percent: f64, ports: Vec<pb::PortRange>, cidrs: Vec<&str>) -> pb::ApplyRequest {
        pb::ApplyRequest {
            spec: Some(pb::FaultSpec {
                kind: Some(pb::fault_spec::Kind::Loss(pb::LossSpec {
                    device: "veth0".into(),
                    direction: 0,
                    percent,
                    r#match: Some(pb::PacketMatch {
                        protocol: pb::Protocol::Udp.into(),
                        ports,
                        cidrs: cidrs.into_iter().map(str::to_owned).collect(),
                    }),
                })),
            }),
            duration: Some(prost_types::Duration {
                seconds: 30,
                nanos: 0,
            }),
            ..Default::default()
        }
    }

    fn port(first: u32, last: u32) -> pb::PortRange {
        pb::PortRange { first, last }
    }

    #[test]
    fn a_request_round_trips_through_the_domain() {
        let req = apply_request(loss(
            30.0,
            vec![port(53, 0), port(8000, 8100)],
            vec!["10.1.2.3/8", "fd00::1"],
        ))
        .unwrap();
        let FaultSpec::Loss(spec) = &req.spec else {
            panic!("not loss")
        };
        assert_eq!(spec.direction, Direction::Egress, "loss defaults to egress");
        assert_eq!(
            spec.matcher.ports,
            vec![
                PortRange {
                    first: 53,
                    last: 53
                },
                PortRange {
                    first: 8000,
                    last: 8100
                }
            ]
        );
        assert_eq!(spec.matcher.cidrs[0].to_string(), "10.0.0.0/8");
        assert_eq!(spec.matcher.cidrs[1].to_string(), "fd00::1/128");
        assert_eq!(fault_spec(proto_spec(&req.spec)).unwrap(), req.spec);
    }

    #[test]
    fn bad_fields_are_named() {
        let field = |r| apply_request(r).unwrap_err().field;
        assert_eq!(field(loss(30.0, vec![port(0, 0)], vec![])), "port");
        assert_eq!(field(loss(30.0, vec![port(70000, 0)], vec![])), "port");
        assert_eq!(field(loss(30.0, vec![port(90, 80)], vec![])), "port");
        assert_eq!(field(loss(30.0, vec![], vec!["10.0.0.300/8"])), "cidr");
        assert_eq!(field(loss(30.0, vec![], vec!["fd00::/129"])), "cidr");
        let mut no_duration = loss(30.0, vec![], vec![]);
        no_duration.duration = None;
        assert_eq!(field(no_duration), "duration");
        let err = apply_request(loss(30.0, vec![port(70000, 0)], vec![])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "port: 70000 is out of range, expected 1-65535"
        );
    }

    #[test]
    fn a_lease_is_optional_and_never_negative() {
        let req = apply_request(loss(30.0, vec![], vec![])).unwrap();
        assert_eq!(req.lease, None, "absent means no lease");
        let mut leased = loss(30.0, vec![], vec![]);
        leased.lease = Some(prost_types::Duration {
            seconds: 2,
            nanos: 500_000_000,
        });
        assert_eq!(
            apply_request(leased.clone()).unwrap().lease,
            Some(Duration::from_millis(2500))
        );
        leased.lease = Some(prost_types::Duration {
            seconds: -1,
            nanos: 0,
        });
        assert_eq!(apply_request(leased).unwrap_err().field, "lease");
    }

    #[test]
    fn block_needs_a_direction() {
        let req = pb::ApplyRequest {
            spec: Some(pb::FaultSpec {
                kind: Some(pb::fault_spec::Kind::Block(pb::BlockSpec::default())),
            }),
            duration: Some(prost_types::Duration {
                seconds: 1,
                nanos: 0,
            }),
            ..Default::default()
        };
        assert_eq!(apply_request(req).unwrap_err().field, "dir");
    }
}
