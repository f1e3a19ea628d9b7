//! The app's side of the cache host: one multiplexed Redis connection, bounded by timeouts, behind
//! a circuit breaker, with a memory of invalidations it could not deliver.
//!
//! Every read either finishes within `cache.op_timeout_ms` or counts as a failure; failures
//! open the [`Breaker`], and while it is open no read waits on Redis. Reads that fail are harmless
//! (the caller loads from the database). An *invalidation* that fails is not: the entry it should
//! have removed could be served stale once Redis is back, and meanwhile by every *other* app host
//! whose Redis answers (stage 4 on runs several against one cache host). So invalidations do not
//! go through the breaker: each is sent even while it is open (a read timing out on this host
//! says little about Redis), waiting up to `cache.invalidation_timeout_ms`. One that still fails
//! opens the breaker at once and its keys are kept; later invalidations join them without
//! waiting, and the probe that closes the breaker delivers them all first (or, if more were lost
//! than [`RedisStore::max_pending`] can hold, empties the cache), before any hit is served here.
//! What stays open: while this host cannot reach Redis and others can, they may serve an entry
//! a write here made stale, until the probe delivers its invalidation or the entry expires.
//!
//! A CI run found the gap this closes: with two app hosts, a read timing out on one opened its
//! breaker, a write there skipped Redis, and the next read, through the other host, was a hit
//! on the entry the write had made stale.
//!
//! An invalidation either deletes the entries (stages 3 and 4) or replaces each with a
//! *tombstone* (stage 5 on, see [`super::Cache::in_front_of`]): a short value saying at which
//! database position the entry went stale. [`RedisStore::fill_many`] then stores a fill only over
//! an absent key or a tombstone the fill's read is known to be past; and a tombstone never
//! replaces a newer one ([`INVALIDATE`]: a kept invalidation delivered late must not lower the
//! bar another host's write raised).

use std::{
    collections::HashMap,
    sync::{LazyLock, Mutex},
    time::{Duration, Instant},
};

use bytes::Bytes;
use redis::{aio::MultiplexedConnection, AsyncConnectionConfig, Client, Script};

use super::breaker::{Admit, Breaker};
use crate::settings::CacheSettings;

/// What an invalidation leaves behind: nothing (`DEL`), or this tombstone for this many seconds.
pub type Tombstone = Option<(Bytes, u64)>;

/// Invalidations that could not be delivered, waiting for Redis to return.
#[derive(Default)]
struct Pending {
    /// Each key and its newest tombstone.
    keys: HashMap<String, Tombstone>,
    /// More were lost than could be remembered: empty the whole cache on return.
    overflowed: bool,
}

/// A connection to the cache host, used only while the breaker allows.
pub struct RedisStore {
    client: Client,
    config: AsyncConnectionConfig,
    connection: Mutex<Option<MultiplexedConnection>>,
    breaker: Breaker,
    pending: Mutex<Pending>,
    /// Most undelivered invalidations remembered one by one. Each is a short key; 10,000 is
    /// about a megabyte, far more than a few seconds of outage produce at the rates measured here.
    max_pending: usize,
    /// Longest wait for Redis to take an invalidation (`cache.invalidation_timeout_ms`).
    invalidation_timeout: Duration,
    /// When the connection in use was made: Redis may have lost everything before it (a restart,
    /// or the flush a recovery does), tombstones included.
    connected_at: Mutex<Option<Instant>>,
}

/// Stores each fill only over an absent key or a tombstone no newer than the fill's read.
/// `KEYS`: the entries' keys; `ARGV[1]`: the position the fill's read is known to include, as a
/// tombstone would say it (`!` and sixteen hex digits: byte order is number order); then each
/// entry's value and TTL. A key holding an entry is left alone: someone filled it already, maybe
/// from a newer state. Returns how many were stored.
static FILL: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "local stored = 0 \
         for i, key in ipairs(KEYS) do \
           local cur = redis.call('GET', key) \
           if (not cur) or (string.sub(cur, 1, 1) == '!' and string.sub(cur, 1, 17) <= ARGV[1]) then \
             redis.call('SET', key, ARGV[2 * i], 'EX', ARGV[2 * i + 1]) \
             stored = stored + 1 \
           end \
         end \
         return stored",
    )
});

/// Leaves tombstones: each key set to its tombstone unless it already holds a newer one (byte
/// order is position order), which is then left as it is. An entry is always replaced. `KEYS`:
/// the keys; `ARGV`: each key's tombstone and TTL in turn.
static INVALIDATE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "for i, key in ipairs(KEYS) do \
           local tomb = ARGV[2 * i - 1] \
           local cur = redis.call('GET', key) \
           if not (cur and string.sub(cur, 1, 1) == '!' and cur > tomb) then \
             redis.call('SET', key, tomb, 'EX', ARGV[2 * i]) \
           end \
         end \
         return 1",
    )
});

