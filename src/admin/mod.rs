//! The admin HTTP endpoint (axum): `/metrics` for Prometheus, `/healthz` and `/readyz` probes.
//! It reads snapshots only and never reaches into sessions.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;

use crate::context::Context;

#[derive(Clone)]
struct AdminState {
    ctx: Arc<Context>,
    metrics: PrometheusHandle,
}

pub fn router(ctx: Arc<Context>, metrics: PrometheusHandle) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(AdminState { ctx, metrics })
}

pub async fn serve(listener: TcpListener, ctx: Arc<Context>, metrics: PrometheusHandle) {
    let shutdown = ctx.shutdown.clone();
    let app = router(ctx, metrics);
    let _ = axum::serve(listener, app).with_graceful_shutdown(async move { shutdown.cancelled().await }).await;
}

async fn readyz(State(s): State<AdminState>) -> (StatusCode, &'static str) {
    if s.ctx.shutdown.is_cancelled() {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n")
    } else {
        (StatusCode::OK, "ready\n")
    }
}

async fn metrics_text(State(s): State<AdminState>) -> String {
    crate::metrics::pools(&s.ctx.pools.status());
    s.metrics.render()
}
