//! The deterministic data set benchmarks run on: users, follows, articles with tags, favorites
//! and comments, all derived from one seed number, so every run of every stage starts from the
//! same data.
//!
//! Rows are written in bulk (`UNNEST` of arrays, a few thousand rows per statement) but are what
//! the API would have written: ids in their owners' buckets (as `next_id_in()` gives), slugs from [`crate::slug::slug_for`],
//! lower-cased e-mails, real argon2 password hashes (one per user, computed on every core).
//!
//! Seeded users are `user<N>` with e-mail `user<N>@seed.archlab.test` and the password
//! [`SEED_PASSWORD`], so the load harness can log in as any of them.

use std::time::Instant;

use anyhow::Context;
use rand::{rngs::StdRng, seq::SliceRandom, Rng, SeedableRng};
use time::{Duration, OffsetDateTime};

use crate::api::media::{file_name, object_path};
use crate::{
    auth::hash_password_blocking,
    db::{bucket_of, Shards},
    seed_images::noise_png,
    slug::slug_for,
};
use object_store::{ObjectStore, PutPayload};
use sha2::{Digest, Sha256};

/// The password of every seeded user.
pub const SEED_PASSWORD: &str = "archlab-seed-password";

/// Rows per bulk statement: large enough to amortise round trips, small enough that one
/// statement's arrays stay a few megabytes.
const CHUNK: usize = 2_000;

/// How big a data set to make.
#[derive(Debug, Clone, Copy)]
pub struct SeedSpec {
    /// Users (`user1` ... `userN`).
    pub users: usize,
    /// Articles, spread over the past year, authors chosen with a skew (some write a lot).
    pub articles: usize,
    /// Average follows per user.
    pub follows_per_user: usize,
    /// Average favorites per article.
    pub favorites_per_article: usize,
    /// Average comments per article.
    pub comments_per_article: usize,
    /// Images (20 to 200 KB each): the first one per user becomes that user's profile image.
    pub images: usize,
    /// Seed of the random generator: same seed, same data.
    pub seed: u64,
}

impl Default for SeedSpec {
    fn default() -> Self {
        Self {
            users: 1_000,
            articles: 10_000,
            follows_per_user: 10,
            favorites_per_article: 3,
            comments_per_article: 2,
            images: 2_000,
            seed: 42,
        }
    }
}

/// What was written.
#[derive(Debug, Clone, Copy, Default)]
pub struct SeedReport {
    /// Users written (0 when the data set was already there).
    pub users: usize,
    /// Articles written.
    pub articles: usize,
    /// Follows written.
    pub follows: usize,
    /// Favorites written.
    pub favorites: usize,
    /// Comments written.
    pub comments: usize,
    /// Images written.
    pub images: usize,
    /// Whether an existing seeded data set was found and left alone.
    pub already_seeded: bool,
}

const TAGS: &[&str] = &[
    "rust",
    "postgres",
    "redis",
    "caching",
    "scaling",
    "replication",
    "sharding",
    "consensus",
    "raft",
    "paxos",
    "latency",
    "throughput",
    "cdn",
    "load-balancing",
    "http",
    "tcp",
    "linux",
    "kernel",
    "databases",
    "indexes",
    "queues",
    "kafka",
    "observability",
    "tracing",
    "metrics",
    "testing",
    "benchmarks",
    "design",
    "architecture",
    "microservices",
    "monolith",
    "storage",
    "s3",
    "networking",
    "security",
    "auth",
    "jwt",
    "api",
    "realworld",
    "tutorial",
];

const WORDS: &[&str] = &[
    "how",
    "why",
    "when",
    "the",
    "a",
    "fast",
    "slow",
    "cache",
    "database",
    "replica",
    "shard",
    "leader",
    "follower",
    "queue",
    "request",
    "latency",
    "tail",
    "budget",
    "host",
    "cluster",
    "edge",
    "origin",
    "write",
    "read",
    "lock",
    "commit",
    "log",
    "index",
    "page",
    "token",
    "load",
    "balancer",
    "failover",
    "quorum",
    "lesson",
    "guide",
    "notes",
    "mistake",
    "story",
    "benchmark",
];

