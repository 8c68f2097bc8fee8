//! The opt-in Prometheus listener: `GET /metrics` renders a fresh snapshot as text exposition.
//! Nothing else is served; the gRPC API stays on the unix socket.

use std::{net::SocketAddr, sync::Arc};

use axum::{
    extract::State,
    http::{header, StatusCode},
    response::IntoResponse,
    routing::get,
    Router,
};
use tokio::net::TcpListener;
use tracing::{info, warn};

use super::{exposition::CONTENT_TYPE, prometheus_text, Monitor};

/// The conventional address of a Prometheus exporter of this kind.
pub(crate) const DEFAULT_ADDR: &str = "127.0.0.1:9464";

/// Binds now, so that a taken address stops the agent at start-up with a clear error.
pub(crate) async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves until `shutdown` resolves.
pub(crate) async fn serve(
    listener: TcpListener,
    monitor: Arc<Monitor>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "Prometheus metrics at http://{addr}/metrics");
    }
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/", get(index))
        .with_state(monitor);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

async fn metrics(State(monitor): State<Arc<Monitor>>) -> impl IntoResponse {
    // procfs reads and map lookups take microseconds to a millisecond: not worth a thread hop.
    match monitor.snapshot() {
        Ok(snapshot) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, CONTENT_TYPE)],
            prometheus_text(&snapshot, monitor.counters()),
        ),
        Err(e) => {
            warn!(error = %e, "cannot take a metrics snapshot");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                format!("faultline: cannot read host metrics: {e}\n"),
            )
        }
    }
}

async fn index() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        "faultline agent: metrics at /metrics\n",
    )
}
