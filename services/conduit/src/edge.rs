//! The app's side of the CDN edge (stage 6): what may be shared, for how long, what each answer
//! shows, and the purges that drop it when a write changes it.
//!
//! The edge stores nothing the app did not mark `public`. Which routes are marked, and why, is
//! one table, [`POLICIES`]:
//!
//! | route (GET, anonymous, 200)        | `Cache-Control`                                            | why |
//! |------------------------------------|------------------------------------------------------------|-----|
//! | `/api/articles` (lists)            | `public, max-age=5, stale-while-revalidate=30, stale-if-error=300` | a create or delete refreshes the global list, its tags' and its author's lists; an update the pages showing the article (`listed:{id}`); a favorite does not, so a list's counts lag by up to these 5 s (the article's page is exact); a reader may see a list one refresh behind while it is refreshed |
//! | `/api/articles/{slug}`             | `public, max-age=60, stale-while-revalidate=60, stale-if-error=600` | changes only when written, and every write purges it: a minute is safe, and ten minutes of an origin outage are covered |
//! | `/api/articles/{slug}/comments`    | `public, max-age=10, stale-while-revalidate=30, stale-if-error=300` | purged on every comment write; read from replicas, so short |
//! | `/api/profiles/{username}`         | `public, max-age=60, stale-while-revalidate=60, stale-if-error=600` | purged on profile update |
//! | `/api/tags`                        | `public, max-age=30, stale-while-revalidate=60, stale-if-error=600` | purged when a tag appears or goes |
//! | `/media/{id}`                      | `public, max-age=31536000, immutable`                      | an id names one upload's bytes forever |
//! | `/api/openapi.yml`                 | `public, max-age=300, stale-while-revalidate=300, stale-if-error=3600` | changes only with a new build, which no purge announces: five minutes bounds how long a cache shows the previous build's document |
//!
//! Everything else, and every answer to a request with `Authorization` (a logged-in reader's
//! articles carry `favorited` and `following`), is `private, no-store`. Lists filtered by
//! `favorited` are private too: a favorite purges the article, not every reader's favorites list.
//!
//! With edges configured (`edge.purge_urls`), a shared answer also carries:
//! - `Surrogate-Key`: the keys of what it shows, read off the JSON itself (each article and its
//!   author, the list, the comments), in the vocabulary of [`crate::cache::keys`];
//! - `ETag`, a hash of the body, and `304 Not Modified` for a matching `If-None-Match`, so an
//!   edge revalidates a stale copy without the body crossing the distance again.
//!
//! [`EdgePurger`] sends a write's keys to every edge (from [`crate::cache::Cache::invalidate`]).

use std::{sync::Arc, time::Duration};

use axum::{
    body::Body,
    extract::{MatchedPath, Request, State},
    http::{header, HeaderMap, HeaderValue, Method, StatusCode},
    middleware::Next,
    response::{IntoResponse, Response},
};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::{cache::keys::Key, settings::EdgeSettings, slug::id_from_slug, AppState};

/// How one route's anonymous answers may be shared.
pub struct Policy {
    /// The route pattern, as axum matched it.
    pub route: &'static str,
    /// The `Cache-Control` of a 200 to an anonymous GET.
    pub cache_control: &'static str,
}

/// Every shareable route (see the table in the module documentation for why each value).
pub const POLICIES: &[Policy] = &[
    Policy {
        route: "/api/articles",
        cache_control: "public, max-age=5, stale-while-revalidate=30, stale-if-error=300",
    },
    Policy {
        route: "/api/articles/{slug}",
        cache_control: "public, max-age=60, stale-while-revalidate=60, stale-if-error=600",
    },
    Policy {
        route: "/api/articles/{slug}/comments",
        cache_control: "public, max-age=10, stale-while-revalidate=30, stale-if-error=300",
    },
    Policy {
        route: "/api/profiles/{username}",
        cache_control: "public, max-age=60, stale-while-revalidate=60, stale-if-error=600",
    },
    Policy {
        route: "/api/tags",
        cache_control: "public, max-age=30, stale-while-revalidate=60, stale-if-error=600",
    },
    Policy {
        route: "/media/{id}",
        cache_control: IMMUTABLE,
    },
    Policy {
        route: "/api/openapi.yml",
        cache_control: "public, max-age=300, stale-while-revalidate=300, stale-if-error=3600",
    },
];

