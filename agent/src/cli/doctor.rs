//! `faultline doctor`: a preflight of the host, applying nothing. Asks the agent (which checks
//! with its own privileges and the kernel features it probed), or with `--local` examines the
//! host from this process, before any agent runs. Exit status 0 when every fault family works
//! here, 4 when one does not.

use clap::Args;
use faultline_proto::v1::{self as pb, agent_client::AgentClient};
use serde_json::json;

use super::{
    args::{Global, Output},
    connect::channel,
    output::{self, Failure},
};
use crate::{api, config::AgentConfig, engine::doctor, faults::Adapters, kernel::caps};

#[derive(Debug, Args)]
pub(crate) struct Options {
    /// Examine the host from this process instead of asking the agent: for a host where the
    /// agent does not run yet. Uses `faultline serve`'s defaults (state directory, protected
    /// ports, cgroup parent) and this process's privileges.
    #[arg(long)]
    local: bool,
}

pub(crate) async fn run(global: &Global, o: Options) -> Result<(), Failure> {
    let report = if o.local {
        tokio::task::spawn_blocking(|| {
            let config = AgentConfig::default();
            let caps = caps::Capabilities::probe().with_state_dir(&config.state_dir);
            let adapters = Adapters::new(&config, caps);
            api::doctor_response(
                &doctor::examine(&config, &adapters),
                format!(
                    "this process (pid {}), without an agent",
                    std::process::id()
                ),
            )
        })
        .await
        .map_err(|e| Failure::internal(format!("the doctor's checks failed: {e}")))?
    } else {
        AgentClient::new(channel(global).await?)
            .doctor(pb::DoctorRequest {})
            .await?
            .into_inner()
    };
    print(global.output, &report);
    let failing: Vec<&str> = report
        .families
        .iter()
        .filter(|f| !f.works)
        .map(|f| f.kind.as_str())
        .collect();
    if failing.is_empty() {
        Ok(())
    } else {
        Err(Failure::refused(format!(
            "{} of {} fault families do not work on this host: {}",
            failing.len(),
            report.families.len(),
            failing.join(", ")
        )))
    }
}

fn verdict(v: i32) -> &'static str {
    match pb::Verdict::try_from(v) {
        Ok(pb::Verdict::Ok) => "ok",
        Ok(pb::Verdict::Warn) => "warn",
        Ok(pb::Verdict::Fail) => "fail",
        // A verdict a newer agent knows and this CLI does not.
        _ => "unknown",
    }
}

fn print(format: Output, report: &pb::DoctorResponse) {
    match format {
        Output::Json => output::print_json(&json!({
            "hostname": report.hostname,
            "kernel_release": report.kernel_release,
            "examined_by": report.examined_by,
            "checks": report.checks.iter().map(|c| json!({
                "area": c.area,
                "verdict": verdict(c.verdict),
                "detail": c.detail,
                "instead": c.instead,
            })).collect::<Vec<_>>(),
            "families": report.families.iter().map(|f| json!({
                "kind": f.kind,
                "works": f.works,
                "detail": f.detail,
                "instead": f.instead,
            })).collect::<Vec<_>>(),
            "all_work": report.families.iter().all(|f| f.works),
        })),
        Output::Text => {
            println!(
                "faultline doctor: {}, kernel {} (examined by {})",
                report.hostname, report.kernel_release, report.examined_by
            );
            println!("host");
            for c in &report.checks {
                println!("  {:<10} {:<4}  {}", c.area, verdict(c.verdict), c.detail);
                if !c.instead.is_empty() {
                    println!("  {:<10} {:<4}  instead: {}", "", "", c.instead);
                }
            }
            println!("fault families");
            for f in &report.families {
                if f.works {
                    println!("  {:<8} works           {}", f.kind, f.detail);
                } else {
                    println!("  {:<8} does not work   because {}", f.kind, f.detail);
                    println!("  {:<8}                 instead: {}", "", f.instead);
                }
            }
            let working = report.families.iter().filter(|f| f.works).count();
            println!(
                "{working} of {} fault families work here",
                report.families.len()
            );
        }
    }
}
