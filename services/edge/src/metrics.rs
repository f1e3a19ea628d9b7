//! The edge's Prometheus metrics, served at `GET /edge/metrics`: requests by cache outcome and
//! status, the hit ratio, origin fetches, waits on the cache lock (coalesced requests), purges,
//! the store's bytes and objects, and rate-limited requests.

use std::sync::Arc;

use prometheus_client::{
    encoding::{text::encode, EncodeLabelSet},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use crate::store::EdgeStore;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    cache: &'static str,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModeLabels {
    mode: &'static str,
}

/// Outcomes that were answered from the store (fresh, stale, or revalidated with a 304).
const ANSWERED_AT_EDGE: &[&str] = &["HIT", "STALE", "UPDATING", "REVALIDATED"];

/// Every metric of the edge.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    passes: Family<ReasonLabels, Counter>,
    purges: Family<ModeLabels, Counter>,
    /// Requests sent to the origin (misses, passes, revalidations, background refreshes).
    pub origin_fetches: Counter,
    /// Requests that waited for another request's fetch of the same key (coalesced).
    pub lock_waits: Counter,
    lock_wait_seconds: Counter<f64>,
    /// Entries removed or expired by purges.
    pub purged_entries: Counter,
    /// Requests refused with 429.
    pub rate_limited: Counter,
    /// Client connections open now (the `max_connections` cap counts these).
    pub client_connections: Gauge,
    /// Client connections closed at accept because `max_connections` were open.
    pub client_connections_refused: Counter,
    hit_ratio: Gauge<f64, std::sync::atomic::AtomicU64>,
    /// Successful answers (2xx, 304), and those of them answered from the store: the ratio.
    answered: Counter,
    answered_at_edge: Counter,
    store_bytes: Gauge,
    store_objects: Gauge,
    store_evictions: Gauge,
    refused_fills: Gauge,
}

impl Metrics {
    /// A registry with every metric registered.
    pub fn new() -> Self {
        let mut m = Metrics {
            registry: Registry::default(),
            requests: Family::default(),
            passes: Family::default(),
            purges: Family::default(),
            origin_fetches: Counter::default(),
            lock_waits: Counter::default(),
            lock_wait_seconds: Counter::default(),
            purged_entries: Counter::default(),
            rate_limited: Counter::default(),
            client_connections: Gauge::default(),
            client_connections_refused: Counter::default(),
            hit_ratio: Gauge::default(),
            answered: Counter::default(),
            answered_at_edge: Counter::default(),
            store_bytes: Gauge::default(),
            store_objects: Gauge::default(),
            store_evictions: Gauge::default(),
            refused_fills: Gauge::default(),
        };
        let r = &mut m.registry;
        r.register(
            "edge_requests",
            "Requests answered, by cache outcome (x-cache) and status",
            m.requests.clone(),
        );
        r.register(
            "edge_hit_ratio",
            "Share of successful answers (2xx, 304) that came from the store (HIT, STALE, UPDATING, REVALIDATED)",
            m.hit_ratio.clone(),
        );
        r.register(
            "edge_passes",
            "Requests not eligible for the shared cache, by why",
            m.passes.clone(),
        );
        r.register(
            "edge_origin_fetches",
            "Requests the edge sent to the origin",
            m.origin_fetches.clone(),
        );
        r.register(
            "edge_lock_waits",
            "Requests that waited for another request's fetch of the same key",
            m.lock_waits.clone(),
        );
        r.register(
            "edge_lock_wait_seconds",
            "Time spent waiting on the cache lock, all requests together",
            m.lock_wait_seconds.clone(),
        );
        r.register("edge_purges", "Purge requests, by mode", m.purges.clone());
        r.register(
            "edge_purged_entries",
            "Entries removed or expired by purges",
            m.purged_entries.clone(),
        );
        r.register(
            "edge_refused_fills",
            "Fills not stored because a purge of what they show came after their response",
            m.refused_fills.clone(),
        );
        r.register(
            "edge_store_bytes",
            "Bytes held by the store (bodies, headers, overhead)",
            m.store_bytes.clone(),
        );
        r.register(
            "edge_store_objects",
            "Responses held by the store",
            m.store_objects.clone(),
        );
        r.register(
            "edge_store_evictions",
            "Entries pushed out by the byte cap",
            m.store_evictions.clone(),
        );
        r.register(
            "edge_rate_limited",
            "Requests refused with 429 by the per-client rate limit",
            m.rate_limited.clone(),
        );
        r.register(
            "edge_client_connections",
            "Client connections open now",
            m.client_connections.clone(),
        );
        r.register(
            "edge_client_connections_refused",
            "Client connections closed at accept because max_connections were open",
            m.client_connections_refused.clone(),
        );
        m
    }

    /// One answered request.
    pub fn request(&self, cache: &'static str, status: u16) {
        self.requests
            .get_or_create(&RequestLabels { cache, status })
            .inc();
        if (200..300).contains(&status) || status == 304 {
            self.answered.inc();
            if ANSWERED_AT_EDGE.contains(&cache) {
                self.answered_at_edge.inc();
            }
        }
    }

    /// One request not eligible for the shared cache.
    pub fn pass(&self, reason: &'static str) {
        self.passes.get_or_create(&ReasonLabels { reason }).inc();
    }

    /// One wait on the cache lock.
    pub fn lock_wait(&self, seconds: f64) {
        self.lock_waits.inc();
        self.lock_wait_seconds.inc_by(seconds);
    }

    /// One purge request that touched `entries`.
    pub fn purge(&self, mode: &'static str, entries: usize) {
        self.purges.get_or_create(&ModeLabels { mode }).inc();
        self.purged_entries.inc_by(entries as u64);
    }

    /// The text exposition, with the store's gauges and the hit ratio read now.
    pub fn render(&self, store: &EdgeStore) -> String {
        self.store_bytes.set(store.bytes() as i64);
        self.store_objects.set(store.objects() as i64);
        self.store_evictions.set(store.evictions() as i64);
        self.refused_fills.set(store.refused_fills() as i64);
        let (at_edge, all) = (self.answered_at_edge.get(), self.answered.get());
        self.hit_ratio.set(if all == 0 {
            0.0
        } else {
            at_edge as f64 / all as f64
        });
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Shared by the proxy and the connection cap.
pub type SharedMetrics = Arc<Metrics>;