/// Sets a key to `ARGV[1]` unless it holds a greater value (byte order), and gives it `ARGV[2]`
/// seconds either way.
static RAISE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "local cur = redis.call('GET', KEYS[1]) \
         if (not cur) or ARGV[1] > cur then \
           redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2]) \
         else redis.call('EXPIRE', KEYS[1], ARGV[2]) end \
         return 1",
    )
});

/// Why a cache operation did not happen.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The breaker is open: Redis failed recently.
    #[error("cache skipped: circuit breaker open")]
    Skipped,
    /// Redis answered with an error, or not in time, or the connection is gone.
    #[error("cache host: {0}")]
    Redis(#[from] redis::RedisError),
}

/// Longest wait for Redis to connect and to empty itself for the seeder ([`RedisStore::clear`]):
/// an empty or small cache answers `FLUSHDB` in milliseconds; 5 s only trips when the cache host
/// is down, and seeding then fails with that error rather than hang.
const CLEAR_TIMEOUT: Duration = Duration::from_secs(5);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl RedisStore {
    /// Prepares the client; connects on first use (the app starts even when Redis is down).
    pub fn new(settings: &CacheSettings) -> anyhow::Result<Self> {
        let client = Client::open(settings.url.as_str())
            .map_err(|e| anyhow::anyhow!("cache.url {:?}: {e}", settings.url))?;
        let config = AsyncConnectionConfig::new()
            .set_response_timeout(Some(Duration::from_millis(settings.op_timeout_ms)))
            .set_connection_timeout(Some(Duration::from_millis(settings.connect_timeout_ms)));
        Ok(Self {
            client,
            config,
            connection: Mutex::new(None),
            breaker: Breaker::new(
                settings.breaker_failures,
                Duration::from_millis(settings.breaker_open_ms),
            ),
            pending: Mutex::new(Pending::default()),
            max_pending: settings.max_pending_invalidations,
            invalidation_timeout: Duration::from_millis(settings.invalidation_timeout_ms),
            connected_at: Mutex::new(None),
        })
    }

    /// Whether the breaker is open (for the metrics gauge).
    pub fn breaker_open(&self) -> bool {
        self.breaker.is_open()
    }

    /// Invalidations waiting for Redis to return.
    pub fn pending_invalidations(&self) -> usize {
        lock(&self.pending).keys.len()
    }

    /// How long the connection in use has been up: `None` while there is none.
    pub fn connected_for(&self) -> Option<Duration> {
        lock(&self.connected_at).map(|at| at.elapsed())
    }

    /// A connection to use now, if the breaker allows. The probe reconnects and repairs first.
    async fn connection(&self) -> Result<MultiplexedConnection, StoreError> {
        match self.breaker.admit() {
            Admit::Skip => Err(StoreError::Skipped),
            Admit::Use => match lock(&self.connection).clone() {
                Some(connection) => Ok(connection),
                None => Err(StoreError::Skipped),
            },
            Admit::Probe => match self.recover().await {
                Ok(connection) => {
                    tracing::info!("cache host reachable: using the cache again");
                    self.breaker.succeeded();
                    Ok(connection)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cache host still unreachable");
                    self.breaker.failed();
                    Err(e.into())
                }
            },
        }
    }

    /// The connection an invalidation goes out on, waiting up to the invalidation timeout: the
    /// breaker's (the probe's, when one is due: it repairs and keeps it, as for a read), else,
    /// the breaker open (see the module's comment), the one in use, or a new one if there is
    /// none (not kept: only the probe decides when reads use Redis again). Refused without a
    /// try while invalidations are kept undelivered: one has failed since the last probe, and the
    /// next probe delivers them all.
    async fn invalidation_connection(&self) -> Result<MultiplexedConnection, StoreError> {
        {
            let pending = lock(&self.pending);
            if !pending.keys.is_empty() || pending.overflowed {
                return Err(StoreError::Skipped);
            }
        }
        let usable = match self.connection().await {
            Ok(connection) => Some(connection),
            Err(_) => lock(&self.connection).clone(),
        };
        let mut connection = match usable {
            Some(connection) => connection,
            None => {
                self.client
                    .get_multiplexed_async_connection_with_config(&self.config)
                    .await?
            }
        };
        connection.set_response_timeout(self.invalidation_timeout);
        Ok(connection)
    }

    /// A fresh connection, checked with PING, after delivering the invalidations that were lost.
    async fn recover(&self) -> Result<MultiplexedConnection, redis::RedisError> {
        // A new connection each time: the old one may be dead (Redis restarted) or clogged with
        // answers to requests that timed out while Redis was frozen.
        lock(&self.connection).take();
        let mut connection = self
            .client
            .get_multiplexed_async_connection_with_config(&self.config)
            .await?;
        redis::cmd("PING")
            .query_async::<()>(&mut connection)
            .await?;
        let (keys, overflowed) = {
            let pending = lock(&self.pending);
            (
                pending
                    .keys
                    .iter()
                    .map(|(k, t)| (k.clone(), t.clone()))
                    .collect::<Vec<_>>(),
                pending.overflowed,
            )
        };
        if overflowed {
            tracing::warn!("more invalidations were lost than remembered: emptying the cache");
            redis::cmd("FLUSHDB")
                .query_async::<()>(&mut connection)
                .await?;
        } else if !keys.is_empty() {
            tracing::info!(
                keys = keys.len(),
                "delivering invalidations lost while away"
            );
            let mut patient = connection.clone();
            patient.set_response_timeout(self.invalidation_timeout);
            for chunk in keys.chunks(500) {
                deliver(&mut patient, chunk).await?;
            }
        }
        {
            let mut pending = lock(&self.pending);
            for (key, delivered) in &keys {
                // One kept meanwhile with a newer tombstone waits for the next probe.
                if pending.keys.get(key) == Some(delivered) {
                    pending.keys.remove(key);
                }
            }
            if overflowed {
                *pending = Pending::default();
            }
        }
        *lock(&self.connection) = Some(connection.clone());
        *lock(&self.connected_at) = Some(Instant::now());
        Ok(connection)
    }

    fn record<T>(&self, result: Result<T, redis::RedisError>) -> Result<T, StoreError> {
        match result {
            Ok(value) => {
                self.breaker.succeeded();
                Ok(value)
            }
            Err(e) => {
                if self.breaker.failed() {
                    tracing::warn!(error = %e, "cache host failing: bypassing the cache");
                }
                Err(e.into())
            }
        }
    }

    /// Empties the cache (after writes that bypassed the app, such as seeding). Connects
    /// directly, breaker or not: the caller needs to know it happened.
    pub async fn clear(&self) -> Result<(), redis::RedisError> {
        // Not a request's lookup: nobody waits on it but the seeder, so not the request path's
        // 50 ms bound either, which a just-started 0.05-core cache host can miss by a few CPU
        // periods (seeding in the lab tests failed on "timed out" on a loaded machine).
        let patient = AsyncConnectionConfig::new()
            .set_response_timeout(Some(CLEAR_TIMEOUT))
            .set_connection_timeout(Some(CLEAR_TIMEOUT));
        let mut connection = self
            .client
            .get_multiplexed_async_connection_with_config(&patient)
            .await?;
        redis::cmd("FLUSHDB")
            .query_async::<()>(&mut connection)
            .await
    }

    /// `GET key`: the entry's bytes, or `None` when absent.
    pub async fn get(&self, key: &str) -> Result<Option<Bytes>, StoreError> {
        let mut connection = self.connection().await?;
        let result = redis::cmd("GET")
            .arg(key)
            .query_async::<Option<Vec<u8>>>(&mut connection)
            .await;
        self.record(result).map(|v| v.map(Bytes::from))
    }

    /// `MGET keys`: each entry's bytes or `None`, in order. No keys, no round trip: Redis
    /// refuses an `MGET` without arguments, and counted as the cache host failing, an empty page
    /// (a feed of someone who follows nobody) used to trip the breaker for every request.
    pub async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Bytes>>, StoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut connection = self.connection().await?;
        let result = redis::cmd("MGET")
            .arg(keys)
            .query_async::<Vec<Option<Vec<u8>>>>(&mut connection)
            .await;
        self.record(result)
            .map(|values| values.into_iter().map(|v| v.map(Bytes::from)).collect())
    }

    /// `SET key value EX ttl` for each entry, in one round trip.
    pub async fn put_many(&self, entries: &[(String, Bytes, u64)]) -> Result<(), StoreError> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut connection = self.connection().await?;
        let mut pipe = redis::pipe();
        for (key, value, ttl) in entries {
            set_with_ttl(&mut pipe, key, value, *ttl);
        }
        let result = pipe.query_async::<()>(&mut connection).await;
        self.record(result)
    }

    /// Stores fills whose read is known to include position `read_from` (a tombstone's bytes:
    /// see [`FILL`]), each only over an absent key or an older tombstone, in one round trip,
    /// atomic in Redis. Returns how many were stored.
    pub async fn fill_many(
        &self,
        entries: &[(String, Bytes, u64)],
        read_from: &[u8],
    ) -> Result<usize, StoreError> {
        if entries.is_empty() {
            return Ok(0);
        }
        let mut connection = self.connection().await?;
        let mut invocation = FILL.prepare_invoke();
        invocation.arg(read_from);
        for (key, value, ttl) in entries {
            invocation.key(key).arg(value.as_ref()).arg(*ttl);
        }
        let result = invocation.invoke_async::<usize>(&mut connection).await;
        self.record(result)
    }

    /// Sets `key` to `value` unless it already holds a greater one (byte order, so values must
    /// be fixed-width), and gives it `ttl` seconds either way: one round trip, atomic in Redis.
    /// For values that may only move forward, such as a user's read-your-writes position.
    pub async fn raise(&self, key: &str, value: &str, ttl: u64) -> Result<(), StoreError> {
        let mut connection = self.connection().await?;
        let result = RAISE
            .key(key)
            .arg(value)
            .arg(ttl)
            .invoke_async::<()>(&mut connection)
            .await;
        self.record(result)
    }

    /// Invalidates `keys`: deletes them, or with a `tombstone` sets each to it. If that cannot be
    /// done now, the keys are remembered and the breaker opens, so no hit is served until the
    /// invalidations are delivered.
    pub async fn invalidate(&self, keys: &[String], tombstone: Tombstone) {
        if keys.is_empty() {
            return;
        }
        let entries: Vec<(String, Tombstone)> = keys
            .iter()
            .map(|k| (k.clone(), tombstone.clone()))
            .collect();
        let result = match self.invalidation_connection().await {
            Ok(mut connection) => {
                let result = deliver(&mut connection, &entries).await;
                self.record(result)
            }
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            let mut pending = lock(&self.pending);
            for (key, tombstone) in entries {
                if pending.keys.len() >= self.max_pending && !pending.keys.contains_key(&key) {
                    pending.overflowed = true;
                    break;
                }
                // The newest tombstone wins (byte order is position order).
                let kept = pending.keys.entry(key).or_insert(None);
                if tombstone > *kept {
                    *kept = tombstone;
                }
            }
            drop(pending);
            if !matches!(e, StoreError::Skipped) {
                tracing::warn!(error = %e, "invalidation not delivered: kept for later");
            }
            self.breaker.trip();
        }
    }
}