/// Media: an id names one upload's bytes forever (the media handler sends it on its 304s too).
pub const IMMUTABLE: &str = "public, max-age=31536000, immutable";

/// What every other answer says: a shared cache must not keep it, and neither should a browser
/// (it may hold one reader's view).
pub const PRIVATE: &str = "private, no-store";

/// The largest body the app hashes and reads keys from; a larger shared answer (a big image)
/// goes out without them. Above a page of 100 articles.
const MAX_INSPECTED_BODY: usize = 2 * 1024 * 1024;

fn policy_for(
    method: &Method,
    route: Option<&str>,
    headers: &HeaderMap,
    query: Option<&str>,
) -> Option<&'static Policy> {
    if !matches!(*method, Method::GET | Method::HEAD) || headers.contains_key(header::AUTHORIZATION)
    {
        return None;
    }
    // a favorites list changes with favorites, which purge articles, not lists
    if query.is_some_and(|q| q.split('&').any(|p| p.starts_with("favorited="))) {
        return None;
    }
    let route = route?;
    POLICIES.iter().find(|p| p.route == route)
}

/// Middleware: `Cache-Control` on every answer from the table, and with edges configured,
/// `Surrogate-Key`, `ETag` and `304` on the shared ones.
pub async fn cache_headers(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned());
    let policy = policy_for(
        request.method(),
        route.as_deref(),
        request.headers(),
        request.uri().query(),
    );
    let if_none_match = request.headers().get(header::IF_NONE_MATCH).cloned();
    let path = request.uri().path().to_owned();
    let query = request.uri().query().map(str::to_owned);
    let mut response = next.run(request).await;
    let Some(policy) = policy.filter(|_| response.status() == StatusCode::OK) else {
        response
            .headers_mut()
            .entry(header::CACHE_CONTROL)
            .or_insert(HeaderValue::from_static(PRIVATE));
        return response;
    };
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(policy.cache_control),
    );
    if state.settings.edge.purge_urls.is_empty() || policy.route == "/media/{id}" {
        // Media carry their own ETag (their hash) and never change: no keys needed.
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, MAX_INSPECTED_BODY).await else {
        // Too large to inspect: not shared (the body is gone, so answer with an error the
        // client can retry; the app's answers are far below this bound).
        return crate::error::ApiError::Unavailable("answer too large to share").into_response();
    };
    let etag = format!("\"{}\"", hex16(&Sha256::digest(&bytes)));
    let keys = surrogate_keys(policy.route, &path, query.as_deref(), &bytes);
    if let Ok(value) = HeaderValue::from_str(&keys.join(" ")) {
        parts.headers.insert("surrogate-key", value);
    }
    if let Ok(value) = HeaderValue::from_str(&etag) {
        parts.headers.insert(header::ETAG, value);
    }
    let matches = if_none_match
        .as_ref()
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|t| t.trim().trim_start_matches("W/") == etag || t.trim() == "*")
        });
    if matches {
        parts.status = StatusCode::NOT_MODIFIED;
        parts.headers.remove(header::CONTENT_LENGTH);
        parts.headers.remove(header::CONTENT_TYPE);
        return Response::from_parts(parts, Body::empty());
    }
    Response::from_parts(parts, Body::from(bytes))
}

fn hex16(digest: &[u8]) -> String {
    digest.iter().take(16).map(|b| format!("{b:02x}")).collect()
}

