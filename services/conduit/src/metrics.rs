//! Prometheus metrics for `GET /metrics`: requests and latency by route and status, and the use
//! of each database pool.
//!
//! Each app owns its own registry (no global recorder), so several apps in one test process do not
//! mix their counts. Routes are labelled by their *pattern* (`/api/articles/{slug}`), never by the
//! raw path, so the label set stays bounded whatever clients send.

use std::{sync::Arc, time::Instant};

use axum::{
    extract::{MatchedPath, Request, State},
    middleware::Next,
    response::Response,
};
use prometheus_client::{
    encoding::{text::encode, EncodeLabelSet},
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{exponential_buckets, Histogram},
    },
    registry::Registry,
};

use crate::db::Shards;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: String,
    route: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    method: String,
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolLabels {
    pool: String,
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LookupLabels {
    kind: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

/// The cache's counters (stage 3 on), registered with the app's other metrics.
#[derive(Clone, Debug, Default)]
pub struct CacheMetrics {
    lookups: Family<LookupLabels, Counter>,
    loads: Family<KindLabels, Counter>,
    /// 1 while the circuit breaker keeps requests away from Redis.
    pub breaker_open: Gauge,
    /// Invalidations waiting for Redis to return.
    pub pending_invalidations: Gauge,
}

impl CacheMetrics {
    /// One lookup of a `kind` of entry with its `result` (`hit`, `miss`, `bypass`).
    pub fn lookup(&self, kind: &'static str, result: &'static str) {
        self.lookups
            .get_or_create(&LookupLabels { kind, result })
            .inc();
    }

    /// One load of a `kind` of entry from the database on behalf of the cache.
    pub fn load(&self, kind: &'static str) {
        self.loads.get_or_create(&KindLabels { kind }).inc();
    }

    fn register(&self, registry: &mut Registry) {
        registry.register(
            "cache_lookups",
            "Cache lookups by kind of entry and result (hit, miss, bypass)",
            self.lookups.clone(),
        );
        registry.register(
            "cache_loads",
            "Entries loaded from the database for the cache, by kind (single-flight: one per key at a time)",
            self.loads.clone(),
        );
        registry.register(
            "cache_breaker_open",
            "1 while the circuit breaker bypasses Redis",
            self.breaker_open.clone(),
        );
        registry.register(
            "cache_pending_invalidations",
            "Invalidations waiting for Redis to return",
            self.pending_invalidations.clone(),
        );
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReadLabels {
    target: String,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReplicaLabels {
    replica: String,
}

/// Where reads went and how far the replicas are behind (stage 5 on).
#[derive(Clone, Debug, Default)]
pub struct DbMetrics {
    reads: Family<ReadLabels, Counter>,
    lag_seconds: Family<ReplicaLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    lag_bytes: Family<ReplicaLabels, Gauge>,
    in_rotation: Family<ReplicaLabels, Gauge>,
    positions_not_recorded: Counter,
}

impl DbMetrics {
    /// One request's reads went to `target` (`primary`, `replica-1`, ...) for `reason`.
    pub fn read(&self, target: &str, reason: &'static str) {
        self.reads
            .get_or_create(&ReadLabels {
                target: target.to_owned(),
                reason,
            })
            .inc();
    }

    /// A user's position could not be recorded (the guard's one weak spot; see `db::session`).
    pub fn position_not_recorded(&self) {
        self.positions_not_recorded.inc();
    }

    /// A replica's state as of its last poll.
    pub fn replica(&self, name: &str, lag: crate::db::replicas::Lag, in_rotation: bool) {
        let labels = ReplicaLabels {
            replica: name.to_owned(),
        };
        self.lag_seconds
            .get_or_create(&labels)
            .set(lag.time.as_secs_f64());
        self.lag_bytes
            .get_or_create(&labels)
            .set(i64::try_from(lag.bytes).unwrap_or(i64::MAX));
        self.in_rotation
            .get_or_create(&labels)
            .set(i64::from(in_rotation));
    }

    fn register(&self, registry: &mut Registry) {
        registry.register(
            "db_reads",
            "Requests' reads by the server they went to and why (see db::session::Route)",
            self.reads.clone(),
        );
        registry.register(
            "db_replica_lag_seconds",
            "How long ago the primary reached the first position the replica has not replayed",
            self.lag_seconds.clone(),
        );
        registry.register(
            "db_replica_lag_bytes",
            "WAL bytes the replica is behind the primary",
            self.lag_bytes.clone(),
        );
        registry.register(
            "db_positions_not_recorded",
            "Users' positions that could not be recorded after a request (Redis failing)",
            self.positions_not_recorded.clone(),
        );
        registry.register(
            "db_replica_in_rotation",
            "1 while reads may go to the replica",
            self.in_rotation.clone(),
        );
    }
}

fn latency_histogram() -> Histogram {
    // 0.25 ms to ~4 s in doublings: fine enough for a cache hit, wide enough for a timeout.
    Histogram::new(exponential_buckets(0.000_25, 2.0, 15))
}

/// The app's metrics.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<RouteLabels, Histogram, fn() -> Histogram>,
    pool_connections: Family<PoolLabels, Gauge>,
    /// The cache's counters.
    pub cache: CacheMetrics,
    /// Reads and replicas.
    pub db: DbMetrics,
    /// Purges an edge did not acknowledge (stage 6 on).
    pub edge_purge_failures: Counter,
    two_phase: TwoPhaseMetrics,
}

/// Two-phase commit across shards (stage 7): mirrors of the coordinator's own counts
/// (`db::two_phase::TwoPhaseStats`, plain atomics: the coordinator needs no registry), read at
/// each scrape.
#[derive(Default)]
struct TwoPhaseMetrics {
    transactions: Family<OutcomeLabels, Counter>,
    recovered: Family<OutcomeLabels, Counter>,
    left_to_recovery: Counter,
    in_doubt: Gauge,
    oldest_in_doubt_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

impl TwoPhaseMetrics {
    fn register(&self, registry: &mut Registry) {
        registry.register(
            "two_phase_transactions",
            "Global transactions across shards, by how their coordinator ended them",
            self.transactions.clone(),
        );
        registry.register(
            "two_phase_recovered_branches",
            "Prepared branches recovery finished, by outcome (a coordinator died or failed)",
            self.recovered.clone(),
        );
        registry.register(
            "two_phase_left_to_recovery",
            "Branches a coordinator could not commit after its decision, left to recovery",
            self.left_to_recovery.clone(),
        );
        registry.register(
            "two_phase_in_doubt",
            "Prepared branches on all shards at the last recovery pass",
            self.in_doubt.clone(),
        );
        registry.register(
            "two_phase_oldest_in_doubt_seconds",
            "Age of the oldest prepared branch at the last recovery pass",
            self.oldest_in_doubt_seconds.clone(),
        );
    }

    /// Brings the mirrors up to the coordinator's counts (which only grow).
    fn mirror(&self, stats: &crate::db::two_phase::TwoPhaseStats) {
        let catch_up = |counter: &Counter, now: &std::sync::atomic::AtomicU64| {
            let now = now.load(std::sync::atomic::Ordering::Relaxed);
            counter.inc_by(now.saturating_sub(counter.get()));
        };
        catch_up(
            &self
                .transactions
                .get_or_create(&OutcomeLabels { outcome: "commit" }),
            &stats.committed,
        );
        catch_up(
            &self
                .transactions
                .get_or_create(&OutcomeLabels { outcome: "abort" }),
            &stats.aborted,
        );
        catch_up(
            &self
                .recovered
                .get_or_create(&OutcomeLabels { outcome: "commit" }),
            &stats.recovered_commits,
        );
        catch_up(
            &self.recovered.get_or_create(&OutcomeLabels {
                outcome: "rollback",
            }),
            &stats.recovered_rollbacks,
        );
        catch_up(&self.left_to_recovery, &stats.left_to_recovery);
        let in_doubt = stats.in_doubt.load(std::sync::atomic::Ordering::Relaxed);
        self.in_doubt
            .set(i64::try_from(in_doubt).unwrap_or(i64::MAX));
        let oldest_ms = stats
            .oldest_in_doubt_ms
            .load(std::sync::atomic::Ordering::Relaxed);
        self.oldest_in_doubt_seconds.set(oldest_ms as f64 / 1000.0);
    }
}

impl Metrics {
    /// A fresh registry with every metric registered.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::<RouteLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        let pool_connections = Family::<PoolLabels, Gauge>::default();
        registry.register(
            "http_requests",
            "HTTP requests answered, by method, route pattern and status",
            requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "Time from request received to response headers, by method and route pattern",
            latency.clone(),
        );
        registry.register(
            "db_pool_connections",
            "Database pool connections by pool and state (idle, in_use, max)",
            pool_connections.clone(),
        );
        let cache = CacheMetrics::default();
        cache.register(&mut registry);
        let db = DbMetrics::default();
        db.register(&mut registry);
        let edge_purge_failures = Counter::default();
        registry.register(
            "edge_purge_failures",
            "Purges an edge did not acknowledge (timed out, refused, or down)",
            edge_purge_failures.clone(),
        );
        let two_phase = TwoPhaseMetrics::default();
        two_phase.register(&mut registry);
        Self {
            registry,
            requests,
            latency,
            pool_connections,
            cache,
            db,
            edge_purge_failures,
            two_phase,
        }
    }

    /// The text exposition, with pool gauges read now.
    pub fn render(&self, shards: &Shards) -> String {
        let db = shards.shard(0);
        db.refresh_gauges();
        // Shard 0's pools by their stage 5 names (`primary`, `replica-N`); stage 7's further
        // shards as `shard-N`.
        let mut pools: Vec<(String, &sqlx::PgPool)> = db
            .pools()
            .into_iter()
            .map(|(name, pool)| (name.to_owned(), pool))
            .collect();
        pools.extend(
            shards
                .all()
                .skip(1)
                .map(|(n, shard)| (format!("shard-{n}"), shard.primary())),
        );
        for (pool, p) in pools {
            let size = i64::from(p.size());
            let idle = p.num_idle() as i64;
            for (state, value) in [
                ("idle", idle),
                ("in_use", size - idle),
                ("max", i64::from(p.options().get_max_connections())),
            ] {
                self.pool_connections
                    .get_or_create(&PoolLabels {
                        pool: pool.clone(),
                        state: state.to_owned(),
                    })
                    .set(value);
            }
        }
        if shards.sharded() {
            self.two_phase.mirror(&shards.coordinator().stats);
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

/// Middleware: counts and times every request under its route pattern.
pub async fn track(State(metrics): State<Arc<Metrics>>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().as_str().to_owned();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let response = next.run(request).await;
    metrics
        .latency
        .get_or_create(&RouteLabels {
            method: method.clone(),
            route: route.clone(),
        })
        .observe(started.elapsed().as_secs_f64());
    metrics
        .requests
        .get_or_create(&RequestLabels {
            method,
            route,
            status: response.status().as_u16(),
        })
        .inc();
    response
}
