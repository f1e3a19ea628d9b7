//! Operations endpoints: `GET /healthz` (the process is alive), `GET /readyz` (it can reach its
//! database: the lab and load balancers wait on this), `GET /metrics` (Prometheus text).
//!
//! With replicas (stage 5 on), an app host whose primary is down but with a replica in rotation
//! is still ready: it serves reads, and answers writes with a fast 503, which is better than
//! taking every app host out of the load balancer and serving nothing.

use std::time::Duration;

use axum::{
    extract::State,
    http::{header, StatusCode},
    response::IntoResponse,
    routing::get,
    Json, Router,
};
use serde_json::json;

use crate::AppState;

/// How long `/readyz` waits for the database. Well under a health checker's usual interval
/// (the lab polls every 100 ms during start-up, a load balancer every few seconds).
const READY_TIMEOUT: Duration = Duration::from_secs(1);

/// Routes of this module.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
}

async fn healthz() -> impl IntoResponse {
    Json(json!({ "status": "ok" }))
}

async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    if state.draining.load(std::sync::atomic::Ordering::Relaxed) {
        // Shutting down: still serving, but load balancers should stop sending new requests.
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "errors": { "server": ["draining"] } })),
        );
    }
    if let Some(replicas) = state.db.replicas() {
        // With replicas, the pollers already know (every 50 ms) what answers: no query, so a
        // dead primary cannot make this check wait out a connection timeout.
        let readable = replicas.all().iter().any(|replica| replica.in_rotation());
        return match (replicas.primary_up(), readable) {
            (true, _) => (StatusCode::OK, Json(json!({ "status": "ready" }))),
            (false, true) => (
                StatusCode::OK,
                Json(json!({ "status": "ready", "primary": "unreachable: reads only" })),
            ),
            (false, false) => (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({ "errors": { "database": ["unreachable"] } })),
            ),
        };
    }
    let check = sqlx::query_scalar::<_, i32>("SELECT 1").fetch_one(state.db.write());
    match tokio::time::timeout(READY_TIMEOUT, check).await {
        Ok(Ok(_)) => (StatusCode::OK, Json(json!({ "status": "ready" }))),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "not ready");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({ "errors": { "database": ["unreachable"] } })),
            )
        }
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "errors": { "database": ["timed out"] } })),
        ),
    }
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    state.cache.refresh_gauges();
    let text = state.metrics.render(&state.shards);
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
}