/// The keys of what a shared answer shows: an article's page names the article (`article:{id}`,
/// from its slug) and its author; a list page names the list it is and, for each article in it,
/// `listed:{id}` and its author (a favorite purges `article:{id}` only, so a list page's counts
/// may lag by its `max-age`); a comments page names the comments and their authors.
pub fn surrogate_keys(route: &str, path: &str, query: Option<&str>, body: &[u8]) -> Vec<String> {
    let mut keys: Vec<String> = Vec::new();
    let mut add = |key: Key| keys.push(key.surrogate().to_owned());
    let json: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let author = |a: &Value, add: &mut dyn FnMut(Key)| {
        if let Some(author) = a["author"]["username"].as_str() {
            add(Key::profile(author));
        }
    };
    match route {
        "/api/articles" => {
            let params: Vec<(String, String)> =
                serde_urlencoded::from_str(query.unwrap_or("")).unwrap_or_default();
            let param = |name: &str| {
                params
                    .iter()
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| v.as_str())
            };
            // A tag's list changes when an article with that tag comes or goes, which purges
            // the tag's list key; an author's list when that author's articles do; the global
            // list with every new or deleted article. A list filtered both ways names both.
            match (param("tag"), param("author")) {
                (None, None) => add(Key::list(None)),
                (tag, author) => {
                    if let Some(tag) = tag {
                        add(Key::list(Some(tag)));
                    }
                    if let Some(author) = author {
                        add(Key::author_list(author));
                    }
                }
            }
            for a in json["articles"].as_array().into_iter().flatten() {
                if let Some(id) = a["slug"].as_str().and_then(id_from_slug) {
                    add(Key::listed(id));
                }
                author(a, &mut add);
            }
        }
        "/api/articles/{slug}" => {
            let a = &json["article"];
            if let Some(id) = a["slug"].as_str().and_then(id_from_slug) {
                add(Key::article(id));
            }
            author(a, &mut add);
        }
        "/api/articles/{slug}/comments" => {
            let slug = path
                .trim_start_matches("/api/articles/")
                .trim_end_matches("/comments");
            if let Some(id) = id_from_slug(slug) {
                add(Key::comments(id));
            }
            for c in json["comments"].as_array().into_iter().flatten() {
                if let Some(author) = c["author"]["username"].as_str() {
                    add(Key::profile(author));
                }
            }
        }
        "/api/profiles/{username}" => {
            if let Some(name) = json["profile"]["username"].as_str() {
                add(Key::profile(name));
            }
        }
        "/api/tags" => add(Key::tags()),
        _ => {}
    }
    keys.sort_unstable();
    keys.dedup();
    keys
}

/// Sends purges to every edge: the one client of their purge endpoint.
#[derive(Clone)]
pub struct EdgePurger {
    inner: Arc<PurgerInner>,
}

struct PurgerInner {
    client: reqwest::Client,
    urls: Vec<String>,
    key: String,
    repurge_after: Duration,
    failures: prometheus_client::metrics::counter::Counter,
}

impl EdgePurger {
    /// A purger for the edges `settings` name, or `None` without edges.
    pub fn new(
        settings: &EdgeSettings,
        failures: prometheus_client::metrics::counter::Counter,
    ) -> anyhow::Result<Option<Self>> {
        if settings.purge_urls.is_empty() {
            return Ok(None);
        }
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(settings.purge_timeout_ms))
            .build()?;
        Ok(Some(Self {
            inner: Arc::new(PurgerInner {
                client,
                urls: settings
                    .purge_urls
                    .iter()
                    .map(|u| format!("{}/edge/purge", u.trim_end_matches('/')))
                    .collect(),
                key: settings.purge_key.expose().to_owned(),
                repurge_after: Duration::from_millis(settings.repurge_after_ms),
                failures,
            }),
        }))
    }

    /// Purges `keys` at every edge, all at once; waits for their answers (a write's answer
    /// follows its purge, so a client that wrote sees its write at the edge), then once more
    /// in the background after `repurge_after`. A failed purge is logged and counted, and never
    /// fails the write: the entry's `max-age` bounds how long it stays stale.
    ///
    /// Lists are refreshed rather than dropped (keys of kind `list` and `listed`): every new article changes
    /// every list page, so a dropped list would be a miss for every reader after each new
    /// article; a refreshed one is answered at once, old, while one background request fetches
    /// the new version. Everything else is dropped, so the next read shows the write.
    pub async fn purge(&self, keys: &[Key]) {
        let (lists, others): (Vec<&Key>, Vec<&Key>) = keys
            .iter()
            .partition(|k| matches!(k.kind, "list" | "listed"));
        let names = |keys: Vec<&Key>| -> Vec<String> {
            keys.into_iter().map(|k| k.surrogate().to_owned()).collect()
        };
        let body = serde_json::json!({ "keys": names(others), "refresh": names(lists) });
        self.inner.send(&body).await;
        if !self.inner.repurge_after.is_zero() {
            let inner = self.inner.clone();
            tokio::spawn(async move {
                tokio::time::sleep(inner.repurge_after).await;
                inner.send(&body).await;
            });
        }
    }
}