fn sentence(rng: &mut StdRng, words: usize) -> String {
    let mut s: Vec<&str> = (0..words)
        .map(|_| WORDS[rng.gen_range(0..WORDS.len())])
        .collect();
    s.dedup();
    let mut text = s.join(" ");
    if let Some(first) = text.get_mut(0..1) {
        first.make_ascii_uppercase();
    }
    text
}

/// Writes the data set described by `spec` into the database (every shard of it, stage 7) and
/// the media store, unless a seeded data set is already there.
///
/// The same data on any number of shards: the generator draws the same numbers in the same
/// order, and placement (a bucket per user) comes from a generator of its own, so only the ids
/// (and the slugs, which end in them) differ between one database and several.
pub async fn seed(
    shards: &Shards,
    media: &dyn ObjectStore,
    media_settings: &crate::settings::MediaSettings,
    spec: SeedSpec,
) -> anyhow::Result<SeedReport> {
    let public_base_url = &media_settings.public_base_url;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM user_directory WHERE username = 'user1')")
            .fetch_one(shards.shard(0).primary())
            .await
            .context("checking for an existing data set")?;
    if exists {
        return Ok(SeedReport {
            already_seeded: true,
            ..SeedReport::default()
        });
    }
    let started = Instant::now();
    let mut rng = StdRng::seed_from_u64(spec.seed);
    let mut placement = StdRng::seed_from_u64(spec.seed ^ PLACEMENT_SEED);
    let mut report = SeedReport::default();

    // Users: real argon2 hashes, one per user, on every core; each in a bucket (at random when
    // sharded, as registration does), which names their home shard; every user's row is written
    // on every shard (`users` is a reference table: see `db::shards`).
    let hashes = hash_many(spec.users).await?;
    let usernames: Vec<String> = (1..=spec.users).map(|i| format!("user{i}")).collect();
    let emails: Vec<String> = (1..=spec.users)
        .map(|i| format!("user{i}@seed.archlab.test"))
        .collect();
    let bios: Vec<Option<String>> = (0..spec.users)
        .map(|_| rng.gen_bool(0.5).then(|| sentence(&mut rng, 8)))
        .collect();
    let buckets: Vec<u8> = (0..spec.users)
        .map(|_| if shards.sharded() { placement.gen() } else { 0 })
        .collect();
    let ids = ids_in(shards, &buckets).await?;
    let everyone: Vec<usize> = (0..ids.len()).collect();
    for (_, db) in shards.all() {
        for chunk in everyone.chunks(CHUNK) {
            let pick = |column: &[String]| -> Vec<String> {
                chunk.iter().map(|&i| column[i].clone()).collect()
            };
            sqlx::query(
                "INSERT INTO users (id, username, email, password_hash, bio)
                 SELECT * FROM UNNEST($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[])",
            )
            .bind(chunk.iter().map(|&i| ids[i]).collect::<Vec<_>>())
            .bind(pick(&usernames))
            .bind(pick(&emails))
            .bind(pick(&hashes))
            .bind(chunk.iter().map(|&i| bios[i].clone()).collect::<Vec<_>>())
            .execute(db.primary())
            .await
            .context("inserting users")?;
        }
    }
    let user_ids = ids;
    report.users = user_ids.len();
    if user_ids.is_empty() {
        return Ok(report);
    }

    // Follows: each user follows a few others, popular users more often (squared skew). Each on
    // the follower's shard.
    let mut followees = Vec::new();
    let mut followers = Vec::new();
    for (i, &follower) in user_ids.iter().enumerate() {
        let n = rng.gen_range(0..=spec.follows_per_user * 2);
        let mut chosen = std::collections::HashSet::new();
        for _ in 0..n {
            let j = skewed(&mut rng, user_ids.len());
            if j != i && chosen.insert(j) {
                followees.push(user_ids[j]);
                followers.push(follower);
            }
        }
    }
    report.follows = insert_pairs(
        shards,
        "INSERT INTO follows (followee_id, follower_id) SELECT * FROM UNNEST($1::bigint[], $2::bigint[])",
        &followees,
        &followers,
        &followers,
    )
    .await
    .context("inserting follows")?;

    // Articles: drawn first, oldest first; then ids in their authors' buckets (ids grow with
    // time within each shard), then written on their authors' shards.
    let now = OffsetDateTime::now_utc();
    let year = Duration::days(365);
    let step = year / (spec.articles.max(1) as f64);
    let mut drawn = Vec::with_capacity(spec.articles);
    for i in 0..spec.articles {
        let words = rng.gen_range(3..9);
        let title = sentence(&mut rng, words);
        let author = user_ids[skewed(&mut rng, user_ids.len())];
        let description = sentence(&mut rng, 12);
        let paragraphs: Vec<String> = (0..rng.gen_range(2..6))
            .map(|_| sentence(&mut rng, 60))
            .collect();
        let created_at = now - year + step * (i as f64);
        let n_tags = rng.gen_range(0..=4);
        let tags: Vec<String> = TAGS
            .choose_multiple(&mut rng, n_tags)
            .map(|t| (*t).to_owned())
            .collect();
        drawn.push(DrawnArticle {
            title,
            author,
            description,
            body: paragraphs.join("\n\n"),
            created_at,
            tags,
        });
    }
    let article_buckets: Vec<u8> = drawn.iter().map(|a| bucket_of(a.author)).collect();
    let article_ids = ids_in(shards, &article_buckets).await?;

    // Favorites: popular articles (by a skew over the newest) get more. Each row on the reader's
    // shard; the counts, kept on the articles, computed here.
    let mut fav_articles = Vec::new();
    let mut fav_users = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut favorites_count = vec![0_i64; article_ids.len()];
    for _ in 0..spec.articles * spec.favorites_per_article {
        let index = article_ids.len() - 1 - skewed(&mut rng, article_ids.len());
        let u = user_ids[rng.gen_range(0..user_ids.len())];
        if seen.insert((index, u)) {
            fav_articles.push(article_ids[index]);
            fav_users.push(u);
            favorites_count[index] += 1;
        }
    }

    for (shard, rows) in group(shards, &article_ids) {
        let pool = shards.shard(shard).primary();
        for chunk in rows.chunks(CHUNK) {
            let mut tag_articles = Vec::new();
            let mut tag_positions: Vec<i16> = Vec::new();
            let mut tag_names = Vec::new();
            let mut tag_created = Vec::new();
            for &i in chunk {
                for (position, tag) in drawn[i].tags.iter().enumerate() {
                    tag_articles.push(article_ids[i]);
                    tag_positions.push(position as i16);
                    tag_names.push(tag.clone());
                    tag_created.push(drawn[i].created_at);
                }
            }
            let column = |f: fn(&DrawnArticle) -> String| -> Vec<String> {
                chunk.iter().map(|&i| f(&drawn[i])).collect()
            };
            sqlx::query(
                "INSERT INTO articles (id, slug, author_id, title, description, body, created_at,
                                       updated_at, tag_list, favorites_count)
                 SELECT id, slug, author_id, title, description, body, created_at, created_at,
                        string_to_array(tags, ' '), favorites
                 FROM UNNEST($1::bigint[], $2::text[], $3::bigint[], $4::text[], $5::text[],
                             $6::text[], $7::timestamptz[], $8::text[], $9::bigint[])
                      AS t(id, slug, author_id, title, description, body, created_at, tags,
                           favorites)",
            )
            .bind(chunk.iter().map(|&i| article_ids[i]).collect::<Vec<_>>())
            .bind(
                chunk
                    .iter()
                    .map(|&i| slug_for(&drawn[i].title, article_ids[i]))
                    .collect::<Vec<_>>(),
            )
            .bind(chunk.iter().map(|&i| drawn[i].author).collect::<Vec<_>>())
            .bind(column(|a| a.title.clone()))
            .bind(column(|a| a.description.clone()))
            .bind(column(|a| a.body.clone()))
            .bind(
                chunk
                    .iter()
                    .map(|&i| drawn[i].created_at)
                    .collect::<Vec<_>>(),
            )
            // Tags hold no spaces (the list above), so a space joins them losslessly.
            .bind(column(|a| a.tags.join(" ")))
            .bind(
                chunk
                    .iter()
                    .map(|&i| favorites_count[i])
                    .collect::<Vec<_>>(),
            )
            .execute(pool)
            .await
            .context("inserting articles")?;
            sqlx::query(
                "INSERT INTO article_tags (article_id, position, tag, created_at)
                 SELECT * FROM UNNEST($1::bigint[], $2::smallint[], $3::text[], $4::timestamptz[])",
            )
            .bind(&tag_articles)
            .bind(&tag_positions)
            .bind(&tag_names)
            .bind(&tag_created)
            .execute(pool)
            .await
            .context("inserting tags")?;
        }
    }
    report.articles = article_ids.len();
    report.favorites = insert_pairs(
        shards,
        "INSERT INTO favorites (article_id, user_id) SELECT * FROM UNNEST($1::bigint[], $2::bigint[])",
        &fav_articles,
        &fav_users,
        &fav_users,
    )
    .await
    .context("inserting favorites")?;

    // Comments, on their articles' shards.
    let n_comments = spec.articles * spec.comments_per_article;
    let mut comment_articles = Vec::with_capacity(n_comments);
    let mut comment_authors = Vec::with_capacity(n_comments);
    let mut comment_bodies = Vec::with_capacity(n_comments);
    for _ in 0..n_comments {
        comment_articles.push(article_ids[rng.gen_range(0..article_ids.len())]);
        comment_authors.push(user_ids[rng.gen_range(0..user_ids.len())]);
        comment_bodies.push(sentence(&mut rng, 20));
    }
    for (shard, rows) in group(shards, &comment_articles) {
        for chunk in rows.chunks(CHUNK) {
            sqlx::query(
                "INSERT INTO comments (article_id, author_id, body)
                 SELECT * FROM UNNEST($1::bigint[], $2::bigint[], $3::text[])",
            )
            .bind(
                chunk
                    .iter()
                    .map(|&i| comment_articles[i])
                    .collect::<Vec<_>>(),
            )
            .bind(
                chunk
                    .iter()
                    .map(|&i| comment_authors[i])
                    .collect::<Vec<_>>(),
            )
            .bind(
                chunk
                    .iter()
                    .map(|&i| comment_bodies[i].clone())
                    .collect::<Vec<_>>(),
            )
            .execute(shards.shard(shard).primary())
            .await
            .context("inserting comments")?;
        }
    }
    report.comments = n_comments;

    // Images: bytes into the store, rows into `media` on the owner's shard; user N's profile
    // image is image N.
    let owners: Vec<i64> = (0..spec.images)
        .map(|i| user_ids[i % user_ids.len()])
        .collect();
    let image_buckets: Vec<u8> = owners.iter().map(|o| bucket_of(*o)).collect();
    let image_ids = ids_in(shards, &image_buckets).await?;
    let mut sizes = Vec::with_capacity(image_ids.len());
    let mut hashes = Vec::with_capacity(image_ids.len());
    // Drawn in order (the generator's stream decides the bytes), stored UPLOADS_AT_ONCE at a
    // time: a PUT to an object store cluster mostly waits for its nodes' quorum.
    for ids in image_ids.chunks(UPLOADS_AT_ONCE) {
        let mut batch = Vec::with_capacity(ids.len());
        for id in ids {
            let size = rng.gen_range(20_000..=200_000);
            let png = noise_png(size, || rng.gen());
            hashes.push(crate::api::media::hex(&Sha256::digest(&png)));
            sizes.push(png.len() as i64);
            batch.push((
                object_path(&file_name(*id, "image/png")),
                PutPayload::from(png),
            ));
        }
        futures::future::try_join_all(
            batch
                .iter()
                .map(|(path, png)| store_seeded_image(media, media_settings, path, png)),
        )
        .await
        .context("storing a seeded image")?;
    }
    for (shard, rows) in group(shards, &image_ids) {
        let pool = shards.shard(shard).primary();
        sqlx::query(
            "INSERT INTO media (id, owner_id, content_type, size_bytes, sha256)
             SELECT id, owner, 'image/png', size, sha
             FROM UNNEST($1::bigint[], $2::bigint[], $3::bigint[], $4::text[]) AS t(id, owner, size, sha)",
        )
        .bind(rows.iter().map(|&i| image_ids[i]).collect::<Vec<_>>())
        .bind(rows.iter().map(|&i| owners[i]).collect::<Vec<_>>())
        .bind(rows.iter().map(|&i| sizes[i]).collect::<Vec<_>>())
        .bind(rows.iter().map(|&i| hashes[i].clone()).collect::<Vec<_>>())
        .execute(pool)
        .await
        .context("inserting media rows")?;
    }
    // The first image of each user is their avatar; image `i` belongs to user `i mod users`, so
    // images below the user count are the avatars. Set in every shard's copy of `users`.
    let avatars = 0..image_ids.len().min(user_ids.len());
    let avatar_owners: Vec<i64> = avatars.clone().map(|i| owners[i]).collect();
    let avatar_urls: Vec<String> = avatars
        .map(|i| {
            format!(
                "{public_base_url}/media/{}",
                file_name(image_ids[i], "image/png")
            )
        })
        .collect();
    for (_, db) in shards.all() {
        sqlx::query(
            "UPDATE users u SET image = t.image FROM UNNEST($1::bigint[], $2::text[]) AS t(id, image)
             WHERE u.id = t.id",
        )
        .bind(&avatar_owners)
        .bind(&avatar_urls)
        .execute(db.primary())
        .await
        .context("setting profile images")?;
    }
    report.images = image_ids.len();

    for (_, db) in shards.all() {
        let pool = db.primary();
        // The list counts (migration 0002), from the rows just written.
        sqlx::query("SELECT recount_lists()")
            .execute(pool)
            .await
            .context("counting the lists")?;
        // Statistics for the planner, and the visibility map so counts can use index-only
        // scans: what autovacuum would reach on its own a little later.
        sqlx::query("VACUUM ANALYZE")
            .execute(pool)
            .await
            .context("vacuuming")?;
    }
    tracing::info!(?report, shards = shards.len(), elapsed = ?started.elapsed(), "seeded");
    Ok(report)
}

