//! The gRPC edge: the tonic services over the engine, the local unix-socket listener, the
//! standard health and reflection services, and the client side the CLI uses. Protobuf types
//! stop here; the engine only sees domain types.

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
    net::{UnixListener, UnixStream},
    signal::unix::{signal, SignalKind},
};
use tokio_stream::wrappers::UnixListenerStream;
use tonic::transport::{Channel, Endpoint, Server, Uri};
use tracing::{info, warn};

use crate::{engine::Engine, monitor::Monitor};

mod agent;
pub mod convert;
mod faults;
pub mod metrics;
pub mod status;

pub use agent::AgentService;
pub use faults::FaultsService;
pub use metrics::MetricsService;

/// How long open connections may take to finish after shutdown has reverted every fault.
const DRAIN: Duration = Duration::from_secs(5);

/// Serves the engine and the monitor on the unix socket (and the monitor as Prometheus text on
/// `metrics_listener`, when given) until SIGTERM or SIGINT, then reverts every active fault
/// before returning.
pub async fn serve(
    engine: Arc<Engine>,
    monitor: Arc<Monitor>,
    metrics_listener: Option<tokio::net::TcpListener>,
) -> anyhow::Result<()> {
    let socket = engine.config().socket.clone();
    let listener = bind(&socket)?;
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

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = Server::builder()
        .add_service(health)
        .add_service(reflection)
        .add_service(reflection_alpha)
        .add_service(FaultsServer::new(FaultsService::new(Arc::clone(&engine))))
        .add_service(AgentServer::new(AgentService::new(Arc::clone(&engine))))
        .add_service(MetricsServer::new(MetricsService::new(
            Arc::clone(&monitor),
            Arc::clone(&engine),
        )))
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), async {
            let _ = stop_rx.await;
        });
    let mut server = tokio::spawn(server);

    let http = metrics_listener.map(|listener| {
        let mut closing = engine.closing();
        tokio::spawn(crate::monitor::http::serve(listener, monitor, async move {
            let _ = closing.wait_for(|closed| *closed).await;
        }))
    });

    info!(socket = %socket.display(), "faultline agent listening");
    // systemd Type=notify: ready only once the socket accepts. Outside systemd this is a no-op.
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);

    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let server_result = tokio::select! {
        _ = term.recv() => { info!("SIGTERM: reverting every active fault"); None }
        _ = int.recv() => { info!("SIGINT: reverting every active fault"); None }
        result = &mut server => Some(result),
    };
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    // Faults first: whatever happens to the listener, nothing is left in the kernel.
    engine.shutdown().await;
    let _ = stop_tx.send(());
    let result = match server_result {
        Some(result) => Some(result),
        None => tokio::time::timeout(DRAIN, &mut server).await.ok(),
    };
    let _ = fs::remove_file(&socket);
    if let Some(http) = http {
        match tokio::time::timeout(DRAIN, http).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => warn!(error = %e, "the metrics listener failed"),
            Ok(Err(e)) => warn!(error = %e, "the metrics listener task failed"),
            Err(_) => warn!("the metrics listener did not stop within {DRAIN:?}"),
        }
    }
    match result {
        Some(Ok(Ok(()))) => Ok(()),
        Some(Ok(Err(e))) => Err(e).context("the gRPC server failed"),
        Some(Err(e)) => Err(e).context("the gRPC server task failed"),
        None => {
            warn!("connections did not close within {DRAIN:?}; leaving them");
            server.abort();
            Ok(())
        }
    }
}

/// Binds the socket root-only, refusing to steal it from another live agent.
fn bind(path: &Path) -> anyhow::Result<UnixListener> {
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

/// Connects a gRPC channel to the agent.
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
