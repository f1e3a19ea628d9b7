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
    let router = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics));
    #[cfg(feature = "drills")]
    let router = router.route(
        "/drills/two-phase-crash/{point}",
        axum::routing::post(arm_two_phase_crash),
    );
    router
}

/// `POST /drills/two-phase-crash/{point}` (builds with the `drills` feature only, which the lab
/// makes as `conduit-drills` for `archlab drill --fault coordinator-crash`): this process aborts
/// when its coordinator next reaches `point` (`after-first-prepare`, `after-all-prepares`,
/// `after-decision`, `after-first-commit-prepared`).
#[cfg(feature = "drills")]
async fn arm_two_phase_crash(
    State(state): State<AppState>,
    axum::extract::Path(point): axum::extract::Path<String>,
) -> impl IntoResponse {
    use crate::db::two_phase::FaultPoint;
    let Ok(point) = serde_json::from_value::<FaultPoint>(serde_json::Value::String(point)) else {
        return (
            StatusCode::NOT_FOUND,
            Json(json!({ "errors": { "point": ["is not a fault point"] } })),
        );
    };
    if state.shards.coordinator().arm(point) {
        tracing::warn!(
            ?point,
            "drill: the coordinator will crash at its next global transaction"
        );
        (StatusCode::OK, Json(json!({ "armed": point })))
    } else {
        (
            StatusCode::CONFLICT,
            Json(json!({ "errors": { "point": ["already armed"] } })),
        )
    }
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
    let check = sqlx::query_scalar::<_, i32>("SELECT 1").fetch_one(state.db.primary());
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
