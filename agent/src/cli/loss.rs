//! `faultline loss`: drop a share of an interface's packets with an eBPF classifier.

use clap::Args;
use faultline_proto::v1 as pb;

use super::{
    apply,
    args::{ApplyArgs, Dir, Global, MatchArgs},
    output::Failure,
};

#[derive(Debug, Args)]
pub(crate) struct Options {
    /// The interface whose packets are dropped
    #[arg(long)]
    pub(crate) dev: String,
    /// Direction: out drops packets the host sends, in packets it receives
    #[arg(long, value_enum, default_value_t = Dir::Out)]
    pub(crate) dir: Dir,
    /// Share of the matching packets dropped, in percent (0 < P <= 100)
    #[arg(long)]
    pub(crate) percent: f64,
    #[command(flatten)]
    pub(crate) matcher: MatchArgs,
    #[command(flatten)]
    pub(crate) apply: ApplyArgs,
}

pub(crate) async fn run(global: &Global, o: Options) -> Result<(), Failure> {
    let spec = pb::LossSpec {
        device: o.dev,
        direction: pb::Direction::from(o.dir).into(),
        percent: o.percent,
        r#match: Some(o.matcher.to_proto()),
    };
    apply::run(global, &o.apply, pb::fault_spec::Kind::Loss(spec)).await
}
