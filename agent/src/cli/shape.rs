//! `faultline delay`, `faultline netem` and `faultline rate`: shape an interface's traffic with
//! netem or tbf, on egress or on ingress, for the packets named (redirected through an IFB
//! device of the fault's own; the interface's root qdisc is left alone).

use std::time::Duration;

use clap::{Args, ValueEnum};
use faultline_proto::v1 as pb;

use super::{
    apply,
    args::{parse_duration, ApplyArgs, Dir, Global, MatchArgs, WorkloadArgs},
    output::Failure,
};

/// Where and for which packets.
#[derive(Debug, Args)]
pub(crate) struct TargetArgs {
    /// The interface whose traffic is shaped
    #[arg(long)]
    pub(crate) dev: String,
    /// Direction: out shapes packets the host sends, in packets it receives; either way the
    /// targeted packets pass through an IFB device of the fault's own and the interface's root
    /// qdisc is left as it is
    #[arg(long, value_enum, default_value_t = Dir::Out)]
    pub(crate) dir: Dir,
    #[command(flatten)]
    pub(crate) matcher: MatchArgs,
    /// Egress only: only packets sent by sockets of this workload (its cgroup v2, on a host
    /// that mounts one)
    #[command(flatten)]
    pub(crate) workload: WorkloadArgs,
}

