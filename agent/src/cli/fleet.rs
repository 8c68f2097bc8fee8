//! `faultline fleet run FILE`: an experiment across many agents (see `fleet`).

use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::{
    args::{Global, Output},
    output::{self, Failure},
};
use crate::{
    api::{connect, AgentAddress},
    fleet::{
        experiment::{Experiment, TlsFiles},
        run,
    },
};

#[derive(Debug, Args)]
pub(crate) struct Options {
    #[command(subcommand)]
    pub(crate) command: FleetCommand,
}

#[derive(Debug, Subcommand)]
pub(crate) enum FleetCommand {
    /// Run an experiment file: baseline, faults on all targets at once (with leases), guards
    /// watched while they run, everything reverted at the end, on a breach or on Ctrl-C; then
    /// the SLO scorecard
    Run(RunOptions),
    /// Check an experiment file and list its targets and faults, touching nothing
    Check(CheckOptions),
}

#[derive(Debug, Args)]
pub(crate) struct RunOptions {
    pub(crate) file: PathBuf,
    /// Let faults pass the agents' safety guards (SSH sessions, control connections)
    #[arg(long)]
    pub(crate) force: bool,
}

#[derive(Debug, Args)]
pub(crate) struct CheckOptions {
    pub(crate) file: PathBuf,
}

fn load(
    file: &std::path::Path,
) -> Result<(Experiment, Vec<crate::fleet::experiment::Target>), Failure> {
    Experiment::load(file).map_err(|e| Failure::usage(e.to_string()))
}

pub(crate) async fn run(global: &Global, o: Options) -> Result<(), Failure> {
    match o.command {
        FleetCommand::Check(c) => {
            let (e, targets) = load(&c.file)?;
            println!(
                "{}: {} targets, {} fault groups, {} guards, {} SLOs; baseline {}, duration {}, lease {}",
                e.name,
                targets.len(),
                e.faults.len(),
                e.guards.len(),
                e.slos.len(),
                humantime::format_duration(e.baseline),
                humantime::format_duration(e.duration),
                humantime::format_duration(e.lease)
            );
            for t in &targets {
                let faults: Vec<String> = e
                    .faults
                    .iter()
                    .filter(|g| crate::fleet::experiment::selects(&g.select, t))
                    .map(|g| g.fault.family().summary())
                    .collect();
                // A target no fault selects is still watched (its guards, its scorecard).
                let faults = if faults.is_empty() {
                    "no faults (observed only)".to_owned()
                } else {
                    faults.join("; ")
                };
                println!("  {}  {faults}", t.address);
            }
            Ok(())
        }
        FleetCommand::Run(r) => {
            let (experiment, targets) = load(&r.file)?;
            // Installed before anything is applied: a Ctrl-C at any moment reverts instead of
            // killing the controller with its faults in place.
            let mut interrupt =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
                    .map_err(|e| Failure::internal(format!("SIGINT handler: {e}")))?;
            let tls = experiment.tls.clone();
            let agents = run::connect_all(&targets, |address| {
                let tls = tls.clone();
                async move { connect_agent(&address, tls.as_ref()).await }
            })
            .await
            .map_err(|e| Failure::unreachable(&"the fleet", e))?;
            let json = global.output == Output::Json;
            let report = run::run(
                &experiment,
                agents,
                r.force,
                async move {
                    let _ = interrupt.recv().await;
                },
                |line| eprintln!("fleet: {line}"),
            )
            .await;
            if json {
                output::print_json(
                    &serde_json::to_value(&report)
                        .map_err(|e| Failure::internal(format!("cannot encode the report: {e}")))?,
                );
            } else {
                print!("{}", report.text());
            }
            if report.outcome == "completed" {
                Ok(())
            } else {
                Err(Failure::aborted(report.outcome))
            }
        }
    }
}

/// A channel to one agent; with `tls`, over mutual TLS.
async fn connect_agent(
    address: &str,
    tls: Option<&TlsFiles>,
) -> Result<tonic::transport::Channel, String> {
    match (AgentAddress::parse(address), tls) {
        (AgentAddress::Tcp(url), Some(files)) => {
            let client = crate::api::tls::ClientTls::load(&files.cert, &files.key, &files.ca)
                .map_err(|e| e.to_string())?;
            crate::api::connect_tls(&url, &client).await.map_err(|e| {
                format!(
                    "{e} ({})",
                    std::error::Error::source(&e)
                        .map(ToString::to_string)
                        .unwrap_or_default()
                )
            })
        }
        (AgentAddress::Tcp(url), None) if url.starts_with("https://") => {
            Err("an https:// agent needs the experiment's tls: section (cert, key, ca)".to_owned())
        }
        (address, _) => connect(&address).await.map_err(|e| e.to_string()),
    }
}
