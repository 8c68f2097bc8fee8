//! `faultline serve`: the agent itself. Checks its configuration (the policy, the remote
//! listener's certificates), probes the kernel, reverts whatever an earlier run left behind,
//! then serves the gRPC API until SIGTERM/SIGINT, reverting every fault on exit.

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context as _;
use clap::Args;
use tracing::{info, warn};

use super::{
    args::{parse_duration, Global},
    config_file::DEFAULT_CONFIG,
    output::Failure,
};
use crate::{
    api::{
        self,
        audit::{AuditLog, AuditOptions},
        authz::{Authorizer, Policy},
        gate::Gate,
        limits::{self, ListenerLimits},
        refusals::{RefusalPolicy, Refusals},
        tls::ServerTls,
    },
    config::{AgentConfig, DEFAULT_BPF_PIN_DIR, DEFAULT_SOCKET, DEFAULT_STATE_DIR},
    engine::Engine,
    kernel::caps::Capabilities,
    monitor::{
        counters::AgentCounters,
        probes::{Probes, Target},
        Monitor,
    },
};

#[derive(Debug, Args)]
pub(crate) struct Options {
    /// The configuration file: serve's flags as TOML keys (socket = "/run/x.sock"); a flag on
    /// the command line or in its environment variable wins. The default file is read only if
    /// it exists
    #[arg(long, value_name = "FILE", default_value = DEFAULT_CONFIG)]
    pub(crate) config: PathBuf,
    /// The local gRPC socket (created with mode 0600)
    #[arg(long, value_name = "PATH", env = "FAULTLINE_SOCKET", default_value = DEFAULT_SOCKET)]
    pub(crate) socket: PathBuf,
    /// A group whose members may also connect to the socket (mode 0660, a name or a gid);
    /// what each uid may do is still the policy's decision
    #[arg(long, value_name = "GROUP", value_parser = group_id)]
    pub(crate) socket_group: Option<u32>,
    /// Also serve the API on this TCP address, mutual TLS only (needs --tls-cert, --tls-key
    /// and --client-ca); its port joins the protected ports
    #[arg(long, value_name = "ADDR:PORT")]
    pub(crate) listen: Option<SocketAddr>,
    /// The CA that clients' certificates on the --listen address must chain to (PEM)
    #[arg(long, value_name = "FILE", requires = "listen")]
    pub(crate) client_ca: Option<PathBuf>,
    /// TLS connections open at once on the --listen address, handshakes included; beyond,
    /// new ones are closed at once
    #[arg(long, value_name = "N", default_value_t = limits::DEFAULT_MAX_CONNECTIONS, value_parser = at_least_one)]
    pub(crate) max_connections: usize,
    /// TLS handshakes under way at once (one source may hold a quarter of them); beyond, new
    /// connections are closed at once
    #[arg(long, value_name = "N", default_value_t = limits::DEFAULT_MAX_HANDSHAKES, value_parser = at_least_one)]
    pub(crate) max_handshakes: usize,
    /// A TLS client that has not finished its handshake by then is closed
    #[arg(long, value_name = "DURATION", value_parser = positive_duration, default_value = "10s")]
    pub(crate) handshake_timeout: Duration,
    /// Calls under way at once on one TLS connection (a Watch or Stream counts until it ends);
    /// beyond, calls are refused (RESOURCE_EXHAUSTED)
    #[arg(long, value_name = "N", default_value_t = limits::DEFAULT_MAX_STREAMS, value_parser = at_least_one)]
    pub(crate) max_streams: usize,
    /// The largest request message the agent reads, on either listener (1MiB, 64KiB); its
    /// requests are a few hundred bytes
    #[arg(long, value_name = "SIZE", value_parser = message_size, default_value = "1MiB")]
    pub(crate) max_message_size: usize,
    /// Watch and Metrics/Stream calls one caller may have open at once, on either listener
    #[arg(long, value_name = "N", default_value_t = limits::DEFAULT_MAX_SUBSCRIPTIONS, value_parser = at_least_one)]
    pub(crate) max_subscriptions: usize,
    /// Who may do what: a TOML file mapping certificate names and uids to the roles observer,
    /// operator and admin (without it only root may call, on the unix socket)
    #[arg(long, value_name = "FILE")]
    pub(crate) policy: Option<PathBuf>,
    /// The audit log, one JSON line per change and per refusal (default: STATE_DIR/audit.log)
    #[arg(long, value_name = "PATH")]
    pub(crate) audit_log: Option<PathBuf>,
    /// The size at which the audit log is rotated (the agent rotates it itself: audit.log.1 is
    /// the newest rotated file); SIGHUP reopens the log at its path
    #[arg(long, value_name = "SIZE", value_parser = crate::units::parse_bytes, default_value = "16MiB")]
    pub(crate) audit_max_size: u64,
    /// Rotated audit logs kept besides the current one
    #[arg(long, value_name = "N", default_value_t = crate::api::audit::DEFAULT_KEEP, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub(crate) audit_keep: u32,
    /// Free space of the state filesystem kept for journal entries and reverts: at this
    /// reserve applies are refused and audit lines are shed (each with an error in the log);
    /// a disk fault there leaves twice as much free, so that applies go on while it lasts
    #[arg(long, value_name = "SIZE", value_parser = crate::units::parse_bytes, default_value = "32MiB")]
    pub(crate) state_reserve: u64,
    /// Where the journal of unfinished faults is kept
    #[arg(long, value_name = "DIR", env = "FAULTLINE_STATE_DIR", default_value = DEFAULT_STATE_DIR)]
    pub(crate) state_dir: PathBuf,
    /// Where eBPF attachments are pinned (on bpffs) so they outlive a crashed agent
    #[arg(long, value_name = "DIR", env = "FAULTLINE_BPF_PIN_DIR", default_value = DEFAULT_BPF_PIN_DIR)]
    pub(crate) bpf_pin_dir: PathBuf,
    /// The longest duration a fault may ask for
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "24h")]
    pub(crate) max_duration: Duration,
    /// Local TCP port whose established connections no fault may cut without --force;
    /// repeatable (default: 22)
    #[arg(long = "protected-port", value_name = "PORT", default_values_t = [22u16])]
    pub(crate) protected_ports: Vec<u16>,
    /// Available memory a memory stress must leave (512MiB, 2GiB); default 5 % of memory,
    /// at least 256MiB
    #[arg(long, value_name = "SIZE", value_parser = crate::units::parse_bytes)]
    pub(crate) memory_reserve: Option<u64>,

    /// The agent's own OOM score adjustment, written to /proc/self/oom_score_adj at start unless
    /// it is already lower (the systemd unit sets it with OOMScoreAdjust=); stress workers get
    /// 1000, so the OOM killer takes them first and the agent last
    #[arg(long, value_name = "N", default_value_t = crate::kernel::oom::AGENT_OOM_SCORE_ADJ, value_parser = clap::value_parser!(i32).range(-1000..=1000), allow_hyphen_values = true)]
    pub(crate) oom_score_adj: i32,

    /// The cgroup (at each hierarchy's root) that holds stress faults' cgroups
    #[arg(long, value_name = "NAME", default_value = crate::kernel::cgroup::DEFAULT_PARENT, value_parser = cgroup_name)]
    pub(crate) cgroup_parent: String,

    /// The agent's own cgroup is delegated to it (systemd's Delegate=yes, cgroup v2): the agent
    /// moves itself into <its cgroup>/agent and puts --cgroup-parent, with the stress faults'
    /// cgroups, in its cgroup instead of at the hierarchy's root, where systemd leaves them
    /// alone (the packaged unit sets both). Ignored, with a warning, on a cgroup v1 host
    #[arg(long)]
    pub(crate) cgroup_delegated: bool,

    /// A fault that has acted on nothing (no packet matched, no CPU time charged) this long
    /// after it was applied is flagged ineffective, in `get`, `ls`, Watch and Prometheus
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "10s")]
    pub(crate) ineffective_after: Duration,

    /// Refusals per source and minute (failed TLS handshakes, calls the policy refused) that
    /// get a line of their own in the audit log and the log; beyond, they are counted into one
    /// summary line per source and interval, and a network source is put under a penalty
    #[arg(long, value_name = "N", default_value_t = RefusalPolicy::default().per_minute)]
    pub(crate) refusal_log_rate: u32,

    /// How often a source beyond its refusal rate gets its summary line
    #[arg(long, value_name = "DURATION", value_parser = positive_duration, default_value = "1m")]
    pub(crate) refusal_summary_interval: Duration,

    /// The longest penalty of a network source beyond its refusal rate (its new connections
    /// are closed unanswered; the penalty doubles from 1s each time); 0 turns penalties off
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "1m")]
    pub(crate) refusal_penalty_max: Duration,

    /// Serve Prometheus metrics over HTTP at ADDR/metrics (off unless given; without ADDR:
    /// 127.0.0.1:9464)
    #[arg(long, value_name = "ADDR", num_args = 0..=1, default_missing_value = crate::monitor::http::DEFAULT_ADDR)]
    pub(crate) metrics_listen: Option<SocketAddr>,

    /// A TCP connect target to check on an interval (HOST:PORT); repeatable
    #[arg(long = "probe", value_name = "HOST:PORT", value_parser = probe_target)]
    pub(crate) probes: Vec<Target>,

    /// How often each probe target is checked
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "5s")]
    pub(crate) probe_interval: Duration,

    /// How long a probe connect may take before it counts as failed
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "2s")]
    pub(crate) probe_timeout: Duration,

    /// Log filter (error, warn, info, debug, or a tracing directive)
    #[arg(
        long,
        value_name = "FILTER",
        env = "FAULTLINE_LOG",
        default_value = "info"
    )]
    pub(crate) log_level: String,

    /// Log lines as text (for people and the systemd journal) or as one JSON object per line
    /// (fields: timestamp, level, target, message, and the event's own: id, kind, reason,
    /// caller, ...)
    #[arg(long, value_enum, env = "FAULTLINE_LOG_FORMAT", default_value_t = LogFormat::Text)]
    pub(crate) log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum LogFormat {
    Text,
    Json,
}

