//! The app's side of the cache host: one multiplexed Redis connection, bounded by timeouts, behind
//! a circuit breaker, with a memory of invalidations it could not deliver.
//!
//! Every operation either finishes within `cache.op_timeout_ms` or counts as a failure; failures
//! open the [`Breaker`], and while it is open nobody waits on Redis. Reads that fail are harmless
//! (the caller loads from the database). A *delete* that fails is not: the entry it should have
//! removed could be served stale once Redis is back. So a failed delete opens the breaker at once
//! and its keys are kept; the probe that closes the breaker deletes them first (or, if more were
//! lost than [`RedisStore::max_pending`] can hold, empties the cache), before any hit is served.

use std::{collections::HashSet, sync::Mutex, time::Duration};

use bytes::Bytes;
use redis::{aio::MultiplexedConnection, AsyncConnectionConfig, Client};

use super::breaker::{Admit, Breaker};
use crate::settings::CacheSettings;

/// Invalidations that could not be delivered, waiting for Redis to return.
#[derive(Default)]
struct Pending {
    keys: HashSet<String>,
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
}

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
                pending.keys.iter().cloned().collect::<Vec<_>>(),
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
            for chunk in keys.chunks(500) {
                redis::cmd("DEL")
                    .arg(chunk)
                    .query_async::<()>(&mut connection)
                    .await?;
            }
        }
        {
            let mut pending = lock(&self.pending);
            for key in &keys {
                pending.keys.remove(key);
            }
            if overflowed {
                *pending = Pending::default();
            }
        }
        *lock(&self.connection) = Some(connection.clone());
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
        let mut connection = self
            .client
            .get_multiplexed_async_connection_with_config(&self.config)
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

    /// `MGET keys`: each entry's bytes or `None`, in order.
    pub async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Bytes>>, StoreError> {
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
            pipe.cmd("SET")
                .arg(key)
                .arg(value.as_ref())
                .arg("EX")
                .arg(*ttl)
                .ignore();
        }
        let result = pipe.query_async::<()>(&mut connection).await;
        self.record(result)
    }

    /// Sets `key` to `value` unless it already holds a greater one (byte order, so values must
    /// be fixed-width), and gives it `ttl` seconds either way: one round trip, atomic in Redis.
    /// For values that may only move forward, such as a user's read-your-writes position.
    pub async fn raise(&self, key: &str, value: &str, ttl: u64) -> Result<(), StoreError> {
        const RAISE: &str = "local cur = redis.call('GET', KEYS[1]) \
            if (not cur) or ARGV[1] > cur then \
              redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2]) \
            else redis.call('EXPIRE', KEYS[1], ARGV[2]) end \
            return 1";
        let mut connection = self.connection().await?;
        let result = redis::cmd("EVAL")
            .arg(RAISE)
            .arg(1)
            .arg(key)
            .arg(value)
            .arg(ttl)
            .query_async::<()>(&mut connection)
            .await;
        self.record(result)
    }

    /// `DEL keys`. If that cannot be done now, the keys are remembered and the breaker opens, so
    /// no hit is served until the deletes are delivered.
    pub async fn delete(&self, keys: &[String]) {
        if keys.is_empty() {
            return;
        }
        let result = match self.connection().await {
            Ok(mut connection) => {
                let result = redis::cmd("DEL")
                    .arg(keys)
                    .query_async::<()>(&mut connection)
                    .await;
                self.record(result)
            }
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            let mut pending = lock(&self.pending);
            for key in keys {
                if pending.keys.len() >= self.max_pending {
                    pending.overflowed = true;
                    break;
                }
                pending.keys.insert(key.clone());
            }
            drop(pending);
            if !matches!(e, StoreError::Skipped) {
                tracing::warn!(error = %e, "invalidation not delivered: kept for later");
            }
            self.breaker.trip();
        }
    }
}