/// Delivers `entries`: `DEL` for those without a tombstone (stages 3 and 4), [`INVALIDATE`] for
/// the others (stage 5 on). An app has tombstones or none, so this is one round trip.
async fn deliver(
    connection: &mut MultiplexedConnection,
    entries: &[(String, Tombstone)],
) -> Result<(), redis::RedisError> {
    let deleted: Vec<&String> = entries
        .iter()
        .filter(|(_, t)| t.is_none())
        .map(|(k, _)| k)
        .collect();
    if !deleted.is_empty() {
        redis::cmd("DEL")
            .arg(deleted)
            .query_async::<()>(&mut *connection)
            .await?;
    }
    let mut tombstones = INVALIDATE.prepare_invoke();
    let mut any = false;
    for (key, tombstone) in entries {
        if let Some((value, ttl)) = tombstone {
            tombstones.key(key).arg(value.as_ref()).arg(*ttl);
            any = true;
        }
    }
    if any {
        tombstones.invoke_async::<()>(connection).await?;
    }
    Ok(())
}

/// Adds `SET key value EX ttl` to `pipe`, its answer ignored.
fn set_with_ttl(pipe: &mut redis::Pipeline, key: &str, value: &Bytes, ttl: u64) {
    pipe.cmd("SET")
        .arg(key)
        .arg(value.as_ref())
        .arg("EX")
        .arg(ttl)
        .ignore();
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    /// A real Redis, kept running while the first value lives, and cache settings pointing at it.
    async fn redis() -> (archlab::cache::TestRedis, crate::settings::CacheSettings) {
        let redis = archlab::cache::TestRedis::start()
            .await
            .expect("start Redis");
        let settings = crate::settings::CacheSettings {
            url: redis.url(),
            ..crate::settings::CacheSettings::default()
        };
        (redis, settings)
    }

    fn tomb(at: u64) -> Bytes {
        Bytes::from(format!("!{at:016x}"))
    }

    /// The conditional store that keeps a lagging replica's rows out of the cache, against a
    /// real Redis: a fill lands over an absent key or an older tombstone, never over a newer
    /// tombstone (a write landed while it read) nor over an entry someone filled already.
    #[tokio::test]
    async fn a_fill_never_overwrites_a_newer_invalidation_or_an_entry() {
        let (_redis, settings) = redis().await;
        let store = RedisStore::new(&settings).unwrap();
        let key = |name: &str| name.to_owned();
        // Asking for nothing is an answer, not a failure of the cache host.
        assert_eq!(
            store.get_many(&[]).await.unwrap(),
            Vec::<Option<Bytes>>::new()
        );
        store
            .invalidate(&[key("old"), key("new")], Some((tomb(100), 60)))
            .await;
        store.invalidate(&[key("new")], Some((tomb(300), 60))).await;
        assert_eq!(store.get("new").await.unwrap(), Some(tomb(300)));

        // A fill whose read includes position 200: past "old"'s tombstone, not "new"'s.
        let fills: Vec<(String, Bytes, u64)> = ["old", "new", "absent"]
            .iter()
            .map(|k| {
                (
                    key(k),
                    Bytes::from(format!("@{:016x}{{\"k\":\"{k}\"}}", 200)),
                    60,
                )
            })
            .collect();
        let stored = store.fill_many(&fills, &tomb(200)).await.unwrap();
        assert_eq!(stored, 2);
        assert_eq!(store.get("old").await.unwrap(), Some(fills[0].1.clone()));
        assert_eq!(
            store.get("new").await.unwrap(),
            Some(tomb(300)),
            "a newer write wins"
        );
        assert_eq!(store.get("absent").await.unwrap(), Some(fills[2].1.clone()));

        // A later fill, even from a newer state, leaves an entry alone; an exact tombstone is
        // past.
        let again = [(key("old"), Bytes::from_static(b"@00000000000001ff[]"), 60)];
        assert_eq!(store.fill_many(&again, &tomb(0x1ff)).await.unwrap(), 0);
        assert_eq!(store.get("old").await.unwrap(), Some(fills[0].1.clone()));
        let exact = [(key("new"), Bytes::from_static(b"@0000000000000300[]"), 60)];
        assert_eq!(store.fill_many(&exact, &tomb(300)).await.unwrap(), 1);

        // A tombstone never replaces a newer one: an invalidation kept while Redis was away and
        // delivered late must not lower the bar a later write raised.
        store
            .invalidate(&[key("new")], Some((tomb(0x400), 60)))
            .await;
        store
            .invalidate(&[key("new")], Some((tomb(0x350), 60)))
            .await;
        assert_eq!(store.get("new").await.unwrap(), Some(tomb(0x400)));

        // Without tombstones (stages 3 and 4) an invalidation deletes.
        store.invalidate(&[key("absent")], None).await;
        assert_eq!(store.get("absent").await.unwrap(), None);
    }

    /// Two app hosts on one Redis. One has its breaker open (its reads timed out, say: it spares
    /// them the wait) while Redis answers the other. A write on the first must still reach
    /// Redis, or the second keeps serving the entry that write made stale.
    #[tokio::test]
    async fn an_invalidation_reaches_redis_while_this_hosts_reads_skip_it() {
        let (_redis, settings) = redis().await;
        let (writer, other) = (
            RedisStore::new(&settings).unwrap(),
            RedisStore::new(&settings).unwrap(),
        );
        let entry = Bytes::from_static(b"{\"favoritesCount\":1}");
        let key = "article:1".to_owned();
        other
            .put_many(&[(key.clone(), entry.clone(), 60)])
            .await
            .unwrap();
        // The writer has used Redis (a connection in use), then its breaker opened.
        assert_eq!(writer.get(&key).await.unwrap(), Some(entry.clone()));
        writer.breaker.trip();
        assert!(matches!(writer.get(&key).await, Err(StoreError::Skipped)));

        writer.invalidate(std::slice::from_ref(&key), None).await;
        assert_eq!(writer.pending_invalidations(), 0, "delivered, not kept");
        assert_eq!(other.get(&key).await.unwrap(), None, "gone for every host");

        // Stage 5's kind, from a writer that never had a connection: one is made for it.
        other
            .put_many(&[(key.clone(), entry.clone(), 60)])
            .await
            .unwrap();
        let fresh = RedisStore::new(&settings).unwrap();
        fresh.breaker.trip();
        fresh
            .invalidate(std::slice::from_ref(&key), Some((tomb(7), 60)))
            .await;
        assert_eq!(other.get(&key).await.unwrap(), Some(tomb(7)));
    }
}
