//! `faultline info`: the agent, its host, and what the kernel offers.

use clap::Args;
use faultline_proto::v1::{self as pb, agent_client::AgentClient};
use serde_json::json;

use super::{
    args::{Global, Output},
    connect::channel,
    output::{self, Failure},
};

#[derive(Debug, Args)]
pub(crate) struct Options {}

pub(crate) async fn run(global: &Global, _: Options) -> Result<(), Failure> {
    let info = AgentClient::new(channel(global).await?)
        .info(pb::InfoRequest {})
        .await?
        .into_inner();
    match global.output {
        Output::Json => output::print_json(&json!({
            "version": info.version,
            "hostname": info.hostname,
            "kernel_release": info.kernel_release,
            "cgroup_version": info.cgroup_version,
            "capabilities": info.capabilities.iter().map(|c| json!({
                "name": c.name, "available": c.available, "detail": c.detail,
            })).collect::<Vec<_>>(),
            "socket_path": info.socket_path,
            "state_dir": info.state_dir,
            "active_faults": info.active_faults,
        })),
        Output::Text => {
            println!(
                "faultline {} on {} (kernel {})",
                info.version, info.hostname, info.kernel_release
            );
            println!(
                "socket {}, state {}, {} active fault(s)",
                info.socket_path, info.state_dir, info.active_faults
            );
            for c in &info.capabilities {
                println!(
                    "  {:<9} {:<3}  {}",
                    c.name,
                    if c.available { "yes" } else { "no" },
                    c.detail
                );
            }
        }
    }
    Ok(())
}
