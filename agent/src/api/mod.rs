//! The gRPC edge: the tonic services over the engine, the local unix-socket listener and the
//! optional remote listener (mutual TLS), the standard health and reflection services, the
//! authorization and audit every call goes through, and the client side the CLI uses.
//! Protobuf types stop here; the engine only sees domain types.

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::{bail, Context as _};
use faultline_proto::{
    v1::{agent_server::AgentServer, faults_server::FaultsServer, metrics_server::MetricsServer},
    FILE_DESCRIPTOR_SET,
};
use hyper_util::rt::TokioIo;
use tokio::{
    net::{TcpListener, UnixListener, UnixStream},
    signal::unix::{signal, SignalKind},
    task::JoinHandle,
};
use tokio_stream::{wrappers::UnixListenerStream, StreamExt as _};
use tonic::transport::{Channel, Endpoint, Server, Uri};
use tracing::{info, warn};

use crate::{engine::Engine, monitor::Monitor};

mod agent;
pub(crate) mod audit;
mod authority;
pub(crate) mod authz;
pub(crate) mod convert;
mod faults;
pub(crate) mod gate;
pub(crate) mod limits;
pub(crate) mod metrics;
mod peer;
pub(crate) mod refusals;
pub(crate) mod status;
pub(crate) mod tls;

pub(crate) use agent::{doctor_response, AgentService};
pub(crate) use faults::FaultsService;
pub(crate) use metrics::MetricsService;

/// How long open connections may take to finish after shutdown has reverted every fault.
const DRAIN: Duration = Duration::from_secs(5);

/// The remote listener, bound and with its certificates loaded.
pub(crate) struct Remote {
    pub(crate) listener: TcpListener,
    pub(crate) tls: tls::ServerTls,
    pub(crate) limits: limits::ListenerLimits,
}

/// Limits of every gRPC connection: `serve --max-streams` (remote listener only) and
/// `--max-message-size`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CallLimits {
    pub max_streams: usize,
    pub max_message_size: usize,
}

/// How often an idle remote connection is pinged, and how long the answer may take: a peer
/// that went away without closing gives its connection slot back.
const KEEPALIVE: (Duration, Duration) = (Duration::from_secs(30), Duration::from_secs(10));
/// The HTTP/2 header block a request may send (gRPC metadata is small).
const MAX_HEADER_LIST: u32 = 16 << 10;

type ServerTask = JoinHandle<Result<(), tonic::transport::Error>>;

