//! The gateway's Prometheus metrics, served at `GET /gateway/metrics`: requests by upstream and
//! status, requests in flight (in all and per upstream), client connections, retries and passive
//! mark-downs. Two of the gauges are also the gateway's caps ([`Place`]).

use std::sync::Arc;

use prometheus_client::{
    encoding::{text::encode, EncodeLabelSet},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use crate::pool::Pool;

// Every upstream label is shared with [`Upstream::name`](crate::pool::Upstream), so counting
// copies a pointer, not the address text.

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    upstream: Arc<String>,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamLabels {
    upstream: Arc<String>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    upstream: Arc<String>,
    reason: &'static str,
}

fn inc(family: &Family<ReasonLabels, Counter>, upstream: &Arc<String>, reason: &'static str) {
    let upstream = upstream.clone();
    family
        .get_or_create(&ReasonLabels { upstream, reason })
        .inc();
}

/// One place under a cap whose count is a gauge (requests in flight, client connections); the
/// place is given back when this is dropped.
pub struct Place(Gauge);

impl Place {
    /// A place if fewer than `max` are taken.
    pub fn take(count: &Gauge, max: usize) -> Option<Place> {
        // `inc` returns the count before this one.
        if count.inc() >= max as i64 {
            count.dec();
            return None;
        }
        Some(Place(count.clone()))
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Every metric of the gateway.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    in_flight: Family<UpstreamLabels, Gauge>,
    sent: Family<UpstreamLabels, Counter>,
    healthy: Family<UpstreamLabels, Gauge>,
    retries: Family<ReasonLabels, Counter>,
    marked_down: Family<ReasonLabels, Counter>,
    /// Requests admitted and not yet answered (the `max_in_flight` cap counts these).
    pub requests_in_flight: Gauge,
    /// Client connections open now (the `max_connections` cap counts these).
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
            sent: Family::default(),
            healthy: Family::default(),
            retries: Family::default(),
            marked_down: Family::default(),
            requests_in_flight: Gauge::default(),
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
            "gateway_requests_in_flight",
            "Requests admitted and not yet answered",
            m.requests_in_flight.clone(),
        );
        m.registry.register(
            "gateway_upstream_in_flight",
            "Requests sent to an upstream and not yet finished",
            m.in_flight.clone(),
        );
        m.registry.register(
            "gateway_upstream_sent",
            "Requests sent to an upstream, each attempt (a retry elsewhere counts again)",
            m.sent.clone(),
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

    /// One request sent to `upstream` (with `gateway_upstream_in_flight` read before and this
    /// read after a fault, the drills bound how many requests the fault can have caught).
    pub fn sent(&self, upstream: &Arc<String>) {
        self.sent
            .get_or_create(&UpstreamLabels {
                upstream: upstream.clone(),
            })
            .inc();
    }

    /// One retry away from `upstream`.
    pub fn retry(&self, upstream: &Arc<String>, reason: &'static str) {
        inc(&self.retries, upstream, reason);
    }

    /// One passive mark-down of `upstream`.
    pub fn marked_down(&self, upstream: &Arc<String>, reason: &'static str) {
        inc(&self.marked_down, upstream, reason);
    }

    /// The text exposition, with the per-upstream gauges read from `pools` now.
    pub fn render(&self, pools: &[&Pool]) -> String {
        for (pool, u) in pools
            .iter()
            .flat_map(|pool| pool.upstreams().iter().map(move |u| (pool, u)))
        {
            let labels = UpstreamLabels {
                upstream: u.name.clone(),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_place_is_given_only_under_the_cap_and_back_when_dropped() {
        let count = Gauge::default();
        let first = Place::take(&count, 2);
        let second = Place::take(&count, 2);
        assert!(first.is_some() && second.is_some());
        assert!(Place::take(&count, 2).is_none(), "a third is refused");
        assert_eq!(count.get(), 2, "a refusal leaves the count as it was");
        drop(first);
        assert_eq!(count.get(), 1);
        assert!(Place::take(&count, 2).is_some(), "the place came back");
        assert_eq!(count.get(), 1, "and went again with the dropped guard");
    }
}
