//! `cargo xtask run`: install the prerequisites, build faultline in release mode and replace
//! this process with `faultline serve` in the foreground, so Ctrl-C (SIGINT) reaches the agent
//! directly and it reverts every fault before it exits. It never starts the agent detached.

use std::os::unix::process::CommandExt as _;

use anyhow::{bail, Result};
use clap::Args;

use crate::{exec, host, prereqs};

const SOCKET: &str = "/run/faultline/faultline.sock";
const STATE_DIR: &str = "/var/lib/faultline";

#[derive(Debug, Args)]
pub struct Options {
    /// Extra arguments for `faultline serve`, after `--` (e.g. -- --log-level debug)
    #[arg(last = true, value_name = "SERVE_ARGS")]
    serve_args: Vec<String>,
}

pub fn run(o: Options) -> Result<()> {
    if !host::is_root()? {
        bail!(
            "faultline needs root (CAP_NET_ADMIN, CAP_BPF): it changes the host's nftables and \
             attaches eBPF programs to interfaces; run `cargo xtask run` as root"
        );
    }
    prereqs::ensure()?;
    exec::run(&mut exec::command(
        "cargo",
        ["build", "--release", "-p", "faultline"],
    ))?;

    let binary = host::workspace_root().join("target/release/faultline");
    let mut serve = exec::command(binary.to_str().unwrap_or("faultline"), ["serve"]);
    // The defaults, unless the extra arguments choose otherwise (clap refuses a flag twice).
    for (flag, default) in [("--socket", SOCKET), ("--state-dir", STATE_DIR)] {
        if !names_flag(&o.serve_args, flag) {
            serve.args([flag, default]);
        }
    }
    serve.args(&o.serve_args);
    println!("$ {}", exec::display(&serve));
    println!("faultline: agent in the foreground; Ctrl-C stops it and reverts every fault");
    // exec only returns on failure.
    let error = serve.exec();
    Err(anyhow::Error::new(error).context(format!("cannot start `{}`", binary.display())))
}

/// Whether `args` set `flag`, as `--flag VALUE` or `--flag=VALUE`.
fn names_flag(args: &[String], flag: &str) -> bool {
    args.iter().any(|arg| {
        arg == flag
            || arg
                .strip_prefix(flag)
                .is_some_and(|rest| rest.starts_with('='))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extra_flags_replace_the_defaults() {
        let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(names_flag(&args(&["--socket", "/tmp/s"]), "--socket"));
        assert!(names_flag(&args(&["--socket=/tmp/s"]), "--socket"));
        assert!(!names_flag(
            &args(&["--socketx=1", "--log-level", "debug"]),
            "--socket"
        ));
    }
}
