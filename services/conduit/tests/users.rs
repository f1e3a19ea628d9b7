//! Registration, login and the current user, against a real PostgreSQL.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use common::{assert_error, TestApp};
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test]
async fn registration_login_and_current_user() {
    let app = TestApp::start().await;

    // Register: 201, e-mail normalised, empty profile fields are null.
    let (status, body) = app
        .post("/api/users", None, json!({"user": {"username": "jake", "email": " Jake@Jake.JAKE ", "password": "jakejake"}}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let user = &body["user"];
    assert_eq!(user["email"], "jake@jake.jake");
    assert_eq!(user["username"], "jake");
    assert!(user["bio"].is_null() && user["image"].is_null());
    assert!(user["token"]
        .as_str()
        .is_some_and(|t| t.split('.').count() == 3));

    // White space around a username is refused as white space inside it is (never trimmed off,
    // unlike an e-mail's).
    for name in [" jake2", "jake2\t", "ja ke"] {
        let (status, body) = app
            .post("/api/users", None, json!({"user": {"username": name, "email": "jake2@jake.jake", "password": "jakejake"}}))
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{name:?}: {body}");
        assert_error(&body, "username");
    }

    // Duplicates: 409 on the field that is taken.
    let (status, body) = app
        .post(
            "/api/users",
            None,
            json!({"user": {"username": "jake", "email": "other@x.org", "password": "password-1"}}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_error(&body, "username");
    let (status, body) = app
        .post(
            "/api/users",
            None,
            json!({"user": {"username": "other", "email": "JAKE@jake.jake", "password": "password-1"}}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_error(&body, "email");

    // 422 per missing or invalid field, all reported at once.
    let (status, body) = app
        .post("/api/users", None, json!({"user": {"username": "  "}}))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    for field in ["username", "email", "password"] {
        assert_error(&body, field);
    }
    let (status, body) = app
        .post(
            "/api/users",
            None,
            json!({"user": {"username": "a b", "email": "not-an-email", "password": "password-1"}}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_error(&body, "username");
    assert_error(&body, "email");
    let (status, body) = app.post("/api/users", None, json!({"nothing": 1})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_error(&body, "user");
    let (status, body) = app
        .post(
            "/api/users",
            None,
            json!({"user": {"username": 5, "email": [], "password": null}}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_error(&body, "body");

    // Login: right password 200, wrong password or unknown e-mail 401, blank 422.
    let (status, body) = app
        .post(
            "/api/users/login",
            None,
            json!({"user": {"email": "JAKE@jake.jake", "password": "jakejake"}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let token = body["user"]["token"].as_str().unwrap().to_owned();
    for (email, password) in [
        ("jake@jake.jake", "wrong"),
        ("nobody@jake.jake", "jakejake"),
    ] {
        let (status, body) = app
            .post(
                "/api/users/login",
                None,
                json!({"user": {"email": email, "password": password}}),
            )
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_error(&body, "credentials");
    }
    let (status, body) = app
        .post("/api/users/login", None, json!({"user": {"email": ""}}))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_error(&body, "email");
    assert_error(&body, "password");

    // Current user.
    let (status, body) = app.get("/api/user", Some(&token)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["user"]["username"], "jake");
    let (status, body) = app.get("/api/user", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body, json!({"errors": {"token": ["is missing"]}}));
}

#[tokio::test]
async fn tokens_that_are_forged_tampered_expired_or_malformed_are_401() {
    let app = TestApp::start().await;
    let token = app.register("ann").await;

    let mut tampered = token.clone().into_bytes();
    let i = tampered.len() - 5;
    tampered[i] = if tampered[i] == b'x' { b'y' } else { b'x' };
    let tampered = String::from_utf8(tampered).unwrap();

    let forged = conduit::auth::Auth::new(&conduit::settings::AuthSettings {
        jwt_secret: "someone-elses-secret".into(),
        ..Default::default()
    })
    .issue(1)
    .unwrap();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let expired = conduit::auth::Auth::new(&app.settings.auth)
        .issue_with_expiry(1, now - 7200, now - 3600)
        .unwrap();

    for bad in [
        tampered.as_str(),
        forged.as_str(),
        "not.a.jwt",
        "garbage",
        expired.as_str(),
    ] {
        let (status, body) = app.get("/api/user", Some(bad)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{bad}");
        assert_error(&body, "token");
        // Optional-auth endpoints refuse a bad token too, rather than ignoring it.
        let (status, _) = app.get("/api/articles", Some(bad)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    let (_, body) = app.get("/api/user", Some(&expired)).await;
    assert_eq!(body, json!({"errors": {"token": ["has expired"]}}));

    // `Bearer` is not the RealWorld scheme.
    let response = app
        .client
        .get(app.url("/api/user"))
        .header("Authorization", format!("Bearer {token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn updating_the_current_user() {
    let app = TestApp::start().await;
    let token = app.register("bob").await;
    app.register("carol").await;

    // bio and image: set, then "" and null both clear.
    let (status, body) = app
        .put(
            "/api/user",
            Some(&token),
            json!({"user": {"bio": "I like to skateboard", "image": "https://i.example/b.png"}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["user"]["bio"], "I like to skateboard");
    assert_eq!(body["user"]["image"], "https://i.example/b.png");
    let (_, body) = app
        .put(
            "/api/user",
            Some(&token),
            json!({"user": {"bio": "", "image": null}}),
        )
        .await;
    assert!(
        body["user"]["bio"].is_null() && body["user"]["image"].is_null(),
        "{body}"
    );

    // Omitted fields are kept.
    let (_, body) = app
        .put(
            "/api/user",
            Some(&token),
            json!({"user": {"email": "Bob2@Example.com"}}),
        )
        .await;
    assert_eq!(body["user"]["email"], "bob2@example.com");
    assert_eq!(body["user"]["username"], "bob");

    // Taken username or e-mail: 409. Blank: 422.
    let (status, body) = app
        .put(
            "/api/user",
            Some(&token),
            json!({"user": {"username": "carol"}}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_error(&body, "username");
    let (status, body) = app
        .put(
            "/api/user",
            Some(&token),
            json!({"user": {"email": "carol@example.com"}}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_error(&body, "email");
    let (status, body) = app
        .put("/api/user", Some(&token), json!({"user": {"username": ""}}))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_error(&body, "username");

    // Present but null is blank for the fields that cannot be cleared.
    for field in ["username", "email", "password"] {
        let (status, body) = app
            .put("/api/user", Some(&token), json!({"user": {field: null}}))
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{field}: {body}");
        assert_error(&body, field);
    }
    // Passwords: 8 to 256 characters (NIST's minimum; at least 64 must be allowed).
    for (password, ok) in [
        ("", false),
        ("short7c", false),
        ("eight8ch", true),
        (&"x".repeat(64)[..], true),
        (&"x".repeat(257)[..], false),
    ] {
        let (status, body) = app
            .put(
                "/api/user",
                Some(&token),
                json!({"user": {"password": password}}),
            )
            .await;
        let expected = if ok {
            StatusCode::OK
        } else {
            StatusCode::UNPROCESSABLE_ENTITY
        };
        assert_eq!(
            status,
            expected,
            "password of {} chars: {body}",
            password.len()
        );
    }
    let (status, body) = app
        .post(
            "/api/users",
            None,
            json!({"user": {"username": "short", "email": "short@x.org", "password": "1234567"}}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_error(&body, "password");

    // A new password works for login, the old one no longer does.
    let (status, _) = app
        .put(
            "/api/user",
            Some(&token),
            json!({"user": {"password": "new-secret"}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = app
        .post(
            "/api/users/login",
            None,
            json!({"user": {"email": "bob2@example.com", "password": "new-secret"}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = app
        .post(
            "/api/users/login",
            None,
            json!({"user": {"email": "bob2@example.com", "password": "password-bob"}}),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let (status, _) = app
        .put("/api/user", None, json!({"user": {"bio": "x"}}))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

/// A login from `client` (sent as forwarded by the trusted proxy 127.0.0.1): status, body and
/// `Retry-After`.
async fn login_from(
    app: &TestApp,
    client: &str,
    email: &str,
    password: &str,
) -> (StatusCode, serde_json::Value, Option<u64>) {
    let response = app
        .client
        .post(app.url("/api/users/login"))
        .header("x-forwarded-for", client)
        .json(&json!({"user": {"email": email, "password": password}}))
        .send()
        .await
        .unwrap();
    let status = response.status();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().parse().unwrap());
    (status, response.json().await.unwrap(), retry_after)
}

#[tokio::test]
async fn logins_and_registrations_are_throttled_per_client_and_failed_logins_per_account() {
    let app = TestApp::start_with(|s| {
        // The test plays the proxy: its X-Forwarded-For names the client.
        s.server.trusted_proxies = vec!["127.0.0.1".parse().unwrap()];
        s.auth.client_attempt_burst = 5;
        s.auth.client_attempts_per_minute = 1;
        s.auth.account_failure_burst = 3;
        s.auth.account_failures_per_minute = 1;
    })
    .await;
    for name in ["victim", "bystander"] {
        let response = app
            .client
            .post(app.url("/api/users"))
            .header("x-forwarded-for", format!("10.0.0.{}", name.len()))
            .json(&json!({"user": {"username": name, "email": format!("{name}@example.com"), "password": format!("password-{name}")}}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::CREATED);
    }

    // Guesses at one account from many clients: its allowance of failures, then 429 for
    // everyone, even with the right password (the lock-out is the price of the bound).
    for n in 1..=3 {
        let (status, body, _) =
            login_from(&app, &format!("10.0.1.{n}"), "victim@example.com", "guess").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    }
    for password in ["guess", "password-victim"] {
        let (status, body, retry_after) =
            login_from(&app, "10.0.1.9", "victim@example.com", password).await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
        assert_eq!(
            body,
            json!({"errors": {"credentials": ["too many attempts, try again later"]}})
        );
        // One failure back a minute: at most 60 s to wait, at least 1.
        assert!(
            retry_after.is_some_and(|s| (1..=60).contains(&s)),
            "{retry_after:?}"
        );
    }
    // Unknown e-mails count as failures too (no hint that the account does not exist).
    for _ in 0..3 {
        let (status, _, _) = login_from(&app, "10.0.1.10", "nobody@example.com", "x").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    let (status, _, _) = login_from(&app, "10.0.1.11", "nobody@example.com", "x").await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);

    // Another account is not affected, and its right password never counts as a failure.
    for _ in 0..4 {
        let (status, body, _) = login_from(
            &app,
            "10.0.2.1",
            "bystander@example.com",
            "password-bystander",
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    // One client: its fifth attempt is the last (registrations count as well).
    let (status, _, _) = login_from(
        &app,
        "10.0.2.1",
        "bystander@example.com",
        "password-bystander",
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body, retry_after) = login_from(
        &app,
        "10.0.2.1",
        "bystander@example.com",
        "password-bystander",
    )
    .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_error(&body, "client");
    assert!(retry_after.is_some_and(|s| (1..=60).contains(&s)));
    let response = app
        .client
        .post(app.url("/api/users"))
        .header("x-forwarded-for", "10.0.2.1")
        .json(&json!({"user": {"username": "third", "email": "third@example.com", "password": "password-third"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    // A client that claims another address in front of it is still known by the last hop.
    let (status, _, _) = login_from(
        &app,
        "10.0.3.3, 10.0.2.1",
        "bystander@example.com",
        "password-bystander",
    )
    .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    // Another client is served.
    let (status, _, _) = login_from(
        &app,
        "10.0.2.2",
        "bystander@example.com",
        "password-bystander",
    )
    .await;
    assert_eq!(status, StatusCode::OK);
}
