//! Stage 7: the database split by author over several PostgreSQL primaries, the *shards*.
//!
//! ```text
//!   id = sequence << 8 | bucket          bucket ── BucketMap ──> shard
//!        (45 bits)      (8 bits)          256 of them            0 .. N-1
//! ```
//!
//! Every id carries a *bucket* in its low 8 bits, and a fixed map sends each bucket to a shard.
//! A user gets a bucket at registration (at random, so users spread evenly); everything that
//! belongs to an author gets the author's bucket in its id: their articles, the comments on their
//! articles, their media. So an id alone, and a slug (which ends in its article's id), names its
//! shard, and an author's articles, their tags, counts and comments live on one shard, where one
//! local transaction changes them.
//!
//! Why buckets between ids and shards, not `shard = id % N`: adding a shard then means moving
//! some buckets to it (copy their rows, then flip their entries in the map), not re-placing every
//! row. Moving is not implemented here; how it would go: copy a bucket's rows to the new shard
//! while the old one takes writes, catch up from the old shard's WAL (logical replication
//! filtered by bucket), briefly refuse writes to that bucket, flip its map entry on every app
//! host, and move the new shard's id sequence past every id the old one made in that bucket.
//!
//! What does not belong to one author:
//! - the *user directory* (username and email to user id), on shard 0, which keeps both unique
//!   across shards; until stage 7 it is a view over `users` (migration 0004);
//! - a reader's favorites (`favorites`, on the reader's shard, so their `favorited` flags and the
//!   `favorited=` list are one shard's question) while the count they change is on the article's
//!   shard: a favorite across shards is a two-phase commit ([`super::two_phase`]);
//! - a reader's follows (`follows`, on the follower's shard, for the same reason).
//!
//! Lists that span authors (the global list, a tag, the feed) ask every shard for its newest
//! `offset + limit` and merge them (see `api::scatter`).

use std::{sync::Arc, time::Duration};

use anyhow::Context;
use rand::Rng;

use super::{
    two_phase::{Coordinator, GlobalTransaction, TwoPhaseError},
    Database,
};
use crate::{
    error::ApiResult,
    metrics::DbMetrics,
    settings::{CacheSettings, DatabaseSettings},
};

/// Bits at the bottom of every id that hold its bucket: 256 buckets, so even 16 shards get 16
/// each, and a bucket (a 256th of the users) is small enough to move.
pub const BUCKET_BITS: u32 = 8;

/// Buckets there are.
pub const BUCKETS: usize = 1 << BUCKET_BITS;

/// The bucket of the row with this `id`: its low [`BUCKET_BITS`] bits.
pub fn bucket_of(id: i64) -> u8 {
    // The mask keeps 8 bits: the cast cannot truncate anything.
    (id & ((1 << BUCKET_BITS) - 1)) as u8
}

/// Which shard holds each bucket.
#[derive(Debug, Clone)]
pub struct BucketMap {
    shard_of_bucket: [u8; BUCKETS],
}

impl BucketMap {
    /// `shards` shards, bucket `b` on shard `b mod shards`: each shard gets every n-th bucket, so
    /// the split is even for any count up to 256.
    pub fn even(shards: usize) -> Self {
        let shards = shards.clamp(1, BUCKETS);
        let mut shard_of_bucket = [0_u8; BUCKETS];
        for (bucket, shard) in shard_of_bucket.iter_mut().enumerate() {
            // `bucket % shards` < shards <= 256.
            *shard = (bucket % shards) as u8;
        }
        Self { shard_of_bucket }
    }

    /// The shard holding `bucket`.
    pub fn shard(&self, bucket: u8) -> u8 {
        self.shard_of_bucket[usize::from(bucket)]
    }
}

/// How long a prepared branch is left to its coordinator before recovery finishes it. A
/// coordinator takes milliseconds between PREPARE and COMMIT PREPARED; under a CPU quota on a
/// busy machine, a few scheduling periods more. 10 s is far past both, and is also how long a
/// crashed coordinator's branches keep their row locks: the blocking window of 2PC, as measured
/// by the drills.
pub const RECOVERY_GRACE: Duration = Duration::from_secs(10);

/// How often each app host runs recovery. Every host runs it (each step is idempotent), so with
/// two or three hosts an orphan waits at most the grace period plus about a second.
pub const RECOVERY_EVERY: Duration = Duration::from_secs(2);

