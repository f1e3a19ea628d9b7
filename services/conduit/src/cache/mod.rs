//! The cache seam (stage 3): cache-aside in front of the database for the reads most clients make.
//!
//! Handlers ask [`Cache::get_or_load`] for an entry and pass the database load to run on a miss;
//! writes call [`Cache::invalidate`] with the keys they make stale (see [`keys`]) *after* their
//! transaction commits. With `cache.backend = "none"` (stages 1 and 2) every call goes straight
//! to the database and no `x-cache` header is sent; with `"redis"` (stage 3 on) the flow is:
//!
//! ```text
//! GET key ──hit──> answer                                     x-cache: hit
//!    │miss
//!    └─> single-flight(key): GET again, else load from the database, SET key (TTL ± jitter)
//!                                                              x-cache: miss
//! Redis failing or breaker open ──> load from the database    x-cache: bypass
//! ```
//!
//! Only the *shared* part of a response is cached. What depends on who asks (`favorited`,
//! `following`) is looked up for that viewer on every request, so one user's flags can never be
//! served to another. `x-cache` describes the shared part.

mod breaker;
pub mod keys;
pub(crate) mod redis;
mod single_flight;

use std::{future::Future, sync::Arc, time::Duration};

use axum::response::{IntoResponseParts, ResponseParts};
use bytes::Bytes;
use rand::Rng;
use serde::{de::DeserializeOwned, Serialize};

pub use self::keys::Key;
use self::redis::RedisStore;
use self::single_flight::SingleFlight;
use sqlx::PgPool;

use crate::{
    db::{
        replicas::{ReadTarget, Replica},
        session::Route,
        Database, Lsn, Reader,
    },
    error::{ApiError, ApiResult},
    metrics::CacheMetrics,
    settings::{CacheBackend, CacheSettings},
};

/// How long a tombstone (see [`Cache::in_front_of`]) outlives the write that left it. It must
/// outlast the time a replica in rotation may take to replay that write: at most
/// `database.replica_max_lag_ms` (a second by default) plus one poll, checked at start. Ten
/// seconds is far past that, and short enough that tombstones nobody fills do not pile up.
pub const TOMBSTONE_TTL_SECS: u64 = 10;

/// Where the shared part of a response came from; sent as `x-cache`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheStatus {
    /// No cache in this stage: no header.
    Off,
    /// Served from the cache.
    Hit,
    /// Not in the cache: loaded from the database and stored.
    Miss,
    /// The cache was skipped (Redis failing, breaker open, or a query the cache does not hold).
    Bypass,
}

impl CacheStatus {
    /// The header value, if one is sent.
    pub fn as_str(self) -> Option<&'static str> {
        match self {
            CacheStatus::Off => None,
            CacheStatus::Hit => Some("hit"),
            CacheStatus::Miss => Some("miss"),
            CacheStatus::Bypass => Some("bypass"),
        }
    }

    /// The status of a response assembled from several lookups: a hit only if all were hits.
    pub fn and(self, other: CacheStatus) -> CacheStatus {
        use CacheStatus::*;
        match (self, other) {
            (Off, s) | (s, Off) => s,
            (Bypass, _) | (_, Bypass) => Bypass,
            (Miss, _) | (_, Miss) => Miss,
            (Hit, Hit) => Hit,
        }
    }
}

impl IntoResponseParts for CacheStatus {
    type Error = std::convert::Infallible;

    fn into_response_parts(self, mut res: ResponseParts) -> Result<ResponseParts, Self::Error> {
        if let Some(value) = self.as_str() {
            res.headers_mut()
                .insert("x-cache", axum::http::HeaderValue::from_static(value));
        }
        Ok(res)
    }
}

