//! The edge itself: pingora calls these filters for every request.
//!
//! ```text
//! request_filter         request id, admin routes (metrics, health, purge), the per-client
//!                        rate limit (429), the body-size bound (413)
//! request_cache_filter   shareable request? (policy.rs) then the cache is on for it: store,
//!                        lock (coalescing), predictor (hit-for-miss), largest object
//! cache_key_callback     host + normalised target (key.rs)
//! ── hit: served from the store; a stale hit within stale-while-revalidate is served while a
//!    background request (allow_spawning_subrequest) refreshes it
//! upstream_peer          the origin, after the emulated distance (origin_delay_ms)
//! upstream_request_filter  the normalised target, no Accept-Encoding (the edge compresses)
//! response_cache_filter  shareable response? (policy.rs)
//! should_serve_stale     an origin error or 5xx within stale-if-error serves the stale copy
//! response_filter        x-cache, x-edge, the request id; Surrogate-Key stays inside
//! fail_to_proxy          a clear 502 (origin unreachable) or 504 (origin timed out)
//! logging                metrics and the access log line
//! ```

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use async_trait::async_trait;
use bytes::Bytes;
use gateway::proxy::{client_ip, forward_for, request_id, respond, REQUEST_ID};
use http::HeaderValue;
use pingora::{
    cache::{
        lock::CacheKeyLockImpl, predictor::CacheablePredictor, CacheKey, CacheOptionOverrides,
        CachePhase, RespCacheable,
    },
    http::{RequestHeader, ResponseHeader},
    modules::http::{compression::ResponseCompressionBuilder, HttpModules},
    prelude::*,
    proxy::FailToProxy,
};
use serde::Deserialize;

use crate::{
    key,
    metrics::Metrics,
    policy,
    rate::RateLimit,
    settings::EdgeSettings,
    store::{EdgeStore, PurgeMode, SURROGATE_KEY},
};

/// Which PoP answered, for curl sessions, the harness and the tests.
const EDGE: &str = "x-edge";
/// The cache outcome: HIT, MISS, STALE, UPDATING, REVALIDATED or PASS.
const X_CACHE: &str = "x-cache";
/// Where the origin's own `x-cache` goes (the app's Redis cache: hit, miss, bypass).
const ORIGIN_CACHE: &str = "x-origin-cache";
/// The header the app's purge requests carry their key in.
const PURGE_KEY: &str = "x-purge-key";
/// The largest purge request body: a write changes a few dozen keys at most.
pub const MAX_PURGE_BODY: usize = 64 * 1024;

/// What a purge request asks for: `POST /edge/purge` with
/// `{"keys": [...], "refresh": [...], "soft": false}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PurgeRequest {
    /// Surrogate keys; every entry naming one of them is purged.
    #[serde(default)]
    pub keys: Vec<String>,
    /// Surrogate keys whose entries are expired but may still be served while one background
    /// request refreshes them ([`PurgeMode::Refresh`]).
    #[serde(default)]
    pub refresh: Vec<String>,
    /// Expire instead of remove: the entries still cover an origin outage (stale-if-error) but
    /// are not served again without asking the origin.
    #[serde(default)]
    pub soft: bool,
}

/// The parts the cache needs by `'static` reference (pingora's API), made once at start-up.
pub struct CacheParts {
    /// The store.
    pub store: &'static EdgeStore,
    /// One fetch per key at a time; the others wait for it (request coalescing).
    pub lock: &'static CacheKeyLockImpl,
    /// Keys found uncacheable, which then skip the lock (hit-for-miss).
    pub predictor: &'static (dyn CacheablePredictor + Sync),
}

/// The edge's proxy logic.
pub struct Edge {
    settings: Arc<EdgeSettings>,
    cache: CacheParts,
    rate: RateLimit,
    /// Counters.
    pub metrics: Arc<Metrics>,
    origin: SocketAddr,
    name: HeaderValue,
}

