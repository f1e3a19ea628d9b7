//! The deterministic data set benchmarks run on: users, follows, articles with tags, favorites
//! and comments, all derived from one seed number, so every run of every stage starts from the
//! same data.
//!
//! Rows are written in bulk (`UNNEST` of arrays, a few thousand rows per statement) but are what
//! the API would have written: ids from `next_id()`, slugs from [`crate::slug::slug_for`],
//! lower-cased e-mails, real argon2 password hashes (one per user, computed on every core).
//!
//! Seeded users are `user<N>` with e-mail `user<N>@seed.archlab.test` and the password
//! [`SEED_PASSWORD`], so the load harness can log in as any of them.

use std::time::Instant;

use anyhow::Context;
use rand::{rngs::StdRng, seq::SliceRandom, Rng, SeedableRng};
use sqlx::PgPool;
use time::{Duration, OffsetDateTime};

use crate::api::media::{file_name, object_path};
use crate::{auth::hash_password_blocking, seed_images::noise_png, slug::slug_for};
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

/// Writes the data set described by `spec` into the database and the media store, unless a
/// seeded data set is already there.
pub async fn seed(
    pool: &PgPool,
    media: &dyn ObjectStore,
    media_settings: &crate::settings::MediaSettings,
    spec: SeedSpec,
) -> anyhow::Result<SeedReport> {
    let public_base_url = &media_settings.public_base_url;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM users WHERE username = 'user1')")
            .fetch_one(pool)
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
    let mut report = SeedReport::default();

    // Users: real argon2 hashes, one per user, on every core.
    let hashes = hash_many(spec.users).await?;
    let usernames: Vec<String> = (1..=spec.users).map(|i| format!("user{i}")).collect();
    let emails: Vec<String> = (1..=spec.users)
        .map(|i| format!("user{i}@seed.archlab.test"))
        .collect();
    let bios: Vec<Option<String>> = (0..spec.users)
        .map(|_| rng.gen_bool(0.5).then(|| sentence(&mut rng, 8)))
        .collect();
    let mut user_ids: Vec<i64> = Vec::with_capacity(spec.users);
    for start in (0..spec.users).step_by(CHUNK) {
        let end = (start + CHUNK).min(spec.users);
        let ids: Vec<i64> = sqlx::query_scalar(
            "INSERT INTO users (username, email, password_hash, bio)
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[])
             RETURNING id",
        )
        .bind(&usernames[start..end])
        .bind(&emails[start..end])
        .bind(&hashes[start..end])
        .bind(&bios[start..end])
        .fetch_all(pool)
        .await
        .context("inserting users")?;
        user_ids.extend(ids);
    }
    report.users = user_ids.len();
    if user_ids.is_empty() {
        return Ok(report);
    }

    // Follows: each user follows a few others, popular users more often (squared skew).
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
        pool,
        "INSERT INTO follows (followee_id, follower_id) SELECT * FROM UNNEST($1::bigint[], $2::bigint[])",
        &followees,
        &followers,
    )
    .await
    .context("inserting follows")?;

    // Articles: ids first (the slug ends with the id), oldest first so ids grow with time.
    let article_ids: Vec<i64> =
        sqlx::query_scalar("SELECT next_id() FROM generate_series(1, $1::int)")
            .bind(spec.articles as i32)
            .fetch_all(pool)
            .await
            .context("allocating article ids")?;
    let now = OffsetDateTime::now_utc();
    let year = Duration::days(365);
    let step = year / (spec.articles.max(1) as f64);
    for start in (0..spec.articles).step_by(CHUNK) {
        let end = (start + CHUNK).min(spec.articles);
        let mut slugs = Vec::new();
        let mut authors = Vec::new();
        let mut titles = Vec::new();
        let mut descriptions = Vec::new();
        let mut bodies = Vec::new();
        let mut created = Vec::new();
        let mut tag_articles = Vec::new();
        let mut tag_positions: Vec<i16> = Vec::new();
        let mut tag_names = Vec::new();
        let mut tag_created = Vec::new();
        for (i, &id) in article_ids.iter().enumerate().take(end).skip(start) {
            let words = rng.gen_range(3..9);
            let title = sentence(&mut rng, words);
            slugs.push(slug_for(&title, id));
            titles.push(title);
            authors.push(user_ids[skewed(&mut rng, user_ids.len())]);
            descriptions.push(sentence(&mut rng, 12));
            let paragraphs: Vec<String> = (0..rng.gen_range(2..6))
                .map(|_| sentence(&mut rng, 60))
                .collect();
            bodies.push(paragraphs.join("\n\n"));
            let created_at = now - year + step * (i as f64);
            created.push(created_at);
            let n_tags = rng.gen_range(0..=4);
            let tags: Vec<&str> = TAGS.choose_multiple(&mut rng, n_tags).copied().collect();
            for (position, tag) in tags.into_iter().enumerate() {
                tag_articles.push(id);
                tag_positions.push(position as i16);
                tag_names.push(tag.to_owned());
                tag_created.push(created_at);
            }
        }
        sqlx::query(
            "INSERT INTO articles (id, slug, author_id, title, description, body, created_at, updated_at)
             SELECT id, slug, author_id, title, description, body, created_at, created_at
             FROM UNNEST($1::bigint[], $2::text[], $3::bigint[], $4::text[], $5::text[], $6::text[],
                         $7::timestamptz[])
                  AS t(id, slug, author_id, title, description, body, created_at)",
        )
        .bind(&article_ids[start..end])
        .bind(&slugs)
        .bind(&authors)
        .bind(&titles)
        .bind(&descriptions)
        .bind(&bodies)
        .bind(&created)
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
    report.articles = article_ids.len();

    // Favorites: popular articles (by a skew over the newest) get more.
    let mut fav_articles = Vec::new();
    let mut fav_users = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for _ in 0..spec.articles * spec.favorites_per_article {
        let a = article_ids[article_ids.len() - 1 - skewed(&mut rng, article_ids.len())];
        let u = user_ids[rng.gen_range(0..user_ids.len())];
        if seen.insert((a, u)) {
            fav_articles.push(a);
            fav_users.push(u);
        }
    }
    report.favorites = insert_pairs(
        pool,
        "INSERT INTO favorites (article_id, user_id) SELECT * FROM UNNEST($1::bigint[], $2::bigint[])",
        &fav_articles,
        &fav_users,
    )
    .await
    .context("inserting favorites")?;

    // Comments.
    let n_comments = spec.articles * spec.comments_per_article;
    for start in (0..n_comments).step_by(CHUNK) {
        let end = (start + CHUNK).min(n_comments);
        let mut articles = Vec::new();
        let mut authors = Vec::new();
        let mut bodies = Vec::new();
        for _ in start..end {
            articles.push(article_ids[rng.gen_range(0..article_ids.len())]);
            authors.push(user_ids[rng.gen_range(0..user_ids.len())]);
            bodies.push(sentence(&mut rng, 20));
        }
        sqlx::query(
            "INSERT INTO comments (article_id, author_id, body)
             SELECT * FROM UNNEST($1::bigint[], $2::bigint[], $3::text[])",
        )
        .bind(&articles)
        .bind(&authors)
        .bind(&bodies)
        .execute(pool)
        .await
        .context("inserting comments")?;
        report.comments += end - start;
    }
    // Images: bytes into the store, rows into `media`; user N's profile image is image N.
    let image_ids: Vec<i64> =
        sqlx::query_scalar("SELECT next_id() FROM generate_series(1, $1::int)")
            .bind(spec.images as i32)
            .fetch_all(pool)
            .await
            .context("allocating media ids")?;
    let mut owners = Vec::with_capacity(image_ids.len());
    let mut sizes = Vec::with_capacity(image_ids.len());
    let mut hashes = Vec::with_capacity(image_ids.len());
    for (i, id) in image_ids.iter().enumerate() {
        let size = rng.gen_range(20_000..=200_000);
        let png = noise_png(size, || rng.gen());
        hashes.push(crate::api::media::hex(&Sha256::digest(&png)));
        sizes.push(png.len() as i64);
        owners.push(user_ids[i % user_ids.len()]);
        media
            .put_opts(
                &object_path(&file_name(*id, "image/png")),
                PutPayload::from(png),
                crate::api::media::put_options(media_settings, "image/png"),
            )
            .await
            .context("storing a seeded image")?;
    }
    sqlx::query(
        "INSERT INTO media (id, owner_id, content_type, size_bytes, sha256)
         SELECT id, owner, 'image/png', size, sha FROM UNNEST($1::bigint[], $2::bigint[], $3::bigint[], $4::text[])
              AS t(id, owner, size, sha)",
    )
    .bind(&image_ids)
    .bind(&owners)
    .bind(&sizes)
    .bind(&hashes)
    .execute(pool)
    .await
    .context("inserting media rows")?;
    let avatars: Vec<String> = image_ids
        .iter()
        .take(user_ids.len())
        .map(|id| format!("{public_base_url}/media/{}", file_name(*id, "image/png")))
        .collect();
    sqlx::query("UPDATE users u SET image = t.image FROM UNNEST($1::bigint[], $2::text[]) AS t(id, image) WHERE u.id = t.id")
        .bind(&user_ids[..avatars.len()])
        .bind(&avatars)
        .execute(pool)
        .await
        .context("setting profile images")?;
    report.images = image_ids.len();

    // The denormalised copies on the article rows (see the migration), computed once in bulk.
    sqlx::query(
        "UPDATE articles a SET
            tag_list = COALESCE((SELECT array_agg(t.tag ORDER BY t.position)
                                 FROM article_tags t WHERE t.article_id = a.id), '{}'),
            favorites_count = (SELECT count(*) FROM favorites f WHERE f.article_id = a.id)",
    )
    .execute(pool)
    .await
    .context("filling tag lists and favorite counts")?;
    // The list counts (migration 0002), from the rows just written.
    sqlx::query("SELECT recount_lists()")
        .execute(pool)
        .await
        .context("counting the lists")?;
    // Statistics for the planner, and the visibility map so counts can use index-only scans: what
    // autovacuum would reach on its own a little later.
    sqlx::query("VACUUM ANALYZE")
        .execute(pool)
        .await
        .context("vacuuming")?;
    tracing::info!(?report, elapsed = ?started.elapsed(), "seeded");
    Ok(report)
}

/// An index in `0..n` where low indexes are much more likely (a squared uniform: the first tenth
/// gets about a third of the picks). Cheap stand-in for a Zipf skew of who writes and who is read.
fn skewed(rng: &mut StdRng, n: usize) -> usize {
    let x: f64 = rng.gen();
    ((x * x) * n as f64) as usize % n
}

async fn insert_pairs(pool: &PgPool, sql: &str, a: &[i64], b: &[i64]) -> anyhow::Result<usize> {
    for start in (0..a.len()).step_by(CHUNK * 5) {
        let end = (start + CHUNK * 5).min(a.len());
        sqlx::query(sql)
            .bind(&a[start..end])
            .bind(&b[start..end])
            .execute(pool)
            .await?;
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
