//! The `faultline` command line: `serve` runs the agent, every other subcommand is a gRPC
//! client of it (over the local unix socket unless `--agent` says otherwise). One file per
//! subcommand; `args` holds the shared flags, `output` the printing and the exit codes.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod apply;
pub mod args;
mod block;
mod certs;
mod connect;
mod fleet;
mod get;
mod info;
mod loss;
mod ls;
mod metrics;
pub mod output;
mod renew;
mod revert;
mod serve;
mod shape;
mod stress;
mod view;
mod worker;

pub use output::Failure;

/// faultline: inject network, CPU and memory faults into this host, and revert them, always.
#[derive(Debug, Parser)]
#[command(name = "faultline", version, about, propagate_version = true)]
pub(crate) struct Cli {
    #[command(flatten)]
    pub global: args::Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run the agent in the foreground (root): gRPC on a unix socket, faults reverted on exit
    Serve(serve::Options),
    /// Block packets with nftables: drop, or reject with a TCP reset / ICMP unreachable
    Block(block::Options),
    /// Drop a share of an interface's packets with an eBPF classifier (no netem needed)
    Loss(loss::Options),
    /// Delay an interface's packets (netem), optionally with jitter
    Delay(shape::DelayOptions),
    /// Any netem impairment: delay, jitter, loss, duplication, corruption, reordering, rate
    Netem(shape::NetemOptions),
    /// Cap an interface's bandwidth (tbf)
    Rate(shape::RateOptions),
    /// Load CPUs or hold memory inside a cgroup whose limits the kernel enforces
    Stress(stress::Options),
    /// List the agent's faults
    #[command(alias = "list")]
    Ls(ls::Options),
    /// Show one fault
    Get(get::Options),
    /// Revert one fault, or all of them
    Revert(revert::Options),
    /// Renew the leases of faults applied with --lease, so that they are not reverted yet
    Renew(renew::Options),
    /// Show the agent's version, host and what its kernel offers
    Info(info::Options),
    /// One snapshot of what the agent sees: CPU, memory, disk, network, TCP connect health,
    /// probes, active faults
    Metrics(metrics::MetricsOptions),
    /// A live view of the same, updated every --interval (Ctrl-C stops)
    Top(metrics::TopOptions),
    /// Experiments across many agents: faults with leases, guards, a scorecard
    Fleet(fleet::Options),
    /// Make the certificates of the remote listener: a CA, the agent's, clients'
    #[command(subcommand)]
    Certs(certs::Command),
    /// A stress worker, started by the agent inside a fault's cgroup
    #[command(name = "__worker", hide = true)]
    Worker(worker::Options),
}

/// Runs the command line and turns the outcome into an exit status scripts can rely on.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(options) => serve::run(&cli.global, options),
        Command::Worker(options) => worker::run(options),
        Command::Certs(command) => certs::run(command),
        command => client_runtime().and_then(|rt| {
            rt.block_on(async {
                match command {
                    Command::Block(o) => block::run(&cli.global, o).await,
                    Command::Loss(o) => loss::run(&cli.global, o).await,
                    Command::Delay(o) => shape::delay(&cli.global, o).await,
                    Command::Netem(o) => shape::netem(&cli.global, o).await,
                    Command::Rate(o) => shape::rate(&cli.global, o).await,
                    Command::Stress(o) => stress::run(&cli.global, o).await,
                    Command::Ls(o) => ls::run(&cli.global, o).await,
                    Command::Get(o) => get::run(&cli.global, o).await,
                    Command::Revert(o) => revert::run(&cli.global, o).await,
                    Command::Renew(o) => renew::run(&cli.global, o).await,
                    Command::Info(o) => info::run(&cli.global, o).await,
                    Command::Metrics(o) => metrics::metrics(&cli.global, o).await,
                    Command::Top(o) => metrics::top(&cli.global, o).await,
                    Command::Fleet(o) => fleet::run(&cli.global, o).await,
                    Command::Serve(_) | Command::Worker(_) | Command::Certs(_) => {
                        unreachable!("handled above")
                    }
                }
            })
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("faultline: {failure}");
            failure.exit_code()
        }
    }
}

fn client_runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::internal(format!("cannot start the async runtime: {e}")))
}