/// The shards, the map from ids to them, and the coordinator of writes that span them.
pub struct Shards {
    /// Shard `n` is `dbs[n]`; shard 0 also holds the user directory.
    dbs: Vec<Database>,
    buckets: BucketMap,
    coordinator: Arc<Coordinator>,
}

impl std::fmt::Debug for Shards {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shards")
            .field("shards", &self.dbs.len())
            .finish_non_exhaustive()
    }
}

impl Shards {
    /// `dbs[n]` as shard `n`, buckets spread evenly.
    pub fn new(dbs: Vec<Database>) -> Self {
        let buckets = BucketMap::even(dbs.len());
        let coordinator = Coordinator::new(
            dbs.iter().map(|db| db.primary().clone()).collect(),
            RECOVERY_GRACE,
        );
        Self {
            dbs,
            buckets,
            coordinator: Arc::new(coordinator),
        }
    }

    /// Every shard `settings` name (`url` as shard 0, then `shards`), each with its replicas
    /// (`replicas`, then `shard_replicas`), connected lazily, migrated and prepared
    /// ([`Shards::prepare`]). Polling and recovery start separately.
    pub async fn connect(
        settings: &DatabaseSettings,
        cache: &CacheSettings,
        metrics: DbMetrics,
    ) -> anyhow::Result<Self> {
        let positions = super::session::Positions::from_settings(settings, cache)?;
        let first = Database::connect_lazy(settings, positions.clone(), metrics.clone())?;
        first.migrate().await?;
        let mut dbs = vec![first];
        for shard in 1..=settings.shards.len() {
            let shard = u8::try_from(shard).context("at most 255 shards")?;
            let db = Database::shard(shard, settings, positions.clone(), metrics.clone())?;
            db.migrate().await?;
            dbs.push(db);
        }
        if dbs.len() > 1 {
            dbs = dbs
                .into_iter()
                .zip(0u8..)
                .map(|(db, n)| db.as_shard(n, settings))
                .collect();
        }
        // A request records the shards it used as bits of a u64 (`session::touched`).
        anyhow::ensure!(dbs.len() <= 64, "at most 64 shards");
        let shards = Self::new(dbs);
        shards.prepare().await?;
        Ok(shards)
    }

    /// Whether any shard has replicas (stage 5 on): requests then need read sessions
    /// ([`super::session::track`]).
    pub fn has_replicas(&self) -> bool {
        self.dbs.iter().any(|db| db.replicas().is_some())
    }

    /// Where users' positions are kept, if reads go to replicas and users are promised session
    /// consistency (one store, shared by every shard's database).
    pub fn positions(&self) -> Option<&Arc<super::session::Positions>> {
        self.dbs.iter().find_map(Database::positions)
    }

    /// Whether some shard's primary is known to be down (its watch's or its replicas' poll
    /// failed): while it is, the app cache fills nothing (see `Reader::for_cache_fill`).
    pub fn any_primary_down(&self) -> bool {
        self.dbs.iter().any(|db| !db.primary_up())
    }

    /// More than one shard: the stage 7 paths apply.
    pub fn sharded(&self) -> bool {
        self.dbs.len() > 1
    }

    /// How many shards.
    pub fn len(&self) -> usize {
        self.dbs.len()
    }

    /// Never: there is always shard 0.
    pub fn is_empty(&self) -> bool {
        self.dbs.is_empty()
    }

    /// The shard holding the row with `id` (a user's, an article's, a comment's, a medium's).
    pub fn shard_of(&self, id: i64) -> u8 {
        self.buckets.shard(bucket_of(id))
    }

    /// The shard holding `bucket` (where a new user with that bucket lives).
    pub fn shard_of_bucket(&self, bucket: u8) -> u8 {
        self.buckets.shard(bucket)
    }

    /// The database of shard `shard`.
    pub fn shard(&self, shard: u8) -> &Database {
        // Shard numbers come from the map, which only names shards that exist.
        &self.dbs[usize::from(shard).min(self.dbs.len() - 1)]
    }

    /// The database holding the row with `id`.
    pub fn of(&self, id: i64) -> &Database {
        self.shard(self.shard_of(id))
    }

    /// Every shard, numbered.
    pub fn all(&self) -> impl Iterator<Item = (u8, &Database)> {
        // At most 256 shards (the map's range).
        self.dbs.iter().enumerate().map(|(n, db)| (n as u8, db))
    }

    /// Where the user directory is: shard 0.
    pub fn directory(&self) -> &Database {
        &self.dbs[0]
    }

