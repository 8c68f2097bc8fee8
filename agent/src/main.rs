//! `faultline`: `faultline serve` runs the agent; every other subcommand is a client of it.

fn main() -> std::process::ExitCode {
    faultline::cli::main()
}