/// The cache: Redis behind a breaker, plus single-flight loads, or nothing at all.
pub struct Cache {
    store: Option<RedisStore>,
    flight: SingleFlight,
    settings: CacheSettings,
    metrics: CacheMetrics,
    /// Stage 5 on: the database with replicas this cache stands in front of.
    replicated: Option<Database>,
    /// The shortest time a key stays invalidated: a tombstone's life, or an entry's filled after
    /// it. See [`Cache::in_front_of`].
    shortest_life: Duration,
    /// Stage 6 on: the edges that cache the app's anonymous answers, purged with the same keys.
    edges: Option<crate::edge::EdgePurger>,
}

/// Where a miss is loaded from, and what that read is known to include.
pub struct Fill {
    pool: PgPool,
    source: FillSource,
}

enum FillSource {
    /// No replicas (stages 3 and 4): the request's own pool, which is the primary; entries are
    /// stored without a stamp.
    Unreplicated,
    /// Nothing will be stored (no cache, Redis failing, fills paused): read as the request reads.
    Uncached,
    /// The primary, which is past `from` (its newest polled position).
    Primary { from: Lsn },
    /// A replica known to have replayed `from`, at or past the entries' last invalidation.
    Replica { replica: Arc<Replica>, from: Lsn },
}

impl Fill {
    /// The pool to load the missing entries from.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// What the read showed at most, measured after it: the stamp for its entries.
    async fn stamp(&self, db: Option<&Database>) -> ApiResult<Option<Lsn>> {
        Ok(match (&self.source, db) {
            (FillSource::Primary { .. }, Some(db)) => Some(db.primary_position().await?),
            (FillSource::Replica { replica, .. }, _) => Some(replica.replayed_now().await?),
            _ => None,
        })
    }

    /// A failed read on a replica takes it out of rotation at once, so the request's second try
    /// (and every other fill) goes elsewhere.
    fn failed(&self, error: &ApiError) {
        if let (FillSource::Replica { replica, .. }, ApiError::DatabaseUnavailable(_)) =
            (&self.source, error)
        {
            replica.suspend();
        }
    }
}

impl Cache {
    /// The cache `settings` describe. Does not connect: the first request does.
    pub fn new(settings: &CacheSettings, metrics: CacheMetrics) -> anyhow::Result<Self> {
        let store = match settings.backend {
            CacheBackend::None => None,
            CacheBackend::Redis => Some(RedisStore::new(settings)?),
        };
        Ok(Self {
            store,
            flight: SingleFlight::default(),
            settings: settings.clone(),
            metrics,
            replicated: None,
            shortest_life: Duration::ZERO,
            edges: None,
        })
    }

    /// The cache with edges in front of the app (stage 6 on): every invalidation also purges
    /// its keys at each edge.
    pub fn with_edges(mut self, edges: Option<crate::edge::EdgePurger>) -> Self {
        self.edges = edges;
        self
    }

    /// The cache in front of a database with replicas (stage 5 on): a fill after an invalidation
    /// must never store a row older than the write that invalidated it, which a lagging replica
    /// would give, for every reader, until the entry expires. So:
    ///
    /// - an invalidation leaves a *tombstone* in place of the entry, holding the primary's
    ///   position after the write committed (past the write);
    /// - a miss on a tombstone fills from a replica known to have replayed past it, else from the
    ///   primary; a miss on an absent key fills from any replica in rotation (the key has not
    ///   changed for longer than a replica in rotation may lag, see below);
    /// - the fill is stored only over an absent key or a tombstone its read is known to include
    ///   (one atomic step in Redis): a write that lands while the fill reads leaves a newer
    ///   tombstone, which the fill then does not overwrite.
    ///
    /// Each entry carries a stamp: the position of the server it was read from, measured after
    /// the read. A reader who saw an entry must not see an older state afterwards on a replica
    /// (monotonic reads), so a hit moves the reader's position up to the entry's stamp (see
    /// [`crate::db::session`]).
    ///
    /// A miss on an absent key needs a replica past every write that could have invalidated the
    /// key since: a key is absent when it was never filled, when its tombstone expired
    /// ([`TOMBSTONE_TTL_SECS`]), or when an entry filled after its last invalidation expired
    /// (`cache.not_found_ttl_secs` at the shortest). Either way that invalidation is older than
    /// the shortest of these lives, so a replica past the position the primary had then (known
    /// from its polled history) has it. Normally any replica in rotation, milliseconds behind;
    /// not one paused for longer. What Redis forgets outside these rules it forgets all at once
    /// (a restart, or the flush after an outage too long to remember): fills then read the
    /// primary until the connection made afterwards has been up that long. Left unguarded:
    /// eviction under memory pressure, which could drop a fresh tombstone (the cache host is
    /// sized so the data set fits, `--maxmemory` in the lab).
    pub fn in_front_of(mut self, db: &Database) -> Self {
        if db.replicas().is_none() {
            return self;
        }
        self.replicated = Some(db.clone());
        self.shortest_life = Duration::from_secs(
            TOMBSTONE_TTL_SECS
                .min(self.settings.not_found_ttl_secs)
                .min(self.ttl_floor())
                .max(1),
        );
        self
    }

