//! Registration, login and the current user, against a real PostgreSQL.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

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
