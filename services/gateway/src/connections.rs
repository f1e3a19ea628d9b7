//! The bounds on client connections. pingora accepts every connection it is offered and keeps a
//! keep-alive connection for as long as the client likes, so the gateway counts them itself: it
//! wraps pingora's proxy in [`ConnectionLimit`], which sees each connection once, from accept
//! to close, and closes a connection beyond `max_connections` at once.
//!
//! pingora also bounds a request head only per read (60 s): a client that sends one byte every
//! few seconds keeps its connection, and its place, for ever (a slowloris). So each connection's
//! reads go through [`SendDeadline`]: a request must be sent whole within `request_send_secs` of
//! its first byte, or the connection is closed.

use std::{
    io,
    pin::Pin,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use async_trait::async_trait;
use pingora::{
    apps::ServerApp,
    protocols::{
        raw_connect::ProxyDigest, GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown,
        SocketDigest, Ssl, Stream, TimingDigest, UniqueID, UniqueIDType,
    },
    server::ShutdownWatch,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use prometheus_client::metrics::{counter::Counter, gauge::Gauge};

use crate::metrics::Place;

/// pingora's proxy (`inner`), behind a cap on the client connections open at once. The edge
/// (stage 6) puts the same cap in front of its own proxy.
pub struct ConnectionLimit<A> {
    inner: Arc<A>,
    max: usize,
    /// How long a client has to send a whole request from its first byte ([`SendDeadline`]).
    request_send_time: Duration,
    /// Connections open now.
    open: Gauge,
    /// Connections closed at accept because `max` were open.
    refused: Counter,
}

impl<A> ConnectionLimit<A> {
    /// `inner` with at most `max` client connections open at once, counted in `open` and
    /// `refused` (metrics of the server it belongs to), each request to be sent within
    /// `request_send_time` of its first byte.
    pub fn new(
        inner: A,
        max: usize,
        request_send_time: Duration,
        open: Gauge,
        refused: Counter,
    ) -> Self {
        Self {
            inner: Arc::new(inner),
            max,
            request_send_time,
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
        // pingora serves every request of a keep-alive connection inside one `process_new`
        // (and would hand the connection back if it stopped early: then serve on), so the place
        // is held from accept to close.
        let mut stream: Stream = Box::new(SendDeadline {
            inner: stream,
            clock: RequestClock::new(self.request_send_time),
        });
        loop {
            stream = self.inner.process_new(stream, shutdown).await?;
        }
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await;
    }
}

/// When the request being read on one connection began, as nanoseconds since the connection
/// was accepted (0: its first byte has not come yet).
#[derive(Debug)]
struct RequestClock {
    accepted: Instant,
    began_ns: AtomicU64,
    limit: Duration,
}

impl RequestClock {
    fn new(limit: Duration) -> Self {
        Self {
            accepted: Instant::now(),
            began_ns: AtomicU64::new(0),
            limit,
        }
    }

    /// `written` is a write to the client: once bytes of an answer are out, the current
    /// request has been taken, and the next one's clock starts at its own first byte, so a
    /// keep-alive connection's idle time between requests is not counted (`client_idle_secs`
    /// bounds that).
    fn answered(&self, written: Poll<io::Result<usize>>) -> Poll<io::Result<usize>> {
        if matches!(written, Poll::Ready(Ok(n)) if n > 0) {
            self.began_ns.store(0, Ordering::Relaxed);
        }
        written
    }

    /// Bytes of the current request arrived now: starts its clock if this is its first, and
    /// says whether it is still within the limit.
    fn bytes_arrived(&self) -> bool {
        let now = u64::try_from(self.accepted.elapsed().as_nanos())
            .unwrap_or(u64::MAX)
            .max(1);
        let began =
            match self
                .began_ns
                .compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => now,
                Err(began) => began,
            };
        Duration::from_nanos(now - began) <= self.limit
    }
}

/// A client connection whose reads fail once a request has taken longer than its limit to
/// arrive. A request runs from the first byte read after the last answer began to the first
/// byte of its own answer written (HTTP/1.1 answers a request after reading it, head and body;
/// pingora reads every request of a keep-alive connection in one `process_new`, so bytes are
/// where the boundary shows). Only a read that brings bytes is checked: a client that has sent
/// its whole request and is now reading a large answer slowly sends nothing, and is never cut
/// off by this; a client that sends nothing at all is pingora's per-read timeout's to close.
/// Every other part of the stream is the connection's own.
#[derive(Debug)]
struct SendDeadline {
    inner: Stream,
    clock: RequestClock,
}

impl AsyncRead for SendDeadline {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let read = Pin::new(&mut this.inner).poll_read(cx, buf);
        let brought_bytes = matches!(read, Poll::Ready(Ok(()))) && buf.filled().len() > before;
        if brought_bytes && !this.clock.bytes_arrived() {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "the client took over {:?} to send one request",
                    this.clock.limit
                ),
            )));
        }
        read
    }
}

impl AsyncWrite for SendDeadline {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.clock
            .answered(Pin::new(&mut this.inner).poll_write(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.clock
            .answered(Pin::new(&mut this.inner).poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[async_trait]
impl Shutdown for SendDeadline {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await;
    }
}

impl UniqueID for SendDeadline {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for SendDeadline {}

impl GetTimingDigest for SendDeadline {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for SendDeadline {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest);
    }
}

impl GetSocketDigest for SendDeadline {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest);
    }
}

#[async_trait]
impl Peek for SendDeadline {
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}
