//! Stage 7's sharding by author, against real PostgreSQL servers: the same requests, sent to an
//! app on one database and to an app on two shards, get the same answers (lists merged across
//! shards included), and the data on the shards keeps its invariants (every article's
//! `favoritesCount` equals its favorite rows, wherever they live; nothing left prepared).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use archlab::{cache::TestRedis, postgres::TestPostgres};
use common::TestApp;
use conduit::settings::CacheBackend;
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::PgPool;

/// One answer with everything that differs between two deployments for the same data removed:
/// ids (in slugs and comments) and timestamps. Articles keep their order.
fn normalised(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(key, _)| {
                    !matches!(
                        key.as_str(),
                        "slug" | "createdAt" | "updatedAt" | "id" | "token"
                    )
                })
                .map(|(key, v)| (key.clone(), normalised(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(normalised).collect()),
        other => other.clone(),
    }
}

/// The two deployments, users (name, token on each) and articles (title, slug on each).
struct Pair {
    one: TestApp,
    sharded: TestApp,
    /// Shard 1 of the sharded app (shard 0 is `sharded.pg`).
    shard1: TestPostgres,
    users: Vec<(String, String, String)>,
    articles: Vec<(String, String, String)>,
}

impl Pair {
    /// With `cache`, the sharded app has a Redis cache in front (stage 7 runs with one): its
    /// reads then go through the cached paths (list heads, articles by id), filled per shard.
    async fn start(cache: Option<&TestRedis>) -> Self {
        let shard1 = TestPostgres::start().await.unwrap();
        let url = shard1.url();
        let redis = cache.map(TestRedis::url);
        let sharded = TestApp::start_with(|s| {
            s.database.shards = vec![url.into()];
            if let Some(redis) = redis {
                s.cache.backend = CacheBackend::Redis;
                s.cache.url = redis;
            }
        })
        .await;
        let one = TestApp::start().await;
        Self {
            one,
            sharded,
            shard1,
            users: Vec::new(),
            articles: Vec::new(),
        }
    }

    fn shard_pools(&self) -> [String; 2] {
        [self.sharded.pg.url(), self.shard1.url()]
    }

    /// User `name`'s home shard in the sharded deployment (their bucket's, the low byte of their
    /// id, on shard `bucket mod 2`). Every shard holds every user's row, each the same.
    async fn home_of(&self, name: &str) -> usize {
        let mut ids = Vec::new();
        for url in self.shard_pools() {
            let pool = PgPool::connect(&url).await.unwrap();
            let found: Option<i64> = sqlx::query_scalar("SELECT id FROM users WHERE username = $1")
                .bind(name)
                .fetch_optional(&pool)
                .await
                .unwrap();
            ids.push(found.unwrap_or_else(|| panic!("{name} is missing on a shard")));
        }
        assert!(ids.iter().all(|id| *id == ids[0]), "{name}: {ids:?}");
        usize::try_from((ids[0] & 0xff) % 2).unwrap()
    }

    fn token(&self, user: usize, sharded: bool) -> &str {
        let (_, one, other) = &self.users[user];
        if sharded {
            other
        } else {
            one
        }
    }

    fn slug(&self, article: usize, sharded: bool) -> &str {
        let (_, one, other) = &self.articles[article];
        if sharded {
            other
        } else {
            one
        }
    }

    /// Sends the same request to both; asserts equal statuses and normalised bodies. `path`
    /// may hold `{slug}`, replaced by article `article`'s slug on each side.
    async fn same(
        &self,
        method: reqwest::Method,
        path: &str,
        article: Option<usize>,
        user: Option<usize>,
        body: Option<Value>,
    ) -> Value {
        let mut answers = Vec::new();
        for sharded in [false, true] {
            let app = if sharded { &self.sharded } else { &self.one };
            let path = match article {
                Some(a) => path.replace("{slug}", self.slug(a, sharded)),
                None => path.to_owned(),
            };
            let token = user.map(|u| self.token(u, sharded));
            answers.push(app.call(method.clone(), &path, token, body.clone()).await);
        }
        let (one, sharded) = (&answers[0], &answers[1]);
        assert_eq!(
            one.0, sharded.0,
            "{method} {path} as {user:?}: {} vs {}",
            one.1, sharded.1
        );
        assert_eq!(
            normalised(&one.1),
            normalised(&sharded.1),
            "{method} {path} as {user:?}"
        );
        answers.swap_remove(1).1
    }

    async fn get(&self, path: &str, user: Option<usize>) -> Value {
        self.same(reqwest::Method::GET, path, None, user, None)
            .await
    }

    async fn register(&mut self, name: &str) {
        let one = self.one.register(name).await;
        let sharded = self.sharded.register(name).await;
        self.users.push((name.to_owned(), one, sharded));
    }

