//! Stage 3 end to end: the lab starts a real Redis on the cache host and points the app at it. A
//! repeated read is a hit, a write makes the next read a miss with the new value, and one user's
//! `favorited` never appears in another's response.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use common::TestLab;

use serde_json::{json, Value};

struct Client {
    http: reqwest::Client,
    endpoint: String,
}

impl Client {
    /// Status, `x-cache` header and JSON body of one request.
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, String, Value) {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.endpoint));
        if let Some(token) = token {
            request = request.header("Authorization", format!("Token {token}"));
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let cache = response
            .headers()
            .get("x-cache")
            .map_or("", |v| v.to_str().unwrap())
            .to_owned();
        (status, cache, response.json().await.unwrap_or(Value::Null))
    }

    async fn get(&self, path: &str, token: Option<&str>) -> (u16, String, Value) {
        self.send(reqwest::Method::GET, path, token, None).await
    }

    async fn register(&self, name: &str) -> String {
        common::register(&self.http, &self.endpoint, name).await
    }
}

#[tokio::test]
async fn stage_3_serves_reads_from_redis_and_keeps_them_correct() {
    let lab = TestLab::new("archlab-e2e3", common::net(40, 20));
    let endpoint = lab.up("3");

    // Four hosts: app, database, file host and the cache host with a healthy Redis.
    let status = lab.status();
    let services = status["services"].as_array().unwrap();
    let roles: Vec<&str> = services
        .iter()
        .map(|s| s["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, vec!["app", "database", "files", "cache"]);
    assert!(services.iter().all(|s| s["healthy"] == true), "{status}");

    let client = Client {
        http: reqwest::Client::builder().no_proxy().build().unwrap(),
        endpoint,
    };
    let alice = client.register("alice").await;
    let bob = client.register("bob").await;
    let (status, _, created) = client
        .send(
            reqwest::Method::POST,
            "/api/articles",
            Some(&alice),
            Some(json!({"article": {"title": "Cached", "description": "d", "body": "first", "tagList": ["lab"]}})),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let path = format!(
        "/api/articles/{}",
        created["article"]["slug"].as_str().unwrap()
    );

    // A repeated read is a hit.
    let (_, first, _) = client.get(&path, None).await;
    let (_, second, body) = client.get(&path, None).await;
    assert_eq!((first.as_str(), second.as_str()), ("miss", "hit"));
    assert_eq!(body["article"]["body"], "first");

    // A write makes the next read a miss that returns the new value.
    let (status, _, _) = client
        .send(
            reqwest::Method::PUT,
            &path,
            Some(&alice),
            Some(json!({"article": {"body": "second"}})),
        )
        .await;
    assert_eq!(status, 200);
    let (_, cache, body) = client.get(&path, None).await;
    assert_eq!(cache, "miss");
    assert_eq!(body["article"]["body"], "second");

    // Alice's favorite is hers alone, though everyone is served from the same entry.
    client
        .send(
            reqwest::Method::POST,
            &format!("{path}/favorite"),
            Some(&alice),
            Some(json!({})),
        )
        .await;
    let (_, _, as_alice) = client.get(&path, Some(&alice)).await;
    let (_, cache, as_bob) = client.get(&path, Some(&bob)).await;
    assert_eq!(cache, "hit");
    assert_eq!(as_alice["article"]["favorited"], true);
    assert_eq!(as_bob["article"]["favorited"], false);
    assert_eq!(as_bob["article"]["favoritesCount"], 1);
}
