//! The admin HTTP endpoint (axum): `/metrics` for Prometheus, `/healthz` and `/readyz` probes,
//! `/api/status` (JSON) and `/dashboard` (a self-contained page, embedded in the binary), plus
//! the SQL admin console's commands. It reads snapshots and registries only.

pub mod console;
pub mod status;

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Redirect};
use axum::routing::get;
use axum::Json;
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
        .route("/api/status", get(api_status))
        .route("/dashboard", get(dashboard))
        .route("/", get(|| async { Redirect::temporary("/dashboard") }))
        .with_state(AdminState { ctx, metrics })
}

pub async fn serve(listener: TcpListener, ctx: Arc<Context>, metrics: PrometheusHandle) {
    let shutdown = ctx.shutdown.clone();
    let app = router(ctx, metrics);
    let _ = axum::serve(listener, app).with_graceful_shutdown(async move { shutdown.cancelled().await }).await;
}

/// Ready when not shutting down and a primary is known.
async fn readyz(State(s): State<AdminState>) -> (StatusCode, &'static str) {
    if s.ctx.shutdown.is_cancelled() {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n")
    } else if s.ctx.topology.snapshot().primary.is_none() {
        (StatusCode::SERVICE_UNAVAILABLE, "no primary\n")
    } else {
        (StatusCode::OK, "ready\n")
    }
}

#[derive(serde::Deserialize)]
struct StatusQuery {
    history: Option<String>,
}

async fn api_status(State(s): State<AdminState>, Query(q): Query<StatusQuery>) -> impl IntoResponse {
    let with_history = q.history.is_some_and(|h| h != "0" && h != "false");
    ([(header::CACHE_CONTROL, "no-store")], Json(status::status(&s.ctx, with_history)))
}

const DASHBOARD: &str = include_str!("dashboard.html");

async fn dashboard() -> impl IntoResponse {
    ([(header::CACHE_CONTROL, "no-cache")], Html(DASHBOARD))
}

async fn metrics_text(State(s): State<AdminState>) -> String {
    crate::metrics::pools(&s.ctx.pools.status());
    crate::metrics::sample_ages(&s.ctx.topology.snapshot());
    s.metrics.render()
}
