//! faultline's developer tasks, run as `cargo xtask <task>` from anywhere in the workspace.
//!
//! One clap enum of tasks, one module per task with its own `Options` and one entry function;
//! `main` maps the task to its function and prints the error chain once. Tasks never hide a
//! failure or a skipped layer: whatever did not run says so on its own line.

mod bench;
mod exec;
mod host;
#[cfg(test)]
mod modules;
mod prereqs;
mod run;
mod test;
mod vm;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "xtask",
    bin_name = "cargo xtask",
    about = "faultline's developer tasks"
)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Install the prerequisites, build faultline (release) and run the agent in the foreground
    ///
    /// Needs root. The agent listens on /run/faultline/faultline.sock and keeps its journal in
    /// /var/lib/faultline; Ctrl-C stops it and reverts every fault.
    Run(run::Options),
    /// Install the prerequisites and run the whole test suite
    ///
    /// Needs root. In order: rustfmt (nightly) check, clippy with warnings denied, unit and
    /// integration tests (network namespaces), then the real-kernel VM layer or a SKIP line
    /// saying why it did not run. Stops at the first failing step.
    Test(test::Options),
    /// Install only the prerequisites: apt packages, nightly Rust, clippy, bpf-linker
    ///
    /// Each check says what it finds and what it installs; a present prerequisite is left as
    /// it is. Installing apt packages needs root.
    Prereqs(prereqs::Options),
    /// Run the integration tests on Debian 12's stock kernel under qemu (software emulation)
    ///
    /// Needs root. Downloads Debian's cloud kernel with apt-get download into target/vm (once;
    /// never installed), builds a busybox initramfs with the agent, the test executables, the
    /// host's ip/tc/nft/nsenter/setpriv/ping and the kernel modules, boots it with qemu TCG and
    /// reports the guest's result from the serial console. Installs qemu-system-x86 if missing.
    /// Arguments after `--` go to every test executable (e.g. a test name filter).
    VmTest(vm::Options),
    /// Measure faultline against baselines on this machine; writes docs/benchmarks.{md,json}
    ///
    /// Needs root. Builds the agent in release mode, drives agents in network namespaces it
    /// creates and always removes, and measures side by side with a baseline in the same run:
    /// apply and revert latency (gRPC) against the nft and tc binaries, fidelity of loss, CPU,
    /// memory and rate faults (netem in the VM guest), the agent's overhead (idle CPU and
    /// memory, connect rate, Prometheus scrape against prometheus-node-exporter) and fan-out to
    /// 10, 50 and 100 agents with `faultline fleet run`. Not part of `cargo xtask test`.
    Bench(bench::Options),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.task {
        Task::Run(options) => run::run(options),
        Task::Test(options) => test::run(options),
        Task::Prereqs(options) => prereqs::run(options),
        Task::VmTest(options) => vm::run(options),
        Task::Bench(options) => bench::run(options),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}
