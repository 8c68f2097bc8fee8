//! `faultline revert <id> | --all`: end faults now.

use clap::Args;
use faultline_proto::v1 as pb;

use super::{
    apply::client,
    args::{Global, Output},
    output::{self, Failure},
};

#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("which").required(true))]
pub(crate) struct Options {
    /// The fault to revert
    #[arg(group = "which")]
    pub(crate) id: Option<String>,
    /// Revert every active fault
    #[arg(long, group = "which")]
    pub(crate) all: bool,
}

pub(crate) async fn run(global: &Global, o: Options) -> Result<(), Failure> {
    let mut faults = client(global).await?;
    match o.id {
        Some(id) => {
            let fault = output::fault(faults.revert(pb::RevertRequest { id }).await?.into_inner());
            match global.output {
                Output::Json => output::print_fault(&fault, Output::Json),
                Output::Text => println!(
                    "fault {} {} ({})",
                    fault.id(),
                    fault.state(),
                    fault.reason()
                ),
            }
        }
        None => {
            let reverted = faults
                .revert_all(pb::RevertAllRequest {})
                .await?
                .into_inner();
            let reverted: Vec<_> = reverted.faults.into_iter().map(output::fault).collect();
            match global.output {
                Output::Json => output::print_faults(&reverted, Output::Json),
                Output::Text => println!("{} fault(s) reverted", reverted.len()),
            }
        }
    }
    Ok(())
}
