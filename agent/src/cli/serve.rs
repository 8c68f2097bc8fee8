//! `faultline serve`: the agent itself. Probes the kernel, reverts whatever an earlier run
//! left behind, then serves the gRPC API until SIGTERM/SIGINT, reverting every fault on exit.

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context as _;
use clap::Args;
use tracing::{info, warn};

use super::{args::parse_duration, output::Failure};
use crate::{
    api,
    config::{AgentConfig, DEFAULT_BPF_PIN_DIR, DEFAULT_SOCKET, DEFAULT_STATE_DIR},
    engine::Engine,
    kernel::caps::Capabilities,
    monitor::{
        probes::{Probes, Target},
        Monitor,
    },
};

#[derive(Debug, Args)]
pub struct Options {
    /// The local gRPC socket (created with mode 0600)
    #[arg(long, env = "FAULTLINE_SOCKET", default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Where the journal of unfinished faults is kept
    #[arg(long, env = "FAULTLINE_STATE_DIR", default_value = DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
    /// Where eBPF attachments are pinned (on bpffs) so they outlive a crashed agent
    #[arg(long, env = "FAULTLINE_BPF_PIN_DIR", default_value = DEFAULT_BPF_PIN_DIR)]
    pub bpf_pin_dir: PathBuf,
    /// The longest duration a fault may ask for
    #[arg(long, value_parser = parse_duration, default_value = "24h")]
    pub max_duration: Duration,
    /// Local TCP port whose established connections no fault may cut without --force;
    /// repeatable (default: 22)
    #[arg(long = "protected-port", value_name = "PORT", default_values_t = [22u16])]
    pub protected_ports: Vec<u16>,
    /// Available memory a memory stress must leave (512MiB, 2GiB); default 5 % of memory,
    /// at least 256MiB
    #[arg(long, value_name = "SIZE", value_parser = crate::faults::stress::parse_bytes)]
    pub memory_reserve: Option<u64>,

    /// The cgroup (at each hierarchy's root) that holds stress faults' cgroups
    #[arg(long, value_name = "NAME", default_value = crate::kernel::cgroup::DEFAULT_PARENT, value_parser = cgroup_name)]
    pub cgroup_parent: String,

    /// Serve Prometheus metrics over HTTP at ADDR/metrics (off unless given; without ADDR:
    /// 127.0.0.1:9464)
    #[arg(long, value_name = "ADDR", num_args = 0..=1, default_missing_value = crate::monitor::http::DEFAULT_ADDR)]
    pub metrics_listen: Option<SocketAddr>,

    /// A TCP connect target to check on an interval (HOST:PORT); repeatable
    #[arg(long = "probe", value_name = "HOST:PORT", value_parser = probe_target)]
    pub probes: Vec<Target>,

    /// How often each probe target is checked
    #[arg(long, value_parser = parse_duration, default_value = "5s")]
    pub probe_interval: Duration,

    /// How long a probe connect may take before it counts as failed
    #[arg(long, value_parser = parse_duration, default_value = "2s")]
    pub probe_timeout: Duration,

    /// Log filter (error, warn, info, debug, or a tracing directive)
    #[arg(long, env = "FAULTLINE_LOG", default_value = "info")]
    pub log_level: String,
}

fn probe_target(text: &str) -> Result<Target, String> {
    Target::parse(text).map_err(|e| e.reason)
}

/// One directory name: the parent sits directly at each hierarchy's root.
fn cgroup_name(text: &str) -> Result<String, String> {
    if text.is_empty() || text.contains('/') || text.starts_with('.') {
        return Err(format!(
            "{text:?} is not a cgroup name (one path component, e.g. faultline)"
        ));
    }
    Ok(text.to_owned())
}

pub fn run(o: Options) -> Result<(), Failure> {
    let filter = tracing_subscriber::EnvFilter::try_new(&o.log_level)
        .map_err(|e| Failure::internal(format!("--log-level {:?}: {e}", o.log_level)))?;
    use std::io::IsTerminal as _;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let config = AgentConfig {
        socket: o.socket,
        state_dir: o.state_dir,
        bpf_pin_dir: o.bpf_pin_dir,
        max_duration: o.max_duration,
        protected_ports: o.protected_ports,
        memory_reserve: o.memory_reserve,
        cgroup_parent: o.cgroup_parent,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::internal(format!("cannot start the async runtime: {e}")))?;
    let watch = Watch {
        metrics_listen: o.metrics_listen,
        probes: o.probes,
        probe_interval: o.probe_interval,
        probe_timeout: o.probe_timeout,
    };
    runtime
        .block_on(serve(config, watch))
        .map_err(|e| Failure::internal(format!("{e:#}")))
}

/// What the agent watches, besides its faults.
struct Watch {
    metrics_listen: Option<SocketAddr>,
    probes: Vec<Target>,
    probe_interval: Duration,
    probe_timeout: Duration,
}

async fn serve(config: AgentConfig, watch: Watch) -> anyhow::Result<()> {
    let caps = Capabilities::probe();
    info!(version = env!("CARGO_PKG_VERSION"), kernel = %caps.kernel_release, "faultline agent starting");
    for (name, cap) in caps.list() {
        if cap.available {
            info!(capability = name, detail = %cap.detail, "available");
        } else {
            warn!(capability = name, detail = %cap.detail, "missing");
        }
    }
    let engine = Engine::new(config, caps).context("opening the journal")?;
    let recovery = engine
        .recover()
        .await
        .context("reverting what an earlier run left behind")?;
    if !recovery.reverted.is_empty() || !recovery.swept.is_empty() {
        info!(
            reverted = recovery.reverted.len(),
            swept = recovery.swept.len(),
            "recovered from an earlier run that did not shut down cleanly"
        );
    }
    for (id, error) in &recovery.failed {
        warn!(
            id,
            error, "a fault from an earlier run could not be reverted; it stays journalled"
        );
    }
    // Bound before anything is served, so that a taken address stops the start-up.
    let metrics_listener = match watch.metrics_listen {
        Some(addr) => Some(
            crate::monitor::http::bind(addr)
                .await
                .with_context(|| format!("binding the metrics listener on {addr}"))?,
        ),
        None => None,
    };
    let probes = Probes::start(&watch.probes, watch.probe_interval, watch.probe_timeout);
    let monitor = Arc::new(Monitor::start(Arc::clone(&engine), probes));
    api::serve(engine, monitor, metrics_listener).await
}
