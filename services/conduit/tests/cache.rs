//! Stage 3's cache against a real Redis (started by the test through the lab library): hits and
//! misses, invalidation by writes, per-viewer fields, single-flight, cached 404s, and the app's
//! behaviour while Redis is dead or frozen.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::time::Duration;

use archlab::cache::TestRedis;
use common::TestApp;
use conduit::settings::CacheBackend;
use reqwest::StatusCode;
use serde_json::json;

/// The breaker's open period in these tests: short, so a returning Redis is used again quickly.
const BREAKER_OPEN: Duration = Duration::from_millis(300);

async fn start() -> (TestApp, TestRedis) {
    start_waiting(None).await
}

/// With `op_timeout_ms` instead of the 50 ms default: for a test that counts database loads,
/// where a read that times out on a busy machine (and falls back to the database, as it should)
/// would be counted as a second load. CI saw exactly that once.
async fn start_waiting(op_timeout_ms: Option<u64>) -> (TestApp, TestRedis) {
    let redis = TestRedis::start().await.expect("start Redis");
    let url = redis.url();
    let app = TestApp::start_with(|s| {
        s.cache.backend = CacheBackend::Redis;
        s.cache.url = url;
        s.cache.breaker_open_ms = BREAKER_OPEN.as_millis() as u64;
        if let Some(ms) = op_timeout_ms {
            s.cache.op_timeout_ms = ms;
        }
    })
    .await;
    (app, redis)
}

