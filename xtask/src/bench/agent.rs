//! A bench agent: the release `faultline serve` in a namespace of the bench's, with a socket,
//! state directory, bpffs pin directory and cgroup parent of its own (several agents run at
//! once, and each sweeps at start-up what its own names hold). Its guard stops it (SIGTERM: it
//! reverts what it still holds) and removes its pins, cgroups and directory.

use std::{
    fs,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use serde_json::Value;
use tokio::runtime::Runtime;

use super::{
    grpc::Client,
    interrupted,
    lab::{remove_cgroup, Daemon, Netns},
    pause,
};
use crate::exec;

/// How long an agent may take to answer after it starts, and to exit after SIGTERM.
const AGENT_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Agent {
    name: String,
    bin: PathBuf,
    dir: PathBuf,
    pin_dir: PathBuf,
    daemon: Daemon,
}

impl Agent {
    /// Starts `faultline serve` in `ns` with `extra` arguments; `name` (unique in the run)
    /// names its directory under `run_dir`, its pin directory and its cgroup parent. Returns at
    /// once: [`Agent::wait_ready`] waits until it answers.
    pub fn spawn(
        bin: &Path,
        ns: &Netns,
        run_dir: &Path,
        name: &str,
        extra: &[&str],
    ) -> Result<Self> {
        let dir = run_dir.join(name);
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let pin_dir = Path::new("/sys/fs/bpf").join(name);
        let mut command = super::lab::command(ns, &bin.to_string_lossy(), ["serve"]);
        command
            .arg("--socket")
            .arg(dir.join("fl.sock"))
            .arg("--state-dir")
            .arg(dir.join("state"))
            .arg("--bpf-pin-dir")
            .arg(&pin_dir)
            .args(["--cgroup-parent", name, "--log-level", "info"])
            .args(extra);
        let daemon = Daemon::spawn(
            &format!("the agent {name}"),
            command,
            &dir.join("agent.log"),
            AGENT_TIMEOUT,
        )?;
        Ok(Self {
            name: name.to_owned(),
            bin: bin.to_owned(),
            dir,
            pin_dir,
            daemon,
        })
    }

    /// Starts an agent and waits until it answers.
    pub fn start(
        rt: &Runtime,
        bin: &Path,
        ns: &Netns,
        run_dir: &Path,
        name: &str,
        extra: &[&str],
    ) -> Result<Self> {
        let mut agent = Self::spawn(bin, ns, run_dir, name, extra)?;
        let deadline = Instant::now() + AGENT_TIMEOUT;
        while !agent.answers(rt)? {
            if Instant::now() > deadline {
                bail!(
                    "the agent {name} did not answer within {AGENT_TIMEOUT:?}; {}",
                    agent.log_tail()
                );
            }
            pause(Duration::from_millis(50))?;
        }
        Ok(agent)
    }

    /// Whether the agent answers `Agent/Info` now; fails if it has exited.
    pub fn answers(&mut self, rt: &Runtime) -> Result<bool> {
        interrupted()?;
        if let Err(e) = self.daemon.check_running() {
            bail!("{e:#}; {}", self.log_tail());
        }
        let socket = self.socket();
        if !socket.exists() {
            return Ok(false);
        }
        Ok(rt
            .block_on(async { Client::connect(&socket).await?.info().await })
            .is_ok())
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> Option<u32> {
        self.daemon.pid()
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("fl.sock")
    }

    fn log_tail(&self) -> String {
        let log = fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(5).collect();
        format!(
            "the last lines of its log ({}): {}",
            self.dir.join("agent.log").display(),
            tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
        )
    }

    /// `faultline --agent SOCKET args...`; fails unless it exits 0, and returns its stdout.
    pub fn cli(&self, args: &[&str]) -> Result<String> {
        let mut command = exec::command(&self.bin.to_string_lossy(), ["--agent"]);
        command.arg(self.socket()).args(args);
        exec::capture(&mut command)
    }

    /// Applies a fault with the CLI (`--detach -o json`) and returns its id, once active.
    pub fn apply_cli(&self, args: &[&str]) -> Result<String> {
        let mut full = args.to_vec();
        full.extend(["--detach", "-o", "json"]);
        let out = self.cli(&full)?;
        let fault: Value = serde_json::from_str(&out)
            .with_context(|| format!("faultline {} printed {out}", full.join(" ")))?;
        if fault["state"] != "active" {
            bail!(
                "faultline {} gave a fault that is not active: {fault}",
                full.join(" ")
            );
        }
        fault["id"]
            .as_str()
            .map(str::to_owned)
            .with_context(|| format!("a fault without an id: {fault}"))
    }

    pub fn revert_cli(&self, id: &str) -> Result<()> {
        self.cli(&["revert", id]).map(drop)
    }

    /// `faultline metrics -o json`.
    pub fn metrics(&self) -> Result<Value> {
        let out = self.cli(&["metrics", "-o", "json"])?;
        serde_json::from_str(&out).with_context(|| format!("metrics -o json printed {out}"))
    }

    /// Waits until the TCP connect-health programs are loaded (the agent loads them in the
    /// background after it starts); fails with the agent's reason if they cannot be.
    pub fn wait_tcp_health(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let snapshot = self.metrics()?;
            match snapshot["tcp_unavailable"].as_str() {
                None => return Ok(()),
                Some(r) if r.contains("still loading") && Instant::now() < deadline => {
                    pause(Duration::from_millis(100))?;
                }
                Some(r) => bail!("the agent's TCP connect health is unavailable: {r}"),
            }
        }
    }

    /// (attempts, successes) the agent counted for connects to `dest`.
    pub fn connects_counted(&self, dest: SocketAddr) -> Result<(u64, u64)> {
        let snapshot = self.metrics()?;
        if let Some(r) = snapshot["tcp_unavailable"].as_str() {
            bail!("the agent's TCP connect health is unavailable: {r}");
        }
        let entry = snapshot["tcp"]
            .as_array()
            .context("no tcp list in the metrics snapshot")?
            .iter()
            .find(|d| d["addr"] == dest.ip().to_string() && d["port"] == dest.port());
        Ok(entry.map_or((0, 0), |d| {
            (
                d["attempts"].as_u64().unwrap_or(0),
                d["successes"].as_u64().unwrap_or(0),
            )
        }))
    }

    /// Asks the agent to stop (SIGTERM) without waiting; [`Agent::stop`] or the drop waits.
    pub fn terminate(&mut self) {
        self.daemon.terminate();
    }

    /// Stops the agent (it reverts whatever it still holds) and removes its pins, cgroups and
    /// directory.
    pub fn stop(&mut self) -> Result<()> {
        let stopped = self.daemon.stop();
        remove_cgroup(&self.name);
        if self.pin_dir.exists() {
            fs::remove_dir_all(&self.pin_dir)
                .with_context(|| format!("removing {}", self.pin_dir.display()))?;
        }
        if self.dir.exists() {
            fs::remove_dir_all(&self.dir)
                .with_context(|| format!("removing {}", self.dir.display()))?;
        }
        stopped
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("bench cleanup: agent {}: {e:#}", self.name);
        }
    }
}
