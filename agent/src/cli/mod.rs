//! The `faultline` command line: `serve` runs the agent, every other subcommand is a gRPC
//! client of it (over the local unix socket unless `--agent` says otherwise). One file per
//! subcommand; `args` holds the shared flags, `output` the printing and the exit codes,
//! `config_file` the settings `serve` reads from its configuration file.

use std::{ffi::OsString, path::PathBuf, process::ExitCode};

use clap::{CommandFactory as _, FromArgMatches as _, Parser, Subcommand};
use thiserror::Error;

mod apply;
pub(crate) mod args;
mod block;
mod certs;
mod completions;
pub(crate) mod config_file;
mod connect;
mod disk;
mod doctor;
mod fleet;
mod get;
mod health;
mod info;
mod kill;
mod loss;
mod ls;
mod man_pages;
mod metrics;
pub(crate) mod output;
mod pause;
mod renew;
mod revert;
mod serve;
mod shape;
mod stress;
mod view;
mod worker;

pub(crate) use output::Failure;

/// faultline: inject network, CPU, memory and disk faults into this host, and revert them, always.
#[derive(Debug, Parser)]
#[command(name = "faultline", version, about, propagate_version = true)]
pub(crate) struct Cli {
    #[command(flatten)]
    pub(crate) global: args::Global,
    #[command(subcommand)]
    pub(crate) command: Command,
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
    /// Fill a filesystem, stress a disk with I/O, or throttle a cgroup's I/O on a disk
    #[command(subcommand_required = true)]
    Disk(disk::Options),
    /// Signal (SIGKILL by default) a workload's processes, or those whose name matches, once or
    /// --every period; a kill cannot be undone
    Kill(kill::Options),
    /// Freeze a workload (cgroup freezer, or SIGSTOP for pids) and thaw it when the fault ends
    Pause(pause::Options),
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
    /// Check this host before faults are applied: kernel features, the agent's privileges,
    /// clock, journal space, protected ports, and whether each fault family works here (exit
    /// status 4 when one does not)
    Doctor(doctor::Options),
    /// The agent's gRPC health check: exits 0 when it is serving (for exec probes)
    Health(health::Options),
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
    /// Print the shell completion script for bash, zsh, fish, elvish or powershell
    Completions(completions::Options),
}

/// Entry points for faultline itself, not for people: `faultline __NAME ...`. Not part of
/// [`Cli`], so that no help text, completion script or man page offers them.
#[derive(Debug, Parser)]
#[command(name = "faultline")]
enum Internal {
    /// A stress worker, started by the agent inside a fault's cgroup
    #[command(name = "__worker")]
    Worker(worker::Options),
    /// Write a man page for faultline and each subcommand into a directory (for packaging)
    #[command(name = "__man-pages")]
    ManPages(man_pages::Options),
}

impl Internal {
    /// Whether `args` (with the program name first) call an internal entry point.
    fn called(args: &[OsString]) -> bool {
        args.get(1)
            .and_then(|arg| arg.to_str())
            .is_some_and(|arg| arg.starts_with("__"))
    }

    fn run(self) -> Result<(), Failure> {
        match self {
            Internal::Worker(options) => worker::run(options),
            Internal::ManPages(options) => man_pages::run(options),
        }
    }
}

