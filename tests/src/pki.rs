//! Certificates for the remote listener's tests, made by `faultline certs` as an operator
//! would: a CA, the agent's certificate for its address, and client certificates of several
//! kinds. Everything lives in a temporary directory removed with the guard.

use std::{
    path::PathBuf,
    process::{Command, Output},
};

use anyhow::Result;
use tempfile::TempDir;

use crate::{
    process::{self, faultline_bin},
    Netns,
};

/// `faultline certs ...`, failing with its output unless it exits 0.
fn certs(args: &[&str]) -> Result<()> {
    let mut command = Command::new(faultline_bin()?);
    command.arg("certs").args(args);
    process::run_ok(command).map(drop)
}

/// A CA, the agent's certificate for `agent_ip`, and client certificates: `alice` (operator),
/// `bob` (observer), `carol` (admin), `dave` (operator, expired in 2020) and `rogue`, an
/// `alice` signed by another CA of the same name.
pub struct Pki {
    dir: TempDir,
}

impl Pki {
    pub fn new(agent_ip: &str) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("faultline-pki-")
            .tempdir()?;
        let p = |name: &str| dir.path().join(name).display().to_string();
        certs(&["ca", "--out", &p("ca")])?;
        certs(&[
            "agent",
            "--ca-dir",
            &p("ca"),
            "--name",
            "agent",
            "--ip",
            agent_ip,
            "--out",
            &p("agent"),
        ])?;
        for name in ["alice", "bob", "carol"] {
            certs(&[
                "client",
                "--ca-dir",
                &p("ca"),
                "--name",
                name,
                "--out",
                &p(name),
            ])?;
        }
        certs(&[
            "client",
            "--ca-dir",
            &p("ca"),
            "--name",
            "dave",
            "--out",
            &p("dave"),
            "--valid-from",
            "2020-01-01T00:00:00Z",
            "--not-after",
            "2020-01-02T00:00:00Z",
        ])?;
        certs(&["ca", "--out", &p("other-ca")])?;
        certs(&[
            "client",
            "--ca-dir",
            &p("other-ca"),
            "--name",
            "alice",
            "--out",
            &p("rogue"),
        ])?;
        Ok(Self { dir })
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `serve` arguments for a remote listener at `addr` whose policy makes `carol` an admin
    /// (and nobody else anything).
    pub fn serve_args_with_admin(&self, addr: &str) -> Result<Vec<String>> {
        let policy = self.path("admin-policy.toml");
        std::fs::write(&policy, "[admin]\ncertificates = [\"carol\"]\n")?;
        let mut args = self.serve_args(addr);
        args.extend(["--policy".to_owned(), policy.display().to_string()]);
        Ok(args)
    }

    /// `serve` arguments for a remote listener at `addr`.
    pub fn serve_args(&self, addr: &str) -> Vec<String> {
        let p = |name: &str| self.path(name).display().to_string();
        vec![
            "--listen".into(),
            addr.into(),
            "--tls-cert".into(),
            p("agent/agent.pem"),
            "--tls-key".into(),
            p("agent/agent-key.pem"),
            "--client-ca".into(),
            p("agent/ca.pem"),
        ]
    }
}

/// The CLI of `identity` (a directory of `Pki`), in `ns`, against the agent at `url`.
pub fn remote(ns: &Netns, pki: &Pki, url: &str, identity: &str, args: &[&str]) -> Result<Output> {
    let mut command = ns.command(faultline_bin()?);
    command
        .arg("--agent")
        .arg(url)
        .arg("--tls-cert")
        .arg(pki.path(identity).join("client.pem"))
        .arg("--tls-key")
        .arg(pki.path(identity).join("client-key.pem"))
        .arg("--ca")
        .arg(pki.path("ca/ca.pem"))
        .args(args);
    process::run(command, process::COMMAND_TIMEOUT)
}
