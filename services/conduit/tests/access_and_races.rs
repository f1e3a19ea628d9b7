//! Who may change what, what a body may not set, and what racing clients cannot break.
//!
//! - The access-control matrix: every operation that changes or deletes a user's data, tried by
//!   another user and by an anonymous caller: never a 2xx, always the RealWorld error body, and
//!   the data unchanged afterwards. Operations on "my own" state (the current user, the feed,
//!   follows, favorites) refuse an anonymous caller, and a profile never shows an e-mail.
//! - Fields a client may not set (`id`, `slug`, `author`, `favoritesCount`, `createdAt`, a
//!   `token`) are ignored, never applied, in every writable resource: articles (create, update),
//!   comments, users (register, update).
//! - Races: many users favoriting and unfavoriting one article at once leave its count equal to
//!   its rows; the same username, or the same e-mail, registered by many clients at once gives
//!   exactly one account and 409s, not 500s; the same comment, or the same article, deleted by
//!   many requests at once is deleted once, the others told 404; many users following and
//!   unfollowing one profile at once leave each of them where their last request put them.
//! - A valid token for a user who no longer exists (deleted by an operator: no API deletes
//!   users) is refused with a 401 on every write and on the current user and the feed, not a
//!   500 from the foreign key its writes break. Reads that merely take an optional token serve
//!   it as a viewer who follows and favorites nothing (`users::refuse_a_deleted_users_token`
//!   says why).

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use crate::common;

use common::{assert_error, TestApp};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

/// Registrations sent at once for one contested value: exactly one account, every other
/// answer a 409 naming `field` (the unique index decides, not the check before it).
fn one_created_the_rest_conflict_on(answers: Vec<(StatusCode, Value)>, field: &str) {
    let created = answers
        .iter()
        .filter(|(status, _)| *status == StatusCode::CREATED)
        .count();
    assert_eq!(created, 1, "{answers:?}");
    for (status, body) in answers.iter().filter(|(s, _)| *s != StatusCode::CREATED) {
        assert_eq!(*status, StatusCode::CONFLICT, "{body}");
        assert_error(body, field);
    }
}

#[tokio::test]
async fn no_one_but_the_owner_changes_or_deletes_what_they_own() {
    let app = TestApp::start().await;
    let jake = app.register("jake").await;
    let anna = app.register("anna").await;
    let slug = app.article(&jake, "Owned by jake", &["mine"]).await;
    let comment = app.comment(&jake, &slug, "jake's own comment").await;

    let update = json!({"article": {"title": "Taken over", "body": "replaced"}});
    let attempts: Vec<(Method, String, Option<Value>, &str)> = vec![
        (
            Method::PUT,
            format!("/api/articles/{slug}"),
            Some(update),
            "article",
        ),
        (
            Method::DELETE,
            format!("/api/articles/{slug}"),
            None,
            "article",
        ),
        (
            Method::DELETE,
            format!("/api/articles/{slug}/comments/{comment}"),
            None,
            "comment",
        ),
    ];
    for (method, path, body, resource) in &attempts {
        // Another user: 403 with the resource named.
        let (status, answer) = app
            .call(method.clone(), path, Some(&anna), body.clone())
            .await;
        assert_eq!(
            status,
            StatusCode::FORBIDDEN,
            "{method} {path} as anna: {answer}"
        );
        assert_error(&answer, resource);
        // Nobody: 401, the token missing.
        let (status, answer) = app.call(method.clone(), path, None, body.clone()).await;
        assert_eq!(
            status,
            StatusCode::UNAUTHORIZED,
            "{method} {path} anonymous: {answer}"
        );
        assert_error(&answer, "token");
    }
    // Nothing changed.
    let (_, body) = app.get(&format!("/api/articles/{slug}"), None).await;
    assert_eq!(body["article"]["title"], "Owned by jake", "{body}");
    let (_, body) = app
        .get(&format!("/api/articles/{slug}/comments"), None)
        .await;
    assert_eq!(body["comments"][0]["id"], comment, "{body}");

    // "My own" state needs a token: reading it, and changing it.
    for (method, path) in [
        (Method::GET, "/api/user".to_owned()),
        (Method::PUT, "/api/user".to_owned()),
        (Method::GET, "/api/articles/feed".to_owned()),
        (Method::POST, format!("/api/articles/{slug}/favorite")),
        (Method::DELETE, format!("/api/articles/{slug}/favorite")),
        (Method::POST, "/api/profiles/jake/follow".to_owned()),
        (Method::DELETE, "/api/profiles/jake/follow".to_owned()),
        (Method::POST, "/api/articles".to_owned()),
    ] {
        let body = matches!(method, Method::PUT | Method::POST).then(|| json!({}));
        let (status, answer) = app.call(method.clone(), &path, None, body).await;
        assert_eq!(
            status,
            StatusCode::UNAUTHORIZED,
            "{method} {path}: {answer}"
        );
        assert_error(&answer, "token");
    }
    // A token shows its own user only, and a profile never an e-mail.
    let (_, body) = app.get("/api/user", Some(&anna)).await;
    assert_eq!(body["user"]["username"], "anna");
    for token in [None, Some(anna.as_str())] {
        let (status, body) = app.get("/api/profiles/jake", token).await;
        assert_eq!(status, StatusCode::OK);
        assert!(body["profile"].get("email").is_none(), "{body}");
    }
}

