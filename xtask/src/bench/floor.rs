//! The kernel's floor under a block fault, measured by `faultline-nft-floor` (xtask/nft-floor):
//! a program of its own because it links libnftnl and libmnl, which xtask must not (it has to
//! build before `cargo xtask prereqs` installs their headers). It is started once inside the
//! bench's namespace and keeps its netlink socket open; each request is a line on its stdin,
//! each answer the kernel's time for the batch, measured inside it.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    path::Path,
    process::{Child, ChildStdin, ChildStdout, Stdio},
    time::Duration,
};

use anyhow::{bail, Context as _, Result};

use super::lab::Netns;

/// The running floor program; killed when dropped.
pub struct NftFloor {
    child: Child,
    input: ChildStdin,
    output: BufReader<ChildStdout>,
}

impl NftFloor {
    /// Starts `program` inside `ns`.
    pub fn start(ns: &Netns, program: &Path) -> Result<Self> {
        let mut child = super::lab::command(ns, &program.to_string_lossy(), [] as [&str; 0])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", program.display()))?;
        let input = child.stdin.take().context("the floor program's stdin")?;
        let output = BufReader::new(child.stdout.take().context("the floor program's stdout")?);
        Ok(Self {
            child,
            input,
            output,
        })
    }

    /// Sends the block's objects in one batch; the kernel's time for it.
    pub fn apply(&mut self, port: u16, lifetime_ms: u64) -> Result<Duration> {
        self.ask(&format!("apply {port} {lifetime_ms}"))
    }

    /// Flushes the chain's rules, which ends the block; the kernel's time for it.
    pub fn end(&mut self) -> Result<Duration> {
        self.ask("end")
    }

    /// Deletes the table (not timed).
    pub fn remove(&mut self) -> Result<()> {
        self.ask("remove").map(drop)
    }

    fn ask(&mut self, request: &str) -> Result<Duration> {
        writeln!(self.input, "{request}")
            .and_then(|()| self.input.flush())
            .context("writing to the floor program")?;
        let mut line = String::new();
        if self
            .output
            .read_line(&mut line)
            .context("reading the floor program's answer")?
            == 0
        {
            bail!("the floor program exited while asked `{request}`");
        }
        match line.trim().split_once(' ') {
            Some(("ok", nanos)) => Ok(Duration::from_nanos(
                nanos.parse().context("the floor program's answer")?,
            )),
            Some(("error", what)) => bail!("the floor program, asked `{request}`: {what}"),
            _ => bail!("the floor program answered {line:?} to `{request}`"),
        }
    }
}

impl Drop for NftFloor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
