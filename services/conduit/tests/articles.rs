//! Articles, lists, the feed, favorites, profiles and follows, against a real PostgreSQL.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use common::{assert_error, TestApp};
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test]
async fn creating_reading_updating_and_deleting_articles() {
    let app = TestApp::start().await;
    let jake = app.register("jake").await;
    let anna = app.register("anna").await;

    let (status, body) = app
        .post(
            "/api/articles",
            Some(&jake),
            json!({"article": {"title": "How to train your dragon", "description": "Ever wonder how?",
                   "body": "You have to believe", "tagList": ["dragons", " training ", "dragons"]}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let article = &body["article"];
    let slug = article["slug"].as_str().unwrap().to_owned();
    assert!(slug.starts_with("how-to-train-your-dragon-"), "{slug}");
    assert_eq!(article["tagList"], json!(["dragons", "training"]));
    assert_eq!(article["favorited"], false);
    assert_eq!(article["favoritesCount"], 0);
    assert_eq!(
        article["author"],
        json!({"username": "jake", "bio": null, "image": null, "following": false})
    );
    let created = article["createdAt"].as_str().unwrap();
    assert!(created.ends_with('Z') && created.len() == 24, "{created}");

    // Same title again: a distinct slug, no conflict.
    let other = app.article(&jake, "How to train your dragon", &[]).await;
    assert_ne!(other, slug);

    // Read it back, anonymously and as another user.
    let (status, body) = app.get(&format!("/api/articles/{slug}"), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["article"]["body"], "You have to believe");
    let (status, body) = app.get("/api/articles/no-such-article-zz", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_error(&body, "article");
    for weird in [
        "..%2F..%2Fetc%2Fpasswd",
        "%00",
        "x-99999999999999999999",
        "-",
    ] {
        let (status, _) = app.get(&format!("/api/articles/{weird}"), None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{weird}");
    }

    // 422: missing fields, each named; no auth: 401.
    let (status, body) = app
        .post(
            "/api/articles",
            Some(&jake),
            json!({"article": {"body": "b"}}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_error(&body, "title");
    assert_error(&body, "description");
    let (status, body) = app
        .post(
            "/api/articles",
            Some(&jake),
            json!({"article": {"title": "t", "description": "d", "body": "b", "tagList": "x"}}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let (status, _) = app
        .post("/api/articles", None, json!({"article": {"title": "t"}}))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // Update: only the author (403 otherwise); a new title gives a new slug; the old one is gone.
    let path = format!("/api/articles/{slug}");
    let (status, body) = app
        .put(
            &path,
            Some(&anna),
            json!({"article": {"title": "Mine now"}}),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_error(&body, "article");
    let (status, body) = app
        .put(&path, Some(&jake), json!({"article": {"tagList": null}}))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_error(&body, "tagList");
    let (status, body) = app
        .put(&path, Some(&jake), json!({"article": {"title": ""}}))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_error(&body, "title");
    let (status, body) = app
        .put(
            &path,
            Some(&jake),
            json!({"article": {"title": "Did you train your dragon?", "body": "Yes"}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let new_slug = body["article"]["slug"].as_str().unwrap().to_owned();
    assert!(new_slug.starts_with("did-you-train-your-dragon-"));
    assert_eq!(body["article"]["description"], "Ever wonder how?");
    assert_eq!(
        body["article"]["tagList"],
        json!(["dragons", "training"]),
        "omitted tagList keeps the tags"
    );
    let (status, _) = app.get(&path, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let new_path = format!("/api/articles/{new_slug}");
    let (_, body) = app
        .put(&new_path, Some(&jake), json!({"article": {"tagList": []}}))
        .await;
    assert_eq!(body["article"]["tagList"], json!([]));

    // Delete: only the author; then it is gone.
    let (status, _) = app.delete(&new_path, Some(&anna)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = app.delete(&new_path, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, body) = app.delete(&new_path, Some(&jake)).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert!(body.is_null());
    let (status, _) = app.get(&new_path, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = app.delete(&new_path, Some(&jake)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn lists_filters_pages_feed_and_favorites() {
    let app = TestApp::start().await;
    let jake = app.register("jake").await;
    let anna = app.register("anna").await;
    let first = app.article(&jake, "First", &["rust"]).await;
    let second = app.article(&jake, "Second", &["go"]).await;
    let third = app.article(&anna, "Third", &["rust", "sql"]).await;

    // Newest first, no bodies in lists, a count of all matches.
    let (status, body) = app.get("/api/articles", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["articlesCount"], 3);
    let slugs: Vec<&str> = body["articles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["slug"].as_str().unwrap())
        .collect();
    assert_eq!(slugs, vec![third.as_str(), second.as_str(), first.as_str()]);
    assert!(
        body["articles"][0].get("body").is_none(),
        "lists carry no body"
    );

    let count = |path: &'static str| {
        let app = &app;
        async move {
            let (status, body) = app.get(path, None).await;
            assert_eq!(status, StatusCode::OK, "{path}: {body}");
            (
                body["articlesCount"].as_i64().unwrap(),
                body["articles"].as_array().unwrap().len(),
            )
        }
    };
    assert_eq!(count("/api/articles?tag=rust").await, (2, 2));
    assert_eq!(count("/api/articles?author=jake").await, (2, 2));
    assert_eq!(count("/api/articles?author=jake&tag=rust").await, (1, 1));
    assert_eq!(count("/api/articles?author=nobody").await, (0, 0));
    assert_eq!(count("/api/articles?limit=1").await, (3, 1));
    assert_eq!(count("/api/articles?limit=2&offset=2").await, (3, 1));
    assert_eq!(count("/api/articles?offset=10").await, (3, 0));
    for bad in [
        "limit=0",
        "limit=-1",
        "limit=1000",
        "offset=-1",
        "limit=ten",
    ] {
        let (status, body) = app.get(&format!("/api/articles?{bad}"), None).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}: {body}");
    }

    // Favorites: count and flag as each viewer sees them; filter by who favorited.
    let (status, body) = app
        .post(
            &format!("/api/articles/{first}/favorite"),
            Some(&anna),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["article"]["favorited"], true);
    assert_eq!(body["article"]["favoritesCount"], 1);
    let (_, body) = app
        .post(
            &format!("/api/articles/{first}/favorite"),
            Some(&anna),
            json!({}),
        )
        .await;
    assert_eq!(
        body["article"]["favoritesCount"], 1,
        "favoriting twice counts once"
    );
    let (_, body) = app
        .get(&format!("/api/articles/{first}"), Some(&jake))
        .await;
    assert_eq!(
        body["article"]["favorited"], false,
        "anna's favorite is not jake's"
    );
    assert_eq!(body["article"]["favoritesCount"], 1);
    assert_eq!(count("/api/articles?favorited=anna").await, (1, 1));
    assert_eq!(count("/api/articles?favorited=jake").await, (0, 0));
    let (status, _) = app
        .post("/api/articles/nope-1/favorite", Some(&anna), json!({}))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = app
        .post(&format!("/api/articles/{first}/favorite"), None, json!({}))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, body) = app
        .delete(&format!("/api/articles/{first}/favorite"), Some(&anna))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["article"]["favorited"], false);
    assert_eq!(body["article"]["favoritesCount"], 0);

    // Feed: only followed authors; needs a token.
    let (status, _) = app.get("/api/articles/feed", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (_, body) = app.get("/api/articles/feed", Some(&anna)).await;
    assert_eq!(body["articlesCount"], 0);
    let (status, body) = app
        .post("/api/profiles/jake/follow", Some(&anna), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["profile"]["following"], true);
    let (_, body) = app.get("/api/articles/feed?limit=1", Some(&anna)).await;
    assert_eq!(body["articlesCount"], 2);
    assert_eq!(body["articles"][0]["slug"], second.as_str());
    assert_eq!(body["articles"][0]["author"]["following"], true);
    let (_, body) = app.get("/api/articles?author=jake", None).await;
    assert_eq!(
        body["articles"][0]["author"]["following"], false,
        "anonymous viewers follow no one"
    );

    // Tags: every tag in use.
    let (status, body) = app.get("/api/tags", None).await;
    assert_eq!(status, StatusCode::OK);
    let mut tags: Vec<&str> = body["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    tags.sort();
    assert_eq!(tags, vec!["go", "rust", "sql"]);
}

#[tokio::test]
async fn profiles_and_following() {
    let app = TestApp::start().await;
    let jake = app.register("jake").await;
    app.register("anna").await;

    let (status, body) = app.get("/api/profiles/anna", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        json!({"profile": {"username": "anna", "bio": null, "image": null, "following": false}})
    );
    let (status, body) = app.get("/api/profiles/nobody", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_error(&body, "profile");

    let (status, body) = app
        .post("/api/profiles/anna/follow", Some(&jake), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["profile"]["following"], true);
    let (_, body) = app.get("/api/profiles/anna", Some(&jake)).await;
    assert_eq!(body["profile"]["following"], true);
    let (_, body) = app.get("/api/profiles/anna", None).await;
    assert_eq!(body["profile"]["following"], false);
    let (status, body) = app.delete("/api/profiles/anna/follow", Some(&jake)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["profile"]["following"], false);

    let (status, _) = app
        .post("/api/profiles/nobody/follow", Some(&jake), json!({}))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = app.post("/api/profiles/anna/follow", None, json!({})).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = app.delete("/api/profiles/anna/follow", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn comments() {
    let app = TestApp::start().await;
    let jake = app.register("jake").await;
    let anna = app.register("anna").await;
    let slug = app.article(&jake, "Commented", &[]).await;
    let path = format!("/api/articles/{slug}/comments");

    let (status, body) = app
        .post(
            &path,
            Some(&anna),
            json!({"comment": {"body": "Thank you so much!"}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let id = body["comment"]["id"].as_i64().unwrap();
    assert!(id > 0 && id < (1 << 53));
    assert_eq!(body["comment"]["author"]["username"], "anna");
    app.post(
        &path,
        Some(&jake),
        json!({"comment": {"body": "You're welcome"}}),
    )
    .await;

    let (status, body) = app.get(&path, None).await;
    assert_eq!(status, StatusCode::OK);
    let comments = body["comments"].as_array().unwrap();
    assert_eq!(comments.len(), 2);
    assert_eq!(comments[0]["body"], "Thank you so much!", "oldest first");

    let (status, body) = app
        .post(&path, Some(&anna), json!({"comment": {"body": "  "}}))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_error(&body, "body");
    let (status, body) = app.post(&path, Some(&anna), json!({})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_error(&body, "comment");
    let (status, _) = app
        .post(&path, None, json!({"comment": {"body": "x"}}))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, body) = app.get("/api/articles/missing-1/comments", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_error(&body, "article");
    let (status, _) = app
        .post(
            "/api/articles/missing-1/comments",
            Some(&anna),
            json!({"comment": {"body": "x"}}),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Delete: only the comment's author.
    let one = format!("{path}/{id}");
    let (status, body) = app.delete(&one, Some(&jake)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_error(&body, "comment");
    let (status, _) = app.delete(&one, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = app.delete(&one, Some(&anna)).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, body) = app.delete(&one, Some(&anna)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_error(&body, "comment");
    let (status, _) = app
        .delete(&format!("{path}/not-a-number"), Some(&anna))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, body) = app.get(&path, None).await;
    assert_eq!(body["comments"].as_array().unwrap().len(), 1);

    // Deleting the article takes its comments with it.
    app.delete(&format!("/api/articles/{slug}"), Some(&jake))
        .await;
    let (status, _) = app.get(&path, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

/// The kept list counts (`article_count`, `tag_counts`) against a recount of the rows they count.
async fn assert_counts_match_rows(app: &TestApp) {
    let pool = sqlx::PgPool::connect(&app.pg.url()).await.unwrap();
    let kept: i64 = sqlx::query_scalar("SELECT articles FROM article_count")
        .fetch_one(&pool)
        .await
        .unwrap();
    let counted: i64 = sqlx::query_scalar("SELECT count(*) FROM articles")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(kept, counted, "article_count");
    let mismatched: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT COALESCE(c.tag, r.tag), COALESCE(c.articles, 0), COALESCE(r.n, 0)
         FROM tag_counts c
         FULL JOIN (SELECT tag, count(*) AS n FROM article_tags GROUP BY tag) r ON r.tag = c.tag
         WHERE COALESCE(c.articles, 0) <> COALESCE(r.n, 0)",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert!(
        mismatched.is_empty(),
        "tag_counts (tag, kept, counted): {mismatched:?}"
    );
    pool.close().await;
}

#[tokio::test]
async fn list_counts_follow_creates_deletes_and_tag_changes() {
    let app = TestApp::start().await;
    let jake = app.register("jake").await;
    let count = |path: String| {
        let app = &app;
        async move {
            let (status, body) = app.get(&path, None).await;
            assert_eq!(status, StatusCode::OK, "{path}: {body}");
            let listed = body["articles"].as_array().unwrap().len() as i64;
            let count = body["articlesCount"].as_i64().unwrap();
            assert_eq!(count, listed, "{path}: the count is what the list holds");
            count
        }
    };
    let tags = || async {
        let (_, body) = app.get("/api/tags", None).await;
        body["tags"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };

    let a = app.article(&jake, "A", &["rust", "go"]).await;
    let b = app.article(&jake, "B", &["rust"]).await;
    let c = app.article(&jake, "C", &[]).await;
    assert_eq!(count("/api/articles".into()).await, 3);
    assert_eq!(count("/api/articles?tag=rust".into()).await, 2);
    assert_eq!(count("/api/articles?tag=go".into()).await, 1);
    assert_eq!(count("/api/articles?tag=never".into()).await, 0);
    assert_eq!(tags().await, vec!["rust", "go"], "most used first");
    assert_counts_match_rows(&app).await;

    // A tag change counts the tags it left and joined; the same tags, or no tagList, count nothing.
    let (status, body) = app
        .put(
            &format!("/api/articles/{a}"),
            Some(&jake),
            json!({"article": {"tagList": ["go", "sql"]}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    for same in [json!({"tagList": ["sql", "go"]}), json!({"title": "A2"})] {
        let (status, body) = app
            .put(
                &format!("/api/articles/{a}"),
                Some(&jake),
                json!({ "article": same }),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let a = app.get("/api/articles?tag=sql", None).await.1["articles"][0]["slug"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(count("/api/articles".into()).await, 3);
    assert_eq!(count("/api/articles?tag=rust".into()).await, 1);
    assert_eq!(count("/api/articles?tag=go".into()).await, 1);
    assert_eq!(count("/api/articles?tag=sql".into()).await, 1);
    assert_counts_match_rows(&app).await;

    // Deletes count down; a tag whose last article went is no longer listed.
    for slug in [&b, &c] {
        let (status, _) = app
            .delete(&format!("/api/articles/{slug}"), Some(&jake))
            .await;
        assert_eq!(status, StatusCode::NO_CONTENT);
    }
    assert_eq!(count("/api/articles".into()).await, 1);
    assert_eq!(count("/api/articles?tag=rust".into()).await, 0);
    let mut listed = tags().await;
    listed.sort();
    assert_eq!(listed, vec!["go", "sql"]);
    let (status, _) = app.delete(&format!("/api/articles/{a}"), Some(&jake)).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(count("/api/articles".into()).await, 0);
    assert_eq!(count("/api/articles?tag=go".into()).await, 0);
    assert!(tags().await.is_empty());
    assert_counts_match_rows(&app).await;

    // A tag used again after it reached 0 counts from its kept row.
    app.article(&jake, "D", &["rust"]).await;
    assert_eq!(count("/api/articles?tag=rust".into()).await, 1);
    assert_counts_match_rows(&app).await;
}