    /// The floor for a miss on an absent key (see [`Cache::in_front_of`]): a position past
    /// every write older than the shortest life of an invalidation, or the primary only while
    /// that cannot be said.
    fn absent_floor(&self) -> Floor {
        let connected_long_enough = self
            .store
            .as_ref()
            .and_then(|store| store.connected_for())
            .is_some_and(|up| up >= self.shortest_life);
        let needs = match self.replicated.as_ref().and_then(|db| db.replicas()) {
            Some(replicas) if connected_long_enough => {
                replicas.primary_reached_before(self.shortest_life)
            }
            _ => None,
        };
        needs.map_or(Floor::primary_only(), |needs| Floor {
            needs,
            seen: Lsn(0),
        })
    }

    /// Where to load a miss from, given what the missing keys' `floor` asks: see
    /// [`Cache::in_front_of`].
    async fn fill_for(&self, reader: &Reader, floor: Floor) -> ApiResult<Fill> {
        let own = |source: FillSource| async move {
            // An entry kept without a stamp must show everything committed: it is read on the
            // primaries (`Reader::for_cache_fill`); what will not be kept is read as the
            // request reads.
            let pool = if matches!(source, FillSource::Unreplicated) {
                reader.for_cache_fill().pool().await?.clone()
            } else {
                reader.pool().await?.clone()
            };
            Ok(Fill { pool, source })
        };
        let (Some(db), Some(_)) = (&self.replicated, &self.store) else {
            let source = if self.store.is_some() && !self.fills_paused(reader) {
                FillSource::Unreplicated
            } else {
                FillSource::Uncached
            };
            return own(source).await;
        };
        let Some(replicas) = db.replicas() else {
            return own(FillSource::Unreplicated).await;
        };
        if self.fills_paused(reader) {
            return own(FillSource::Uncached).await;
        }
        if !reader.avoids_replicas() {
            if let Some(ReadTarget::Replica(replica)) = replicas.choose(Some(floor.needs), None) {
                reader.fill_reads_replica();
                db.count_read(&replica.name, Route::CacheFill);
                return Ok(Fill {
                    pool: replica.pool.clone(),
                    source: FillSource::Replica {
                        from: replica.replayed(),
                        replica,
                    },
                });
            }
        }
        reader.fill_reads_primary();
        db.count_read("primary", Route::CacheFill);
        // What a read on the primary is known to include: its last polled position, and the
        // tombstones this fill found, which the invalidating writes left after they committed.
        // Not what the floor *needs*: that may be "only the primary will do" (`u64::MAX`), which
        // as a claim would let this fill overwrite any newer tombstone.
        Ok(Fill {
            pool: db.write()?.clone(),
            source: FillSource::Primary {
                from: replicas.primary_polled().max(floor.seen),
            },
        })
    }

