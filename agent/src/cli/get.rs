//! `faultline get <id>`: one fault in detail.

use clap::Args;
use faultline_proto::v1 as pb;

use super::{
    apply::client,
    args::Global,
    output::{self, Failure},
};

#[derive(Debug, Args)]
pub(crate) struct Options {
    /// The fault's id (faultline ls lists them)
    pub(crate) id: String,
}

pub(crate) async fn run(global: &Global, o: Options) -> Result<(), Failure> {
    let fault = client(global)
        .await?
        .get(pb::GetRequest { id: o.id })
        .await?
        .into_inner();
    output::print_fault(&output::fault(fault), global.output);
    Ok(())
}
