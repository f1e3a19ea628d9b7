//! The database seam: which PostgreSQL pool a query goes to.
//!
//! Handlers never hold a pool directly; they ask [`Database`] for the pool to *read* from or the
//! pool to *write* to. In stage 1 both are the same single pool. Stage 5 makes reads go to
//! replicas and stage 7 picks a shard, by changing this type only: the handlers already say which
//! kind of access each query is.

use std::time::Duration;

use anyhow::Context;
use sqlx::{
    postgres::{PgConnectOptions, PgPoolOptions},
    ConnectOptions, PgPool,
};

use crate::settings::DatabaseSettings;

/// Embedded migrations (`services/conduit/migrations`), applied at start-up.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Bits at the bottom of every id that name the shard which made it, so holds its row
/// (migrations/0001_schema.sql, `next_id()`: a per-shard sequence shifted left by these bits, or'ed
/// with the shard's number). 8 bits: up to 256 shards, far more than a stage runs.
pub const SHARD_BITS: u32 = 8;

/// The shard that holds the row with this `id`: its low [`SHARD_BITS`] bits. Shard 0 until stage
/// 7 runs several; an article's slug ends in its id, so a slug alone names its shard.
pub fn shard_of(id: i64) -> u8 {
    // The mask keeps 8 bits: the cast cannot truncate anything.
    (id & ((1 << SHARD_BITS) - 1)) as u8
}

/// Routes queries to a pool. Stage 1: one pool for everything.
#[derive(Clone, Debug)]
pub struct Database {
    single: PgPool,
}

impl Database {
    /// Connects lazily (the first query opens the first connection), so the app starts even while
    /// the database is still coming up; `/readyz` tells when it is reachable.
    pub fn connect_lazy(settings: &DatabaseSettings) -> anyhow::Result<Self> {
        let options: PgConnectOptions = settings
            .url
            .expose()
            .parse()
            .context("parsing database.url")?;
        let options = options
            .options([
                (
                    "statement_timeout",
                    settings.statement_timeout_ms.to_string(),
                ),
                // Plan each prepared statement once per connection, not once per execution.
                // Every statement here is an indexed lookup or a bounded range, whose best plan
                // does not depend on its parameters; but for `id = ANY($1)` PostgreSQL's default
                // (`auto`) keeps choosing a fresh custom plan, because the generic plan's guess
                // at the array's length makes it look dearer, so it is planned on every call.
                // The effect, recorded: stages/01-monolith/results/read-baseline.json against
                // read-baseline-auto-plans.json (+16 % single reads, +63 % list pages).
                ("plan_cache_mode", "force_generic_plan".to_owned()),
            ])
            .application_name("conduit")
            // Every query at debug level would flood the logs and skew benchmarks.
            .log_statements(tracing::log::LevelFilter::Trace)
            .log_slow_statements(tracing::log::LevelFilter::Warn, Duration::from_millis(500));
        let pool = PgPoolOptions::new()
            .max_connections(settings.max_connections)
            .acquire_timeout(Duration::from_millis(settings.acquire_timeout_ms))
            .connect_lazy_with(options);
        Ok(Self { single: pool })
    }

    /// Wraps an existing pool (tests).
    pub fn from_pool(pool: PgPool) -> Self {
        Self { single: pool }
    }

    /// The pool for queries that only read.
    pub fn read(&self) -> &PgPool {
        &self.single
    }

    /// The pool for queries that write (and reads that must see the latest write).
    pub fn write(&self) -> &PgPool {
        &self.single
    }

    /// Applies pending migrations on the write pool. Safe with several app hosts starting at once:
    /// sqlx takes an advisory lock around it.
    pub async fn migrate(&self) -> anyhow::Result<()> {
        MIGRATOR
            .run(self.write())
            .await
            .context("applying database migrations")
    }

    /// Pools to report in `/metrics`, with a label each.
    pub fn pools(&self) -> Vec<(&'static str, &PgPool)> {
        vec![("primary", &self.single)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shard_is_the_low_byte_whatever_the_sequence() {
        for (sequence, shard) in [(1_i64, 0_u8), (2, 3), ((1 << 45) - 1, 255)] {
            assert_eq!(shard_of((sequence << SHARD_BITS) | i64::from(shard)), shard);
        }
    }
}
