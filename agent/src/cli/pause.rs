//! `faultline pause`: freeze a workload for the fault's duration, and thaw it after.

use clap::Args;
use faultline_proto::v1 as pb;

use super::{
    apply,
    args::{ApplyArgs, Global, WorkloadArgs},
    output::Failure,
};

#[derive(Debug, Args)]
#[command(
    after_help = "A cgroup is frozen with the kernel's freezer (cgroup v2 cgroup.freeze, v1 \
freezer.state): its processes, and whatever they fork, stop at once. --pid processes (and a workload \
with no freezer cgroup on this host) are stopped with SIGSTOP instead. The workload is thawed when the \
fault ends: at its deadline, on Ctrl-C or faultline revert, when the agent shuts down, and when it \
starts again after a crash. Refused: PID 1, the agent, its ancestors, kernel threads, the agent's own \
cgroup or an ancestor of it, and, without --force, a workload with a session on a protected port."
)]
#[command(group = clap::ArgGroup::new("what").multiple(false).required(true).args(["unit", "container", "pod", "cgroup", "pids"]))]
pub(crate) struct Options {
    #[command(flatten)]
    pub(crate) workload: WorkloadArgs,
    #[command(flatten)]
    pub(crate) apply: ApplyArgs,
}

pub(crate) async fn run(global: &Global, o: Options) -> Result<(), Failure> {
    let spec = pb::PauseSpec {
        target: o.workload.to_proto(),
    };
    apply::run(global, &o.apply, pb::fault_spec::Kind::Pause(spec)).await
}