    /// Whether misses must not be stored now: the stage has replicas and its primary is down
    /// (or this request is a second try after a read on the primary failed). Its reads are then
    /// served by replicas, which may lack the primary's last writes, and no tombstone says which:
    /// an entry filled from one could outlive the outage, so misses are served uncached (`bypass`).
    ///
    /// Sharded (stage 7), entries are filled from the primaries (`Reader::for_cache_fill`), so
    /// while any shard's primary is down, misses are served uncached from its replicas.
    fn fills_paused(&self, reader: &Reader) -> bool {
        let shards = reader.shards();
        (shards.sharded() && shards.any_primary_down())
            || self
                .replicated
                .as_ref()
                .is_some_and(|db| !db.primary_up() || reader.avoids_primary())
    }

    /// Stores `entries` loaded by `fill`: as they are without replicas, else each only over an
    /// absent key or a tombstone the fill's read includes. Failures cost only a later miss.
    async fn store(&self, fill: &Fill, entries: &[(String, Bytes, u64)]) {
        let Some(store) = &self.store else { return };
        let _ = match &fill.source {
            FillSource::Uncached => return,
            FillSource::Unreplicated => store.put_many(entries).await,
            FillSource::Primary { from } | FillSource::Replica { from, .. } => store
                .fill_many(entries, &tombstone(*from))
                .await
                .map(|_| ()),
        };
    }

    /// The status of a response the cache does not hold: `bypass`, or no header without a cache.
    pub fn bypass(&self) -> CacheStatus {
        if self.enabled() {
            CacheStatus::Bypass
        } else {
            CacheStatus::Off
        }
    }

    /// Whether a cache is configured.
    pub fn enabled(&self) -> bool {
        self.store.is_some()
    }

    /// Updates the breaker and pending-invalidation gauges (before `/metrics` is rendered).
    pub fn refresh_gauges(&self) {
        if let Some(store) = &self.store {
            self.metrics
                .breaker_open
                .set(i64::from(store.breaker_open()));
            self.metrics
                .pending_invalidations
                .set(store.pending_invalidations() as i64);
        }
    }

    /// The shortest life [`Cache::ttl_for`] gives a found entry, in whole seconds.
    fn ttl_floor(&self) -> u64 {
        let base = self.settings.ttl_secs as f64;
        (base * (1.0 - self.settings.ttl_jitter.clamp(0.0, 1.0)))
            .floor()
            .max(1.0) as u64
    }

    /// How long a new entry lives: `ttl_secs` give or take `ttl_jitter`, so entries filled in
    /// the same second (after a restart, say) do not all expire in the same second again; an
    /// entry saying "not found" lives `not_found_ttl_secs`.
    fn ttl_for(&self, found: bool) -> u64 {
        if !found {
            return self.settings.not_found_ttl_secs.max(1);
        }
        let base = self.settings.ttl_secs as f64;
        let spread = base * self.settings.ttl_jitter.clamp(0.0, 1.0);
        let ttl = base + rand::thread_rng().gen_range(-spread..=spread);
        ttl.round().max(1.0) as u64
    }

    fn count(&self, key: &Key, status: CacheStatus) {
        if let Some(result) = status.as_str() {
            self.metrics.lookup(key.kind, result);
        }
    }

