//! `faultline disk fill|io|slow`: take a filesystem's free space, stress a disk with I/O at a
//! rate the kernel holds, or throttle a cgroup's I/O on a disk.

use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};
use faultline_proto::v1 as pb;

use super::{
    apply,
    args::{ApplyArgs, Global, WorkloadArgs},
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
    /// Take a filesystem's free space with fallocate'd files (removed on revert), down to
    /// --size less or to --percent used, never below --floor
    Fill(FillOptions),
    /// I/O stress: workers read and write a file with direct I/O, in a cgroup whose I/O
    /// limits on the disk hold the rate
    Io(IoOptions),
    /// Throttle a workload's I/O on a disk (io.max / blkio.throttle on its cgroup); its own
    /// limits come back exactly on revert
    Slow(SlowOptions),
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("amount").required(true).args(["size", "percent"])))]
pub(crate) struct FillOptions {
    /// A directory on the filesystem to fill, absolute (the files go in
    /// DIR/.faultline-fill-<id>)
    #[arg(long, value_name = "DIR")]
    pub(crate) path: PathBuf,
    /// Take this much of the free space (10GiB, 500MB)
    #[arg(long, value_name = "SIZE", value_parser = parse_bytes)]
    pub(crate) size: Option<u64>,
    /// Fill until the filesystem is this full, in percent as df's Use% counts it (95)
    #[arg(long, value_name = "PERCENT")]
    pub(crate) percent: Option<f64>,
    #[command(flatten)]
    pub(crate) floor: FloorArg,
    #[command(flatten)]
    pub(crate) apply: ApplyArgs,
}

#[derive(Debug, Args)]
pub(crate) struct FloorArg {
    /// The least free space to leave on the filesystem; the request is refused if it would
    /// leave less [default: 1GiB or 5 % of the filesystem, whichever is larger]
    #[arg(long, value_name = "SIZE", value_parser = parse_bytes)]
    pub(crate) floor: Option<u64>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum Mode {
    Read,
    Write,
    /// Half reads, half writes
    Mixed,
}

/// Rates and IOPS the kernel holds, each unset by default (no limit).
#[derive(Debug, Args)]
pub(crate) struct LimitArgs {
    /// Read bytes per second (10MiB/s, or 10MiB)
    #[arg(long, value_name = "RATE", value_parser = parse_bps)]
    pub(crate) read_bps: Option<u64>,
    /// Write bytes per second (10MiB/s, or 10MiB)
    #[arg(long, value_name = "RATE", value_parser = parse_bps)]
    pub(crate) write_bps: Option<u64>,
    /// Reads per second
    #[arg(long, value_name = "IOPS")]
    pub(crate) read_iops: Option<u64>,
    /// Writes per second
    #[arg(long, value_name = "IOPS")]
    pub(crate) write_iops: Option<u64>,
}

impl LimitArgs {
    fn to_proto(&self) -> pb::IoLimits {
        pb::IoLimits {
            read_bps: self.read_bps,
            write_bps: self.write_bps,
            read_iops: self.read_iops,
            write_iops: self.write_iops,
        }
    }
}

#[derive(Debug, Args)]
pub(crate) struct IoOptions {
    /// A directory on the disk to stress, absolute (the workers' file goes in
    /// DIR/.faultline-io-<id>)
    #[arg(long, value_name = "DIR")]
    pub(crate) path: PathBuf,
    /// What the workers do, at random offsets of their file
    #[arg(long, value_enum, default_value_t = Mode::Write)]
    pub(crate) mode: Mode,
    /// Bytes per read or write, a multiple of 4KiB
    #[arg(long, value_name = "SIZE", value_parser = parse_bytes, default_value = "64KiB")]
    pub(crate) block_size: u64,
    /// Worker processes
    #[arg(long, default_value_t = 1)]
    pub(crate) workers: u32,
    /// The workers' file, written in full before they start
    #[arg(long, value_name = "SIZE", value_parser = parse_bytes, default_value = "64MiB")]
    pub(crate) size: u64,
    #[command(flatten)]
    pub(crate) limits: LimitArgs,
    #[command(flatten)]
    pub(crate) floor: FloorArg,
    #[command(flatten)]
    pub(crate) apply: ApplyArgs,
}

#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("target").required(true).args(["unit", "container", "pod", "cgroup", "pids"]))]
pub(crate) struct SlowOptions {
    /// The workload whose I/O to slow (its cgroup's limits on the disk)
    #[command(flatten)]
    pub(crate) workload: WorkloadArgs,
    /// The disk: /dev/sdb, sdb or 8:16 (a whole disk; the kernel throttles disks, not
    /// partitions)
    #[arg(long, value_name = "DEVICE")]
    pub(crate) device: String,
    #[command(flatten)]
    pub(crate) limits: LimitArgs,
    #[command(flatten)]
    pub(crate) apply: ApplyArgs,
}

pub(crate) async fn run(global: &Global, o: Options) -> Result<(), Failure> {
    match o.kind {
        Kind::Fill(f) => {
            let amount = match (f.size, f.percent) {
                (Some(bytes), _) => pb::disk_fill_spec::Amount::Bytes(bytes),
                (None, Some(percent)) => pb::disk_fill_spec::Amount::Percent(percent),
                (None, None) => unreachable!("clap requires --size or --percent"),
            };
            let spec = pb::DiskFillSpec {
                path: f.path.display().to_string(),
                amount: Some(amount),
                floor: f.floor.floor,
            };
            apply::run(global, &f.apply, pb::fault_spec::Kind::DiskFill(spec)).await
        }
        Kind::Io(i) => {
            let spec = pb::DiskIoSpec {
                path: i.path.display().to_string(),
                mode: match i.mode {
                    Mode::Read => pb::DiskIoMode::Read,
                    Mode::Write => pb::DiskIoMode::Write,
                    Mode::Mixed => pb::DiskIoMode::Mixed,
                }
                .into(),
                block_size: i.block_size,
                workers: i.workers,
                size: i.size,
                limits: Some(i.limits.to_proto()),
                floor: i.floor.floor,
            };
            apply::run(global, &i.apply, pb::fault_spec::Kind::DiskIo(spec)).await
        }
        Kind::Slow(s) => {
            let spec = pb::DiskSlowSpec {
                target: s.workload.to_proto(),
                device: s.device,
                limits: Some(s.limits.to_proto()),
            };
            apply::run(global, &s.apply, pb::fault_spec::Kind::DiskSlow(spec)).await
        }
    }
}

/// `10MiB/s` or `10MiB`.
fn parse_bps(text: &str) -> Result<u64, String> {
    parse_bytes(text.trim().strip_suffix("/s").unwrap_or(text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_with_or_without_per_second() {
        assert_eq!(parse_bps("10MiB/s"), Ok(10 << 20));
        assert_eq!(parse_bps("4096"), Ok(4096));
        assert!(parse_bps("fast").is_err());
    }
}
