//! The proxy itself: pingora calls these filters for every request.
//!
//! ```text
//! request_filter     the client's idle timeout, the request id, admin routes, the in-flight
//!                    bound, the body-size bound; `GET /media/…` to the media pool, if any
//! upstream_peer      choose a host (round robin or least loaded), skipping hosts already tried
//! upstream_request   the request id; for the media pool, the bucket's `Host`
//! fail_to_connect    nothing was sent: mark the host down, try another (once)
//! error_while_proxy  the request may have reached the host: retry only GET/HEAD after a reset
//! upstream_response  a 5xx marks the host down (passive health), unless the app says its cause
//!                    is shared by every host (`x-fault-scope: shared`: its database is down)
//! logging            metrics and the access log line
//! ```

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::{Duration, Instant},
};

use async_trait::async_trait;
use http::HeaderValue;
use pingora::{
    http::{Method, RequestHeader, ResponseHeader},
    prelude::*,
    proxy::FailToProxy,
};

use crate::{
    metrics::{Metrics, Place},
    pool::{InFlight, Pool},
    settings::GatewaySettings,
};

/// Attempts per request: the first, and at most one retry on another host.
pub const MAX_ATTEMPTS: usize = 2;

/// Names a request across the gateway's and the app's logs; sent upstream and back to the client.
pub const REQUEST_ID: &str = "x-request-id";
/// Which app host answered, for the walkthrough's curl sessions and the tests.
const UPSTREAM: &str = "x-upstream";
/// Set to `shared` by an app host on a 5xx that every app host would answer alike (the
/// database is down): no reason to skip this host. The app's name for it is the same.
const FAULT_SCOPE: &str = "x-fault-scope";

/// Where media are read from when the gateway has a media pool.
const MEDIA_PREFIX: &str = "/media/";
/// A media file's caching when its store sends none: the app's own for media (`conduit::edge::
/// IMMUTABLE`), since a media name (its id) is never reused.
const MEDIA_CACHE_CONTROL: &str = "public, max-age=31536000, immutable";

/// The gateway's proxy logic.
pub struct Gateway {
    /// The app hosts.
    pub pool: Arc<Pool>,
    /// The object store's web endpoints (stage 7 on): media reads go there.
    pub media: Option<Arc<Pool>>,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Bounds and switches.
    pub settings: Arc<GatewaySettings>,
}

/// One request's state across the filters.
pub struct RequestCtx {
    /// Made once per request; cloning it for the two headers copies a pointer.
    request_id: HeaderValue,
    /// Hosts this request was sent to, in order.
    tried: Vec<SocketAddr>,
    /// The host it is at now, counted in its in-flight number.
    current: Option<InFlight>,
    /// Holds one of the gateway's `max_in_flight` places.
    _admitted: Option<Place>,
    /// Sent to the media pool rather than the app hosts.
    to_media: bool,
    /// The store said the media do not exist: its own page (HTML, from Garage) is replaced by
    /// [`MEDIA_NOT_FOUND`], as the app's media route answers (`true` once the header is rewritten;
    /// the body filter then drops the store's bytes and sends this instead).
    media_not_found: bool,
    started: Instant,
}

/// The app's answer for media that do not exist (`GET /media/{id}` in its OpenAPI document),
/// sent in place of the object store's own 404 page, so a client sees one API at every stage.
pub const MEDIA_NOT_FOUND: &str = r#"{"errors":{"media":["not found"]}}"#;

impl Gateway {
    /// A gateway over `pool`.
    pub fn new(pool: Arc<Pool>, metrics: Arc<Metrics>, settings: Arc<GatewaySettings>) -> Self {
        Self {
            pool,
            media: None,
            metrics,
            settings,
        }
    }

    /// The same gateway with a media pool: `GET`/`HEAD /media/…` go to it.
    pub fn with_media(mut self, media: Option<Arc<Pool>>) -> Self {
        self.media = media;
        self
    }

    /// The pool this request goes to.
    fn pool_of(&self, ctx: &RequestCtx) -> &Pool {
        match (&self.media, ctx.to_media) {
            (Some(media), true) => media,
            _ => &self.pool,
        }
    }

    fn current_name(ctx: &RequestCtx) -> Option<&Arc<String>> {
        ctx.current.as_ref().map(|c| &c.upstream().name)
    }
}