/// A group name, or a numeric gid.
fn group_id(text: &str) -> Result<u32, String> {
    if let Ok(gid) = text.parse::<u32>() {
        return Ok(gid);
    }
    match nix::unistd::Group::from_name(text) {
        Ok(Some(group)) => Ok(group.gid.as_raw()),
        Ok(None) => Err(format!(
            "no group named {text:?} (expected a group name from the group database, or a gid)"
        )),
        Err(e) => Err(format!("cannot look up group {text:?}: {e}")),
    }
}

fn probe_target(text: &str) -> Result<Target, String> {
    Target::parse(text).map_err(|e| e.reason)
}

fn at_least_one(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!("{text:?}: a whole number of at least 1 is needed")),
    }
}

fn message_size(text: &str) -> Result<usize, String> {
    let bytes = crate::units::parse_bytes(text)?;
    if !(1024..=64 << 20).contains(&bytes) {
        return Err(format!("{text:?}: between 1KiB and 64MiB is accepted"));
    }
    Ok(bytes as usize)
}

fn positive_duration(text: &str) -> Result<Duration, String> {
    match parse_duration(text)? {
        d if d.is_zero() => Err(format!("{text:?}: a duration greater than zero is needed")),
        d => Ok(d),
    }
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

/// The agent must outlive what it injects: the OOM killer takes it last.
fn protect_self(target: i32) {
    use crate::kernel::oom::{protect_self, Protection};
    match protect_self(target) {
        Ok(Protection::Already(current)) => info!(oom_score_adj = current, "OOM score adjustment"),
        Ok(Protection::Lowered(from)) => {
            info!(oom_score_adj = target, from, "OOM score adjustment lowered")
        }
        Err(e) => warn!(
            error = %e,
            target,
            "cannot lower the agent's OOM score adjustment (needs CAP_SYS_RESOURCE; under \
             systemd, OOMScoreAdjust= in the unit sets it): a memory fault or the host's own \
             pressure could kill the agent before its faults are reverted"
        ),
    }
}

/// The remote listener as configured, before it is bound.
struct RemoteOptions {
    addr: SocketAddr,
    tls: ServerTls,
    limits: ListenerLimits,
}

/// `config_file`: the configuration file whose settings were read, if one was.
pub(crate) fn run(
    global: &Global,
    o: Options,
    config_file: Option<PathBuf>,
) -> Result<(), Failure> {
    let filter = tracing_subscriber::EnvFilter::try_new(&o.log_level)
        .map_err(|e| Failure::internal(format!("--log-level {:?}: {e}", o.log_level)))?;
    use std::io::IsTerminal as _;
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match o.log_format {
        LogFormat::Text => logs.with_ansi(std::io::stderr().is_terminal()).init(),
        // Flattened: the event's fields sit beside `message`, where log pipelines look for them.
        LogFormat::Json => logs
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .init(),
    }
    if let Some(path) = &config_file {
        info!(config = %path.display(), "settings read from the configuration file");
    }
    protect_self(o.oom_score_adj);
    let cgroup_home = if o.cgroup_delegated {
        use crate::kernel::delegate::{take, DelegateError};
        match take(std::path::Path::new("/sys/fs/cgroup")) {
            Ok(home) => {
                info!(cgroup = %home.display(), "stress cgroups go in the delegated cgroup; the agent moved into its agent leaf");
                Some(home)
            }
            // A cgroup v1 host: there is no delegated v2 subtree to use; the flag (which the
            // packaged unit passes everywhere) changes nothing, and says so.
            Err(e @ DelegateError::NotUnified(_)) => {
                warn!(error = %e, "--cgroup-delegated ignored");
                None
            }
            Err(e) => return Err(Failure::internal(e.to_string())),
        }
    } else {
        None
    };
    // The configuration is checked before anything is touched: a wrong file stops the start.
    let remote = match o.listen {
        None => None,
        Some(addr) => {
            let (Some(cert), Some(key), Some(ca)) =
                (&global.tls_cert, &global.tls_key, &o.client_ca)
            else {
                let missing: Vec<&str> = [
                    ("--tls-cert", global.tls_cert.is_none()),
                    ("--tls-key", global.tls_key.is_none()),
                    ("--client-ca", o.client_ca.is_none()),
                ]
                .into_iter()
                .filter_map(|(flag, absent)| absent.then_some(flag))
                .collect();
                return Err(Failure::usage(format!(
                    "--listen {addr} needs --tls-cert, --tls-key and --client-ca (missing: {}): \
                     the remote listener accepts mutual TLS only; `faultline certs` makes the \
                     files",
                    missing.join(", ")
                )));
            };
            let tls = ServerTls::load(cert, key, ca).map_err(|e| Failure::usage(e.to_string()))?;
            let limits = ListenerLimits {
                max_connections: o.max_connections,
                max_handshakes: o.max_handshakes,
                handshake_timeout: o.handshake_timeout,
            };
            Some(RemoteOptions { addr, tls, limits })
        }
    };
    let policy = o
        .policy
        .as_deref()
        .map(Policy::load)
        .transpose()
        .map_err(|e| Failure::usage(e.to_string()))?;
    match (&policy, &remote) {
        (Some(policy), _) => {
            info!(policy = %policy.path().display(), "authorization policy loaded")
        }
        (None, Some(_)) => warn!(
            "--listen without --policy: every TLS client will be refused; map certificate names \
             to roles with --policy FILE"
        ),
        (None, None) => {}
    }
    let audit_path = o.audit_log.unwrap_or_else(|| o.state_dir.join("audit.log"));
    let counters = Arc::new(AgentCounters::default());
    let audit_options = AuditOptions {
        max_size: o.audit_max_size,
        keep: o.audit_keep,
        state: Some((o.state_dir.clone(), o.state_reserve)),
        counters: Arc::clone(&counters),
    };
    let audit = Arc::new(
        AuditLog::open(&audit_path, audit_options).map_err(|e| Failure::internal(e.to_string()))?,
    );
    let refusals = Refusals::new(
        RefusalPolicy {
            per_minute: o.refusal_log_rate,
            summary_interval: o.refusal_summary_interval,
            penalty_max: o.refusal_penalty_max,
        },
        Arc::clone(&audit),
        Arc::clone(&counters),
    );
    let gate = Arc::new(Gate::new(
        Authorizer::new(policy),
        audit,
        Arc::new(refusals),
        o.max_subscriptions,
    ));
    let mut protected_ports = o.protected_ports;
    if let Some(remote) = &remote {
        // The sessions that control the agent must survive its faults, like SSH.
        if !protected_ports.contains(&remote.addr.port()) {
            protected_ports.push(remote.addr.port());
        }
    }
    let config = AgentConfig {
        socket: o.socket,
        socket_group: o.socket_group,
        state_dir: o.state_dir,
        bpf_pin_dir: o.bpf_pin_dir,
        max_duration: o.max_duration,
        protected_ports,
        memory_reserve: o.memory_reserve,
        cgroup_parent: o.cgroup_parent,
        cgroup_home,
        ineffective_after: o.ineffective_after,
        state_reserve: o.state_reserve,
    };
    // glibc gives a thread that allocates while another holds an arena an arena of its own,
    // up to eight per CPU, and each keeps what was freed in it. The agent's threads (tokio's,
    // its blocking pool's, its own) allocate little and briefly: two arenas serve them, and
    // its resident memory stays flat on a host with many CPUs.
    // SAFETY: mallopt only tunes the allocator; called before the runtime's threads start.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, 2) };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::internal(format!("cannot start the async runtime: {e}")))?;
    let watch = Watch {
        calls: api::CallLimits {
            max_streams: o.max_streams,
            max_message_size: o.max_message_size,
        },
        metrics_listen: o.metrics_listen,
        probes: o.probes,
        probe_interval: o.probe_interval,
        probe_timeout: o.probe_timeout,
    };
    runtime
        .block_on(serve(config, watch, gate, remote))
        .map_err(|e| Failure::internal(format!("{e:#}")))
}

/// What the agent watches, besides its faults, and how its callers are limited.
struct Watch {
    calls: api::CallLimits,
    metrics_listen: Option<SocketAddr>,
    probes: Vec<Target>,
    probe_interval: Duration,
    probe_timeout: Duration,
}

async fn serve(
    config: AgentConfig,
    watch: Watch,
    gate: Arc<Gate>,
    remote: Option<RemoteOptions>,
) -> anyhow::Result<()> {
    let caps = Capabilities::probe().with_state_dir(&config.state_dir);
    info!(version = env!("CARGO_PKG_VERSION"), kernel = %caps.kernel_release, "faultline agent starting");
    for (name, cap) in caps.list() {
        if cap.available {
            info!(capability = name, detail = %cap.detail, "available");
        } else {
            warn!(capability = name, detail = %cap.detail, "missing");
        }
    }
    let engine =
        Engine::new(config, caps, Arc::clone(gate.audit()) as _).context("opening the journal")?;
    let recovery = engine
        .recover()
        .await
        .context("reverting what an earlier run left behind")?;
    tokio::spawn(Arc::clone(&engine).watch_effects());
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
    let remote = match remote {
        Some(RemoteOptions { addr, tls, limits }) => Some(api::Remote {
            listener: tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding the remote listener on {addr}"))?,
            tls,
            limits,
        }),
        None => None,
    };
    let probes = Probes::start(&watch.probes, watch.probe_interval, watch.probe_timeout);
    let counters = Arc::clone(gate.refusals().counters());
    let monitor = Arc::new(Monitor::start(Arc::clone(&engine), probes, counters));
    api::serve(engine, monitor, gate, metrics_listener, remote, watch.calls).await
}
