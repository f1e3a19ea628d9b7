//! Hostile input: a deterministic battery of malformed requests against every route. Whatever a
//! client sends, the answer is a 4xx with a RealWorld error body (or a success), never a 5xx, a
//! hang or a dropped connection.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use common::TestApp;
use rand::{rngs::StdRng, Rng, SeedableRng};
use reqwest::Method;
use serde_json::{json, Value};

/// Bodies that are wrong in every way we could think of, plus random bytes below.
fn bodies() -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = [
        "",
        "{",
        "}",
        "null",
        "[]",
        "0",
        "\"x\"",
        "{\"user\":null}",
        "{\"user\":[]}",
        "{\"user\":{\"email\":{}}}",
        "{\"article\":{\"title\":1e999}}",
        "{\"article\":{\"tagList\":[1,2]}}",
        "{\"article\":{\"tagList\":[null]}}",
        "{\"comment\":{\"body\":true}}",
        "{\"user\":{\"username\":\"\\u0000\"}}",
        "{\"article\":{\"title\":\"\\ud800\"}}",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    out.push(format!("{}{}", "[".repeat(10_000), "]".repeat(10_000)).into_bytes());
    out.push(json!({"article": {"title": "t", "description": "d", "body": "b", "tagList": vec!["x"; 100]}}).to_string().into_bytes());
    out.push(json!({"user": {"username": "u".repeat(1000), "email": "e".repeat(1000), "password": "p".repeat(1000)}}).to_string().into_bytes());
    let mut rng = StdRng::seed_from_u64(7);
    for _ in 0..20 {
        let n = rng.gen_range(1..512);
        out.push((0..n).map(|_| rng.gen()).collect());
    }
    out
}

#[tokio::test]
async fn no_input_produces_a_server_error() {
    let app = TestApp::start().await;
    let token = app.register("victim").await;
    let slug = app.article(&token, "Target", &["t"]).await;
    let routes: Vec<(Method, String)> = vec![
        (Method::POST, "/api/users".into()),
        (Method::POST, "/api/users/login".into()),
        (Method::PUT, "/api/user".into()),
        (Method::POST, "/api/articles".into()),
        (Method::PUT, format!("/api/articles/{slug}")),
        (Method::POST, format!("/api/articles/{slug}/comments")),
        (Method::POST, "/api/profiles/victim/follow".into()),
        (Method::POST, format!("/api/articles/{slug}/favorite")),
        (Method::POST, "/api/media".into()),
    ];
    let paths = [
        "/api/articles?limit=99999999999999999999",
        "/api/articles?offset=1e3",
        "/api/articles?tag=%00",
        "/api/articles?author=%FF%FE",
        "/api/profiles/%00",
        "/api/profiles/..%2F..",
        "/api/articles/%25",
        "/api/articles/a/comments/99999999999999999999",
        "/media/%2e%2e%2fsecret",
        "/api/tags?x=%ZZ",
    ];
    let mut checked = 0;
    for token in [None, Some(token.as_str()), Some("x.y.z")] {
        for (method, path) in &routes {
            for body in bodies() {
                let mut request = app.client.request(method.clone(), app.url(path)).body(body);
                request = request.header("Content-Type", "application/json");
                if let Some(token) = token {
                    request = request.header("Authorization", format!("Token {token}"));
                }
                let response = request.send().await.expect("the server answers");
                let status = response.status();
                let text = response.text().await.unwrap();
                assert!(status.as_u16() < 500, "{method} {path}: {status} {text}");
                if !status.is_success() {
                    let body: Value = serde_json::from_str(&text)
                        .unwrap_or_else(|_| panic!("{method} {path}: not JSON: {text}"));
                    assert!(body["errors"].is_object(), "{method} {path}: {text}");
                }
                checked += 1;
            }
        }
        for path in paths {
            let (status, body) = app.call(Method::GET, path, token, None).await;
            assert!(status.as_u16() < 500, "GET {path}: {status} {body}");
            checked += 1;
        }
    }
    assert!(checked > 1000, "{checked} requests checked");
}
