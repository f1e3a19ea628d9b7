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
//! - *users* themselves (name, e-mail, password hash, bio, image): a *reference table*, every
//!   user's row on every shard, as Citus keeps its reference tables. Any shard can then show any
//!   author beside the articles and comments it holds, in the same statement, and answer a
//!   lookup by name or e-mail (the *user directory*, a view over `users`, migration 0004). The
//!   price is on the rare writes: a registration or a profile change writes every shard, in one
//!   global transaction, whose unique indexes keep names and e-mails unique across shards. A
//!   user's bucket names their *home*, the shard that holds what they own;
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
    /// Shard `n` is `dbs[n]`.
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

    /// The shard to ask about a user by name or e-mail (`key`): every shard holds every user, so
    /// any would do; the key's hash spreads the lookups over the shards, and a shard whose
    /// primary is known to be down is passed over for the next, so lookups go on while one shard
    /// is down. One database: shard 0.
    pub fn shard_for_name(&self, key: &str) -> u8 {
        let n = self.dbs.len();
        let first = spread(key, n);
        let up = (0..n)
            .map(|step| (first + step) % n)
            .find(|&shard| self.dbs[shard].primary_up())
            .unwrap_or(first);
        // At most 64 shards (`Shards::connect`).
        up as u8
    }

    /// The database of [`Shards::shard_for_name`].
    pub fn for_name(&self, key: &str) -> &Database {
        self.shard(self.shard_for_name(key))
    }

    /// Every shard's number, in order. A write to `users`, which every shard holds, goes to them
    /// in this order, because two such writes that collide on a unique name must meet on the
    /// same shard first: each waits there for the other, and neither holds a row the other
    /// needs elsewhere (in any other order, each could wait on a shard for a row the other holds,
    /// where no server sees the whole cycle).
    pub fn every_shard(&self) -> Vec<u8> {
        self.all().map(|(n, _)| n).collect()
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
    /// `shard_identity`. Refuses a database made by an archlab whose shard 0 kept the user
    /// directory as a table and each shard only its own users: on it, the other shards' users
    /// would be missing. Idempotent, and safe with several app hosts starting at once.
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
        let old_layout: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_tables WHERE tablename = 'user_directory')",
        )
        .fetch_one(self.shard(0).primary())
        .await
        .context("looking for the user directory on shard 0")?;
        anyhow::ensure!(
            !old_layout,
            "this stage's databases were made by an older archlab, which kept every user on their \
             home shard only (and the user directory as a table on shard 0); users are on every \
             shard now: start the stage again with `--fresh`"
        );
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

/// Which of `n` shards (at least one) `key` hashes to.
fn spread(key: &str, n: usize) -> usize {
    // The remainder is below `n`, a usize.
    (fnv1a(key.as_bytes()) % n.max(1) as u64) as usize
}

/// The 64-bit FNV-1a hash of `bytes`: stable across builds and hosts (unlike the standard
/// library's hasher, which promises neither), so every app host asks the same shard about a name.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
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
    fn names_spread_over_the_shards_the_same_way_on_every_host() {
        // The published FNV-1a test vectors: the hash is the standard one, not this build's.
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(b"foobar"), 0x8594_4171_f739_67e8);
        for shards in [1, 2, 4] {
            let mut per_shard = vec![0; shards];
            for i in 1..=1000 {
                per_shard[spread(&format!("user{i}"), shards)] += 1;
            }
            // An even share is 1000 / shards; a fifth either way is far outside chance.
            let even = 1000 / shards;
            assert!(
                per_shard
                    .iter()
                    .all(|&k| k * 5 >= even * 4 && k * 5 <= even * 6),
                "{shards}: {per_shard:?}"
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