/// Why the command line could not be turned into a [`Cli`].
#[derive(Debug, Error)]
pub(crate) enum ParseError {
    /// Including --help and --version, which clap prints and exits for.
    #[error(transparent)]
    CommandLine(#[from] clap::Error),
    #[error(transparent)]
    ConfigFile(#[from] config_file::ConfigFileError),
    /// The file's settings are each valid, but not together with the command line (a flag
    /// that requires another, say).
    #[error("with the settings of {}: {error}", path.display())]
    WithConfigFile { path: PathBuf, error: clap::Error },
}

/// Parses a command line; for `serve`, the settings of its configuration file fill in the
/// flags the command line and the environment left unset. Also returns what the file added.
pub(crate) fn parse_from(
    args: impl IntoIterator<Item = OsString>,
) -> Result<(Cli, config_file::FileSettings), ParseError> {
    let args: Vec<OsString> = args.into_iter().collect();
    let mut root = Cli::command();
    let mut matches = root.try_get_matches_from_mut(&args)?;
    let settings = config_file::settings(&root, &matches)?;
    if let (Some(path), false) = (&settings.path, settings.arguments.is_empty()) {
        // Parsed once more with the file's settings as flags, so clap checks them all together.
        matches = Cli::command()
            .try_get_matches_from(args.iter().chain(&settings.arguments))
            .map_err(|error| ParseError::WithConfigFile {
                path: path.clone(),
                error,
            })?;
    }
    Ok((Cli::from_arg_matches(&matches)?, settings))
}

/// Runs the command line and turns the outcome into an exit status scripts can rely on.
pub fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().collect();
    if Internal::called(&args) {
        return match Internal::parse_from(args).run() {
            Ok(()) => ExitCode::SUCCESS,
            Err(failure) => {
                eprintln!("faultline: {failure}");
                failure.exit_code()
            }
        };
    }
    let result = match parse_from(args) {
        Ok((cli, settings)) => run(cli, settings),
        // Usage errors, --help and --version: clap prints them and picks the exit status.
        Err(ParseError::CommandLine(e)) => e.exit(),
        Err(e) => Err(Failure::usage(e.to_string())),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("faultline: {failure}");
            failure.exit_code()
        }
    }
}

fn run(cli: Cli, settings: config_file::FileSettings) -> Result<(), Failure> {
    match cli.command {
        Command::Serve(options) => serve::run(&cli.global, options, settings.path),
        Command::Certs(command) => certs::run(command),
        Command::Completions(options) => completions::run(options),
        command => client_runtime().and_then(|rt| {
            rt.block_on(async {
                match command {
                    Command::Block(o) => block::run(&cli.global, o).await,
                    Command::Loss(o) => loss::run(&cli.global, o).await,
                    Command::Delay(o) => shape::delay(&cli.global, o).await,
                    Command::Netem(o) => shape::netem(&cli.global, o).await,
                    Command::Rate(o) => shape::rate(&cli.global, o).await,
                    Command::Stress(o) => stress::run(&cli.global, o).await,
                    Command::Disk(o) => disk::run(&cli.global, o).await,
                    Command::Kill(o) => kill::run(&cli.global, o).await,
                    Command::Pause(o) => pause::run(&cli.global, o).await,
                    Command::Ls(o) => ls::run(&cli.global, o).await,
                    Command::Get(o) => get::run(&cli.global, o).await,
                    Command::Revert(o) => revert::run(&cli.global, o).await,
                    Command::Renew(o) => renew::run(&cli.global, o).await,
                    Command::Info(o) => info::run(&cli.global, o).await,
                    Command::Doctor(o) => doctor::run(&cli.global, o).await,
                    Command::Health(o) => health::run(&cli.global, o).await,
                    Command::Metrics(o) => metrics::metrics(&cli.global, o).await,
                    Command::Top(o) => metrics::top(&cli.global, o).await,
                    Command::Fleet(o) => fleet::run(&cli.global, o).await,
                    Command::Serve(_) | Command::Certs(_) | Command::Completions(_) => {
                        unreachable!("handled above")
                    }
                }
            })
        }),
    }
}

fn client_runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::internal(format!("cannot start the async runtime: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_entry_points_parse_apart_from_the_command_line() {
        let args: Vec<OsString> = ["faultline", "__worker", "memory", "--bytes", "4096"]
            .map(OsString::from)
            .into();
        assert!(Internal::called(&args));
        let Internal::Worker(worker) = Internal::try_parse_from(&args).unwrap() else {
            panic!("not a worker");
        };
        assert!(matches!(
            worker.kind,
            worker::Kind::Memory { bytes: 4096, .. }
        ));
        assert!(!Internal::called(&["faultline".into(), "serve".into()]));
        // People's command line does not know them.
        assert!(Cli::try_parse_from(["faultline", "__worker", "cpu"]).is_err());
    }
}
