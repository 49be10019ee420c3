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

/// Serves until `shutdown` resolves.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    axum::serve(listener, router(metrics, health))
        .with_graceful_shutdown(shutdown)
        .await
}
