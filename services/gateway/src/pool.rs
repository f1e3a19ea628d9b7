//! The app hosts behind the gateway, and how one is chosen for a request.
//!
//! Health comes from two places. *Active*: pingora's `LoadBalancer` runs an HTTP health check
//! (`GET /readyz`) on every host at a fixed interval, and `ready()` says whether a host passed.
//! *Passive*: when a request to a host fails to connect or gets a 5xx, the gateway skips that
//! host at once for [`GatewaySettings::passive_down_ms`](crate::settings::GatewaySettings),
//! without waiting for the next check. pingora has no way to mark a backend down from outside
//! its health check, so the passive state lives here, beside the in-flight counters.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use http::HeaderValue;
use pingora::lb::{selection::RoundRobin, Backend, LoadBalancer};
use rand::Rng;

use crate::settings::Selection;

/// One app host.
#[derive(Debug)]
pub struct Upstream {
    /// Its address.
    pub addr: SocketAddr,
    /// The same as text, made once and shared by every metric label that names it.
    pub name: Arc<String>,
    /// The same as the value of the `x-upstream` response header, made once.
    pub header_value: HeaderValue,
    /// The same, as pingora's load balancer knows it.
    pub backend: Backend,
    /// Requests sent to it and not yet finished.
    pub in_flight: AtomicUsize,
    /// Milliseconds since the pool started until which the host is skipped (0: not skipped).
    down_until_ms: AtomicU64,
}

/// Every upstream plus the active health state.
pub struct Pool {
    /// pingora's balancer: the round-robin order and the active health checks.
    pub balancer: Arc<LoadBalancer<RoundRobin>>,
    upstreams: Vec<Arc<Upstream>>,
    selection: Selection,
    passive_down: Duration,
    epoch: Instant,
}

/// Counts one request in flight to an upstream for as long as it lives.
#[derive(Debug)]
pub struct InFlight(Arc<Upstream>);