impl TargetArgs {
    fn to_proto(&self) -> pb::ShapeTarget {
        pb::ShapeTarget {
            device: self.dev.clone(),
            direction: pb::Direction::from(self.dir).into(),
            r#match: Some(self.matcher.to_proto()),
            cgroup: String::new(),
            workload: self.workload.to_proto(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub(crate) enum DistributionArg {
    #[default]
    Uniform,
    Normal,
    Pareto,
    Paretonormal,
}

impl From<DistributionArg> for pb::DelayDistribution {
    fn from(d: DistributionArg) -> Self {
        match d {
            DistributionArg::Uniform => pb::DelayDistribution::Uniform,
            DistributionArg::Normal => pb::DelayDistribution::Normal,
            DistributionArg::Pareto => pb::DelayDistribution::Pareto,
            DistributionArg::Paretonormal => pb::DelayDistribution::Paretonormal,
        }
    }
}

/// The delay part of netem.
#[derive(Debug, Args)]
pub(crate) struct DelayArgs {
    /// Jitter: the delay varies by up to this much either way (10ms)
    #[arg(long, value_parser = parse_duration)]
    pub(crate) jitter: Option<Duration>,
    /// How much each delay depends on the previous one, in percent
    #[arg(long, value_name = "PERCENT", value_parser = parse_percent, default_value = "0")]
    pub(crate) delay_correlation: f64,
    /// Shape of the jitter
    #[arg(long, value_enum, default_value_t = DistributionArg::Uniform)]
    pub(crate) distribution: DistributionArg,
}

#[derive(Debug, Args)]
pub(crate) struct DelayOptions {
    /// Added delay (100ms)
    #[arg(long, value_parser = parse_duration)]
    pub(crate) delay: Duration,
    #[command(flatten)]
    pub(crate) delay_args: DelayArgs,
    #[command(flatten)]
    pub(crate) target: TargetArgs,
    #[command(flatten)]
    pub(crate) apply: ApplyArgs,
}

#[derive(Debug, Args)]
pub(crate) struct NetemOptions {
    /// Added delay (100ms)
    #[arg(long, value_parser = parse_duration)]
    pub(crate) delay: Option<Duration>,
    #[command(flatten)]
    pub(crate) delay_args: DelayArgs,
    /// Share of packets lost, in percent
    #[arg(long, value_name = "PERCENT", value_parser = parse_percent, default_value = "0")]
    pub(crate) loss: f64,
    /// Correlation of successive losses, in percent
    #[arg(long, value_name = "PERCENT", value_parser = parse_percent, default_value = "0")]
    pub(crate) loss_correlation: f64,
    /// Share of packets sent twice, in percent
    #[arg(long, value_name = "PERCENT", value_parser = parse_percent, default_value = "0")]
    pub(crate) duplicate: f64,
    #[arg(long, value_name = "PERCENT", value_parser = parse_percent, default_value = "0")]
    pub(crate) duplicate_correlation: f64,
    /// Share of packets with a flipped bit, in percent
    #[arg(long, value_name = "PERCENT", value_parser = parse_percent, default_value = "0")]
    pub(crate) corrupt: f64,
    #[arg(long, value_name = "PERCENT", value_parser = parse_percent, default_value = "0")]
    pub(crate) corrupt_correlation: f64,
    /// Share of packets sent at once, ahead of the delayed rest, in percent (needs --delay)
    #[arg(long, value_name = "PERCENT", value_parser = parse_percent, default_value = "0")]
    pub(crate) reorder: f64,
    #[arg(long, value_name = "PERCENT", value_parser = parse_percent, default_value = "0")]
    pub(crate) reorder_correlation: f64,
    /// Reorder every Nth packet instead of at random
    #[arg(long, default_value_t = 0)]
    pub(crate) gap: u32,
    /// netem's own rate limit (10mbit, 1gbit, 500kbit)
    #[arg(long, value_parser = parse_rate)]
    pub(crate) rate: Option<u64>,
    /// Packets netem holds (default 1000)
    #[arg(long, default_value_t = 0)]
    pub(crate) limit: u32,
    #[command(flatten)]
    pub(crate) target: TargetArgs,
    #[command(flatten)]
    pub(crate) apply: ApplyArgs,
}

#[derive(Debug, Args)]
pub(crate) struct RateOptions {
    /// The cap (10mbit, 1gbit, 500kbit, 12mbps for bytes)
    #[arg(long, value_parser = parse_rate)]
    pub(crate) rate: u64,
    /// Bytes that may pass at once (default: 20 ms of the rate, at least 16 KiB)
    #[arg(long)]
    pub(crate) burst: Option<u32>,
    /// Longest a packet may wait before it is dropped (default 50ms)
    #[arg(long, value_parser = parse_duration)]
    pub(crate) latency: Option<Duration>,
    #[command(flatten)]
    pub(crate) target: TargetArgs,
    #[command(flatten)]
    pub(crate) apply: ApplyArgs,
}

fn netem_spec(target: pb::ShapeTarget, delay: Option<Duration>, d: &DelayArgs) -> pb::NetemSpec {
    pb::NetemSpec {
        target: Some(target),
        delay: delay.and_then(|d| prost_types::Duration::try_from(d).ok()),
        jitter: d
            .jitter
            .and_then(|d| prost_types::Duration::try_from(d).ok()),
        delay_correlation: d.delay_correlation,
        distribution: pb::DelayDistribution::from(d.distribution).into(),
        ..Default::default()
    }
}

pub(crate) async fn delay(global: &Global, o: DelayOptions) -> Result<(), Failure> {
    let spec = netem_spec(o.target.to_proto(), Some(o.delay), &o.delay_args);
    apply::run(global, &o.apply, pb::fault_spec::Kind::Netem(spec)).await
}

pub(crate) async fn netem(global: &Global, o: NetemOptions) -> Result<(), Failure> {
    let spec = pb::NetemSpec {
        loss: o.loss,
        loss_correlation: o.loss_correlation,
        duplicate: o.duplicate,
        duplicate_correlation: o.duplicate_correlation,
        corrupt: o.corrupt,
        corrupt_correlation: o.corrupt_correlation,
        reorder: o.reorder,
        reorder_correlation: o.reorder_correlation,
        gap: o.gap,
        rate_bps: o.rate,
        limit: o.limit,
        ..netem_spec(o.target.to_proto(), o.delay, &o.delay_args)
    };
    apply::run(global, &o.apply, pb::fault_spec::Kind::Netem(spec)).await
}

pub(crate) async fn rate(global: &Global, o: RateOptions) -> Result<(), Failure> {
    let spec = pb::RateSpec {
        target: Some(o.target.to_proto()),
        rate_bps: o.rate,
        burst: o.burst,
        latency: o
            .latency
            .and_then(|d| prost_types::Duration::try_from(d).ok()),
    };
    apply::run(global, &o.apply, pb::fault_spec::Kind::Rate(spec)).await
}

/// `10`, `10%`, `0.5%`: range checks are the agent's.
fn parse_percent(text: &str) -> Result<f64, String> {
    text.trim()
        .trim_end_matches('%')
        .parse::<f64>()
        .map_err(|_| format!("{text:?} is not a percentage (expected e.g. 10, 10% or 0.5%)"))
}

/// A rate in bits per second, as tc writes them: `10mbit`, `1.5gbit`, `500kbit`, `64000bit`, or
/// bytes with `bps` (`12mbps`). Decimal units, as for link speeds.
pub(crate) fn parse_rate(text: &str) -> Result<u64, String> {
    let t = text.trim().to_ascii_lowercase();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let value: f64 = number.parse().map_err(|_| rate_error(text))?;
    let scale = match unit {
        "" | "bit" => 1.0,
        "kbit" => 1e3,
        "mbit" => 1e6,
        "gbit" => 1e9,
        "tbit" => 1e12,
        "bps" => 8.0,
        "kbps" => 8e3,
        "mbps" => 8e6,
        "gbps" => 8e9,
        _ => return Err(rate_error(text)),
    };
    let bps = value * scale;
    if !bps.is_finite() || bps < 1.0 || bps > u64::MAX as f64 {
        return Err(rate_error(text));
    }
    Ok(bps.round() as u64)
}

fn rate_error(text: &str) -> String {
    format!(
        "{text:?} is not a rate (expected e.g. 10mbit, 1.5gbit, 500kbit, or 12mbps for bytes per \
         second)"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_as_tc_writes_them() {
        assert_eq!(parse_rate("10mbit"), Ok(10_000_000));
        assert_eq!(parse_rate("1.5Gbit"), Ok(1_500_000_000));
        assert_eq!(parse_rate("500kbit"), Ok(500_000));
        assert_eq!(parse_rate("12mbps"), Ok(96_000_000));
        assert_eq!(parse_rate("64000"), Ok(64_000));
        assert!(parse_rate("fast").is_err());
        assert!(parse_rate("10 furlongs").is_err());
        assert!(parse_rate("0mbit").is_err());
        assert_eq!(parse_percent("10%"), Ok(10.0));
        assert_eq!(parse_percent("0.5"), Ok(0.5));
        assert!(parse_percent("ten").is_err());
    }
}