fn signal(redis: &TestRedis, signal: &str) {
    let pid = redis.server.running().unwrap().expect("Redis runs").pid;
    let status = std::process::Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[tokio::test]
async fn a_repeated_read_is_a_hit_with_the_same_answer() {
    let (app, _redis) = start().await;
    let token = app.register("alice").await;
    let slug = app.article(&token, "Cached", &["rust"]).await;
    let path = format!("/api/articles/{slug}");

    let (status, first_cache, first) = app.get_cached(&path, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(first_cache.as_deref(), Some("miss"));
    let (_, second_cache, second) = app.get_cached(&path, None).await;
    assert_eq!(second_cache.as_deref(), Some("hit"));
    assert_eq!(first, second, "a hit answers exactly what the database did");

    for path in [
        "/api/articles?limit=20",
        "/api/articles?tag=rust",
        "/api/tags",
    ] {
        let (_, _, from_db) = app.get_cached(path, None).await;
        let (status, cache, from_cache) = app.get_cached(path, None).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(cache.as_deref(), Some("hit"), "{path}");
        assert_eq!(from_db, from_cache, "{path}");
    }
    let (_, _, profile) = app.get_cached("/api/profiles/alice", None).await;
    let (_, cache, again) = app.get_cached("/api/profiles/alice", None).await;
    assert_eq!((cache.as_deref(), &profile), (Some("hit"), &again));

    // Lists the cache does not hold say so.
    let (_, cache, _) = app.get_cached("/api/articles?author=alice", None).await;
    assert_eq!(cache.as_deref(), Some("bypass"));
    let (_, cache, _) = app.get_cached("/api/articles/feed", Some(&token)).await;
    assert_eq!(cache.as_deref(), Some("bypass"));
}

#[tokio::test]
async fn a_write_makes_the_next_read_a_miss_that_returns_the_new_value() {
    let (app, _redis) = start().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let slug = app.article(&alice, "Before", &["a"]).await;
    let path = format!("/api/articles/{slug}");
    app.get_cached(&path, None).await;
    assert_eq!(app.get_cached(&path, None).await.1.as_deref(), Some("hit"));

    // Update: body changes (the slug stays, the title is kept).
    let (status, _) = app
        .put(&path, Some(&alice), json!({"article": {"body": "after"}}))
        .await;
    assert_eq!(status, StatusCode::OK);
    let (_, cache, body) = app.get_cached(&path, None).await;
    assert_eq!(cache.as_deref(), Some("miss"));
    assert_eq!(body["article"]["body"], "after");

    // Favorite by someone else: the count changes.
    app.post(&format!("{path}/favorite"), Some(&bob), json!({}))
        .await;
    let (_, cache, body) = app.get_cached(&path, None).await;
    assert_eq!(cache.as_deref(), Some("miss"));
    assert_eq!(body["article"]["favoritesCount"], 1);

    // The author's bio appears inside the article: a profile update reaches it too.
    app.get_cached(&path, None).await;
    app.put(
        "/api/user",
        Some(&alice),
        json!({"user": {"bio": "new bio"}}),
    )
    .await;
    let (_, cache, body) = app.get_cached(&path, None).await;
    assert_eq!(cache.as_deref(), Some("miss"));
    assert_eq!(body["article"]["author"]["bio"], "new bio");
    let (_, _, profile) = app.get_cached("/api/profiles/alice", None).await;
    assert_eq!(profile["profile"]["bio"], "new bio");

    // A new article appears at once at the top of the cached lists, with the count.
    let (_, _, list) = app.get_cached("/api/articles?tag=b", None).await;
    assert_eq!(list["articlesCount"], 0);
    app.get_cached("/api/articles", None).await;
    app.get_cached("/api/tags", None).await;
    let newer = app.article(&bob, "Newer", &["b"]).await;
    for path in ["/api/articles", "/api/articles?tag=b"] {
        let (_, cache, list) = app.get_cached(path, None).await;
        assert_eq!(cache.as_deref(), Some("miss"), "{path}");
        assert_eq!(list["articles"][0]["slug"], newer.as_str(), "{path}");
    }
    let (_, cache, tags) = app.get_cached("/api/tags", None).await;
    assert_eq!(cache.as_deref(), Some("miss"));
    assert!(tags["tags"].as_array().unwrap().contains(&json!("b")));

    // Retagging moves it between tag lists; deleting removes it everywhere.
    let newer_path = format!("/api/articles/{newer}");
    app.put(
        &newer_path,
        Some(&bob),
        json!({"article": {"tagList": ["c"]}}),
    )
    .await;
    let (_, _, list) = app.get_cached("/api/articles?tag=b", None).await;
    assert_eq!(list["articlesCount"], 0);
    app.delete(&newer_path, Some(&bob)).await;
    let (_, _, list) = app.get_cached("/api/articles?tag=c", None).await;
    assert_eq!(list["articlesCount"], 0);
    let (_, _, list) = app.get_cached("/api/articles", None).await;
    assert_eq!(list["articlesCount"], 1);
    assert_eq!(app.get(&newer_path, None).await.0, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn one_users_favorited_and_following_never_show_in_anothers_response() {
    let (app, _redis) = start().await;
    let author = app.register("author").await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let slug = app.article(&author, "Shared", &["t"]).await;
    let path = format!("/api/articles/{slug}");
    app.post(&format!("{path}/favorite"), Some(&alice), json!({}))
        .await;
    app.post("/api/profiles/author/follow", Some(&alice), json!({}))
        .await;

    // Alice fills the cache; Bob and an anonymous reader get hits built from the same entry.
    let (_, _, seen_by_alice) = app.get_cached(&path, Some(&alice)).await;
    assert_eq!(seen_by_alice["article"]["favorited"], true);
    assert_eq!(seen_by_alice["article"]["author"]["following"], true);
    for (who, token) in [("bob", Some(bob.as_str())), ("anonymous", None)] {
        let (_, cache, body) = app.get_cached(&path, token).await;
        assert_eq!(cache.as_deref(), Some("hit"), "{who}");
        assert_eq!(body["article"]["favorited"], false, "{who}");
        assert_eq!(body["article"]["author"]["following"], false, "{who}");
        assert_eq!(body["article"]["favoritesCount"], 1, "{who}");
    }
    let (_, cache, again) = app.get_cached(&path, Some(&alice)).await;
    assert_eq!(cache.as_deref(), Some("hit"));
    assert_eq!(again["article"]["favorited"], true);

    // The same in lists and profiles.
    for (token, expected) in [(Some(&alice), true), (Some(&bob), false), (None, false)] {
        let (_, _, list) = app
            .get_cached("/api/articles?tag=t", token.map(String::as_str))
            .await;
        assert_eq!(list["articles"][0]["favorited"], expected);
        assert_eq!(list["articles"][0]["author"]["following"], expected);
        let (_, _, profile) = app
            .get_cached("/api/profiles/author", token.map(String::as_str))
            .await;
        assert_eq!(profile["profile"]["following"], expected);
    }
}

#[tokio::test]
async fn a_miss_storm_on_one_key_loads_it_once() {
    let (app, _redis) = start_waiting(Some(2_000)).await;
    let token = app.register("alice").await;
    let slug = app.article(&token, "Popular", &[]).await;
    let path = format!("/api/articles/{slug}");
    let loads = r#"cache_loads_total{kind="article"}"#;
    let before = app.metric(loads).await;

    let requests = (0..64).map(|_| app.get_cached(&path, None));
    let answers = futures::future::join_all(requests).await;
    assert!(answers.iter().all(|(s, _, _)| *s == StatusCode::OK));
    assert_eq!(
        app.metric(loads).await - before,
        1.0,
        "64 concurrent misses, one database load"
    );
}

#[tokio::test]
async fn not_found_is_cached_briefly_and_registration_clears_it() {
    let (app, _redis) = start().await;
    let (status, cache, _) = app.get_cached("/api/profiles/newcomer", None).await;
    assert_eq!(
        (status, cache.as_deref()),
        (StatusCode::NOT_FOUND, Some("miss"))
    );
    let (status, cache, body) = app.get_cached("/api/profiles/newcomer", None).await;
    assert_eq!(
        (status, cache.as_deref()),
        (StatusCode::NOT_FOUND, Some("hit"))
    );
    common::assert_error(&body, "profile");

    app.register("newcomer").await;
    let (status, cache, _) = app.get_cached("/api/profiles/newcomer", None).await;
    assert_eq!((status, cache.as_deref()), (StatusCode::OK, Some("miss")));
}

/// Reads `path` until `x-cache` says `want` (the breaker's period must pass first).
async fn until_cache(app: &TestApp, path: &str, want: &str) -> serde_json::Value {
    for _ in 0..50 {
        let (status, cache, body) = app.get_cached(path, None).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        if cache.as_deref() == Some(want) {
            return body;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{path} never answered with x-cache: {want}");
}

/// An article whose entry is in the cache (a read has been a hit); returns the author's token
/// and the article's path.
async fn cached_article(app: &TestApp) -> (String, String) {
    let token = app.register("alice").await;
    let slug = app.article(&token, "Cached before the fault", &[]).await;
    let path = format!("/api/articles/{slug}");
    until_cache(app, &path, "hit").await;
    (token, path)
}

/// Reads `path` `times` times while the cache is out: every answer is a 200 from the database.
async fn all_bypass(app: &TestApp, path: &str, times: usize) {
    for _ in 0..times {
        let (status, cache, _) = app.get_cached(path, None).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(cache.as_deref(), Some("bypass"));
    }
}

/// Updates the article's body; the write must succeed whatever state the cache is in.
async fn write_body(app: &TestApp, token: &str, path: &str, body: &str) {
    let (status, _) = app
        .put(path, Some(token), json!({"article": {"body": body}}))
        .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn a_dead_redis_costs_no_errors_and_is_used_again_when_back() {
    let (app, redis) = start().await;
    let (token, path) = cached_article(&app).await;

    redis.server.stop().unwrap();
    all_bypass(&app, &path, 20).await;
    write_body(&app, &token, &path, "written while Redis was down").await;
    assert!(app.metric("cache_breaker_open").await >= 1.0);

    redis.server.start().await.unwrap();
    let body = until_cache(&app, &path, "hit").await;
    assert_eq!(body["article"]["body"], "written while Redis was down");
    assert_eq!(app.metric("cache_breaker_open").await, 0.0);
}

#[tokio::test]
async fn a_frozen_redis_costs_no_errors_and_misses_no_invalidation() {
    let (app, redis) = start().await;
    let (token, path) = cached_article(&app).await;

    // SIGSTOP: connections stay open, nothing answers. Reads wait out the operation timeout
    // until the breaker opens, then skip Redis; none fails.
    signal(&redis, "-STOP");
    all_bypass(&app, &path, 10).await;
    // A write while the breaker is open: its delete is still sent (other app hosts may be
    // reading this Redis), waits out the invalidation timeout, and is kept; Redis still holds
    // the old entry.
    write_body(&app, &token, &path, "written while Redis was frozen").await;
    let (_, cache, body) = app.get_cached(&path, None).await;
    assert_eq!(cache.as_deref(), Some("bypass"));
    assert_eq!(body["article"]["body"], "written while Redis was frozen");
    assert_eq!(app.metric("cache_pending_invalidations").await, 1.0);

    // Thawed, Redis still holds the old entry; the probe deletes it before any hit is served.
    signal(&redis, "-CONT");
    let body = until_cache(&app, &path, "hit").await;
    assert_eq!(body["article"]["body"], "written while Redis was frozen");
    assert_eq!(app.metric("cache_pending_invalidations").await, 0.0);
}
