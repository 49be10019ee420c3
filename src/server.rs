//! The operator's HTTP endpoint: `/metrics` (Prometheus text), `/healthz` (the process is alive)
//! and `/readyz` (leadership is known and, on the leader, the caches are synced).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::telemetry::Metrics;

/// What `/readyz` reports.
#[derive(Default)]
pub struct Health {
    /// This replica knows whether it leads (true at once when leader election is off).
    pub leadership_known: AtomicBool,
    pub leader: AtomicBool,
    /// The leader's node, DaemonSet and GpuPool caches hold a full list.
    pub caches_synced: AtomicBool,
}

impl Health {
    pub fn ready(&self) -> bool {
        self.leadership_known.load(Ordering::Acquire)
            && (!self.leader.load(Ordering::Acquire) || self.caches_synced.load(Ordering::Acquire))
    }
}

#[derive(Clone)]
struct AppState {
    metrics: Arc<Metrics>,
    health: Arc<Health>,
}

pub fn router(metrics: Arc<Metrics>, health: Arc<Health>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(AppState { metrics, health })
}

async fn metrics_handler(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
}

async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    if state.health.ready() {
        (StatusCode::OK, "ok")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: leadership unknown or caches not synced",
        )
    }
}

/// Binds the endpoint's address: at start, so an address in use stops the operator with a clear
/// error instead of leaving it running without metrics and probes.
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}

/// Serves until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(metrics, health))
        .with_graceful_shutdown(shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get(addr: SocketAddr, path: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn endpoints_answer() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let health = Arc::new(Health::default());
        let app = router(Arc::new(Metrics::default()), health.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        assert!(get(addr, "/healthz").await.starts_with("HTTP/1.1 200"));
        assert!(get(addr, "/readyz").await.starts_with("HTTP/1.1 503"));
        health.leadership_known.store(true, Ordering::Release);
        health.leader.store(true, Ordering::Release);
        assert!(
            get(addr, "/readyz").await.starts_with("HTTP/1.1 503"),
            "the leader waits for its caches"
        );
        health.caches_synced.store(true, Ordering::Release);
        assert!(get(addr, "/readyz").await.starts_with("HTTP/1.1 200"));
        let metrics = get(addr, "/metrics").await;
        assert!(
            metrics.contains("gpupool_node_gpu_wait_seconds_count 0"),
            "{metrics}"
        );
    }
}