/// Serves the engine and the monitor on the unix socket and, when given, on the remote
/// listener (mutual TLS), every call through `gate`; and the monitor as Prometheus text on
/// `metrics_listener`, when given. Runs until SIGTERM or SIGINT (or a listener fails), then
/// reverts every active fault before returning.
pub(crate) async fn serve(
    engine: Arc<Engine>,
    monitor: Arc<Monitor>,
    gate: Arc<gate::Gate>,
    metrics_listener: Option<TcpListener>,
    remote: Option<Remote>,
    calls: CallLimits,
) -> anyhow::Result<()> {
    let socket = engine.config().socket.clone();
    let listener = bind(&socket, engine.config().socket_group)?;
    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<FaultsServer<FaultsService>>()
        .await;
    health_reporter
        .set_serving::<AgentServer<AgentService>>()
        .await;
    health_reporter
        .set_serving::<MetricsServer<MetricsService>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("building the reflection service")?;
    let reflection_alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .context("building the reflection service")?;
    let size = calls.max_message_size;
    let faults = FaultsServer::new(FaultsService::new(Arc::clone(&engine), Arc::clone(&gate)))
        .max_decoding_message_size(size);
    let agent = AgentServer::new(AgentService::new(Arc::clone(&engine), Arc::clone(&gate)))
        .max_decoding_message_size(size);
    let metrics = MetricsServer::new(MetricsService::new(
        Arc::clone(&monitor),
        Arc::clone(&engine),
        Arc::clone(&gate),
    ))
    .max_decoding_message_size(size);
    let counters = Arc::clone(gate.refusals().counters());
    // Both listeners serve the same services; only how callers are identified differs, and
    // the remote one limits the calls under way on each connection (`max_streams`).
    let router = |max_streams: Option<usize>| {
        Server::builder()
            .layer(limits::CallLimitLayer::new(
                max_streams,
                Arc::clone(&counters),
            ))
            .http2_max_header_list_size(MAX_HEADER_LIST)
            // The protocol's own bound, above the agent's: the agent answers the calls beyond
            // its limit with a reason; HTTP/2 would only reset them.
            .max_concurrent_streams(max_streams.map(|m| (m as u32).saturating_mul(4)))
            .http2_keepalive_interval(max_streams.map(|_| KEEPALIVE.0))
            .http2_keepalive_timeout(max_streams.map(|_| KEEPALIVE.1))
            .add_service(health.clone())
            .add_service(reflection.clone())
            .add_service(reflection_alpha.clone())
            .add_service(faults.clone())
            .add_service(agent.clone())
            .add_service(metrics.clone())
    };

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut stop: tokio::sync::watch::Receiver<bool>| async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    let mut server: ServerTask = tokio::spawn(
        router(None).serve_with_incoming_shutdown(
            UnixListenerStream::new(listener)
                .map(|accepted| accepted.map(authority::MendAuthority::new)),
            stopped(stop_rx.clone()),
        ),
    );
    let mut remote_server: Option<ServerTask> = match remote {
        Some(remote) => {
            let address = remote
                .listener
                .local_addr()
                .context("reading the remote listener's address")?;
            let incoming = tls::incoming(
                remote.listener,
                remote.tls,
                remote.limits,
                Arc::clone(gate.refusals()),
            );
            info!(listen = %address, "faultline agent listening for mutual-TLS clients");
            Some(tokio::spawn(
                router(Some(calls.max_streams))
                    .serve_with_incoming_shutdown(incoming, stopped(stop_rx.clone())),
            ))
        }
        None => None,
    };

    let http = metrics_listener.map(|listener| {
        let mut closing = engine.closing();
        tokio::spawn(crate::monitor::http::serve(listener, monitor, async move {
            let _ = closing.wait_for(|closed| *closed).await;
        }))
    });

    let summaries = tokio::spawn(Arc::clone(gate.refusals()).run(engine.closing()));

    info!(socket = %socket.display(), audit_log = %gate.audit().path().display(), "faultline agent listening");
    // systemd Type=notify: ready only once the socket accepts. Outside systemd this is a no-op.
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);

    // SIGHUP (systemctl reload): the audit log is opened again at its path.
    let mut hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    let audit = Arc::clone(gate.audit());
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            match audit.reopen() {
                Ok(()) => {
                    info!(path = %audit.path().display(), "SIGHUP: the audit log is reopened")
                }
                Err(e) => {
                    warn!(error = %e, "SIGHUP: cannot reopen the audit log; lines still go to the file open before")
                }
            }
        }
    });
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let remote_ended = async {
        match remote_server.as_mut() {
            Some(task) => task.await,
            None => std::future::pending().await,
        }
    };
    let ended = tokio::select! {
        _ = term.recv() => { info!("SIGTERM: reverting every active fault"); Ended::Signal }
        _ = int.recv() => { info!("SIGINT: reverting every active fault"); Ended::Signal }
        result = &mut server => Ended::Local(result),
        result = remote_ended => Ended::Remote(result),
    };
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    // Faults first: whatever happens to the listeners, nothing is left in the kernel.
    engine.shutdown().await;
    let _ = stop_tx.send(true);
    let (local, remote) = match ended {
        Ended::Signal => (None, None),
        Ended::Local(result) => (Some(result), None),
        Ended::Remote(result) => {
            remote_server = None;
            (None, Some(result))
        }
    };
    let local = match local {
        Some(result) => finished("gRPC server", result),
        None => drain("gRPC server", server).await,
    };
    let remote = match (remote, remote_server) {
        (Some(result), _) => finished("remote listener", result),
        (None, Some(task)) => drain("remote listener", task).await,
        (None, None) => Ok(()),
    };
    let _ = fs::remove_file(&socket);
    // The last summary lines, of the refusals counted since the previous ones.
    if tokio::time::timeout(DRAIN, summaries).await.is_err() {
        warn!("the last refusal summaries were not written within {DRAIN:?}");
    }
    if let Some(http) = http {
        match tokio::time::timeout(DRAIN, http).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => warn!(error = %e, "the metrics listener failed"),
            Ok(Err(e)) => warn!(error = %e, "the metrics listener task failed"),
            Err(_) => warn!("the metrics listener did not stop within {DRAIN:?}"),
        }
    }
    local.and(remote)
}

/// Why the agent stopped serving.
enum Ended {
    Signal,
    Local(Result<Result<(), tonic::transport::Error>, tokio::task::JoinError>),
    Remote(Result<Result<(), tonic::transport::Error>, tokio::task::JoinError>),
}