impl PurgerInner {
    async fn send(&self, body: &Value) {
        let sends = self.urls.iter().map(|url| async move {
            let sent = self
                .client
                .post(url)
                .header("x-purge-key", &self.key)
                .json(body)
                .send()
                .await
                .and_then(reqwest::Response::error_for_status);
            if let Err(e) = sent {
                self.failures.inc();
                tracing::warn!(url, error = %e, "edge purge failed");
            }
        });
        futures::future::join_all(sends).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_anonymous_reads_of_listed_routes_are_shared() {
        let none = HeaderMap::new();
        let mut auth = HeaderMap::new();
        auth.insert(header::AUTHORIZATION, HeaderValue::from_static("Token x"));
        let get = &Method::GET;
        assert!(policy_for(get, Some("/api/articles/{slug}"), &none, None).is_some());
        assert!(policy_for(get, Some("/api/articles/{slug}"), &auth, None).is_none());
        assert!(policy_for(&Method::PUT, Some("/api/articles/{slug}"), &none, None).is_none());
        assert!(policy_for(get, Some("/api/user"), &none, None).is_none());
        assert!(policy_for(get, Some("/api/articles/feed"), &none, None).is_none());
        assert!(policy_for(get, Some("/api/articles"), &none, Some("favorited=jake")).is_none());
        assert!(policy_for(get, Some("/api/articles"), &none, Some("author=jake")).is_some());
    }

    #[test]
    fn every_shared_answer_says_how_long_and_how_stale() {
        for p in POLICIES {
            assert!(
                p.cache_control.starts_with("public, max-age="),
                "{}",
                p.route
            );
            assert!(
                p.cache_control.contains("stale-if-error") || p.cache_control.contains("immutable"),
                "{}",
                p.route
            );
        }
    }

    #[test]
    fn a_list_names_its_articles_as_listed_so_a_favorite_leaves_it() {
        let body = serde_json::json!({
            "articles": [
                {"slug": "how-to-train-your-dragon-7", "author": {"username": "jake"}},
                {"slug": "other-9", "author": {"username": "jane"}},
                {"slug": "third-b", "author": {"username": "jake"}},
            ],
            "articlesCount": 3
        });
        let keys = surrogate_keys(
            "/api/articles",
            "/api/articles",
            Some("tag=dragons&limit=3"),
            body.to_string().as_bytes(),
        );
        let want = [
            Key::listed(7),
            Key::listed(9),
            Key::listed(11),
            Key::list(Some("dragons")),
            Key::profile("jake"),
            Key::profile("jane"),
        ];
        let mut want: Vec<String> = want.iter().map(|k| k.surrogate().to_owned()).collect();
        want.sort_unstable();
        assert_eq!(keys, want);
    }

    #[test]
    fn the_global_list_is_purged_with_every_new_article_others_by_their_tag_or_author() {
        let body = serde_json::json!({"articles": [], "articlesCount": 0}).to_string();
        let by_author = surrogate_keys(
            "/api/articles",
            "/api/articles",
            Some("author=jake"),
            body.as_bytes(),
        );
        assert_eq!(
            by_author,
            vec![Key::author_list("jake").surrogate().to_owned()]
        );
        let all = surrogate_keys("/api/articles", "/api/articles", None, body.as_bytes());
        assert_eq!(all, vec![Key::list(None).surrogate().to_owned()]);
        let tagged = surrogate_keys(
            "/api/articles",
            "/api/articles",
            Some("tag=a%20b"),
            body.as_bytes(),
        );
        assert_eq!(tagged, vec![Key::list(Some("a b")).surrogate().to_owned()]);
    }

    #[test]
    fn comments_are_keyed_by_their_article_and_their_authors() {
        let body = serde_json::json!({"comments": [{"id": 1, "author": {"username": "jane"}}]});
        let keys = surrogate_keys(
            "/api/articles/{slug}/comments",
            "/api/articles/a-title-16/comments",
            None,
            body.to_string().as_bytes(),
        );
        assert_eq!(
            keys,
            vec!["comments:42".to_owned(), "profile:jane".to_owned()]
        );
    }
}