    /// Cache-aside for one entry: the cached value, or `load(pool)`'s (stored for next time),
    /// where `pool` is where fills read from. `None` means "not found" and is cached too, briefly.
    pub async fn get_or_load<T, F, Fut>(
        &self,
        key: &Key,
        reader: &Reader,
        load: F,
    ) -> ApiResult<(Option<T>, CacheStatus)>
    where
        T: Serialize + DeserializeOwned,
        F: FnOnce(PgPool) -> Fut,
        Fut: Future<Output = ApiResult<Option<T>>>,
    {
        let Some(store) = &self.store else {
            return Ok((load(reader.pool().await?.clone()).await?, CacheStatus::Off));
        };
        let (status, floor) = match store.get(&key.name).await {
            Ok(Some(bytes)) => match decode::<T>(&bytes) {
                Ok(Stored::Entry(stamp, value)) => {
                    self.count(key, CacheStatus::Hit);
                    reader.saw(stamp);
                    return Ok((value, CacheStatus::Hit));
                }
                Ok(Stored::Invalidated(at)) => (CacheStatus::Miss, Floor::tombstone(at)),
                Err(e) => {
                    tracing::warn!(key = %key.name, error = %e, "unreadable cache entry: reloading");
                    (CacheStatus::Miss, Floor::primary_only())
                }
            },
            Ok(None) => (CacheStatus::Miss, self.absent_floor()),
            Err(_) => (CacheStatus::Bypass, Floor::default()),
        };
        // With replicas, a load nobody stores is this request's own read: as the request reads
        // (its user's position decides where), not shared with other requests.
        if self.fills_paused(reader) || (status == CacheStatus::Bypass && self.replicated.is_some())
        {
            self.count(key, CacheStatus::Bypass);
            return Ok((
                load(reader.pool().await?.clone()).await?,
                CacheStatus::Bypass,
            ));
        }
        let use_store = status == CacheStatus::Miss;
        let bytes = self
            .flight
            .run(&key.name, || async {
                let mut floor = floor;
                // The leader looks once more: a load that finished just before it became leader
                // has stored the entry, and loading it again is what single-flight is for avoiding.
                if use_store {
                    if let Ok(Some(bytes)) = store.get(&key.name).await {
                        match decode::<T>(&bytes) {
                            Ok(Stored::Entry(..)) => return Ok(bytes),
                            Ok(Stored::Invalidated(at)) => floor = floor.max(Floor::tombstone(at)),
                            Err(_) => {}
                        }
                    }
                }
                self.metrics.load(key.kind);
                let fill = if use_store {
                    self.fill_for(reader, floor).await?
                } else {
                    // Redis failing (stages 3 and 4): loaded for this request and the ones
                    // waiting on it, not stored.
                    Fill {
                        pool: reader.pool().await?.clone(),
                        source: FillSource::Uncached,
                    }
                };
                let value = load(fill.pool.clone())
                    .await
                    .inspect_err(|e| fill.failed(e))?;
                let bytes = encode(fill.stamp(self.replicated.as_ref()).await?, &value)?;
                let ttl = self.ttl_for(value.is_some());
                self.store(&fill, &[(key.name.clone(), bytes.clone(), ttl)])
                    .await;
                Ok::<_, ApiError>(bytes)
            })
            .await?;
        self.count(key, status);
        match decode::<T>(&bytes)? {
            Stored::Entry(stamp, value) => {
                reader.saw(stamp);
                Ok((value, status))
            }
            Stored::Invalidated(_) => Err(ApiError::Internal(anyhow::anyhow!(
                "a cache load returned a tombstone"
            ))),
        }
    }

    /// Several entries in one round trip (see [`Found`]). Load the misses through
    /// [`Cache::fill_for_misses`] and store them with [`Cache::put_many`].
    pub async fn get_many<T: DeserializeOwned>(&self, keys: &[Key], reader: &Reader) -> Found<T> {
        let Some(store) = &self.store else {
            return Found::nothing(keys, CacheStatus::Off);
        };
        let names: Vec<String> = keys.iter().map(|k| k.name.clone()).collect();
        let Ok(values) = store.get_many(&names).await else {
            for key in keys {
                self.count(key, CacheStatus::Bypass);
            }
            return Found::nothing(keys, CacheStatus::Bypass);
        };
        let mut status = CacheStatus::Hit;
        let mut floor = Floor::default();
        let absent_floor = self.absent_floor();
        let entries = keys
            .iter()
            .zip(values)
            .map(|(key, bytes)| {
                let entry = match bytes.map(|b| decode::<T>(&b)) {
                    Some(Ok(Stored::Entry(stamp, value))) => {
                        reader.saw(stamp);
                        Some(value)
                    }
                    Some(Ok(Stored::Invalidated(at))) => {
                        floor = floor.max(Floor::tombstone(at));
                        None
                    }
                    Some(Err(_)) => {
                        floor = floor.max(Floor::primary_only());
                        None
                    }
                    None => {
                        floor = floor.max(absent_floor);
                        None
                    }
                };
                let this = if entry.is_some() {
                    CacheStatus::Hit
                } else {
                    CacheStatus::Miss
                };
                self.count(key, this);
                status = status.and(this);
                entry
            })
            .collect();
        Found {
            entries,
            status,
            floor,
        }
    }