fn finished(
    name: &str,
    result: Result<Result<(), tonic::transport::Error>, tokio::task::JoinError>,
) -> anyhow::Result<()> {
    match result {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e).with_context(|| format!("the {name} failed")),
        Err(e) => Err(e).with_context(|| format!("the {name} task failed")),
    }
}

/// Waits up to [`DRAIN`] for a server told to stop; leaves connections that do not close.
async fn drain(name: &str, mut task: ServerTask) -> anyhow::Result<()> {
    match tokio::time::timeout(DRAIN, &mut task).await {
        Ok(result) => finished(name, result),
        Err(_) => {
            warn!("connections to the {name} did not close within {DRAIN:?}; leaving them");
            task.abort();
            Ok(())
        }
    }
}

/// Binds the socket root-only (or root and `group`, mode 0660), refusing to steal it from
/// another live agent.
fn bind(path: &Path, group: Option<u32>) -> anyhow::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            bail!(
                "another agent is already listening on {} (stop it, or give this one --socket)",
                path.display()
            );
        }
        fs::remove_file(path)
            .with_context(|| format!("removing the stale socket {}", path.display()))?;
    }
    // Create the socket with no permissions for others at all, rather than chmod after bind,
    // so there is no moment in which someone else could connect.
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let bound = UnixListener::bind(path);
    nix::sys::stat::umask(old);
    let listener = bound.with_context(|| format!("binding {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))
        .with_context(|| format!("setting mode 0600 on {}", path.display()))?;
    if let Some(gid) = group {
        // The group reaches the socket; what each member may do is still the policy's call,
        // by uid.
        nix::unistd::chown(path, None, Some(nix::unistd::Gid::from_raw(gid)))
            .with_context(|| format!("giving {} to group {gid}", path.display()))?;
        fs::set_permissions(path, fs::Permissions::from_mode(0o660))
            .with_context(|| format!("setting mode 0660 on {}", path.display()))?;
    }
    Ok(listener)
}

/// Where a client finds the agent: a unix socket path or an `http(s)://host:port` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentAddress {
    Unix(PathBuf),
    Tcp(String),
}

impl AgentAddress {
    pub fn parse(text: &str) -> Self {
        if let Some(path) = text
            .strip_prefix("unix://")
            .or_else(|| text.strip_prefix("unix:"))
        {
            AgentAddress::Unix(path.into())
        } else if text.starts_with("http://") || text.starts_with("https://") {
            AgentAddress::Tcp(text.to_owned())
        } else {
            AgentAddress::Unix(text.into())
        }
    }
}

impl std::fmt::Display for AgentAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AgentAddress::Unix(path) => write!(f, "unix:{}", path.display()),
            AgentAddress::Tcp(url) => f.write_str(url),
        }
    }
}

/// Connects a gRPC channel to the agent over a unix socket or plain TCP; [`connect_tls`]
/// reaches the remote listener.
pub async fn connect(address: &AgentAddress) -> Result<Channel, tonic::transport::Error> {
    match address {
        AgentAddress::Unix(path) => {
            let path = path.clone();
            // The URI is required by the API but unused: the connector ignores it.
            Endpoint::from_static("http://localhost")
                .connect_with_connector(tower::service_fn(move |_: Uri| {
                    let path = path.clone();
                    async move {
                        Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?))
                    }
                }))
                .await
        }
        AgentAddress::Tcp(url) => Endpoint::from_shared(url.clone())?.connect().await,
    }
}

/// Connects a gRPC channel to the agent's remote listener (`https://HOST:PORT`), presenting
/// the client certificate and checking the agent's against the CA in `tls`.
pub(crate) async fn connect_tls(
    url: &str,
    tls: &tls::ClientTls,
) -> Result<Channel, tonic::transport::Error> {
    Endpoint::from_shared(url.to_owned())?
        .tls_config(tls.config())?
        // A remote agent may be cut off without a word (its packets dropped, by a fault of
        // the experiment among others): HTTP/2 pings find the dead connection within seconds,
        // and the channel's next call opens a new one instead of waiting on the old one.
        .http2_keep_alive_interval(CLIENT_KEEPALIVE)
        .keep_alive_timeout(CLIENT_KEEPALIVE)
        .keep_alive_while_idle(true)
        .connect()
        .await
}

/// How often a client pings an agent's remote listener over HTTP/2, and how long it waits for
/// the answer before it drops the connection.
const CLIENT_KEEPALIVE: Duration = Duration::from_secs(2);