impl InFlight {
    /// The upstream it counts for.
    pub fn upstream(&self) -> &Arc<Upstream> {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Pool {
    /// A pool over `balancer`'s backends (their order is the balancer's).
    pub fn new(
        balancer: Arc<LoadBalancer<RoundRobin>>,
        selection: Selection,
        passive_down: Duration,
    ) -> Self {
        let upstreams = balancer
            .backends()
            .get_backend()
            .iter()
            .filter_map(|b| {
                let addr = b.addr.as_inet()?.to_owned();
                let name = addr.to_string();
                // An address's text (digits, dots, colons, brackets) is always a valid value.
                let header_value = HeaderValue::from_str(&name).ok()?;
                Some(Arc::new(Upstream {
                    header_value,
                    name: Arc::new(name),
                    addr,
                    backend: b.clone(),
                    in_flight: AtomicUsize::new(0),
                    down_until_ms: AtomicU64::new(0),
                }))
            })
            .collect();
        Self {
            balancer,
            upstreams,
            selection,
            passive_down,
            epoch: Instant::now(),
        }
    }

    /// Every upstream.
    pub fn upstreams(&self) -> &[Arc<Upstream>] {
        &self.upstreams
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Skip `upstream` for the passive-down period (a connect failure or a 5xx was seen).
    pub fn mark_down(&self, upstream: &Upstream) {
        let until = self.now_ms() + self.passive_down.as_millis() as u64;
        upstream.down_until_ms.store(until, Ordering::Relaxed);
    }

    /// Whether a request may go to `upstream` now: the health check passes and no recent failure.
    pub fn usable(&self, upstream: &Upstream) -> bool {
        self.balancer.backends().ready(&upstream.backend)
            && upstream.down_until_ms.load(Ordering::Relaxed) <= self.now_ms()
    }

    fn find(&self, backend: &Backend) -> Option<&Arc<Upstream>> {
        self.upstreams.iter().find(|u| u.backend == *backend)
    }

    /// Chooses an upstream that is usable and not among `tried`, and counts the request on it.
    pub fn choose(&self, tried: &[SocketAddr]) -> Option<InFlight> {
        let fresh = |u: &Upstream| !tried.contains(&u.addr) && self.usable(u);
        let chosen = match self.selection {
            Selection::RoundRobin => {
                let backend = self.balancer.select_with(b"", 256, |b, ready| {
                    ready && self.find(b).is_some_and(|u| fresh(u))
                })?;
                self.find(&backend)?.clone()
            }
            Selection::LeastLoaded => {
                let candidates: Vec<&Arc<Upstream>> =
                    self.upstreams.iter().filter(|u| fresh(u)).collect();
                least_loaded_of_two(&candidates, &mut rand::thread_rng())?.clone()
            }
        };
        chosen.in_flight.fetch_add(1, Ordering::Relaxed);
        Some(InFlight(chosen))
    }
}

/// Power of two random choices: two distinct candidates at random, the one with fewer requests
/// in flight wins. Picking the global minimum instead would send every new request to the same
/// host until its counter moves (a herd); two random draws spread them, and still avoid a host
/// that is slow (its counter grows).
fn least_loaded_of_two<'a>(
    candidates: &[&'a Arc<Upstream>],
    rng: &mut impl Rng,
) -> Option<&'a Arc<Upstream>> {
    match candidates.len() {
        0 => None,
        1 => Some(candidates[0]),
        n => {
            let a = rng.gen_range(0..n);
            let b = (a + rng.gen_range(1..n)) % n;
            let (a, b) = (candidates[a], candidates[b]);
            let load = |u: &Upstream| u.in_flight.load(Ordering::Relaxed);
            Some(if load(b) < load(a) { b } else { a })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(n: u16, selection: Selection) -> Pool {
        let addrs: Vec<String> = (0..n).map(|i| format!("127.0.0.1:{}", 9000 + i)).collect();
        let balancer =
            match LoadBalancer::<RoundRobin>::try_from_iter(addrs.iter().map(String::as_str)) {
                Ok(balancer) => balancer,
                Err(e) => panic!("balancer: {e}"),
            };
        Pool::new(Arc::new(balancer), selection, Duration::from_secs(60))
    }

    #[test]
    fn round_robin_visits_every_host_in_turn() {
        let pool = pool(3, Selection::RoundRobin);
        let mut seen: Vec<SocketAddr> = (0..6)
            .filter_map(|_| pool.choose(&[]).map(|g| g.upstream().addr))
            .collect();
        assert_eq!(seen.len(), 6);
        assert_eq!(seen[0..3], seen[3..6], "the same order twice");
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 3, "all three hosts");
    }

    #[test]
    fn a_host_already_tried_or_marked_down_is_skipped() {
        for selection in [Selection::RoundRobin, Selection::LeastLoaded] {
            let pool = pool(2, selection);
            let [first, second] = [&pool.upstreams()[0], &pool.upstreams()[1]];
            for _ in 0..10 {
                let g = pool.choose(&[first.addr]).map(|g| g.upstream().addr);
                assert_eq!(g, Some(second.addr));
            }
            pool.mark_down(second);
            for _ in 0..10 {
                let g = pool.choose(&[]).map(|g| g.upstream().addr);
                assert_eq!(g, Some(first.addr));
            }
            assert!(pool.choose(&[first.addr]).is_none(), "nothing left");
        }
    }

    #[test]
    fn in_flight_counts_live_as_long_as_the_guard() {
        let pool = pool(1, Selection::LeastLoaded);
        let guard = pool.choose(&[]);
        assert_eq!(pool.upstreams()[0].in_flight.load(Ordering::Relaxed), 1);
        drop(guard);
        assert_eq!(pool.upstreams()[0].in_flight.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn least_loaded_avoids_the_busy_host() {
        let pool = pool(2, Selection::LeastLoaded);
        // Host 0 is stuck with 100 requests; every new one goes to host 1.
        let busy: Vec<InFlight> = (0..100)
            .map(|_| {
                InFlight({
                    let u = pool.upstreams()[0].clone();
                    u.in_flight.fetch_add(1, Ordering::Relaxed);
                    u
                })
            })
            .collect();
        for _ in 0..50 {
            let g = pool.choose(&[]).map(|g| g.upstream().addr);
            assert_eq!(g, Some(pool.upstreams()[1].addr));
        }
        drop(busy);
    }
}