    /// Where to load [`Cache::get_many`]'s misses from (see [`Cache::in_front_of`]).
    pub async fn fill_for_misses<T>(&self, reader: &Reader, found: &Found<T>) -> ApiResult<Fill> {
        if found.status == CacheStatus::Bypass {
            return Ok(Fill {
                pool: reader.pool().await?.clone(),
                source: FillSource::Uncached,
            });
        }
        self.fill_for(reader, found.floor).await
    }

    /// The cached value of `key`, if there is one and the cache answers; never loads. For writes
    /// that decide from the cached value whether it is stale.
    pub async fn peek<T: DeserializeOwned>(&self, key: &Key) -> Option<Option<T>> {
        let store = self.store.as_ref()?;
        let bytes = store.get(&key.name).await.ok()??;
        match decode(&bytes).ok()? {
            Stored::Entry(_, value) => Some(value),
            Stored::Invalidated(_) => None,
        }
    }

    /// Stores entries `fill` loaded after a [`Cache::get_many`] miss (one round trip; failures
    /// cost only a later miss).
    pub async fn put_many<T: Serialize>(
        &self,
        reader: &Reader,
        fill: &Fill,
        entries: &[(Key, Option<T>)],
    ) {
        if matches!(fill.source, FillSource::Uncached) || entries.is_empty() {
            return;
        }
        let Ok(stamp) = fill.stamp(self.replicated.as_ref()).await else {
            return;
        };
        reader.saw(stamp);
        let mut encoded = Vec::with_capacity(entries.len());
        for (key, value) in entries {
            self.metrics.load(key.kind);
            if let Ok(bytes) = encode(stamp, value) {
                encoded.push((key.name.clone(), bytes, self.ttl_for(value.is_some())));
            }
        }
        self.store(fill, &encoded).await;
    }

    /// Empties the cache: for writes made behind the app's back (`conduit seed`).
    pub async fn clear(&self) -> anyhow::Result<()> {
        if let Some(store) = &self.store {
            store
                .clear()
                .await
                .map_err(|e| anyhow::anyhow!("emptying the cache at {}: {e}", self.settings.url))?;
        }
        Ok(())
    }

    /// Invalidates entries a committed write made stale: deletes them, or with replicas leaves a
    /// tombstone at the primary's position, past the write (see [`Cache::in_front_of`]). Never
    /// fails the write: if Redis cannot be told now, it is told before the cache is used again
    /// (see [`redis`](self::redis)).
    ///
    /// With edges in front (stage 6), the same keys are purged at every edge, after the entries
    /// here are gone, so an edge's refetch cannot pick up an entry this write made stale.
    pub async fn invalidate(&self, keys: &[Key]) {
        self.invalidate_here(keys).await;
        if let Some(edges) = &self.edges {
            edges.purge(keys).await;
        }
    }

    async fn invalidate_here(&self, keys: &[Key]) {
        let Some(store) = &self.store else { return };
        let names: Vec<String> = keys
            .iter()
            .filter(|k| k.in_app_cache())
            .map(|k| k.name.clone())
            .collect();
        if names.is_empty() {
            return;
        }
        let tombstone = match &self.replicated {
            None => None,
            Some(db) => {
                let at = db.primary_position().await.unwrap_or_else(|e| {
                    // Not knowing where the write ended: a tombstone no server is known to be
                    // past, so these keys are not cached again until it expires.
                    tracing::warn!(error = %e, "primary position unknown: keys left uncached for a while");
                    Lsn(u64::MAX)
                });
                Some((Bytes::from(tombstone(at)), TOMBSTONE_TTL_SECS))
            }
        };
        store.invalidate(&names, tombstone).await;
    }
}

