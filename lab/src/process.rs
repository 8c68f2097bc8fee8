//! Commands run with a time limit, so that a hung tool or agent fails a test or a bench run
//! instead of hanging it, and their output quoted in the error when they fail.

use std::{
    io::Read,
    process::{Command, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

/// How long a CLI command or a tool like `ip` may take before the test gives up on it.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs `command` to completion with stdin closed, capturing its output; kills it and fails
/// after `timeout`.
pub fn run(command: Command, timeout: Duration) -> Result<Output> {
    run_inner(command, None, timeout)
}

/// [`run`] with `input` on the command's stdin.
pub fn run_with_input(command: Command, input: &[u8], timeout: Duration) -> Result<Output> {
    run_inner(command, Some(input.to_vec()), timeout)
}

fn run_inner(mut command: Command, input: Option<Vec<u8>>, timeout: Duration) -> Result<Output> {
    let shown = format!("{command:?}");
    let mut child = command
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {shown}"))?;
    if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
        // Written from a thread: a command that prints before it has read everything would
        // otherwise deadlock against us.
        thread::spawn(move || {
            use std::io::Write as _;
            let _ = stdin.write_all(&input);
        });
    }
    let mut stdout = child.stdout.take().expect("stdout is piped");
    let mut stderr = child.stderr.take().expect("stderr is piped");
    let out = thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stdout.read_to_end(&mut buf);
        buf
    });
    let err = thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stderr.read_to_end(&mut buf);
        buf
    });
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if started.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            let stderr = err.join().unwrap_or_default();
            bail!(
                "{shown} did not finish within {timeout:?}; stderr: {}",
                String::from_utf8_lossy(&stderr)
            );
        }
        thread::sleep(Duration::from_millis(10));
    };
    Ok(Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    })
}

/// What a finished command said, for failure messages.
pub fn describe(what: &str, output: &Output) -> String {
    format!(
        "{what}: {}\n--- stdout\n{}--- stderr\n{}---",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Runs a tool (`ip`, `nft`, ...) and fails, with everything it printed, unless it exits 0.
pub fn run_ok(command: Command) -> Result<String> {
    let shown = format!("{command:?}");
    let output = run(command, COMMAND_TIMEOUT)?;
    if !output.status.success() {
        bail!("{}", describe(&shown, &output));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}