#[tokio::test]
async fn fields_a_client_may_not_set_are_ignored_never_applied() {
    let app = TestApp::start().await;
    let jake = app.register("jake").await;
    app.register("anna").await;
    let long_ago = "2001-01-01T00:00:00.000Z";

    // An article: created with the server's slug, author, count and times.
    let (status, body) = app
        .post(
            "/api/articles",
            Some(&jake),
            json!({"article": {"title": "Plain title", "description": "d", "body": "b",
                "id": 1, "slug": "chosen-by-client", "author": {"username": "anna"},
                "favoritesCount": 99, "favorited": true, "createdAt": long_ago, "updatedAt": long_ago}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let article = &body["article"];
    let slug = article["slug"].as_str().unwrap().to_owned();
    assert!(slug.starts_with("plain-title"), "{article}");
    assert_eq!(article["author"]["username"], "jake");
    assert_eq!(article["favoritesCount"], 0);
    assert_eq!(article["favorited"], false);
    assert_ne!(article["createdAt"], long_ago);
    assert!(article.get("id").is_none(), "{article}");

    // Updated: the same fields again, none applied; the title is.
    let (status, body) = app
        .put(
            &format!("/api/articles/{slug}"),
            Some(&jake),
            json!({"article": {"title": "Plain title", "author": {"username": "anna"},
                "favoritesCount": 99, "createdAt": long_ago, "slug": "chosen-by-client"}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let article = &body["article"];
    assert_eq!(article["author"]["username"], "jake");
    assert_eq!(article["favoritesCount"], 0);
    assert_ne!(article["createdAt"], long_ago);
    let (status, _) = app.get("/api/articles/chosen-by-client", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // A comment: the server's id, author and time.
    let (status, body) = app
        .post(
            &format!("/api/articles/{slug}/comments"),
            Some(&jake),
            json!({"comment": {"body": "hello", "id": 1, "author": {"username": "anna"},
                "createdAt": long_ago}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let comment = &body["comment"];
    assert_ne!(comment["id"], 1);
    assert_eq!(comment["author"]["username"], "jake");
    assert_ne!(comment["createdAt"], long_ago);

    // A user: registration takes no bio, id or token from the client; an update takes no id or
    // token either, and the token it answers with is a real one.
    let (status, body) = app
        .post(
            "/api/users",
            None,
            json!({"user": {"username": "zoe", "email": "zoe@example.com", "password": "password-zoe",
                "id": 1, "bio": "set by the client", "token": "forged"}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_ne!(body["user"]["token"], "forged");
    assert!(body["user"]["bio"].is_null(), "{body}");
    let zoe = body["user"]["token"].as_str().unwrap().to_owned();
    let (status, body) = app
        .put(
            "/api/user",
            Some(&zoe),
            json!({"user": {"bio": "mine", "id": 1, "token": "forged"}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["user"]["bio"], "mine");
    assert_eq!(body["user"]["username"], "zoe");
    let token = body["user"]["token"].as_str().unwrap();
    assert_ne!(token, "forged");
    let (status, body) = app.get("/api/user", Some(token)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["user"]["username"], "zoe");
}

/// Many users favorite and unfavorite one article at once (each its own sequence), then the
/// count must equal the rows, and equal what the last request of each user left.
#[tokio::test]
async fn racing_favorites_registrations_and_deletions_keep_every_invariant() {
    let app = TestApp::start().await;
    let author = app.register("author").await;
    let slug = app.article(&author, "Popular", &[]).await;
    let mut readers = Vec::new();
    for n in 0..12 {
        readers.push(app.register(&format!("reader{n}")).await);
    }
    let path = format!("/api/articles/{slug}/favorite");
    // Reader n ends favorited if n is even: favorite, unfavorite, favorite (even) or favorite,
    // unfavorite (odd), all readers at once.
    let runs = readers.iter().enumerate().map(|(n, token)| {
        let (app, path) = (&app, &path);
        async move {
            let steps = if n % 2 == 0 { 3 } else { 2 };
            for step in 0..steps {
                let method = if step % 2 == 0 {
                    Method::POST
                } else {
                    Method::DELETE
                };
                let (status, body) = app.call(method, path, Some(token), None).await;
                assert_eq!(status, StatusCode::OK, "{body}");
            }
        }
    });
    futures::future::join_all(runs).await;
    let (_, body) = app.get(&format!("/api/articles/{slug}"), None).await;
    assert_eq!(
        body["article"]["favoritesCount"],
        readers.len() / 2,
        "{body}"
    );
    let pool = sqlx::PgPool::connect(&app.pg.url()).await.unwrap();
    let (rows, kept): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM favorites f JOIN articles a ON a.id = f.article_id
                 WHERE a.slug = $1),
                (SELECT favorites_count FROM articles WHERE slug = $1)::int8",
    )
    .bind(&slug)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((rows, kept), (6, 6));

    // One username, eight clients at once: one account, the others a 409 naming the field.
    let registrations = (0..8).map(|n| {
        app.post(
            "/api/users",
            None,
            json!({"user": {"username": "contested", "email": format!("contested{n}@example.com"),
                "password": "password-contested"}}),
        )
    });
    one_created_the_rest_conflict_on(futures::future::join_all(registrations).await, "username");

    // One comment, six deletions at once: one 204, five 404s.
    let comment = app.comment(&author, &slug, "short-lived").await;
    let one = format!("/api/articles/{slug}/comments/{comment}");
    let deletions = (0..6).map(|_| app.delete(&one, Some(&author)));
    let answers = futures::future::join_all(deletions).await;
    let statuses: Vec<StatusCode> = answers.iter().map(|(s, _)| *s).collect();
    assert_eq!(
        statuses
            .iter()
            .filter(|s| **s == StatusCode::NO_CONTENT)
            .count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses
            .iter()
            .filter(|s| **s == StatusCode::NOT_FOUND)
            .count(),
        5,
        "{statuses:?}"
    );
}

#[tokio::test]
async fn a_deleted_users_token_is_refused_with_401_everywhere_it_acts() {
    let app = TestApp::start().await;
    let gone = app.register("gone").await;
    let other = app.register("other").await;
    let slug = app.article(&other, "someone else's", &["t"]).await;
    let own = app.article(&gone, "written before", &["t"]).await;
    let pool = sqlx::PgPool::connect(&app.pg.url()).await.unwrap();
    sqlx::query("DELETE FROM users WHERE username = 'gone'")
        .execute(&pool)
        .await
        .unwrap();
    let article = json!({"article": {"title": "after", "description": "d", "body": "b"}});
    let comment = json!({"comment": {"body": "after"}});
    let user = json!({"user": {"bio": "after"}});
    let tries = [
        (Method::POST, "/api/articles".to_owned(), Some(article)),
        (
            Method::POST,
            format!("/api/articles/{slug}/comments"),
            Some(comment),
        ),
        (Method::POST, format!("/api/articles/{slug}/favorite"), None),
        (Method::POST, "/api/profiles/other/follow".to_owned(), None),
        // These delete no row, so no foreign key catches them: the user is looked up.
        (
            Method::DELETE,
            format!("/api/articles/{slug}/favorite"),
            None,
        ),
        (
            Method::DELETE,
            "/api/profiles/other/follow".to_owned(),
            None,
        ),
        (Method::GET, "/api/articles/feed".to_owned(), None),
        (Method::GET, "/api/user".to_owned(), None),
        (Method::PUT, "/api/user".to_owned(), Some(user)),
    ];
    for (method, path, body) in tries {
        let (status, answer) = app.call(method.clone(), &path, Some(&gone), body).await;
        assert_eq!(
            status,
            StatusCode::UNAUTHORIZED,
            "{method} {path}: {answer}"
        );
        assert_error(&answer, "token");
    }
    // Their article went with them (ON DELETE CASCADE): a 404, not a 500.
    let (status, _) = app.get(&format!("/api/articles/{own}"), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

/// The same e-mail registered by many clients at once, under different usernames: one account,
/// the others a 409 naming `email`; then one article deleted by many requests at once.
#[tokio::test]
async fn racing_registrations_of_one_email_and_deletions_of_one_article_each_happen_once() {
    let app = TestApp::start().await;
    let registrations = (0..8).map(|n| {
        app.post(
            "/api/users",
            None,
            json!({"user": {"username": format!("claimant{n}"), "email": "Shared@Example.com",
                "password": "password-shared"}}),
        )
    });
    one_created_the_rest_conflict_on(futures::future::join_all(registrations).await, "email");

    // One article with a comment and a favorite, deleted by six requests of its owner at once:
    // one 204, five 404s, and nothing of it left behind.
    let owner = app.register("owner").await;
    let reader = app.register("reader").await;
    let slug = app.article(&owner, "Deleted at once", &["gone"]).await;
    app.comment(&reader, &slug, "soon gone").await;
    let (status, _) = app
        .call(
            Method::POST,
            &format!("/api/articles/{slug}/favorite"),
            Some(&reader),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let path = format!("/api/articles/{slug}");
    let deletions = (0..6).map(|_| app.delete(&path, Some(&owner)));
    let answers = futures::future::join_all(deletions).await;
    let statuses: Vec<StatusCode> = answers.iter().map(|(s, _)| *s).collect();
    let count = |wanted: StatusCode| statuses.iter().filter(|s| **s == wanted).count();
    assert_eq!(count(StatusCode::NO_CONTENT), 1, "{statuses:?}");
    assert_eq!(count(StatusCode::NOT_FOUND), 5, "{statuses:?}");
    for (_, body) in answers.iter().filter(|(s, _)| *s == StatusCode::NOT_FOUND) {
        assert_error(body, "article");
    }
    let pool = sqlx::PgPool::connect(&app.pg.url()).await.unwrap();
    let left: (i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM articles WHERE slug = $1),
                (SELECT count(*) FROM comments),
                (SELECT count(*) FROM favorites)",
    )
    .bind(&slug)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(left, (0, 0, 0));
}

/// Twelve followers follow and unfollow one profile at once, each its own sequence: the even
/// ones end following, the odd ones not. Afterwards each sees `following` as their own last
/// request left it, and the rows agree.
#[tokio::test]
async fn racing_follows_and_unfollows_leave_each_follower_where_their_last_request_put_them() {
    let app = TestApp::start().await;
    app.register("famous").await;
    let mut followers = Vec::new();
    for n in 0..12 {
        followers.push(app.register(&format!("fan{n}")).await);
    }
    let runs = followers.iter().enumerate().map(|(n, token)| {
        let app = &app;
        async move {
            let steps = if n % 2 == 0 { 3 } else { 2 };
            for step in 0..steps {
                let method = if step % 2 == 0 {
                    Method::POST
                } else {
                    Method::DELETE
                };
                let (status, body) = app
                    .call(method, "/api/profiles/famous/follow", Some(token), None)
                    .await;
                assert_eq!(status, StatusCode::OK, "{body}");
                assert_eq!(body["profile"]["following"], step % 2 == 0, "{body}");
            }
        }
    });
    futures::future::join_all(runs).await;
    for (n, token) in followers.iter().enumerate() {
        let (status, body) = app.get("/api/profiles/famous", Some(token)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["profile"]["following"], n % 2 == 0, "fan{n}: {body}");
    }
    let pool = sqlx::PgPool::connect(&app.pg.url()).await.unwrap();
    let rows: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM follows f JOIN users u ON u.id = f.followee_id
         WHERE u.username = 'famous'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(rows, 6);
}