/// A response the gateway (or the edge) writes itself: status, body and content type.
pub async fn respond(
    session: &mut Session,
    status: u16,
    body: String,
    content_type: &str,
) -> Result<()> {
    let mut header = ResponseHeader::build(status, Some(2))?;
    header.insert_header("content-type", content_type)?;
    header.insert_header("content-length", body.len().to_string())?;
    session
        .write_response_header(Box::new(header), false)
        .await?;
    session
        .write_response_body(Some(bytes::Bytes::from(body)), true)
        .await
}

fn error_body(message: &str) -> String {
    format!(r#"{{"errors":{{"gateway":["{message}"]}}}}"#)
}

/// The header a proxy appends its client's address to, so the app behind can tell clients
/// apart (its login throttle counts per client; it believes the header only from the proxies it
/// is told to trust, reading from the right).
pub const FORWARDED_FOR: &str = "x-forwarded-for";

/// The address of a session's client (the connection's peer); `None` over a Unix socket.
pub fn client_ip(session: &Session) -> Option<IpAddr> {
    session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip())
}

/// `upstream_request` with `peer` appended to its `X-Forwarded-For`: the entries already there
/// (what the client or an earlier proxy said), then this proxy's own peer, in one header line.
/// Without a peer address (a Unix socket) the header is left as it came.
pub fn forward_for(upstream_request: &mut RequestHeader, peer: Option<IpAddr>) -> Result<()> {
    let Some(peer) = peer else {
        return Ok(());
    };
    let earlier: Vec<&str> = upstream_request
        .headers
        .get_all(FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    let value = if earlier.is_empty() {
        peer.to_string()
    } else {
        format!("{}, {peer}", earlier.join(", "))
    };
    upstream_request.insert_header(FORWARDED_FOR, value)
}

/// A client's request id if it is a sensible one (bounded, printable), else a new random one:
/// 16 hex digits.
pub fn request_id(header: &RequestHeader) -> HeaderValue {
    let given = header.headers.get(REQUEST_ID).filter(|v| {
        let v = v.as_bytes();
        !v.is_empty() && v.len() <= 128 && v.iter().all(u8::is_ascii_graphic)
    });
    if let Some(id) = given {
        return id.clone();
    }
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let n = rand::random::<u64>();
    let digits: [u8; 16] = std::array::from_fn(|i| HEX[((n >> (60 - 4 * i)) & 0xf) as usize]);
    // Hex digits are always a valid header value; the fallback is never taken.
    HeaderValue::from_bytes(&digits).unwrap_or_else(|_| HeaderValue::from_static("-"))
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            request_id: HeaderValue::from_static(""),
            tried: Vec::with_capacity(MAX_ATTEMPTS),
            current: None,
            _admitted: None,
            to_media: false,
            media_not_found: false,
            started: Instant::now(),
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        // A keep-alive connection (pingora's "0": no limit) waits at most `client_idle_secs` for
        // its next request; a connection the client asked to close stays as it is.
        if session.get_keepalive() == Some(0) {
            session.set_keepalive(Some(self.settings.client_idle_secs));
        }
        ctx.request_id = request_id(session.req_header());
        match session.req_header().uri.path() {
            "/gateway/metrics" => {
                let pools: Vec<&Pool> = std::iter::once(&*self.pool)
                    .chain(self.media.as_deref())
                    .collect();
                let text = self.metrics.render(&pools);
                respond(session, 200, text, "text/plain; version=0.0.4").await?;
                return Ok(true);
            }
            "/gateway/healthz" => {
                let any = self.pool.upstreams().iter().any(|u| self.pool.usable(u));
                let (status, body) = if any {
                    (200, r#"{"status":"ok"}"#.to_owned())
                } else {
                    (503, error_body("no app host is healthy"))
                };
                respond(session, status, body, "application/json").await?;
                return Ok(true);
            }
            _ => {}
        }
        let admitted = Place::take(
            &self.metrics.requests_in_flight,
            self.settings.max_in_flight,
        );
        if admitted.is_none() {
            respond(
                session,
                503,
                error_body("overloaded, try again"),
                "application/json",
            )
            .await?;
            return Ok(true);
        }
        ctx._admitted = admitted;
        let header = session.req_header();
        ctx.to_media = self.media.is_some()
            && matches!(header.method, Method::GET | Method::HEAD)
            && header.uri.path().starts_with(MEDIA_PREFIX);
        let length = session
            .req_header()
            .headers
            .get("content-length")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if length.is_some_and(|n| n > self.settings.max_body_bytes) {
            respond(
                session,
                413,
                error_body("request body too large"),
                "application/json",
            )
            .await?;
            return Ok(true);
        }
        Ok(false)
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        // On a retry the previous host's guard is replaced (and its count goes down).
        let chosen = self
            .pool_of(ctx)
            .choose(&ctx.tried)
            .ok_or_else(|| Error::explain(HTTPStatus(503), "no host available"))?;
        let addr = chosen.upstream().addr;
        self.metrics.sent(&chosen.upstream().name);
        ctx.tried.push(addr);
        ctx.current = Some(chosen);
        let s = &self.settings;
        let mut peer = HttpPeer::new(addr, false, String::new());
        peer.options.connection_timeout = Some(Duration::from_millis(s.connect_timeout_ms));
        peer.options.read_timeout = Some(Duration::from_millis(s.read_timeout_ms));
        peer.options.write_timeout = Some(Duration::from_millis(s.write_timeout_ms));
        peer.options.idle_timeout = Some(Duration::from_millis(s.idle_timeout_ms));
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if ctx.to_media {
            // The store's web endpoint finds the bucket by the host name; the client's
            // credentials are none of its business (media are public).
            upstream_request.insert_header("host", self.settings.media.host.as_str())?;
            upstream_request.remove_header("authorization");
            upstream_request.remove_header("cookie");
        }
        forward_for(upstream_request, client_ip(session))?;
        upstream_request.insert_header(REQUEST_ID, ctx.request_id.clone())
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        // A 5xx the app marks as shared (its database is down, say) would come from every app
        // host alike: skipping this one would only move the load, and then skip them all.
        let shared = upstream_response
            .headers
            .get(FAULT_SCOPE)
            .is_some_and(|v| v.as_bytes() == b"shared");
        if upstream_response.status.is_server_error() && !shared {
            if let Some(current) = &ctx.current {
                self.pool_of(ctx).mark_down(current.upstream());
                self.metrics.marked_down(&current.upstream().name, "5xx");
            }
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        response.insert_header(REQUEST_ID, ctx.request_id.clone())?;
        if ctx.to_media {
            // As the app's own media route answers: never sniffed into another type; and a
            // media name is never reused, so a year of caching if the store said nothing.
            response.insert_header("x-content-type-options", "nosniff")?;
            if response.status.is_success() && response.headers.get("cache-control").is_none() {
                response.insert_header("cache-control", MEDIA_CACHE_CONTROL)?;
            }
            if response.status == http::StatusCode::NOT_FOUND {
                ctx.media_not_found = true;
                response.remove_header("transfer-encoding");
                response.insert_header("content-type", "application/json")?;
                response.insert_header("content-length", MEDIA_NOT_FOUND.len().to_string())?;
                response.insert_header("cache-control", "no-store")?;
            }
        }
        if let Some(current) = &ctx.current {
            response.insert_header(UPSTREAM, current.upstream().header_value.clone())?;
        }
        Ok(())
    }

    fn response_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<bytes::Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<Duration>> {
        if ctx.media_not_found {
            // The store's page is dropped as it arrives; the app's answer goes out at its end
            // (none for HEAD, whose answer has the headers only).
            *body = (end_of_stream && session.req_header().method != Method::HEAD)
                .then(|| bytes::Bytes::from_static(MEDIA_NOT_FOUND.as_bytes()));
        }
        Ok(None)
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        // Nothing reached the host, so any method may go elsewhere.
        let again = ctx.tried.len() < MAX_ATTEMPTS;
        if let Some(current) = &ctx.current {
            let upstream = current.upstream();
            self.pool_of(ctx).mark_down(upstream);
            self.metrics.marked_down(&upstream.name, "connect");
            if again {
                self.metrics.retry(&upstream.name, "connect");
            }
        }
        e.set_retry(again);
        e
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut RequestCtx,
        _client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("upstream {peer}"));
        // The request may have reached the host. Only a read-only request may be sent again, and
        // only when the connection broke (a reset, an early close), not when the host was slow.
        let read_only = matches!(session.req_header().method, Method::GET | Method::HEAD);
        let broke = matches!(
            e.etype(),
            ConnectionClosed | ReadError | WriteError | ConnectError | ConnectRefused
        );
        let again = read_only
            && broke
            && ctx.tried.len() < MAX_ATTEMPTS
            && !session.as_ref().retry_buffer_truncated();
        if let Some(current) = ctx.current.as_ref().filter(|_| again) {
            self.metrics.retry(&current.upstream().name, "reset");
        }
        e.set_retry(again);
        e
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let (none, failed) = if ctx.to_media {
            ("no object-store node available", "object-store node failed")
        } else {
            ("no app host available", "app host failed")
        };
        let (code, message) = match e.etype() {
            HTTPStatus(code) => (*code, none),
            _ => match e.esource() {
                ErrorSource::Upstream => (502, failed),
                ErrorSource::Downstream => (0, ""),
                _ => (500, "gateway error"),
            },
        };
        if code > 0 {
            let _ = respond(session, code, error_body(message), "application/json").await;
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        let path = session.req_header().uri.path();
        if path.starts_with("/gateway/") {
            return;
        }
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let upstream = Self::current_name(ctx);
        self.metrics.request(upstream, status);
        if self.settings.access_log {
            tracing::info!(
                target: "access",
                method = %session.req_header().method,
                path,
                status,
                upstream = upstream.map_or("-", |u| u.as_str()),
                attempts = ctx.tried.len(),
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

    fn id_for(given: Option<&[u8]>) -> HeaderValue {
        let mut header = match RequestHeader::build("GET", b"/", None) {
            Ok(header) => header,
            Err(e) => panic!("request header: {e}"),
        };
        if let Some(given) = given {
            let value = HeaderValue::from_bytes(given).unwrap_or_else(|e| panic!("{e}"));
            header
                .insert_header(REQUEST_ID, value)
                .unwrap_or_else(|e| panic!("{e}"));
        }
        request_id(&header)
    }

    #[test]
    fn the_peer_is_appended_to_what_was_forwarded_before_in_one_line() {
        let forwarded = |earlier: &[&'static str], peer: Option<&str>| {
            let earlier: Vec<HeaderValue> = earlier
                .iter()
                .map(|v| HeaderValue::from_static(v))
                .collect();
            let mut header = request_with(&earlier);
            let peer = peer.map(|p| p.parse().unwrap_or_else(|e| panic!("{e}")));
            forward_for(&mut header, peer).unwrap_or_else(|e| panic!("{e}"));
            lines_of(&header)
        };
        assert_eq!(forwarded(&[], Some("10.0.0.9")), ["10.0.0.9"]);
        assert_eq!(
            forwarded(&["1.2.3.4", "127.10.6.31"], Some("127.10.6.31")),
            ["1.2.3.4, 127.10.6.31, 127.10.6.31"]
        );
        assert_eq!(forwarded(&["1.2.3.4"], None), ["1.2.3.4"]);
    }

    use proptest::prelude::*;

    /// What a client may put in one `X-Forwarded-For` line: any bytes a header value can hold
    /// (tabs, visible ASCII, bytes above 0x7f), or something shaped like a list of addresses.
    fn forged_line() -> impl Strategy<Value = HeaderValue> {
        prop_oneof![
            prop::collection::vec(
                prop_oneof![Just(b'\t'), 0x20_u8..0x7f, 0x80_u8..=0xff],
                0..40
            ),
            "[0-9a-f.:, ]{0,30}".prop_map(String::into_bytes),
        ]
        .prop_map(|bytes| HeaderValue::from_bytes(&bytes).expect("only bytes a value may hold"))
    }

    /// Any address, IPv4 or IPv6.
    fn address() -> impl Strategy<Value = IpAddr> {
        prop_oneof![
            any::<[u8; 4]>().prop_map(IpAddr::from),
            any::<[u8; 16]>().prop_map(IpAddr::from),
        ]
    }

    /// A request header carrying `lines` as its `X-Forwarded-For` lines.
    fn request_with(lines: &[HeaderValue]) -> RequestHeader {
        let mut header = RequestHeader::build("GET", b"/", None).expect("a request header");
        for line in lines {
            header
                .append_header(FORWARDED_FOR, line.clone())
                .expect("a valid header value");
        }
        header
    }

    /// The request's `X-Forwarded-For` lines.
    fn lines_of(header: &RequestHeader) -> Vec<HeaderValue> {
        header
            .headers
            .get_all(FORWARDED_FOR)
            .iter()
            .cloned()
            .collect()
    }

    proptest! {
        /// Whatever the client sent (several lines, garbage, commas, bytes that are not ASCII):
        /// appending never fails or panics, leaves one line, keeps every line that is text in
        /// its order, and ends with the peer. The app reads that line from the right (conduit's
        /// `throttle::ClientAddress::behind`), so the peer is the entry it reads first.
        #[test]
        fn the_peer_always_ends_the_one_forwarded_line_whatever_the_client_sent(
            sent in prop::collection::vec(forged_line(), 0..4),
            peer in address(),
        ) {
            let mut header = request_with(&sent);
            prop_assert!(forward_for(&mut header, Some(peer)).is_ok());
            let lines = lines_of(&header);
            prop_assert_eq!(lines.len(), 1);
            let line = lines[0].to_str().expect("the line written is text");
            let kept: Vec<&str> = sent.iter().filter_map(|v| v.to_str().ok()).collect();
            let expected = kept
                .iter()
                .copied()
                .chain(std::iter::once(peer.to_string().as_str()))
                .collect::<Vec<_>>()
                .join(", ");
            prop_assert_eq!(line, expected);
            let last = line.rsplit(',').next().map(str::trim).map(str::parse::<IpAddr>);
            prop_assert_eq!(last, Some(Ok(peer)));
        }

        /// A chain of proxies, each appending its own peer (the edge appends the client, the
        /// gateway the edge): the rightmost entries are the chain's, in order, whatever the
        /// client forged to their left, so reading from the right and trusting only the chain's
        /// addresses finds the client.
        #[test]
        fn a_chain_of_proxies_appends_its_hops_rightmost_in_order(
            sent in prop::collection::vec(forged_line(), 0..3),
            hops in prop::collection::vec(address(), 1..4),
        ) {
            let mut header = request_with(&sent);
            for hop in &hops {
                prop_assert!(forward_for(&mut header, Some(*hop)).is_ok());
            }
            let lines = lines_of(&header);
            prop_assert_eq!(lines.len(), 1);
            let line = lines[0].to_str().expect("the line written is text");
            let rightmost: Vec<Result<IpAddr, _>> = line
                .rsplit(',')
                .take(hops.len())
                .map(|entry| entry.trim().parse::<IpAddr>())
                .collect();
            let expected: Vec<Result<IpAddr, _>> = hops.iter().rev().copied().map(Ok).collect();
            prop_assert_eq!(rightmost, expected);
        }

        /// Without a peer address (a Unix socket) nothing is added and nothing is taken away.
        #[test]
        fn without_a_peer_the_forwarded_lines_are_left_as_they_came(
            sent in prop::collection::vec(forged_line(), 0..4),
        ) {
            let mut header = request_with(&sent);
            prop_assert!(forward_for(&mut header, None).is_ok());
            prop_assert_eq!(lines_of(&header), sent);
        }
    }

    #[test]
    fn a_sensible_client_id_passes_through_anything_else_is_replaced() {
        assert_eq!(id_for(Some(b"client-id-42")), "client-id-42");
        let long = vec![b'a'; 128];
        assert_eq!(id_for(Some(&long)).as_bytes(), &long[..]);
        for bad in [
            &b""[..],
            &[b'a'; 129][..],
            &b"has space"[..],
            &b"tab\there"[..],
        ] {
            let id = id_for(Some(bad));
            assert_ne!(id.as_bytes(), bad);
            assert_eq!(id.len(), 16, "{id:?}");
        }
    }

    #[test]
    fn a_new_id_is_sixteen_lowercase_hex_digits_and_differs_each_time() {
        let (a, b) = (id_for(None), id_for(None));
        for id in [&a, &b] {
            assert_eq!(id.len(), 16);
            assert!(
                id.as_bytes()
                    .iter()
                    .all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')),
                "{id:?}"
            );
        }
        assert_ne!(a, b);
    }
}