/// Times a seeded image is offered to the store before seeding gives up. Seeding is a bulk load
/// against small hosts, not a measurement: stage 7's three 0.05-core Garage nodes, taking 16
/// uploads at once, once let one PUT run past the store client's 5 s timeout on every node, and
/// that one upload ended a whole tour. A PUT of the same bytes to the same name is idempotent, so
/// trying again is safe; three tries still end a seeding whose store is really down.
const SEED_PUT_ATTEMPTS: u32 = 3;

/// Stores one seeded image, trying again (up to [`SEED_PUT_ATTEMPTS`] times) when the store did
/// not answer.
async fn store_seeded_image(
    media: &dyn ObjectStore,
    settings: &crate::settings::MediaSettings,
    path: &object_store::path::Path,
    png: &PutPayload,
) -> object_store::Result<()> {
    let mut attempt = 1;
    loop {
        let options = crate::api::media::put_options(settings, "image/png");
        match media.put_opts(path, png.clone(), options).await {
            Ok(_) => return Ok(()),
            Err(error) if attempt < SEED_PUT_ATTEMPTS => {
                tracing::warn!(%path, attempt, %error, "seeded image not stored; trying again");
                attempt += 1;
            }
            Err(error) => return Err(error),
        }
    }
}

/// Images stored at once while seeding: one at a time, 2,000 images took about five minutes
/// against stage 7's three 0.05-core Garage nodes, most of it each PUT waiting for the nodes'
/// quorum; 16 at a time keeps the nodes busy and holds at most 16 images (3.2 MB) in memory.
const UPLOADS_AT_ONCE: usize = 16;

