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

use std::future::Future;

use axum::response::{IntoResponseParts, ResponseParts};
use bytes::Bytes;
use rand::Rng;
use serde::{de::DeserializeOwned, Serialize};

pub use self::keys::Key;
use self::redis::RedisStore;
use self::single_flight::SingleFlight;
use sqlx::PgPool;

use crate::{
    db::{Database, Lsn, Reader},
    error::{ApiError, ApiResult},
    metrics::CacheMetrics,
    settings::{CacheBackend, CacheSettings},
};

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
    /// Stage 5 on: the database whose primary fills read from, and whose position stamps entries.
    stamps: Option<Database>,
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
            stamps: None,
        })
    }

    /// The cache in front of a database with replicas (stage 5 on): fills read the primary, and
    /// each entry carries the primary's position after its fill.
    ///
    /// Why not fill from a replica: a fill after an invalidation must never store a row older
    /// than the write that invalidated it, and a lagging replica would give exactly that, for
    /// every reader, until the entry expires. The primary is never behind. Fills are the
    /// cache's misses, a small share of reads once it is warm, so this costs the primary little.
    ///
    /// Why the stamp: a reader who saw an entry must not see an older state afterwards on a
    /// replica (monotonic reads), so a hit moves the reader's position up to the entry's stamp
    /// (see [`crate::db::session`]).
    pub fn in_front_of(mut self, db: &Database) -> Self {
        if db.replicas().is_some() {
            self.stamps = Some(db.clone());
        }
        self
    }

    /// The pool a fill reads from: the primary when the stage has replicas (see
    /// [`Cache::in_front_of`]), else the request's own.
    async fn fill_pool(&self, reader: &Reader) -> ApiResult<PgPool> {
        Ok(match &self.stamps {
            Some(_) => reader.primary().clone(),
            None => reader.pool().await?.clone(),
        })
    }

    /// Whether misses must not be stored now: the stage has replicas and its primary is down
    /// (or this request is a second try after a read on the primary failed). Its reads are then
    /// served by replicas, which may lack the primary's last writes; an entry filled from one
    /// would outlive the outage, so misses are served uncached (`bypass`).
    fn fills_paused(&self, reader: &Reader) -> bool {
        self.stamps
            .as_ref()
            .is_some_and(|db| !db.primary_up() || reader.avoids_primary())
    }

    /// The stamp for entries filled just now: the primary's position, at or past what they show.
    async fn stamp(&self) -> ApiResult<Option<Lsn>> {
        match &self.stamps {
            Some(db) => Ok(Some(db.primary_position().await?)),
            None => Ok(None),
        }
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
        let status = match store.get(&key.name).await {
            Ok(Some(bytes)) => match decode::<T>(&bytes) {
                Ok((stamp, value)) => {
                    self.count(key, CacheStatus::Hit);
                    reader.saw(stamp);
                    return Ok((value, CacheStatus::Hit));
                }
                Err(e) => {
                    tracing::warn!(key = %key.name, error = %e, "unreadable cache entry: reloading");
                    CacheStatus::Miss
                }
            },
            Ok(None) => CacheStatus::Miss,
            Err(_) => CacheStatus::Bypass,
        };
        if self.fills_paused(reader) {
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
                // The leader looks once more: a load that finished just before it became leader
                // has stored the entry, and loading it again is what single-flight is for avoiding.
                if use_store {
                    if let Ok(Some(bytes)) = store.get(&key.name).await {
                        return Ok(bytes);
                    }
                }
                self.metrics.load(key.kind);
                let value = load(self.fill_pool(reader).await?).await?;
                let ttl = self.ttl_for(value.is_some());
                let bytes = encode(self.stamp().await?, &value)?;
                if use_store {
                    // A failed store only costs the next request a miss.
                    let _ = store
                        .put_many(&[(key.name.clone(), bytes.clone(), ttl)])
                        .await;
                }
                Ok::<_, ApiError>(bytes)
            })
            .await?;
        self.count(key, status);
        let (stamp, value) = decode(&bytes)?;
        reader.saw(stamp);
        Ok((value, status))
    }

    /// Several entries in one round trip: each `Some(entry)` if cached (the entry itself may say
    /// "not found"), `None` if not; all `None` and [`CacheStatus::Bypass`] if the cache is failing.
    /// Load the misses from [`Cache::fill_pool_for`] and store them with [`Cache::put_many`].
    pub async fn get_many<T: DeserializeOwned>(
        &self,
        keys: &[Key],
        reader: &Reader,
    ) -> (Vec<Option<Option<T>>>, CacheStatus) {
        let Some(store) = &self.store else {
            return (keys.iter().map(|_| None).collect(), CacheStatus::Off);
        };
        let names: Vec<String> = keys.iter().map(|k| k.name.clone()).collect();
        match store.get_many(&names).await {
            Ok(values) => {
                let mut status = CacheStatus::Hit;
                let entries = keys
                    .iter()
                    .zip(values)
                    .map(|(key, bytes)| {
                        let entry =
                            bytes
                                .and_then(|b| decode::<T>(&b).ok())
                                .map(|(stamp, value)| {
                                    reader.saw(stamp);
                                    value
                                });
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
                (entries, status)
            }
            Err(_) => {
                for key in keys {
                    self.count(key, CacheStatus::Bypass);
                }
                (keys.iter().map(|_| None).collect(), CacheStatus::Bypass)
            }
        }
    }

    /// The cached value of `key`, if there is one and the cache answers; never loads. For writes
    /// that decide from the cached value whether it is stale.
    pub async fn peek<T: DeserializeOwned>(&self, key: &Key) -> Option<Option<T>> {
        let store = self.store.as_ref()?;
        let bytes = store.get(&key.name).await.ok()??;
        decode(&bytes).ok().map(|(_, value)| value)
    }

    /// Where to load [`Cache::get_many`]'s misses from (see [`Cache::in_front_of`]).
    pub async fn fill_pool_for(&self, reader: &Reader) -> ApiResult<PgPool> {
        if self.store.is_some() && !self.fills_paused(reader) {
            self.fill_pool(reader).await
        } else {
            Ok(reader.pool().await?.clone())
        }
    }

    /// Stores entries loaded after a [`Cache::get_many`] miss (one round trip; failures ignored).
    pub async fn put_many<T: Serialize>(&self, reader: &Reader, entries: &[(Key, Option<T>)]) {
        let Some(store) = &self.store else { return };
        if self.fills_paused(reader) {
            return;
        }
        let Ok(stamp) = self.stamp().await else {
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
        let _ = store.put_many(&encoded).await;
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

    /// Deletes entries a committed write made stale. Never fails the write: if Redis cannot be
    /// told now, it is told before the cache is used again (see [`redis`](self::redis)).
    pub async fn invalidate(&self, keys: &[Key]) {
        let Some(store) = &self.store else { return };
        let names: Vec<String> = keys.iter().map(|k| k.name.clone()).collect();
        store.delete(&names).await;
    }
}

/// First byte of an entry stamped with a position (stage 5 on): `@`, sixteen hex digits, then
/// the JSON. JSON never starts with `@`, so unstamped entries (stages 3 and 4) read as before.
const STAMPED: u8 = b'@';

fn encode<T: Serialize>(stamp: Option<Lsn>, value: &Option<T>) -> ApiResult<Bytes> {
    let mut bytes = match stamp {
        Some(lsn) => format!("@{:016x}", lsn.0).into_bytes(),
        None => Vec::new(),
    };
    serde_json::to_writer(&mut bytes, value)
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("encoding a cache entry: {e}")))?;
    Ok(Bytes::from(bytes))
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<(Option<Lsn>, Option<T>), ApiError> {
    let unreadable =
        |what: String| ApiError::Internal(anyhow::anyhow!("decoding a cache entry: {what}"));
    let (stamp, json) = match bytes.first() {
        Some(&STAMPED) if bytes.len() >= 17 => {
            let hex = std::str::from_utf8(&bytes[1..17]).map_err(|e| unreadable(e.to_string()))?;
            let lsn = u64::from_str_radix(hex, 16).map_err(|e| unreadable(e.to_string()))?;
            (Some(Lsn(lsn)), &bytes[17..])
        }
        _ => (None, bytes),
    };
    let value = serde_json::from_slice(json).map_err(|e| unreadable(e.to_string()))?;
    Ok((stamp, value))
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
        assert_eq!(decode::<Vec<i32>>(&plain)?, (None, Some(vec![1, 2])));
        let stamped = encode(Some(Lsn(0x1_0000_00ff)), &None::<i32>)?;
        assert_eq!(&stamped[..], b"@00000001000000ffnull");
        assert_eq!(decode::<i32>(&stamped)?, (Some(Lsn(0x1_0000_00ff)), None));
        Ok(())
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
