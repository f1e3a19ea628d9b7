//! The database seam: which PostgreSQL server a query goes to.
//!
//! Handlers never pick a server themselves. Writes, transactions and reads that must be current
//! use [`Database::write`], the primary. Other reads go through a [`Reader`], which the handler
//! takes as an extractor: it picks, once per request, a replica that can show what this request
//! needs, or the primary when none can ([`session`] says how). Before stage 5 there are no
//! replicas and a `Reader` is the primary too, so stages 1 to 4 run the same handlers unchanged.
//!
//! Stage 7 widens the seam once more: one `Database` per shard behind a map from id to shard
//! ([`Shards`]); the handlers already say which kind of access each query is.
//!
//! - [`leader`]: the primary pool follows the host Patroni names the leader (stage 8);
//! - [`lsn`]: WAL positions, the clock replication runs on;
//! - [`replicas`]: polling the replicas' lag, rotation, and choosing one;
//! - [`reader`]: the `Reader` extractor handlers read through, one session per shard;
//! - [`shards`]: ids to buckets to shards, users on every shard, recovery (stage 7);
//! - [`session`]: read-your-writes and monotonic reads per user, across app hosts;
//! - [`two_phase`]: one write across shards, committed on all or none (stage 7);
//! - [`watch`]: whether a shard's primary answers, so its requests are refused at once when it
//!   does not (stage 7).

pub mod leader;
pub mod lsn;
pub mod reader;
pub mod replicas;
pub mod session;
pub mod shards;
pub mod two_phase;
pub mod watch;

use std::{sync::Arc, time::Duration};

use anyhow::Context;
use sqlx::{
    postgres::{PgConnectOptions, PgPoolOptions},
    ConnectOptions, PgPool,
};

use self::{
    leader::{Candidate, LeaderFollower},
    session::Positions,
    watch::PrimaryWatch,
};
pub use self::{
    lsn::Lsn,
    reader::Reader,
    replicas::ReplicaSet,
    shards::{bucket_of, Shards},
};
use crate::{
    error::{ApiError, ApiResult},
    metrics::DbMetrics,
    settings::{Consistency, DatabaseSettings, Secret},
};

/// Embedded migrations (`services/conduit/migrations`), applied at start-up.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Routes queries to a server: the primary, or (through a [`Reader`]) a replica.
#[derive(Clone)]
pub struct Database {
    primary: PgPool,
    /// Which shard this is, in a sharded stage (stage 7); `None` with one database.
    shard: Option<u8>,
    /// Stage 7: whether this shard's primary answers, for a shard without replicas.
    watch: Option<Arc<PrimaryWatch>>,
    /// Stage 8: which host the primary is on, as Patroni says, followed by the primary pool.
    follower: Option<Arc<LeaderFollower>>,
    /// Stage 5's replicas, if any.
    replicas: Option<Arc<ReplicaSet>>,
    /// Users' positions, if the stage has replicas and keeps session consistency.
    positions: Option<Arc<Positions>>,
    /// Whether the primary is a candidate for reads beside the replicas.
    primary_takes_reads: bool,
    /// `database.consistency = "session"`: logged-in users' reads are guarded (without a
    /// position store, by reading the primary).
    session_guard: bool,
    metrics: DbMetrics,
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Database")
            .field(
                "replicas",
                &self.replicas.as_ref().map_or(0, |r| r.all().len()),
            )
            .finish_non_exhaustive()
    }
}

/// A lazy pool (the first query opens the first connection, so the app starts even while the
/// server is still coming up) and the options it connects with.
fn lazy_pool(
    url: &str,
    max_connections: u32,
    settings: &DatabaseSettings,
) -> anyhow::Result<(PgConnectOptions, PgPool)> {
    let options = connect_options(url, settings)?;
    let pool = pool_options(max_connections, settings).connect_lazy_with(options.clone());
    Ok((options, pool))
}

/// How the app connects to the server at `url`: the session settings every connection gets.
fn connect_options(url: &str, settings: &DatabaseSettings) -> anyhow::Result<PgConnectOptions> {
    let options: PgConnectOptions = url.parse().context("parsing a database URL")?;
    Ok(options
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
        .log_slow_statements(tracing::log::LevelFilter::Warn, Duration::from_millis(500)))
}

/// A pool's size and how long a request waits for one of its connections.
fn pool_options(max_connections: u32, settings: &DatabaseSettings) -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_millis(settings.acquire_timeout_ms))
}