    async fn write_article(&mut self, user: usize, title: &str, tags: &[&str]) {
        let one = self.one.article(self.token(user, false), title, tags).await;
        let sharded = self
            .sharded
            .article(self.token(user, true), title, tags)
            .await;
        self.articles.push((title.to_owned(), one, sharded));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn two_shards_answer_as_one_database_does_and_keep_counts_exact() {
    scenario(Pair::start(None).await).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn two_shards_behind_a_cache_answer_as_one_database_does() {
    let redis = TestRedis::start().await.unwrap();
    scenario(Pair::start(Some(&redis)).await).await;
}

/// Writes of every kind on both deployments, then every read compared.
async fn scenario(mut pair: Pair) {
    // Users until both shards hold at least two (buckets are drawn at random).
    let mut homes = Vec::new();
    for n in 0..40 {
        let name = format!("user{n}");
        pair.register(&name).await;
        homes.push(pair.home_of(&name).await);
        let on = |shard| homes.iter().filter(|h| **h == shard).count();
        if homes.len() >= 6 && on(0) >= 2 && on(1) >= 2 {
            break;
        }
    }
    let users = homes.len();
    assert!(homes.contains(&0) && homes.contains(&1), "{homes:?}");
    // A username or email taken on either shard is taken everywhere: every shard's unique
    // index sees it.
    for (user, field) in [
        (
            json!({"username": "user0", "email": "new0@example.com", "password": "password-x"}),
            "username",
        ),
        (
            json!({"username": "fresh", "email": "user1@example.com", "password": "password-x"}),
            "email",
        ),
    ] {
        let body = pair
            .same(
                reqwest::Method::POST,
                "/api/users",
                None,
                None,
                Some(json!({ "user": user })),
            )
            .await;
        common::assert_error(&body, field);
    }

    // Articles by every user, with tags shared across authors (so across shards).
    let tags = ["rust", "sql", "raft", "paxos"];
    for round in 0..3 {
        for user in 0..users {
            let title = format!("article {round} by user{user}");
            let mine = [tags[user % 4], tags[(user + round) % 4]];
            pair.write_article(user, &title, &mine).await;
        }
    }
    let articles = pair.articles.len();

    // Follows, favorites (same-shard and cross-shard, twice, and undone), comments, across users.
    for user in 0..users {
        let followee = &pair.users[(user + 1) % users].0.clone();
        pair.same(
            reqwest::Method::POST,
            &format!("/api/profiles/{followee}/follow"),
            None,
            Some(user),
            None,
        )
        .await;
        for article in (user..articles).step_by(3) {
            let path = "/api/articles/{slug}/favorite";
            pair.same(reqwest::Method::POST, path, Some(article), Some(user), None)
                .await;
            if article % 2 == 0 {
                // Twice counts once.
                pair.same(reqwest::Method::POST, path, Some(article), Some(user), None)
                    .await;
            }
            if article % 5 == 0 {
                pair.same(
                    reqwest::Method::DELETE,
                    path,
                    Some(article),
                    Some(user),
                    None,
                )
                .await;
            }
        }
        let comment = json!({"comment": {"body": format!("comment by user{user}")}});
        let path = "/api/articles/{slug}/comments";
        pair.same(
            reqwest::Method::POST,
            path,
            Some((user * 5) % articles),
            Some(user),
            Some(comment),
        )
        .await;
    }
    // Favorites that certainly cross shards, both ways: a user on each shard favorites the
    // other's first article (article `u` is user `u`'s first).
    let on_0 = homes.iter().position(|h| *h == 0).unwrap();
    let on_1 = homes.iter().position(|h| *h == 1).unwrap();
    for (reader, article) in [(on_0, on_1), (on_1, on_0)] {
        let path = "/api/articles/{slug}/favorite";
        pair.same(
            reqwest::Method::POST,
            path,
            Some(article),
            Some(reader),
            None,
        )
        .await;
    }
    // A favorite's answer says how many shards it spanned (the harness splits latency by it):
    // two across shards, one on the reader's own shard, nothing on one database. Favoriting
    // again changes nothing, so both apps stay alike.
    for (reader, article, spanned) in [(on_0, on_1, Some("2")), (on_0, on_0, Some("1"))] {
        for sharded in [false, true] {
            let app = if sharded { &pair.sharded } else { &pair.one };
            let path = format!("/api/articles/{}/favorite", pair.slug(article, sharded));
            let response = app
                .client
                .post(app.url(&path))
                .header(
                    "authorization",
                    format!("Token {}", pair.token(reader, sharded)),
                )
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
            let header = response
                .headers()
                .get("x-shards")
                .map(|v| v.to_str().unwrap());
            assert_eq!(
                header,
                spanned.filter(|_| sharded),
                "{path}, sharded: {sharded}"
            );
        }
    }
    // A rename (every shard's copy of the user together), an article's tags changed, and an
    // article with favorites from both shards deleted.
    pair.same(
        reqwest::Method::PUT,
        "/api/user",
        None,
        Some(0),
        Some(json!({"user": {"username": "renamed0", "bio": "moved"}})),
    )
    .await;
    pair.users[0].0 = "renamed0".to_owned();
    pair.same(
        reqwest::Method::PUT,
        "/api/articles/{slug}",
        Some(1),
        Some(1),
        Some(json!({"article": {"tagList": ["paxos", "zab"]}})),
    )
    .await;
    let deleted = 3;
    let author = deleted % users;
    pair.same(
        reqwest::Method::DELETE,
        "/api/articles/{slug}",
        Some(deleted),
        Some(author),
        None,
    )
    .await;

    // Every read, anonymous and as each user.
    let viewers: Vec<Option<usize>> = std::iter::once(None).chain((0..users).map(Some)).collect();
    for viewer in &viewers {
        for (limit, offset) in [(20, 0), (5, 0), (5, 3), (4, 9), (100, 0)] {
            let page = format!("limit={limit}&offset={offset}");
            let global = pair.get(&format!("/api/articles?{page}"), *viewer).await;
            assert!(global["articlesCount"].as_i64().unwrap() == (articles - 1) as i64);
            for tag in ["rust", "raft", "zab"] {
                pair.get(&format!("/api/articles?tag={tag}&{page}"), *viewer)
                    .await;
            }
            for user in 0..users {
                let name = pair.users[user].0.clone();
                pair.get(&format!("/api/articles?author={name}&{page}"), *viewer)
                    .await;
                pair.get(&format!("/api/articles?favorited={name}&{page}"), *viewer)
                    .await;
                pair.get(
                    &format!("/api/articles?tag=sql&favorited={name}&{page}"),
                    *viewer,
                )
                .await;
            }
            if viewer.is_some() {
                pair.get(&format!("/api/articles/feed?{page}"), *viewer)
                    .await;
            }
        }
        pair.get("/api/tags", *viewer).await;
        for article in 0..articles {
            for path in ["/api/articles/{slug}", "/api/articles/{slug}/comments"] {
                pair.same(reqwest::Method::GET, path, Some(article), *viewer, None)
                    .await;
            }
        }
        for user in 0..users {
            let name = pair.users[user].0.clone();
            pair.get(&format!("/api/profiles/{name}"), *viewer).await;
        }
    }
    let (status, _) = pair.sharded.get("/api/profiles/user0", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "the old name is free");

    // On the shards: each article's count equals its favorite rows on all shards together, and
    // no global transaction is left prepared or remembered.
    let pools = [
        PgPool::connect(&pair.shard_pools()[0]).await.unwrap(),
        PgPool::connect(&pair.shard_pools()[1]).await.unwrap(),
    ];
    let mut rows_per_article = std::collections::HashMap::<i64, i64>::new();
    let mut counts = Vec::new();
    for pool in &pools {
        let favorites: Vec<(i64, i64)> =
            sqlx::query_as("SELECT article_id, count(*) FROM favorites GROUP BY article_id")
                .fetch_all(pool)
                .await
                .unwrap();
        for (article, n) in favorites {
            *rows_per_article.entry(article).or_default() += n;
        }
        counts.extend(
            sqlx::query_as::<_, (i64, i64)>("SELECT id, favorites_count FROM articles")
                .fetch_all(pool)
                .await
                .unwrap(),
        );
        let left: (i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM pg_prepared_xacts),
                    (SELECT count(*) FROM two_phase_transactions)",
        )
        .fetch_one(pool)
        .await
        .unwrap();
        assert_eq!(left, (0, 0), "prepared branches, transaction records");
    }
    assert_eq!(counts.len(), articles - 1);
    let mut cross_shard = 0;
    for pool in &pools {
        cross_shard += sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM favorites f
             WHERE NOT EXISTS (SELECT 1 FROM articles a WHERE a.id = f.article_id)",
        )
        .fetch_one(pool)
        .await
        .unwrap();
    }
    assert!(
        cross_shard > 0,
        "some favorites crossed shards (two-phase commits)"
    );
    for (article, count) in counts {
        assert_eq!(
            count,
            rows_per_article.remove(&article).unwrap_or(0),
            "article {article}"
        );
    }
    // The coordinator's work, as `/metrics` shows it.
    let committed = pair
        .sharded
        .metric("two_phase_transactions_total{outcome=\"commit\"}")
        .await;
    assert!(
        committed >= 2.0,
        "global transactions committed: {committed}"
    );
    assert_eq!(pair.sharded.metric("two_phase_in_doubt").await, 0.0);
    assert!(
        rows_per_article.is_empty(),
        "favorites of deleted articles: {rows_per_article:?}"
    );
}