    /// The coordinator for writes across shards.
    pub fn coordinator(&self) -> &Arc<Coordinator> {
        &self.coordinator
    }

    /// Opens a global transaction over `participants` ([`Coordinator::begin`]), or refuses it at
    /// once with the first participant whose primary is known to be down: nothing is taken or
    /// prepared for a transaction that could not commit.
    pub fn begin(
        &self,
        participants: &[u8],
    ) -> ApiResult<
        impl std::future::Future<Output = Result<GlobalTransaction, TwoPhaseError>> + Send + 'static,
    > {
        if let Some(down) = participants
            .iter()
            .map(|&shard| self.shard(shard))
            .find(|db| !db.primary_up())
        {
            return Err(down.primary_down());
        }
        for &shard in participants {
            super::session::touched(shard);
        }
        Ok(self.coordinator.begin(participants))
    }

    /// A bucket for a new user: at random, so users (and with them authors' data) spread evenly
    /// over the shards. Unsharded: bucket 0, as `next_id()` always gave.
    pub fn new_user_bucket(&self) -> u8 {
        if self.sharded() {
            rand::thread_rng().gen()
        } else {
            0
        }
    }

    /// Prepares the shards for this layout, after their migrations: each shard's number in
    /// `shard_identity`, and on shard 0 the user directory as a table of its own instead of the
    /// view over `users` that serves a single database. Idempotent, and safe with several app
    /// hosts starting at once (one transaction under an advisory lock).
    pub async fn prepare(&self) -> anyhow::Result<()> {
        if !self.sharded() {
            return Ok(());
        }
        for (shard, db) in self.all() {
            sqlx::query("UPDATE shard_identity SET shard_id = $1 WHERE shard_id <> $1")
                .bind(i32::from(shard))
                .execute(db.primary())
                .await
                .with_context(|| format!("setting shard {shard}'s number"))?;
        }
        let mut tx = self.directory().primary().begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock(7007)")
            .execute(&mut *tx)
            .await?;
        sqlx::raw_sql(
            "DO $$ BEGIN
               IF EXISTS (SELECT 1 FROM pg_views WHERE viewname = 'user_directory') THEN
                 DROP VIEW user_directory;
                 CREATE TABLE user_directory (
                   user_id  bigint PRIMARY KEY,
                   username text NOT NULL CONSTRAINT user_directory_username_key UNIQUE,
                   email    text NOT NULL CONSTRAINT user_directory_email_key UNIQUE
                 );
                 INSERT INTO user_directory SELECT id, username, email FROM users;
               END IF;
             END $$",
        )
        .execute(&mut *tx)
        .await
        .context("creating the user directory on shard 0")?;
        tx.commit().await?;
        Ok(())
    }

    /// Starts every shard's pollers: its replicas', or its primary's watch (see
    /// [`Database::start_polling`]).
    pub fn start_polling(&self) {
        for db in &self.dbs {
            db.start_polling();
        }
    }

    /// Runs recovery of cross-shard transactions now and then every [`RECOVERY_EVERY`], for as
    /// long as the process lives (nothing to do unsharded).
    pub fn start_recovery(&self) {
        if !self.sharded() {
            return;
        }
        let coordinator = self.coordinator.clone();
        tokio::spawn(async move {
            loop {
                match coordinator.recover().await {
                    Ok(report) if report.committed + report.rolled_back > 0 => {
                        tracing::info!(?report, "recovered cross-shard transactions");
                    }
                    Ok(_) => {}
                    Err(error) => tracing::warn!(%error, "recovery pass failed"),
                }
                tokio::time::sleep(RECOVERY_EVERY).await;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bucket_is_the_low_byte_whatever_the_sequence() {
        for (sequence, bucket) in [(1_i64, 0_u8), (2, 3), ((1 << 45) - 1, 255)] {
            assert_eq!(
                bucket_of((sequence << BUCKET_BITS) | i64::from(bucket)),
                bucket
            );
        }
    }

    #[test]
    fn buckets_spread_evenly_and_one_shard_holds_them_all() {
        for shards in [1, 2, 3, 4] {
            let map = BucketMap::even(shards);
            let mut per_shard = vec![0; shards];
            for bucket in 0..=255_u8 {
                per_shard[usize::from(map.shard(bucket))] += 1;
            }
            let (min, max) = (per_shard.iter().min(), per_shard.iter().max());
            assert!(max.unwrap() - min.unwrap() <= 1, "{shards}: {per_shard:?}");
        }
    }
}
