//! Start-up as a library type: [`Application::build`] binds the listener, opens the pool and
//! applies migrations; [`Application::run_until_stopped`] serves until SIGINT or SIGTERM.
//!
//! Tests build an `Application` on port 0 and talk to it over real HTTP; `main.rs` only parses
//! the command line and calls this.

use std::{sync::Arc, time::Duration};

use anyhow::Context;
use axum::{
    error_handling::HandleErrorLayer,
    extract::DefaultBodyLimit,
    http::StatusCode,
    response::{IntoResponse, Response},
    BoxError, Router,
};
use tokio::net::TcpListener;
use tower::{limit::GlobalConcurrencyLimitLayer, ServiceBuilder};
use tower_http::{catch_panic::CatchPanicLayer, trace::TraceLayer};

use crate::{
    api,
    auth::Auth,
    cache::Cache,
    db::Shards,
    error::ApiError,
    metrics::{self, Metrics},
    settings::Settings,
    throttle::Throttles,
    AppState,
};

/// Extra room over `media.max_bytes` for the multipart envelope (boundaries, part headers).
const MULTIPART_OVERHEAD: usize = 64 * 1024;

/// A built, bound, not yet serving app.
pub struct Application {
    listener: TcpListener,
    router: Router,
    /// The server's settings: its connection bounds, shutdown grace and drain.
    server: crate::settings::ServerSettings,
    /// Set while draining: `/readyz` answers 503.
    draining: Arc<std::sync::atomic::AtomicBool>,
}

impl Application {
    /// Connects to the database, migrates it, prepares the media store and binds the listener.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        settings.auth.check_key()?;
        settings.media.check_bounds(&settings.server)?;
        let metrics = Arc::new(Metrics::new());
        let shards = Arc::new(
            Shards::connect(&settings.database, &settings.cache, metrics.db.clone()).await?,
        );
        let db = shards.shard(0).clone();
        shards.start_polling();
        shards.start_recovery();
        // Each app host starts at its own object-store node: the last byte of its address.
        let first_node = match settings.server.listen.ip() {
            std::net::IpAddr::V4(ip) => usize::from(ip.octets()[3]),
            std::net::IpAddr::V6(_) => 0,
        };
        let media = api::media::store(&settings.media, first_node)?;
        let edges =
            crate::edge::EdgePurger::new(&settings.edge, metrics.edge_purge_failures.clone())?;
        let cache = Cache::new(&settings.cache, metrics.cache.clone())?.with_edges(edges);
        // Stamps name a place in one server's WAL: in front of one database only. Sharded, the
        // cache fills from the primaries instead (`Reader::for_cache_fill`).
        let cache = if shards.sharded() {
            cache
        } else {
            cache.in_front_of(&db)
        };
        let state = AppState {
            db,
            shards,
            auth: Arc::new(Auth::new(&settings.auth)),
            throttles: Arc::new(Throttles::new(&settings.auth)),
            media,
            cache: Arc::new(cache),
            metrics,
            settings: Arc::new(settings),
            draining: Arc::default(),
        };
        let listener = TcpListener::bind(state.settings.server.listen)
            .await
            .with_context(|| format!("binding {}", state.settings.server.listen))?;
        Ok(Self {
            listener,
            server: state.settings.server.clone(),
            draining: state.draining.clone(),
            router: router(state),
        })
    }

    /// The port actually bound (useful with port 0).
    pub fn port(&self) -> u16 {
        self.local_addr().port()
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> std::net::SocketAddr {
        // A bound listener always has a local address; fall back to unspecified rather than panic.
        self.listener
            .local_addr()
            .unwrap_or_else(|_| std::net::SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// Serves until a signal says stop, then stops accepting and lets in-flight requests finish
    /// (up to `server.shutdown_grace_ms`).
    ///
    /// SIGINT stops at once. SIGTERM first *drains* when `server.drain_ms` is set: `/readyz`
    /// answers 503 and requests are still served, so a load balancer takes the host out of
    /// rotation before its port closes. The drain ends on a SIGINT (whoever sent the SIGTERM saw
    /// the host leave rotation: the lab's rolling restart waits for the gateway to say so) or,
    /// failing that, after `drain_ms` at most.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let draining = self.draining.clone();
        let drain = Duration::from_millis(self.server.drain_ms);
        self.run_until(async move {
            match next_signal().await {
                StopSignal::Interrupt => {}
                StopSignal::Terminate if drain.is_zero() => {}
                StopSignal::Terminate => {
                    tracing::info!(?drain, "SIGTERM: not ready any more, still serving");
                    draining.store(true, std::sync::atomic::Ordering::Relaxed);
                    match tokio::time::timeout(drain, next_signal()).await {
                        Ok(_) => tracing::info!("signal received: drain over"),
                        Err(_) => tracing::info!(?drain, "drain bound reached"),
                    }
                }
            }
        })
        .await
    }

    /// Serves until `stop` completes (tests pass their own trigger), then shuts down gracefully.
    pub async fn run_until(
        self,
        stop: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        crate::serve::serve(self.listener, self.router, &self.server, stop).await
    }
}

/// The whole HTTP surface with its limits.
pub fn router(state: AppState) -> Router {
    let server = &state.settings.server;
    let media_limit = state.settings.media.max_bytes + MULTIPART_OVERHEAD;
    let api = Router::new()
        .merge(api::users::router())
        .merge(api::profiles::router())
        .merge(api::articles::router())
        .merge(api::comments::router())
        .merge(api::tags::router())
        .layer(DefaultBodyLimit::max(server.max_json_body_bytes))
        .merge(api::media::router().layer(DefaultBodyLimit::max(media_limit)))
        .merge(api::ops::router())
        .merge(api::contract::router())
        .fallback(|| async { ApiError::NotFound("route") })
        .method_not_allowed_fallback(|| async {
            (
                StatusCode::METHOD_NOT_ALLOWED,
                axum::Json(serde_json::json!({ "errors": { "method": ["not allowed"] } })),
            )
        })
        // Per route, innermost: what may be shared and for how long (`Cache-Control`), and for
        // edges what each answer shows (see crate::edge).
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::edge::cache_headers,
        ))
        // Per route, inside the metrics: reads go to a replica or the primary (stage 5 on), and a
        // read that failed on a replica is run again before it is counted.
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::db::session::track,
        ))
        // Per route, so the route pattern is known when it is counted.
        .layer(axum::middleware::from_fn_with_state(
            state.metrics.clone(),
            metrics::track,
        ));

    // Outermost first. A panic must not kill the connection without an answer; every request gets
    // a span (errors are logged inside it); past that, the limits: refuse at once when
    // `max_in_flight_requests` are already being served (load shedding), and give up on a request
    // after `request_timeout_ms`. Both answer 503 with a RealWorld error body.
    //
    // `Router::layer` wraps every route on its own, so a plain concurrency limit would be one
    // limit per route (the host's bound then many times `max_in_flight_requests`); the global
    // limit's places are one semaphore shared by every route's copy of the layer. Test:
    // `media_and_limits::beyond_the_in_flight_limit_requests_get_503_at_once_and_a_stalled_one_times_out`.
    let limits = ServiceBuilder::new()
        .layer(catch_panics())
        .layer(TraceLayer::new_for_http())
        .layer(HandleErrorLayer::new(overload_response))
        .load_shed()
        .layer(GlobalConcurrencyLimitLayer::new(
            server.max_in_flight_requests,
        ))
        .timeout(server.request_timeout());
    api.layer(limits).with_state(state)
}