/// Stage 8: a primary pool that follows the leader among `database.leader_candidates`, starting
/// at `url`, and its follower (polling from [`Database::start_polling`]).
fn following_pool(
    url: &str,
    settings: &DatabaseSettings,
) -> anyhow::Result<(PgPool, Arc<LeaderFollower>)> {
    let candidates = settings
        .leader_candidates
        .iter()
        .map(|c| {
            let options = connect_options(c.url.expose(), settings)?;
            Ok(Candidate {
                name: format!("{}:{}", options.get_host(), options.get_port()),
                options,
                primary_url: format!("{}/primary", c.patroni.trim_end_matches('/')),
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()
        .context("database.leader_candidates")?;
    let options = connect_options(url, settings)?;
    let clock = LeaderFollower::clock();
    let pool = LeaderFollower::fresh_only(pool_options(settings.max_connections, settings), &clock)
        .connect_lazy_with(options);
    let follower = LeaderFollower::new(
        candidates,
        pool.clone(),
        clock,
        Duration::from_millis(settings.leader_poll_ms),
        Duration::from_millis(settings.leader_poll_timeout_ms),
    )?;
    Ok((pool, Arc::new(follower)))
}

impl Database {
    /// The primary and any replicas `settings` name (shard 0's, in a sharded stage), all
    /// connected lazily; replica polling starts with [`Database::start_polling`]. `positions`:
    /// where users' positions live ([`Positions::from_settings`]), shared by every shard.
    pub fn connect_lazy(
        settings: &DatabaseSettings,
        positions: Option<Arc<Positions>>,
        metrics: DbMetrics,
    ) -> anyhow::Result<Self> {
        Self::connect_lazy_at(
            true,
            settings.url.expose(),
            &settings.replicas,
            "replica",
            settings,
            positions,
            metrics,
        )
        .context("database.url, database.replicas")
    }

    /// Shard `shard`'s primary and replicas (stage 7; shard 0 is [`Database::connect_lazy`]'s),
    /// from `database.shards` and `database.shard_replicas`. Its replicas are named
    /// `shard-N-replica-M` in metrics, shard 0's `replica-M` as in stage 5.
    pub fn shard(
        shard: u8,
        settings: &DatabaseSettings,
        positions: Option<Arc<Positions>>,
        metrics: DbMetrics,
    ) -> anyhow::Result<Self> {
        let n = usize::from(shard)
            .checked_sub(1)
            .context("shard 0 is connect_lazy's")?;
        let url = settings
            .shards
            .get(n)
            .context("no URL for this shard in database.shards")?;
        let replicas = settings
            .shard_replicas
            .get(n)
            .map_or(&[][..], Vec::as_slice);
        Self::connect_lazy_at(
            false,
            url.expose(),
            replicas,
            &format!("shard-{shard}-replica"),
            settings,
            positions,
            metrics,
        )
        .with_context(|| format!("shard {shard} (database.shards, database.shard_replicas)"))
    }

    /// `follows_leader`: whether this database may be the Patroni cluster of
    /// `database.leader_candidates` (the unsharded database, or shard 0; no stage shards one).
    fn connect_lazy_at(
        follows_leader: bool,
        url: &str,
        replica_urls: &[Secret],
        replica_names: &str,
        settings: &DatabaseSettings,
        positions: Option<Arc<Positions>>,
        metrics: DbMetrics,
    ) -> anyhow::Result<Self> {
        // Stage 8's primary moves with the leader; before, it is where `url` says.
        let (primary, follower) = if settings.leader_candidates.is_empty() || !follows_leader {
            let (_, pool) = lazy_pool(url, settings.max_connections, settings)?;
            (pool, None)
        } else {
            let (pool, follower) = following_pool(url, settings)?;
            (pool, Some(follower))
        };
        let replicas = if replica_urls.is_empty() {
            None
        } else {
            let set = ReplicaSet::new(
                settings,
                replica_urls,
                replica_names,
                primary.clone(),
                |url, max| lazy_pool(url, max, settings),
            )?;
            Some(Arc::new(set))
        };
        Ok(Self {
            primary,
            shard: None,
            watch: None,
            follower,
            // Positions matter only where reads may go to replicas.
            positions: replicas.as_ref().and(positions),
            replicas,
            primary_takes_reads: settings.primary_takes_reads,
            session_guard: settings.consistency == Consistency::Session,
            metrics,
        })
    }

    /// This database as shard `shard` of a sharded stage: its refusals name it, and without
    /// replicas its primary gets a [`PrimaryWatch`] (polled every `database.primary_poll_ms`
    /// once [`Database::start_polling`] runs, on the primary pool's own connect options), so a
    /// dead primary's requests are refused at once.
    pub fn as_shard(mut self, shard: u8, settings: &DatabaseSettings) -> Self {
        self.shard = Some(shard);
        if self.replicas.is_none() {
            self.watch = Some(Arc::new(PrimaryWatch::new(
                (*self.primary.connect_options()).clone(),
                Duration::from_millis(settings.primary_poll_ms),
                Duration::from_millis(settings.replica_poll_timeout_ms),
            )));
        }
        self
    }

    /// Wraps an existing pool (tests): a primary, no replicas.
    pub fn from_pool(pool: PgPool) -> Self {
        Self {
            primary: pool,
            shard: None,
            watch: None,
            follower: None,
            replicas: None,
            positions: None,
            primary_takes_reads: true,
            session_guard: true,
            metrics: DbMetrics::default(),
        }
    }

    /// Starts polling the replicas, or watching a shard's primary (no-op with neither).
    pub fn start_polling(&self) {
        if let Some(replicas) = &self.replicas {
            replicas.start_polling();
        }
        if let Some(watch) = &self.watch {
            watch.start();
        }
        if let Some(follower) = &self.follower {
            follower.start();
        }
    }

    /// The primary's pool: for writes, transactions, and reads that must see the latest write.
    /// The request's positions on this shard then follow the primary's (`session::touched`).
    /// A 503 at once when the primary is known to be down (its poller's last poll failed), so a
    /// request does not wait out the pool's acquire timeout first; the pool decides otherwise.
    pub fn write(&self) -> ApiResult<&PgPool> {
        if self.primary_up() {
            session::touched(self.shard.unwrap_or(0));
            Ok(&self.primary)
        } else {
            Err(self.primary_down())
        }
    }

    /// The primary's pool whether or not it answers: for start-up (migrations, seeding), the
    /// pollers, the two-phase coordinator's own connections and `/readyz`, which wait for it or
    /// report it themselves.
    pub fn primary(&self) -> &PgPool {
        &self.primary
    }

    /// What a request that needs the primary is told while it is down: the shard, in a sharded
    /// stage (only its authors' requests fail); stage 5's words otherwise.
    pub fn primary_down(&self) -> ApiError {
        match self.shard {
            Some(shard) => ApiError::ShardDown(shard),
            None => ApiError::DatabaseUnavailable("primary down: writes refused, reads served"),
        }
    }

    /// The replicas, if the stage has any.
    pub fn replicas(&self) -> Option<&ReplicaSet> {
        self.replicas.as_deref()
    }

    /// Where users' positions are kept, if this database's reads may go to replicas.
    pub fn positions(&self) -> Option<&Arc<Positions>> {
        self.positions.as_ref()
    }

    /// Stage 8: the host the primary pool connects to now (`address:port`), as the last poll of
    /// Patroni found it; `None` before any poll found a leader, or in earlier stages.
    pub fn leader(&self) -> Option<&str> {
        self.follower.as_ref().and_then(|f| f.leader())
    }

    /// Whether the primary answers, as far as this host knows: stage 8's leader follower says
    /// (some host is the leader), or the replicas' poller, or a shard's watch; always true with
    /// none (stages 1 to 4: nothing polls it, and nothing else could serve its requests).
    pub fn primary_up(&self) -> bool {
        if let Some(follower) = &self.follower {
            return follower.up();
        }
        match (&self.replicas, &self.watch) {
            (Some(replicas), _) => replicas.primary_up(),
            (None, Some(watch)) => watch.up(),
            (None, None) => true,
        }
    }

    /// The primary's position now: at or past every commit acknowledged so far.
    pub async fn primary_position(&self) -> Result<Lsn, sqlx::Error> {
        let offset: i64 = sqlx::query_scalar(Lsn::PRIMARY_POSITION_SQL)
            .fetch_one(&self.primary)
            .await?;
        Ok(Lsn::from_sql(offset))
    }

    /// Applies pending migrations on the primary. Safe with several app hosts starting at once:
    /// sqlx takes an advisory lock around it.
    pub async fn migrate(&self) -> anyhow::Result<()> {
        MIGRATOR
            .run(self.primary())
            .await
            .context("applying database migrations")
    }

    /// Counts a read made on `target` (`primary`, `replica-1`, ...) for `route`, in
    /// `db_reads_total`: for reads made outside a [`Reader`], such as cache fills.
    pub fn count_read(&self, target: &str, route: session::Route) {
        self.metrics.read(target, route.as_str());
    }

    /// Pools to report in `/metrics`, with a label each.
    pub fn pools(&self) -> Vec<(&str, &PgPool)> {
        let mut pools = vec![("primary", &self.primary)];
        if let Some(replicas) = &self.replicas {
            pools.extend(replicas.all().iter().map(|r| (r.name.as_str(), &r.pool)));
        }
        pools
    }

    /// Updates the replica gauges (before `/metrics` is rendered).
    pub fn refresh_gauges(&self) {
        if let Some(replicas) = &self.replicas {
            for replica in replicas.all() {
                self.metrics
                    .replica(&replica.name, replica.lag(), replica.in_rotation());
            }
        }
    }
}

/// A replica's replay position now, read through `pool`: at or past what it has shown so far.
pub async fn replay_position(pool: &PgPool) -> Result<Lsn, sqlx::Error> {
    // A server that is no longer in recovery (promoted) shows everything it has written.
    let offset: i64 = sqlx::query_scalar(
        "SELECT (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() \
                      ELSE pg_current_wal_insert_lsn() END - '0/0'::pg_lsn)::int8",
    )
    .fetch_one(pool)
    .await?;
    Ok(Lsn::from_sql(offset))
}
