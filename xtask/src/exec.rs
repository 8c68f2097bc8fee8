//! Child processes: every command xtask runs is built here, with the workspace root as its
//! directory and [`host::child_path`] as its `PATH`, echoed before it runs, and turned into an
//! error that names the command when it cannot start or exits unsuccessfully. Nothing here
//! decides *what* to run.

use std::{
    ffi::OsStr,
    fmt::Write as _,
    process::{Command, Stdio},
};

use anyhow::{bail, Context as _, Result};

use crate::host;

/// `program args...`, ready to run in the workspace root with `~/.cargo/bin` first on `PATH`.
pub fn command<I, S>(program: &str, args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    // Resolve on the child's PATH ourselves, so the program found is the one the child's
    // environment would find, whatever our own PATH says.
    let resolved =
        host::find_program(program).map_or_else(|| program.into(), |p| p.into_os_string());
    let mut command = Command::new(resolved);
    command
        .args(args)
        .current_dir(host::workspace_root())
        .env("PATH", host::child_path());
    command
}

/// The command as a user would type it, for echoes and error messages.
pub fn display(command: &Command) -> String {
    let program = command.get_program().to_string_lossy();
    let mut text = program.rsplit('/').next().unwrap_or(&program).to_owned();
    for arg in command.get_args() {
        let arg = arg.to_string_lossy();
        if arg.is_empty() || arg.contains(|c: char| c.is_whitespace() || "'\"$`\\".contains(c)) {
            let _ = write!(text, " '{}'", arg.replace('\'', r"'\''"));
        } else {
            let _ = write!(text, " {arg}");
        }
    }
    text
}

/// Runs `command` with inherited stdio, echoing it first; fails unless it exits with status 0.
pub fn run(command: &mut Command) -> Result<()> {
    let shown = display(command);
    println!("$ {shown}");
    let status = command
        .status()
        .with_context(|| format!("cannot start `{shown}`"))?;
    if !status.success() {
        bail!("`{shown}` failed ({status})");
    }
    Ok(())
}

/// Runs `command` quietly and returns its stdout, or `None` if it could not start or exited
/// unsuccessfully: for probes whose failure simply means "not there".
pub fn probe(command: &mut Command) -> Option<String> {
    let output = command
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Runs `command` quietly and returns its stdout; fails, naming the command and quoting its
/// stderr, if it cannot start or exits unsuccessfully.
pub fn capture(command: &mut Command) -> Result<String> {
    let shown = display(command);
    let output = command
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot start `{shown}`"))?;
    if !output.status.success() {
        bail!(
            "`{shown}` failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Runs `command` with its stderr on ours (for progress, like cargo's), echoing it first, and
/// returns its stdout; fails, naming the command, unless it exits with status 0.
pub fn stdout_of(command: &mut Command) -> Result<String> {
    let shown = display(command);
    println!("$ {shown}");
    let output = command
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("cannot start `{shown}`"))?;
    if !output.status.success() {
        bail!("`{shown}` failed ({})", output.status);
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_quotes_only_what_a_shell_would_split() {
        let c = command("cargo", ["+nightly", "fmt", "--", "--check", "a b", ""]);
        assert_eq!(display(&c), "cargo +nightly fmt -- --check 'a b' ''");
    }

    #[test]
    fn failures_name_the_command() {
        let error = run(&mut command("false", ["--flag"])).unwrap_err();
        assert!(format!("{error:#}").contains("`false --flag` failed"));
        let error = capture(&mut command("xtask-no-such-program", ["x"])).unwrap_err();
        assert!(format!("{error:#}").contains("cannot start `xtask-no-such-program x`"));
    }
}