/// A handler that panics gets the RealWorld 500 (`server: internal error`) instead of a
/// connection closed without an answer; the panic's message stays in the log, not the answer.
fn catch_panics() -> CatchPanicLayer<fn(Box<dyn std::any::Any + Send + 'static>) -> Response> {
    fn answer(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
        ApiError::Internal(anyhow::anyhow!("handler panicked")).into_response()
    }
    CatchPanicLayer::custom(answer)
}

async fn overload_response(error: BoxError) -> Response {
    if error.is::<tower::timeout::error::Elapsed>() {
        ApiError::Unavailable("request timed out").into_response()
    } else if error.is::<tower::load_shed::error::Overloaded>() {
        ApiError::Unavailable("server overloaded, try again").into_response()
    } else {
        ApiError::Internal(anyhow::anyhow!("middleware error: {error}")).into_response()
    }
}

/// Which stop signal arrived.
enum StopSignal {
    /// SIGINT: stop now.
    Interrupt,
    /// SIGTERM: drain first (if configured), then stop.
    Terminate,
}

/// The next SIGINT or SIGTERM. Listening for a signal that cannot be listened for is logged and
/// never completes, so the other one still works.
async fn next_signal() -> StopSignal {
    use tokio::signal::unix::{signal, SignalKind};
    let wait = |kind: SignalKind, name: &'static str| async move {
        match signal(kind) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for {name}");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        () = wait(SignalKind::interrupt(), "SIGINT") => StopSignal::Interrupt,
        () = wait(SignalKind::terminate(), "SIGTERM") => StopSignal::Terminate,
    }
}

#[cfg(test)]
mod tests {
    use axum::{body::Body, http::Request, routing::get, Router};
    use tower::ServiceExt;

    use super::*;

    #[tokio::test]
    async fn a_handler_that_panics_gets_the_realworld_500_not_a_dropped_connection() {
        let router: Router = Router::new()
            .route(
                "/boom",
                get(|| async {
                    if true {
                        panic!("a bug");
                    }
                    "never"
                }),
            )
            .layer(catch_panics());
        let request = Request::get("/boom")
            .body(Body::empty())
            .expect("a request");
        let response = router.oneshot(request).await.expect("an answer");
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let body = axum::body::to_bytes(response.into_body(), 1024)
            .await
            .expect("a body");
        let body: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
        assert_eq!(
            body,
            serde_json::json!({"errors": {"server": ["internal error"]}})
        );
    }
}
