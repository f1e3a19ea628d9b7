//! Test support: a real PostgreSQL server (started through the lab library) and the real app on
//! port 0, driven over HTTP. Each test gets its own server, database and media folder.

#![allow(dead_code, missing_docs, clippy::unwrap_used, clippy::expect_used)]

use archlab::postgres::TestPostgres;
use conduit::{settings::Settings, Application};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

pub struct TestApp {
    pub base: String,
    pub client: reqwest::Client,
    pub settings: Settings,
    pub media_dir: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    pub pg: TestPostgres,
}

impl TestApp {
    pub async fn start() -> TestApp {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(tweak: impl FnOnce(&mut Settings)) -> TestApp {
        let pg = TestPostgres::start().await.expect("start PostgreSQL");
        let media_dir = tempfile::tempdir().expect("media dir");
        let mut settings = Settings::default();
        settings.server.listen = "127.0.0.1:0".parse().unwrap();
        settings.database.url = pg.url().into();
        settings.media.root = media_dir.path().to_path_buf();
        settings.auth.jwt_secret = "a test key of thirty-two bytes or more".into();
        // Every test client sends from 127.0.0.1: the per-client login throttle is raised as the
        // lab raises it (`users::logins_and_registrations_are_throttled_...` tests the default).
        settings.auth.client_attempt_burst = 1_000_000;
        settings.auth.client_attempts_per_minute = 1_000_000;
        tweak(&mut settings);
        let app = Application::build(settings.clone())
            .await
            .expect("build app");
        let base = format!("http://127.0.0.1:{}", app.port());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(app.run_until(async {
            let _ = stopped.await;
        }));
        TestApp {
            base,
            client: reqwest::Client::builder().no_proxy().build().unwrap(),
            settings,
            media_dir,
            stop: Some(stop),
            pg,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// Sends a request with an optional JSON body and token; returns status and JSON body
    /// (Value::Null for an empty body).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = self.client.request(method, self.url(path));
        if let Some(token) = token {
            request = request.header("Authorization", format!("Token {token}"));
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("request");
        let status = response.status();
        let text = response.text().await.expect("body");
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON ({status}): {text}"))
        };
        (status, value)
    }

    /// A GET that also returns the `x-cache` header (None when absent).
    pub async fn get_cached(
        &self,
        path: &str,
        token: Option<&str>,
    ) -> (StatusCode, Option<String>, Value) {
        let mut request = self.client.get(self.url(path));
        if let Some(token) = token {
            request = request.header("Authorization", format!("Token {token}"));
        }
        let response = request.send().await.expect("request");
        let status = response.status();
        let cache = response
            .headers()
            .get("x-cache")
            .map(|v| v.to_str().unwrap().to_owned());
        let body = response.json().await.expect("JSON body");
        (status, cache, body)
    }

    /// The app's `/metrics` text.
    pub async fn metrics_text(&self) -> String {
        self.client
            .get(self.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// The value of one sample line of `/metrics` (`name{labels}`), 0 if absent.
    pub async fn metric(&self, sample: &str) -> f64 {
        let text = self.metrics_text().await;
        text.lines()
            .find_map(|l| l.strip_prefix(sample).and_then(|v| v.trim().parse().ok()))
            .unwrap_or(0.0)
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> (StatusCode, Value) {
        self.call(Method::GET, path, token, None).await
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: Value) -> (StatusCode, Value) {
        self.call(Method::POST, path, token, Some(body)).await
    }

    pub async fn put(&self, path: &str, token: Option<&str>, body: Value) -> (StatusCode, Value) {
        self.call(Method::PUT, path, token, Some(body)).await
    }

    pub async fn delete(&self, path: &str, token: Option<&str>) -> (StatusCode, Value) {
        self.call(Method::DELETE, path, token, None).await
    }

    /// Registers `name` (e-mail `name@example.com`, password `password-name`); returns the token.
    pub async fn register(&self, name: &str) -> String {
        let (status, body) = self
            .post(
                "/api/users",
                None,
                json!({"user": {"username": name, "email": format!("{name}@example.com"), "password": format!("password-{name}")}}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["user"]["token"].as_str().unwrap().to_owned()
    }

    /// Creates an article; returns its slug.
    pub async fn article(&self, token: &str, title: &str, tags: &[&str]) -> String {
        let (status, body) = self
            .post(
                "/api/articles",
                Some(token),
                json!({"article": {"title": title, "description": "d", "body": "b", "tagList": tags}}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["article"]["slug"].as_str().unwrap().to_owned()
    }

    /// Comments on the article `slug`; returns the comment's id.
    pub async fn comment(&self, token: &str, slug: &str, text: &str) -> i64 {
        let (status, body) = self
            .post(
                &format!("/api/articles/{slug}/comments"),
                Some(token),
                json!({"comment": {"body": text}}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["comment"]["id"].as_i64().unwrap()
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Asserts a RealWorld error body with `field` among its keys.
pub fn assert_error(body: &Value, field: &str) {
    let errors = body["errors"]
        .as_object()
        .unwrap_or_else(|| panic!("no errors object: {body}"));
    assert!(
        errors.contains_key(field),
        "expected an error on {field:?}: {body}"
    );
    assert!(
        errors[field]
            .as_array()
            .is_some_and(|a| !a.is_empty() && a.iter().all(Value::is_string)),
        "{body}"
    );
}