/// Seeds placement's own generator (`spec.seed` xor this), so drawing buckets leaves the data's
/// draws as they are.
const PLACEMENT_SEED: u64 = 0x5eed_b0c4;

/// An article as drawn, before it has an id.
struct DrawnArticle {
    title: String,
    author: i64,
    description: String,
    body: String,
    created_at: OffsetDateTime,
    tags: Vec<String>,
}

/// One id per bucket in `buckets`, each from the sequence of the bucket's shard, in order: what
/// `next_id_in(bucket)` gives, taken in bulk (one `nextval` per row of a series, which numbers
/// the rows in order; then shifted and or'ed with the bucket here).
async fn ids_in(shards: &Shards, buckets: &[u8]) -> anyhow::Result<Vec<i64>> {
    let mut ids = vec![0_i64; buckets.len()];
    let by_shard = group_by(buckets.len(), |i| shards.shard_of_bucket(buckets[i]));
    for (shard, rows) in by_shard {
        let sequence: Vec<i64> =
            sqlx::query_scalar("SELECT nextval('id_sequence') FROM generate_series(1, $1::int)")
                .bind(rows.len() as i32)
                .fetch_all(shards.shard(shard).primary())
                .await
                .context("allocating ids")?;
        for (&i, value) in rows.iter().zip(sequence) {
            ids[i] = (value << crate::db::shards::BUCKET_BITS) | i64::from(buckets[i]);
        }
    }
    Ok(ids)
}

