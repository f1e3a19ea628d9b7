//! The bound on client connections. pingora accepts every connection it is offered and keeps a
//! keep-alive connection for as long as the client likes, so the gateway counts them itself: it
//! wraps pingora's proxy in [`ConnectionLimit`], which sees each connection once, from accept
//! to close, and closes a connection beyond `max_connections` at once.

use std::sync::Arc;

use async_trait::async_trait;
use pingora::{apps::ServerApp, protocols::Stream, server::ShutdownWatch};

use prometheus_client::metrics::{counter::Counter, gauge::Gauge};

use crate::metrics::Place;

/// pingora's proxy (`inner`), behind a cap on the client connections open at once. The edge
/// (stage 6) puts the same cap in front of its own proxy.
pub struct ConnectionLimit<A> {
    inner: Arc<A>,
    max: usize,
    /// Connections open now.
    open: Gauge,
    /// Connections closed at accept because `max` were open.
    refused: Counter,
}

impl<A> ConnectionLimit<A> {
    /// `inner` with at most `max` client connections open at once, counted in `open` and
    /// `refused` (metrics of the server it belongs to).
    pub fn new(inner: A, max: usize, open: Gauge, refused: Counter) -> Self {
        Self {
            inner: Arc::new(inner),
            max,
            open,
            refused,
        }
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for ConnectionLimit<A> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let Some(_place) = Place::take(&self.open, self.max) else {
            self.refused.inc();
            return None; // dropping the stream closes the connection
        };
        // pingora hands a keep-alive connection back after each request; serve them all here,
        // so the place is held from accept to close.
        let mut stream = stream;
        loop {
            stream = self.inner.process_new(stream, shutdown).await?;
        }
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await;
    }
}
