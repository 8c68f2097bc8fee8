//! `faultline kill`: signal the processes of a workload, or those whose name matches, once or
//! every period.

use std::time::Duration;

use clap::Args;
use faultline_proto::v1 as pb;

use super::{
    apply,
    args::{parse_duration, ApplyArgs, Global, WorkloadArgs},
    output::Failure,
};
use crate::faults::kill::parse_signal;

/// A kill cannot be undone: the fault's revert (its deadline, Ctrl-C, `faultline revert`) only
/// stops the repeating of --every. Never signalled: PID 1, the agent, its ancestors and
/// children, kernel threads, and (without --force) processes holding sessions on the agent's
/// protected ports.
#[derive(Debug, Args)]
#[command(
    after_help = "A kill cannot be undone: reverting the fault (its deadline, Ctrl-C, faultline revert) \
only stops the repeating of --every. Never signalled: PID 1, the agent, its ancestors and children, kernel \
threads, and (without --force) processes holding sessions on the agent's protected ports. What each \
round signalled (pid, name, time) is in faultline get's status lines and the audit log."
)]
#[command(group = clap::ArgGroup::new("what").multiple(true).required(true).args(["unit", "container", "pod", "cgroup", "pids", "name"]))]
pub(crate) struct Options {
    #[command(flatten)]
    pub(crate) workload: WorkloadArgs,
    /// Only processes whose name (comm, as ps -o comm shows it) matches this regular expression;
    /// without a workload, any process on the host
    #[arg(long, value_name = "REGEX")]
    pub(crate) name: Option<String>,
    /// Match --name against the whole command line instead of the process name
    #[arg(long, requires = "name")]
    pub(crate) cmdline: bool,
    /// The signal: a name (KILL, TERM, INT, HUP, SIGUSR1) or a number
    #[arg(long, value_parser = parse_signal, default_value = "KILL")]
    pub(crate) signal: i32,
    /// Signal again every this long (at least 1s) until the fault ends; default: once
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub(crate) every: Option<Duration>,
    /// Only this many of the matching processes, chosen at random
    #[arg(long, conflicts_with = "percent")]
    pub(crate) count: Option<u32>,
    /// Only this share of the matching processes (0 < P <= 100), rounded up, chosen at random;
    /// a share of the processes, which the policy's max_percent does not bound
    #[arg(long)]
    pub(crate) percent: Option<f64>,
    #[command(flatten)]
    pub(crate) apply: ApplyArgs,
}

pub(crate) async fn run(global: &Global, o: Options) -> Result<(), Failure> {
    let spec = pb::KillSpec {
        target: o.workload.to_proto(),
        name: o.name.unwrap_or_default(),
        cmdline: o.cmdline,
        signal: o.signal,
        every: o
            .every
            .and_then(|d| prost_types::Duration::try_from(d).ok()),
        pick: match (o.count, o.percent) {
            (Some(n), _) => Some(pb::kill_spec::Pick::Count(n)),
            (None, Some(p)) => Some(pb::kill_spec::Pick::Percent(p)),
            (None, None) => None,
        },
    };
    apply::run(global, &o.apply, pb::fault_spec::Kind::Kill(spec)).await
}
