//! `faultline stress cpu|memory`: CPU load or memory pressure held inside a cgroup.

use std::time::Duration;

use clap::{Args, Subcommand};
use faultline_proto::v1 as pb;

use super::{
    apply,
    args::{parse_duration, ApplyArgs, Global, WorkloadArgs},
    output::Failure,
};
use crate::units::parse_bytes;

#[derive(Debug, Args)]
pub(crate) struct Options {
    #[command(subcommand)]
    pub(crate) kind: Kind,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Kind {
    /// Load CPUs to a percentage, enforced by a cgroup CPU quota
    Cpu(CpuOptions),
    /// Hold memory (pages really touched) inside a cgroup with a memory limit
    #[command(alias = "mem")]
    Memory(MemoryOptions),
}

#[derive(Debug, Args)]
pub(crate) struct CpuOptions {
    /// Load in percent of the CPUs in scope (0 < LOAD <= 100)
    #[arg(long)]
    pub(crate) load: f64,
    /// Pin to these CPUs (0,1 or 0-3); the load is a share of them
    #[arg(long, value_name = "CPU[-CPU]", value_delimiter = ',', value_parser = parse_cpus, conflicts_with = "cores")]
    pub(crate) cpus: Vec<Vec<u32>>,
    /// A share of this many CPUs, unpinned (default: all online CPUs)
    #[arg(long)]
    pub(crate) cores: Option<u32>,
    /// Rise linearly to the load over this long (30s)
    #[arg(long, value_parser = parse_duration)]
    pub(crate) ramp: Option<Duration>,
    /// Run inside this workload: the workers' cgroup is a child of its cgroup, so they are
    /// charged to it and compete inside its limits
    #[command(flatten)]
    pub(crate) workload: WorkloadArgs,
    #[command(flatten)]
    pub(crate) apply: ApplyArgs,
}

#[derive(Debug, Args)]
pub(crate) struct MemoryOptions {
    /// How much: a size (512MiB, 2GiB) or a percent of total memory (25%)
    #[arg(long, value_parser = parse_size)]
    pub(crate) size: pb::memory_stress_spec::Size,
    /// Allocation rate (100MiB/s); default as fast as possible
    #[arg(long, value_parser = parse_rate)]
    pub(crate) rate: Option<u64>,
    /// Lock the pages in memory so they cannot be swapped out
    #[arg(long)]
    pub(crate) lock: bool,
    /// Run inside this workload: the worker's cgroup is a child of its cgroup, so its memory
    /// is charged to it and counts against its limit
    #[command(flatten)]
    pub(crate) workload: WorkloadArgs,
    #[command(flatten)]
    pub(crate) apply: ApplyArgs,
}

pub(crate) async fn run(global: &Global, o: Options) -> Result<(), Failure> {
    match o.kind {
        Kind::Cpu(c) => {
            let spec = pb::CpuStressSpec {
                load: c.load,
                cpus: c.cpus.into_iter().flatten().collect(),
                cores: c.cores,
                ramp: c.ramp.and_then(|d| prost_types::Duration::try_from(d).ok()),
                target: c.workload.to_proto(),
            };
            apply::run(global, &c.apply, pb::fault_spec::Kind::Cpu(spec)).await
        }
        Kind::Memory(m) => {
            let spec = pb::MemoryStressSpec {
                size: Some(m.size),
                rate: m.rate,
                lock: m.lock,
                target: m.workload.to_proto(),
            };
            apply::run(global, &m.apply, pb::fault_spec::Kind::Memory(spec)).await
        }
    }
}

/// `3` or `0-3`.
fn parse_cpus(text: &str) -> Result<Vec<u32>, String> {
    let number = |s: &str| {
        s.trim()
            .parse::<u32>()
            .map_err(|_| format!("{s:?} is not a CPU number (expected e.g. 0,1 or 0-3)"))
    };
    match text.split_once('-') {
        Some((first, last)) => {
            let (first, last) = (number(first)?, number(last)?);
            if first > last {
                return Err(format!("range {text} is reversed"));
            }
            Ok((first..=last).collect())
        }
        None => Ok(vec![number(text)?]),
    }
}

/// `512MiB` or `25%`.
fn parse_size(text: &str) -> Result<pb::memory_stress_spec::Size, String> {
    match text.trim().strip_suffix('%') {
        Some(percent) => percent
            .trim()
            .parse::<f64>()
            .map(pb::memory_stress_spec::Size::Percent)
            .map_err(|_| format!("{text:?} is not a percentage (expected e.g. 25%)")),
        None => parse_bytes(text).map(pb::memory_stress_spec::Size::Bytes),
    }
}

/// `100MiB/s`.
fn parse_rate(text: &str) -> Result<u64, String> {
    let bytes = text
        .trim()
        .strip_suffix("/s")
        .ok_or_else(|| format!("{text:?} is not a rate (expected e.g. 100MiB/s)"))?;
    parse_bytes(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_sizes_and_rates_parse() {
        assert_eq!(parse_cpus("0-3"), Ok(vec![0, 1, 2, 3]));
        assert!(parse_cpus("3-1").is_err());
        assert_eq!(
            parse_size("25%"),
            Ok(pb::memory_stress_spec::Size::Percent(25.0))
        );
        assert_eq!(
            parse_size("1GiB"),
            Ok(pb::memory_stress_spec::Size::Bytes(1 << 30))
        );
        assert_eq!(parse_rate("100MiB/s"), Ok(100 << 20));
        assert!(parse_rate("100MiB").is_err());
    }
}
