//! `faultline block`: drop or reject packets with nftables.

use clap::Args;
use faultline_proto::v1 as pb;

use super::{
    apply,
    args::{ApplyArgs, Dir, Global, MatchArgs},
    output::Failure,
};

#[derive(Debug, Args)]
pub(crate) struct Options {
    /// Direction: in blocks packets to this host, out blocks packets it sends
    #[arg(long, value_enum)]
    pub(crate) dir: Dir,
    /// Only packets through this interface
    #[arg(long)]
    pub(crate) dev: Option<String>,
    #[command(flatten)]
    pub(crate) matcher: MatchArgs,
    /// Reject (TCP reset / ICMP port unreachable) instead of dropping silently
    #[arg(long)]
    pub(crate) reject: bool,
    /// Block only this share of the matching packets, in percent (0 < P <= 100)
    #[arg(long)]
    pub(crate) percent: Option<f64>,
    #[command(flatten)]
    pub(crate) apply: ApplyArgs,
}

pub(crate) async fn run(global: &Global, o: Options) -> Result<(), Failure> {
    let spec = pb::BlockSpec {
        direction: pb::Direction::from(o.dir).into(),
        r#match: Some(o.matcher.to_proto()),
        reject: o.reject,
        percent: o.percent,
        device: o.dev.unwrap_or_default(),
    };
    apply::run(global, &o.apply, pb::fault_spec::Kind::Block(spec)).await
}
