//! The HTTP server itself: accepting connections and the bounds on them, before any request
//! reaches the router.
//!
//! `axum::serve` builds hyper without a timer, so hyper's header-read timeout never fires there
//! and a client that opens a connection and sends nothing, or one byte a minute, holds it
//! forever; nor does it bound the connections. This loop is `axum::serve` with the two bounds a
//! front door needs (the app is the front door of stages 1 to 3):
//!
//! - **[`ServerSettings::header_read_timeout_ms`]**: a connection whose request head (start
//!   line and headers) has not fully arrived this long after the server began waiting for it is
//!   closed. The wait begins when the connection opens and again after each answer, so the same
//!   bound closes an idle keep-alive connection.
//! - **[`ServerSettings::max_connections`]**: past it, a new connection is closed at once, so a
//!   flood of connections costs a bounded amount of memory and file descriptors.
//!
//! HTTP/1.1 only: every client of the app (browsers through the stage's entry point, the
//! harness, the gateway and the edges) speaks it. `axum::serve` also guesses cleartext HTTP/2
//! from a connection's first bytes, and while it waits for them no timer runs, which is the very
//! hole this module closes. Graceful shutdown: stop accepting, let each connection finish the
//! request it is serving, then close it.

use std::{sync::Arc, time::Duration};

use axum::{extract::connect_info::ConnectInfo, Router};
use hyper::{body::Incoming, server::conn::http1};
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    server::graceful::GracefulShutdown,
    service::TowerToHyperService,
};
use tokio::{net::TcpListener, sync::Semaphore};
use tower::ServiceExt;

use crate::settings::ServerSettings;

/// Serves `router` on `listener` until `stop` completes, then waits for the connections to
/// finish their requests for at most `settings.shutdown_grace_ms`.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    settings: &ServerSettings,
    stop: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let grace = Duration::from_millis(settings.shutdown_grace_ms);
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(settings.header_read_timeout());
    let places = Arc::new(Semaphore::new(settings.max_connections));
    let graceful = GracefulShutdown::new();
    tokio::pin!(stop);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                // Out of file descriptors, say: the listener is still good, and a busy retry
                // would only spin; wait a moment, as axum::serve does.
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut stop => break,
        };
        let Ok(place) = places.clone().try_acquire_owned() else {
            tracing::warn!(%peer, limit = settings.max_connections, "connection refused: too many open");
            drop(stream);
            continue;
        };
        // Answers go out as soon as they are written, not after Nagle's delay.
        let _ = stream.set_nodelay(true);
        // Each request carries its connection's peer address: the throttles key on it.
        let service =
            router
                .clone()
                .map_request(move |mut request: axum::http::Request<Incoming>| {
                    request.extensions_mut().insert(ConnectInfo(peer));
                    request
                });
        let connection =
            builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            // A client that hangs up or times out is its own business: at debug level only.
            if let Err(e) = connection.await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
            drop(place);
        });
    }
    drop(listener);
    tracing::info!("shutting down: finishing in-flight requests");
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(?grace, "grace period over; dropping remaining connections");
    }
    Ok(())
}
