//! The gateway's Prometheus metrics, served at `GET /gateway/metrics`: requests by upstream and
//! status, requests in flight per upstream, retries and passive mark-downs.

use std::sync::Arc;

use prometheus_client::{
    encoding::{text::encode, EncodeLabelSet},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use crate::pool::Pool;

/// The upstream label is shared with [`Upstream::name`](crate::pool::Upstream), so counting a
/// request copies a pointer, not the address text.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    upstream: Arc<String>,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamLabels {
    upstream: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    upstream: String,
    reason: &'static str,
}

fn inc(family: &Family<ReasonLabels, Counter>, upstream: &str, reason: &'static str) {
    let upstream = upstream.to_owned();
    family
        .get_or_create(&ReasonLabels { upstream, reason })
        .inc();
}

/// Every metric of the gateway.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    in_flight: Family<UpstreamLabels, Gauge>,
    healthy: Family<UpstreamLabels, Gauge>,
    retries: Family<ReasonLabels, Counter>,
    marked_down: Family<ReasonLabels, Counter>,
    /// Client connections open now.
    pub client_connections: Gauge,
    /// Client connections closed at accept because `max_connections` were open.
    pub client_connections_refused: Counter,
    /// The upstream label of requests no host could take.
    none: Arc<String>,
}

impl Metrics {
    /// A registry with every metric registered.
    pub fn new() -> Self {
        let mut m = Metrics {
            registry: Registry::default(),
            requests: Family::default(),
            in_flight: Family::default(),
            healthy: Family::default(),
            retries: Family::default(),
            marked_down: Family::default(),
            client_connections: Gauge::default(),
            client_connections_refused: Counter::default(),
            none: Arc::new("none".to_owned()),
        };
        m.registry.register(
            "gateway_requests",
            "Requests answered, by upstream (\"none\" when no host could take it) and status",
            m.requests.clone(),
        );
        m.registry.register(
            "gateway_upstream_in_flight",
            "Requests sent to an upstream and not yet finished",
            m.in_flight.clone(),
        );
        m.registry.register(
            "gateway_upstream_usable",
            "1 if the upstream passes its health check and has no recent failure",
            m.healthy.clone(),
        );
        m.registry.register(
            "gateway_retries",
            "Requests sent again to another upstream, by the upstream that failed and why",
            m.retries.clone(),
        );
        m.registry.register(
            "gateway_client_connections",
            "Client connections open now",
            m.client_connections.clone(),
        );
        m.registry.register(
            "gateway_client_connections_refused",
            "Client connections closed at accept because max_connections were open",
            m.client_connections_refused.clone(),
        );
        m.registry.register(
            "gateway_upstream_marked_down",
            "Times an upstream was skipped after a failed request (passive health), by why",
            m.marked_down.clone(),
        );
        m
    }

    /// One answered request.
    pub fn request(&self, upstream: Option<&Arc<String>>, status: u16) {
        let upstream = upstream.unwrap_or(&self.none).clone();
        self.requests
            .get_or_create(&RequestLabels { upstream, status })
            .inc();
    }

    /// One retry away from `upstream`.
    pub fn retry(&self, upstream: &str, reason: &'static str) {
        inc(&self.retries, upstream, reason);
    }

    /// One passive mark-down of `upstream`.
    pub fn marked_down(&self, upstream: &str, reason: &'static str) {
        inc(&self.marked_down, upstream, reason);
    }

    /// The text exposition, with the per-upstream gauges read from `pool` now.
    pub fn render(&self, pool: &Pool) -> String {
        for u in pool.upstreams() {
            let labels = UpstreamLabels {
                upstream: u.addr.to_string(),
            };
            let in_flight = u.in_flight.load(std::sync::atomic::Ordering::Relaxed);
            self.in_flight.get_or_create(&labels).set(in_flight as i64);
            self.healthy
                .get_or_create(&labels)
                .set(i64::from(pool.usable(u)));
        }
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