/// One request's state across the filters.
pub struct RequestCtx {
    request_id: HeaderValue,
    /// Why this request bypasses the shared cache, if it does.
    pass: Option<policy::PassReason>,
    /// The normalised path and query sent to the origin (cacheable requests).
    target: Option<String>,
    started: Instant,
}

impl Edge {
    /// An edge in front of `settings.origin`.
    pub fn new(
        settings: Arc<EdgeSettings>,
        cache: CacheParts,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Self> {
        // A name (`gateway:8080` in compose) is resolved once, at start, as the gateway does.
        let origin = std::net::ToSocketAddrs::to_socket_addrs(&settings.origin)
            .map_err(|e| anyhow::anyhow!("origin {:?}: {e}", settings.origin))?
            .next()
            .ok_or_else(|| anyhow::anyhow!("origin {:?}: no address", settings.origin))?;
        let name = HeaderValue::from_str(&settings.name)
            .map_err(|e| anyhow::anyhow!("name {:?}: {e}", settings.name))?;
        Ok(Self {
            rate: RateLimit::new(settings.rate_per_client, settings.rate_burst),
            settings,
            cache,
            metrics,
            origin,
            name,
        })
    }

    async fn purge(&self, session: &mut Session) -> Result<()> {
        let key_ok = !self.settings.purge_key.is_empty()
            && session
                .req_header()
                .headers
                .get(PURGE_KEY)
                .is_some_and(|k| same_key(k.as_bytes(), self.settings.purge_key.as_bytes()));
        if !key_ok {
            return respond(
                session,
                403,
                error_body("purging needs the app's key"),
                JSON,
            )
            .await;
        }
        let mut body = Vec::new();
        while let Some(chunk) = session.read_request_body().await? {
            if body.len() + chunk.len() > MAX_PURGE_BODY {
                return respond(session, 413, error_body("purge request too large"), JSON).await;
            }
            body.extend_from_slice(&chunk);
        }
        let request: PurgeRequest = match serde_json::from_slice(&body) {
            Ok(r) => r,
            Err(e) => {
                let message = format!("purge body: {e}").replace('"', "'");
                return respond(session, 422, error_body(&message), JSON).await;
            }
        };
        let (mode, label) = if request.soft {
            (PurgeMode::Soft, "soft")
        } else {
            (PurgeMode::Hard, "hard")
        };
        let keys: Vec<&str> = request.keys.iter().map(String::as_str).collect();
        let mut purged = self.cache.store.purge_tags(&keys, mode);
        self.metrics.purge(label, purged);
        if !request.refresh.is_empty() {
            let keys: Vec<&str> = request.refresh.iter().map(String::as_str).collect();
            let refreshed = self.cache.store.purge_tags(&keys, PurgeMode::Refresh);
            self.metrics.purge("refresh", refreshed);
            purged += refreshed;
        }
        respond(session, 200, format!(r#"{{"purged":{purged}}}"#), JSON).await
    }
}

const JSON: &str = "application/json";

fn error_body(message: &str) -> String {
    format!(r#"{{"errors":{{"edge":["{message}"]}}}}"#)
}

/// Whether a purge request's key is the app's, compared in constant time (`subtle`): `==` on
/// bytes answers sooner the earlier they differ, and timing many guesses would tell a client how
/// much of the key it has right. Only the length may show, and a key's length is no secret.
fn same_key(given: &[u8], key: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    given.ct_eq(key).into()
}

/// The `x-cache` value of a finished request.
fn outcome(session: &Session, ctx: &RequestCtx) -> &'static str {
    if ctx.pass.is_some() {
        return "PASS";
    }
    match session.cache.phase() {
        CachePhase::Hit => "HIT",
        CachePhase::Stale => "STALE",
        CachePhase::StaleUpdating => "UPDATING",
        CachePhase::Revalidated => "REVALIDATED",
        CachePhase::Miss | CachePhase::Expired | CachePhase::RevalidatedNoCache(_) => "MISS",
        _ => "PASS",
    }
}

#[async_trait]
impl ProxyHttp for Edge {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            request_id: HeaderValue::from_static(""),
            pass: None,
            target: None,
            started: Instant::now(),
        }
    }

    fn init_downstream_modules(&self, modules: &mut HttpModules) {
        modules.add_module(ResponseCompressionBuilder::enable(
            self.settings.compression_level,
        ));
    }

    fn allow_spawning_subrequest(&self, _session: &Session, _ctx: &RequestCtx) -> bool {
        // stale-while-revalidate refreshes in a background request
        true
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        if session.get_keepalive() == Some(0) {
            session.set_keepalive(Some(self.settings.client_idle_secs));
        }
        ctx.request_id = request_id(session.req_header());
        match session.req_header().uri.path() {
            "/edge/metrics" => {
                let text = self.metrics.render(self.cache.store);
                respond(session, 200, text, "text/plain; version=0.0.4").await?;
                return Ok(true);
            }
            "/edge/healthz" => {
                respond(session, 200, r#"{"status":"ok"}"#.into(), JSON).await?;
                return Ok(true);
            }
            "/edge/purge" => {
                self.purge(session).await?;
                return Ok(true);
            }
            _ => {}
        }
        // Background refreshes have no client to limit.
        if session.subrequest_ctx.is_none() {
            if let Some(ip) = client_ip(session) {
                if let Err(wait) = self.rate.check(ip, Instant::now()) {
                    self.metrics.rate_limited.inc();
                    let body = error_body("too many requests, slow down");
                    let mut header = ResponseHeader::build(429, Some(3))?;
                    header.insert_header("content-type", JSON)?;
                    header.insert_header("content-length", body.len().to_string())?;
                    header.insert_header("retry-after", wait.to_string())?;
                    session
                        .write_response_header(Box::new(header), false)
                        .await?;
                    session
                        .write_response_body(Some(Bytes::from(body)), true)
                        .await?;
                    return Ok(true);
                }
            }
        }
        let length = session
            .req_header()
            .headers
            .get("content-length")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if length.is_some_and(|n| n > self.settings.max_body_bytes) {
            respond(session, 413, error_body("request body too large"), JSON).await?;
            return Ok(true);
        }
        Ok(false)
    }

    fn request_cache_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<()> {
        let req = session.req_header();
        if let Err(reason) = policy::request_shareable(req) {
            ctx.pass = Some(reason);
            self.metrics.pass(reason);
            return Ok(());
        }
        ctx.target = Some(key::normalised_target(req.uri.path(), req.uri.query()));
        let c = &self.cache;
        let mut lock_options = CacheOptionOverrides::default();
        lock_options.wait_timeout = Some(Duration::from_millis(self.settings.lock_wait_ms));
        session.cache.enable(
            c.store,
            None,
            Some(c.predictor),
            Some(c.lock),
            Some(lock_options),
        );
        session
            .cache
            .set_max_file_size_bytes(self.settings.store.max_object_bytes);
        Ok(())
    }

    fn cache_key_callback(&self, session: &Session, ctx: &mut RequestCtx) -> Result<CacheKey> {
        let req = session.req_header();
        let host = req
            .headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| req.uri.host())
            .unwrap_or("");
        let target = ctx.target.as_deref().unwrap_or("/");
        Ok(CacheKey::new(key::primary_key(host, target), ""))
    }

    fn response_cache_filter(
        &self,
        _session: &Session,
        resp: &ResponseHeader,
        _ctx: &mut RequestCtx,
    ) -> Result<RespCacheable> {
        Ok(policy::response_shareable(resp))
    }

    fn should_serve_stale(
        &self,
        _session: &mut Session,
        _ctx: &mut RequestCtx,
        error: Option<&Error>,
    ) -> bool {
        match error {
            // stale-while-revalidate: pingora has checked the entry's window already
            None => true,
            // stale-if-error: the origin failed, or answered with a 5xx
            Some(e) => {
                e.esource() == &ErrorSource::Upstream
                    || matches!(e.etype(), HTTPStatus(code) if *code >= 500)
            }
        }
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        // The emulated distance: a request to the origin crosses it before it starts.
        if self.settings.origin_delay_ms > 0 {
            tokio::time::sleep(Duration::from_millis(self.settings.origin_delay_ms)).await;
        }
        self.metrics.origin_fetches.inc();
        let s = &self.settings;
        let mut peer = HttpPeer::new(self.origin, false, String::new());
        peer.options.connection_timeout = Some(Duration::from_millis(s.connect_timeout_ms));
        peer.options.read_timeout = Some(Duration::from_millis(s.read_timeout_ms));
        peer.options.write_timeout = Some(Duration::from_millis(s.write_timeout_ms));
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        // Who asked, for the app's login throttle (a shared answer is stored whoever fetched it:
        // the header is not part of the cache key).
        forward_for(upstream_request, client_ip(session))?;
        if let Some(target) = &ctx.target {
            let uri = target
                .parse::<http::Uri>()
                .map_err(|e| Error::because(InternalError, "normalised target", e))?;
            upstream_request.set_uri(uri);
        }
        // The edge negotiates the content coding with each client; the origin always sends
        // identity, so one stored copy serves everyone.
        upstream_request.remove_header(&http::header::ACCEPT_ENCODING);
        upstream_request.insert_header(REQUEST_ID, ctx.request_id.clone())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        response.remove_header(SURROGATE_KEY);
        // The app's own cache (stage 3 on) says hit or miss in `x-cache` too; behind the edge
        // that answer moves to `x-origin-cache`, and `x-cache` is the edge's.
        if let Some(app) = response.remove_header(X_CACHE) {
            response.insert_header(ORIGIN_CACHE, app)?;
        }
        response.insert_header(X_CACHE, outcome(session, ctx))?;
        response.insert_header(REQUEST_ID, ctx.request_id.clone())?;
        response.insert_header(EDGE, self.name.clone())?;
        Ok(())
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        _ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let (code, message) = match e.etype() {
            HTTPStatus(code) => (*code, "request refused"),
            ConnectTimedout | ReadTimedout | WriteTimedout => (504, "origin timed out"),
            _ => match e.esource() {
                ErrorSource::Upstream => (502, "origin unreachable"),
                ErrorSource::Downstream => (0, ""),
                _ => (500, "edge error"),
            },
        };
        if code > 0 {
            let _ = respond(session, code, error_body(message), JSON).await;
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        let path = session.req_header().uri.path();
        if path.starts_with("/edge/") || session.subrequest_ctx.is_some() {
            return;
        }
        if let Some(waited) = session.cache.lock_duration() {
            self.metrics.lock_wait(waited.as_secs_f64());
        }
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let cache = outcome(session, ctx);
        self.metrics.request(cache, status);
        if self.settings.access_log {
            tracing::info!(
                target: "access",
                method = %session.req_header().method,
                path,
                status,
                cache,
                pass = ctx.pass.unwrap_or("-"),
                ms = format_args!("{:.2}", ctx.started.elapsed().as_secs_f64() * 1000.0),
                request_id = ctx.request_id.to_str().unwrap_or("-"),
                error = e.map(|e| e.to_string()).unwrap_or_default(),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_key_is_the_same_key() {
        assert!(same_key(b"app-key-123", b"app-key-123"));
        for other in [
            &b""[..],
            b"app-key-12",
            b"app-key-1234",
            b"app-key-124",
            b"App-key-123",
        ] {
            assert!(!same_key(other, b"app-key-123"), "{other:?}");
        }
    }
}