/// What a fill of missing keys must read past, and what it knows it will.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Floor {
    /// The server read must have replayed this far: the newest tombstone among the keys, or for
    /// an absent key where the primary was a shortest life ago (`u64::MAX`: only the primary).
    needs: Lsn,
    /// A position any read from now on includes: the newest tombstone seen, whose write
    /// committed before it was written. A claim, so never `u64::MAX`.
    seen: Lsn,
}

impl Floor {
    /// For a key holding a tombstone at `at` (`u64::MAX`: written when the write's position was
    /// unknown, so it claims nothing).
    fn tombstone(at: Lsn) -> Self {
        Self {
            needs: at,
            seen: if at.0 == u64::MAX { Lsn(0) } else { at },
        }
    }

    /// Only the primary may fill, and nothing is known of what it shows beyond its polls.
    fn primary_only() -> Self {
        Self {
            needs: Lsn(u64::MAX),
            seen: Lsn(0),
        }
    }

    fn max(self, other: Floor) -> Self {
        Self {
            needs: self.needs.max(other.needs),
            seen: self.seen.max(other.seen),
        }
    }
}

/// What [`Cache::get_many`] found.
pub struct Found<T> {
    /// Each key's entry if cached (the entry itself may say "not found"), `None` if not; all
    /// `None` when the cache is failing.
    pub entries: Vec<Option<Option<T>>>,
    /// `hit` only if every key was; `bypass` if the cache is failing.
    pub status: CacheStatus,
    /// What a fill of the misses must read past.
    floor: Floor,
}

impl<T> Found<T> {
    fn nothing(keys: &[Key], status: CacheStatus) -> Self {
        Self {
            entries: keys.iter().map(|_| None).collect(),
            status,
            floor: Floor::default(),
        }
    }
}

impl Fill {
    /// Runs `read`, a load from [`Fill::pool`]; if it fails on a replica, that replica leaves
    /// rotation at once.
    pub async fn read<T>(&self, read: impl Future<Output = ApiResult<T>>) -> ApiResult<T> {
        read.await.inspect_err(|e| self.failed(e))
    }
}

/// First byte of an entry stamped with a position (stage 5 on): `@`, sixteen hex digits, then
/// the JSON. JSON never starts with `@`, so unstamped entries (stages 3 and 4) read as before.
const STAMPED: u8 = b'@';

/// First byte of a tombstone (stage 5 on): `!`, then the sixteen hex digits of a position past
/// the write that made the entry stale. Byte order is position order, which the conditional
/// store in Redis compares by.
const TOMBSTONE: u8 = b'!';

/// What a key of the cache holds.
#[derive(Debug, PartialEq)]
enum Stored<T> {
    /// An entry: its stamp (stage 5 on) and its value (`None`: "not found").
    Entry(Option<Lsn>, Option<T>),
    /// A tombstone: the entry went stale at this position.
    Invalidated(Lsn),
}

fn tombstone(at: Lsn) -> Vec<u8> {
    format!("!{:016x}", at.0).into_bytes()
}

