//! `faultline ls`: the agent's faults, active and recently ended.

use clap::Args;
use faultline_proto::v1 as pb;

use super::{
    apply::client,
    args::Global,
    output::{self, Failure},
};

#[derive(Debug, Args)]
pub(crate) struct Options {
    /// Only faults that have not ended yet
    #[arg(long)]
    pub(crate) active: bool,
}

pub(crate) async fn run(global: &Global, o: Options) -> Result<(), Failure> {
    let listed = client(global)
        .await?
        .list(pb::ListRequest {})
        .await?
        .into_inner();
    let mut faults: Vec<_> = listed.faults.into_iter().map(output::fault).collect();
    if o.active {
        faults.retain(|f| !f.is_finished());
    }
    output::print_faults(&faults, global.output);
    Ok(())
}