/// The indexes of `ids` grouped by the shard holding each id, in shard order.
fn group(shards: &Shards, ids: &[i64]) -> Vec<(u8, Vec<usize>)> {
    group_by(ids.len(), |i| shards.shard_of(ids[i]))
}

/// `0..n` grouped by `shard_of`, in shard order, each group in index order.
fn group_by(n: usize, shard_of: impl Fn(usize) -> u8) -> Vec<(u8, Vec<usize>)> {
    let mut groups: std::collections::BTreeMap<u8, Vec<usize>> = std::collections::BTreeMap::new();
    for i in 0..n {
        groups.entry(shard_of(i)).or_default().push(i);
    }
    groups.into_iter().collect()
}

/// An index in `0..n` where low indexes are much more likely (a squared uniform: the first tenth
/// gets about a third of the picks). Cheap stand-in for a Zipf skew of who writes and who is read.
fn skewed(rng: &mut StdRng, n: usize) -> usize {
    let x: f64 = rng.gen();
    ((x * x) * n as f64) as usize % n
}

/// Inserts the pairs `(a[i], b[i])` with `sql`, each on the shard holding `placed_by[i]`.
async fn insert_pairs(
    shards: &Shards,
    sql: &str,
    a: &[i64],
    b: &[i64],
    placed_by: &[i64],
) -> anyhow::Result<usize> {
    for (shard, rows) in group(shards, placed_by) {
        for chunk in rows.chunks(CHUNK * 5) {
            sqlx::query(sql)
                .bind(chunk.iter().map(|&i| a[i]).collect::<Vec<_>>())
                .bind(chunk.iter().map(|&i| b[i]).collect::<Vec<_>>())
                .execute(shards.shard(shard).primary())
                .await?;
        }
    }
    Ok(a.len())
}

/// `n` argon2 hashes of [`SEED_PASSWORD`], each with its own salt, computed on every core.
async fn hash_many(n: usize) -> anyhow::Result<Vec<String>> {
    tokio::task::spawn_blocking(move || {
        let threads = std::thread::available_parallelism().map_or(2, |p| p.get());
        let per_thread = n.div_ceil(threads.max(1)).max(1);
        std::thread::scope(|scope| {
            let handles: Vec<_> = (0..n)
                .step_by(per_thread)
                .map(|start| {
                    let count = per_thread.min(n - start);
                    scope.spawn(move || {
                        (0..count)
                            .map(|_| hash_password_blocking(SEED_PASSWORD))
                            .collect::<Result<Vec<_>, _>>()
                    })
                })
                .collect();
            let mut all = Vec::with_capacity(n);
            for handle in handles {
                let hashes = handle
                    .join()
                    .map_err(|_| anyhow::anyhow!("a hashing thread panicked"))?
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                all.extend(hashes);
            }
            Ok(all)
        })
    })
    .await?
}