fn encode<T: Serialize>(stamp: Option<Lsn>, value: &Option<T>) -> ApiResult<Bytes> {
    let mut bytes = match stamp {
        Some(lsn) => format!("@{:016x}", lsn.0).into_bytes(),
        None => Vec::new(),
    };
    serde_json::to_writer(&mut bytes, value)
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("encoding a cache entry: {e}")))?;
    Ok(Bytes::from(bytes))
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<Stored<T>, ApiError> {
    let unreadable =
        |what: String| ApiError::Internal(anyhow::anyhow!("decoding a cache entry: {what}"));
    let position = |bytes: &[u8]| -> Result<Lsn, ApiError> {
        let hex = std::str::from_utf8(bytes).map_err(|e| unreadable(e.to_string()))?;
        let lsn = u64::from_str_radix(hex, 16).map_err(|e| unreadable(e.to_string()))?;
        Ok(Lsn(lsn))
    };
    let (stamp, json) = match bytes.first() {
        Some(&TOMBSTONE) if bytes.len() == 17 => {
            return Ok(Stored::Invalidated(position(&bytes[1..17])?))
        }
        Some(&STAMPED) if bytes.len() >= 17 => (Some(position(&bytes[1..17])?), &bytes[17..]),
        _ => (None, bytes),
    };
    let value = serde_json::from_slice(json).map_err(|e| unreadable(e.to_string()))?;
    Ok(Stored::Entry(stamp, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn combined_status_is_a_hit_only_if_every_part_was() {
        use CacheStatus::*;
        assert_eq!(Hit.and(Hit), Hit);
        assert_eq!(Hit.and(Miss), Miss);
        assert_eq!(Miss.and(Bypass), Bypass);
        assert_eq!(Off.and(Hit), Hit);
        assert_eq!(Off.and(Off), Off);
    }

    #[test]
    fn entries_read_back_with_or_without_a_stamp() -> Result<(), ApiError> {
        let plain = encode(None, &Some(vec![1, 2]))?;
        assert_eq!(&plain[..], b"[1,2]");
        assert_eq!(
            decode::<Vec<i32>>(&plain)?,
            Stored::Entry(None, Some(vec![1, 2]))
        );
        let stamped = encode(Some(Lsn(0x1_0000_00ff)), &None::<i32>)?;
        assert_eq!(&stamped[..], b"@00000001000000ffnull");
        assert_eq!(
            decode::<i32>(&stamped)?,
            Stored::Entry(Some(Lsn(0x1_0000_00ff)), None)
        );
        let dead = tombstone(Lsn(0xab));
        assert_eq!(&dead[..], b"!00000000000000ab");
        assert_eq!(decode::<i32>(&dead)?, Stored::Invalidated(Lsn(0xab)));
        // Byte order is position order: what Redis compares tombstones by.
        assert!(tombstone(Lsn(0x100)) > tombstone(Lsn(0xff)));
        Ok(())
    }

    /// A fill's claim of what it read must be a lower bound: "only the primary may fill" and a
    /// tombstone written without a known position ask for the primary but claim nothing, or a
    /// fill that read before a newer write could store over that write's tombstone.
    #[test]
    fn a_floor_claims_only_what_a_tombstone_proves() {
        let unknown = Floor::tombstone(Lsn(u64::MAX));
        assert_eq!((unknown.needs, unknown.seen), (Lsn(u64::MAX), Lsn(0)));
        assert_eq!(Floor::primary_only().seen, Lsn(0));
        let both = Floor::tombstone(Lsn(300)).max(Floor::primary_only());
        assert_eq!((both.needs, both.seen), (Lsn(u64::MAX), Lsn(300)));
    }

    #[test]
    fn ttl_stays_within_its_jitter_and_not_found_is_short() {
        let settings = CacheSettings {
            backend: CacheBackend::None,
            ttl_secs: 100,
            ttl_jitter: 0.1,
            not_found_ttl_secs: 5,
            ..CacheSettings::default()
        };
        let cache = Cache::new(&settings, CacheMetrics::default()).ok();
        let Some(cache) = cache else {
            panic!("cache settings rejected")
        };
        let ttls: Vec<u64> = (0..1000).map(|_| cache.ttl_for(true)).collect();
        assert!(ttls.iter().all(|t| (90..=110).contains(t)), "{ttls:?}");
        assert!(
            ttls.iter().any(|t| *t != ttls[0]),
            "jitter spreads the TTLs"
        );
        assert_eq!(cache.ttl_for(false), 5);
    }
}
