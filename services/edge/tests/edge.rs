//! The edge in front of an origin written for the test: what it shares and with whom, request
//! coalescing, stale answers while the origin is down, purges by surrogate key, revalidation,
//! and its bounds. The origin says what to do through the query (`cc` is its Cache-Control, `sk`
//! its surrogate keys, ...) and counts the requests that reach it, per path and query.
//!
//! The whole stage, with the real app behind two edges, is tested by the lab
//! (`stages/lab/tests/stage6_end_to_end.rs`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    extract::{Query, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    Router,
};
use edge::{settings::EdgeSettings, store::EdgeStore};
use reqwest::header;

/// Requests that reached the origin, by path and query.
#[derive(Clone, Default)]
struct Origin {
    seen: Arc<Mutex<HashMap<String, u32>>>,
}

impl Origin {
    fn count(&self, target: &str) -> u32 {
        self.seen.lock().unwrap().get(target).copied().unwrap_or(0)
    }
}

async fn answer(
    State(origin): State<Origin>,
    uri: axum::http::Uri,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let target = uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
    *origin
        .seen
        .lock()
        .unwrap()
        .entry(target.clone())
        .or_default() += 1;
    if let Some(ms) = q.get("delay_ms").and_then(|v| v.parse().ok()) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let etag = q.get("etag").map(|e| format!("\"{e}\""));
    let matched = etag.as_ref().is_some_and(|e| {
        headers
            .get(header::IF_NONE_MATCH)
            .is_some_and(|v| v.to_str().unwrap_or("") == e)
    });
    let who = headers
        .get(header::AUTHORIZATION)
        .map_or("anonymous".to_owned(), |v| v.to_str().unwrap().to_owned());
    let n = origin.count(&target);
    let size: usize = q.get("size").and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = format!("{target} for {who}, answer {n}\n{}", "x".repeat(size));
    let mut response = if matched {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        body.into_response()
    };
    let h = response.headers_mut();
    let cc = q
        .get("cc")
        .cloned()
        .unwrap_or_else(|| "public, max-age=60".into());
    h.insert(header::CACHE_CONTROL, cc.parse().unwrap());
    if let Some(keys) = q.get("sk") {
        h.insert("surrogate-key", keys.parse().unwrap());
    }
    if q.contains_key("cookie") {
        h.insert(header::SET_COOKIE, "session=1".parse().unwrap());
    }
    if let Some(vary) = q.get("vary") {
        h.insert(header::VARY, vary.parse().unwrap());
    }
    if let Some(etag) = etag {
        h.insert(header::ETAG, etag.parse().unwrap());
    }
    h.insert(header::CONTENT_TYPE, "application/json".parse().unwrap());
    response
}

/// A running origin; dropping `stop` takes it down.
struct RunningOrigin {
    origin: Origin,
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

async fn start_origin() -> RunningOrigin {
    let origin = Origin::default();
    let app = Router::new().fallback(answer).with_state(origin.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
    });
    RunningOrigin {
        origin,
        addr,
        stop: Some(stop),
    }
}

struct RunningEdge {
    url: String,
    store: &'static EdgeStore,
    client: reqwest::Client,
}

impl RunningEdge {
    async fn get(&self, target: &str) -> reqwest::Response {
        self.client
            .get(format!("{}{target}", self.url))
            .send()
            .await
            .unwrap()
    }

    async fn purge(&self, keys: &[&str], soft: bool, key: &str) -> reqwest::Response {
        self.client
            .post(format!("{}/edge/purge", self.url))
            .header("x-purge-key", key)
            .json(&serde_json::json!({ "keys": keys, "soft": soft }))
            .send()
            .await
            .unwrap()
    }

    async fn metric(&self, name: &str) -> f64 {
        let text = self.get("/edge/metrics").await.text().await.unwrap();
        text.lines()
            .filter(|l| l.starts_with(name) && !l.starts_with('#'))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

fn x_cache(r: &reqwest::Response) -> String {
    r.headers()
        .get("x-cache")
        .map_or("-".into(), |v| v.to_str().unwrap().to_owned())
}

const PURGE_KEY: &str = "test-purge-key";

async fn start_edge(origin: SocketAddr, tune: impl FnOnce(&mut EdgeSettings)) -> RunningEdge {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut settings = EdgeSettings {
        listen: format!("127.0.0.1:{port}"),
        origin: origin.to_string(),
        purge_key: PURGE_KEY.into(),
        rate_per_client: 1_000_000,
        rate_burst: 1_000_000,
        // a busy machine must not turn a coalesced wait into a second origin fetch
        lock_wait_ms: 60_000,
        lock_age_ms: 60_000,
        access_log: false,
        ..EdgeSettings::default()
    };
    tune(&mut settings);
    let (server, store) = edge::server::build(settings).unwrap();
    std::thread::spawn(move || server.run_forever());
    let edge = RunningEdge {
        url: format!("http://127.0.0.1:{port}"),
        store,
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap(),
    };
    for _ in 0..500 {
        if let Ok(r) = edge
            .client
            .get(format!("{}/edge/healthz", edge.url))
            .send()
            .await
        {
            if r.status() == 200 {
                return edge;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the edge did not start");
}

/// Polls `target` until `done` says so (bounded), returning the last response's x-cache,
/// status and body.
async fn until(
    edge: &RunningEdge,
    target: &str,
    done: impl Fn(&str, u16) -> bool,
) -> (String, u16, String) {
    for _ in 0..600 {
        let r = edge.get(target).await;
        let (cache, status) = (x_cache(&r), r.status().as_u16());
        let body = r.text().await.unwrap();
        if done(&cache, status) {
            return (cache, status, body);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{target}: condition not reached in 60 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_logged_in_answer_is_never_shared_and_an_anonymous_one_never_served_to_the_logged_in() {
    let origin = start_origin().await;
    let edge = start_edge(origin.addr, |_| {}).await;
    let target = "/api/articles/a-1";

    let first = edge.get(target).await;
    assert_eq!(x_cache(&first), "MISS");
    assert!(first.text().await.unwrap().contains("for anonymous"));
    let again = edge.get(target).await;
    assert_eq!(x_cache(&again), "HIT");
    assert!(again.headers().contains_key("age"));

    // The origin marks every answer public, even to a logged-in reader (a careless origin):
    // the edge still never stores or serves one across readers.
    for who in ["Token alice", "Token bob", "Token alice"] {
        let r = edge
            .client
            .get(format!("{}{target}", edge.url))
            .header("authorization", who)
            .send()
            .await
            .unwrap();
        assert_eq!(x_cache(&r), "PASS");
        let body = r.text().await.unwrap();
        assert!(body.contains(&format!("for {who}")), "{who} got {body}");
    }
    let anonymous = edge.get(target).await.text().await.unwrap();
    assert!(anonymous.contains("for anonymous"), "{anonymous}");
    assert_eq!(
        origin.origin.count(target),
        4,
        "1 anonymous fill + 3 logged-in passes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_addressed_to_one_client_or_varying_unknowably_are_not_stored() {
    let origin = start_origin().await;
    let edge = start_edge(origin.addr, |_| {}).await;
    for target in [
        "/c?cookie=1",
        "/p?cc=private,max-age=60",
        "/n?cc=no-store",
        "/v?vary=*",
        "/u?vary=user-agent",
        "/m?cc=max-age=60",
    ] {
        for _ in 0..3 {
            let r = edge.get(target).await;
            assert_ne!(x_cache(&r), "HIT", "{target}");
        }
        assert_eq!(
            origin.origin.count(target),
            3,
            "{target}: every request went to the origin"
        );
    }
    // Vary on the content coding alone is the edge's own business: stored once.
    edge.get("/e?vary=accept-encoding").await;
    assert_eq!(x_cache(&edge.get("/e?vary=accept-encoding").await), "HIT");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_misses_reach_the_origin_once_and_uncacheable_keys_skip_the_lock() {
    let origin = start_origin().await;
    let edge = start_edge(origin.addr, |_| {}).await;
    let target = "/slow?delay_ms=300";
    let requests = (0..1_000).map(|_| edge.get(target));
    let answers = futures::future::join_all(requests).await;
    assert!(answers.iter().all(|r| r.status() == 200));
    assert_eq!(
        origin.origin.count(target),
        1,
        "one fetch for a thousand clients"
    );
    assert!(edge.metric("edge_lock_waits").await >= 1.0);

    // A key found uncacheable is remembered (hit-for-miss): its requests go straight to the
    // origin, in parallel, without waiting on each other.
    let private = "/private?cc=private&delay_ms=50";
    edge.get(private).await;
    let waits_before = edge.metric("edge_lock_waits").await;
    futures::future::join_all((0..50).map(|_| edge.get(private))).await;
    assert_eq!(origin.origin.count(private), 51);
    assert_eq!(
        edge.metric("edge_lock_waits").await,
        waits_before,
        "no lock for a pass"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_the_origin_is_down_stale_copies_are_served_within_stale_if_error_then_a_clear_502() {
    let mut origin = start_origin().await;
    let edge = start_edge(origin.addr, |_| {}).await;
    let target = "/a?cc=public,max-age=1,stale-if-error=3";
    let filled = edge.get(target).await.text().await.unwrap();
    drop(origin.stop.take());
    // Once the copy is past its minute... its second, the origin is asked, fails, and the copy
    // is served stale.
    let (_, _, stale) = until(&edge, target, |cache, _| cache == "STALE").await;
    assert_eq!(stale, filled);
    // Past stale-if-error: an honest error.
    let (_, status, body) = until(&edge, target, |_, status| status != 200).await;
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("origin unreachable"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_by_surrogate_key_drops_every_page_that_shows_it_and_only_the_app_may_purge() {
    let origin = start_origin().await;
    let edge = start_edge(origin.addr, |_| {}).await;
    let (a, b, c) = (
        "/a?sk=article:1%20list:all",
        "/b?sk=article:2%20list:all&cc=public,max-age=60,stale-while-revalidate=60",
        "/c?sk=article:1",
    );
    for t in [a, b, c] {
        let r = edge.get(t).await;
        assert!(
            r.headers().get("surrogate-key").is_none(),
            "kept inside the edge"
        );
    }
    assert_eq!(
        edge.purge(&["article:1"], false, "wrong").await.status(),
        403
    );
    assert_eq!(x_cache(&edge.get(a).await), "HIT");
    let purged = edge.purge(&["article:1"], false, PURGE_KEY).await;
    assert_eq!(purged.status(), 200);
    assert_eq!(purged.text().await.unwrap(), r#"{"purged":2}"#);
    assert_eq!(x_cache(&edge.get(a).await), "MISS");
    assert_eq!(x_cache(&edge.get(b).await), "HIT");
    assert_eq!(x_cache(&edge.get(c).await), "MISS");
    // A refresh purge: the old copy is answered at once while one background request
    // fetches the new one.
    let refresh = edge
        .client
        .post(format!("{}/edge/purge", edge.url))
        .header("x-purge-key", PURGE_KEY)
        .json(&serde_json::json!({ "refresh": ["list:all"] }))
        .send()
        .await
        .unwrap();
    assert_eq!(
        refresh.text().await.unwrap(),
        r#"{"purged":2}"#,
        "a and b show list:all"
    );
    let stale = edge.get(b).await;
    assert!(
        matches!(x_cache(&stale).as_str(), "UPDATING" | "STALE"),
        "{}",
        x_cache(&stale)
    );
    until(&edge, b, |cache, _| cache == "HIT").await;
    let bad = edge
        .client
        .post(format!("{}/edge/purge", edge.url))
        .header("x-purge-key", PURGE_KEY)
        .body("not json")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 422);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_soft_purge_revalidates_with_the_etag_and_clients_get_304s_from_the_edge() {
    let origin = start_origin().await;
    let edge = start_edge(origin.addr, |_| {}).await;
    let target = "/a?etag=v1&sk=article:1";
    edge.get(target).await;
    let conditional = edge
        .client
        .get(format!("{}{target}", edge.url))
        .header("if-none-match", "\"v1\"")
        .send()
        .await
        .unwrap();
    assert_eq!(conditional.status(), 304);
    assert_eq!(x_cache(&conditional), "HIT");
    assert_eq!(
        edge.purge(&["article:1"], true, PURGE_KEY).await.status(),
        200
    );
    let revalidated = edge.get(target).await;
    assert_eq!(x_cache(&revalidated), "REVALIDATED");
    assert_eq!(revalidated.status(), 200);
    assert_eq!(
        origin.origin.count(target),
        2,
        "the fill, then one conditional request"
    );
    assert_eq!(x_cache(&edge.get(target).await), "HIT");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_while_revalidate_answers_at_once_and_refreshes_in_the_background() {
    let origin = start_origin().await;
    let edge = start_edge(origin.addr, |_| {}).await;
    let target = "/a?cc=public,max-age=1,stale-while-revalidate=60";
    let first = edge.get(target).await.text().await.unwrap();
    assert!(first.contains("answer 1"));
    let (cache, _, body) = until(&edge, target, |cache, _| cache != "HIT").await;
    assert!(cache == "UPDATING" || cache == "STALE", "{cache}");
    assert_eq!(body, first, "the stale copy, at once");
    until(&edge, target, |_, _| origin.origin.count(target) >= 2).await;
    let (cache, _, body) = until(&edge, target, |cache, _| cache == "HIT").await;
    assert_eq!(cache, "HIT");
    assert!(body.contains("answer 2"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_key_for_requests_that_mean_the_same_thing() {
    let origin = start_origin().await;
    let edge = start_edge(origin.addr, |_| {}).await;
    edge.get("/api/articles?limit=2&tag=x").await;
    for same in [
        "/api/articles?tag=x&limit=2",
        "/api/articles?utm_source=mail&limit=2&tag=x&fbclid=1",
    ] {
        assert_eq!(x_cache(&edge.get(same).await), "HIT", "{same}");
    }
    assert_eq!(origin.origin.count("/api/articles?limit=2&tag=x"), 1);
    // The host's case does not matter either.
    for (host, want) in [("edge.example", "MISS"), ("EDGE.Example", "HIT")] {
        let r = edge
            .client
            .get(format!("{}/api/tags", edge.url))
            .header("host", host)
            .send()
            .await
            .unwrap();
        assert_eq!(x_cache(&r), want, "{host}");
    }
    assert_eq!(origin.origin.count("/api/articles?limit=2&tag=x"), 1);
    assert_eq!(
        x_cache(&edge.get("/api/articles?tag=y&limit=2").await),
        "MISS"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranges_compression_and_the_bounds() {
    let origin = start_origin().await;
    let edge = start_edge(origin.addr, |s| {
        s.rate_per_client = 5;
        s.rate_burst = 20;
        s.store.max_object_bytes = 64 * 1024;
    })
    .await;
    let target = "/m?size=4000";
    edge.get(target).await;
    let range = edge
        .client
        .get(format!("{}{target}", edge.url))
        .header("range", "bytes=0-3")
        .send()
        .await
        .unwrap();
    assert_eq!(range.status(), 206);
    assert_eq!(range.bytes().await.unwrap().as_ref(), b"/m?s");
    let gzip = edge
        .client
        .get(format!("{}{target}", edge.url))
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(gzip.headers()["content-encoding"], "gzip");
    assert_eq!(x_cache(&gzip), "HIT", "one stored copy serves every coding");

    let big = "/big?size=70000";
    edge.get(big).await;
    assert_ne!(
        x_cache(&edge.get(big).await),
        "HIT",
        "above the largest object"
    );
    assert!(edge.store.objects() >= 1);

    // The burst is spent: 429 with a Retry-After.
    let mut limited = None;
    for _ in 0..40 {
        let r = edge.get(target).await;
        if r.status() == 429 {
            limited = Some(r);
            break;
        }
    }
    let limited = limited.expect("the rate limit must trip within 40 requests");
    assert!(limited.headers().contains_key("retry-after"));
    assert!(limited.text().await.unwrap().contains("too many requests"));
}

/// Sends `bytes` on a new connection to `addr` and reads until it is closed (a 30 s read
/// timeout only guards against a hang); what came back.
fn send_raw(addr: &str, bytes: &[u8]) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    // The edge may close before reading everything (a head over its bound).
    let _ = stream.write_all(bytes);
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("no answer and no close: {e}"),
        }
    }
    String::from_utf8_lossy(&seen).into_owned()
}

/// Heads that are not HTTP or are over pingora's bounds (1 MiB less one byte of head, 256
/// header lines: pingora-core's `MAX_HEADER_SIZE`, `MAX_HEADERS`) get 400 and a close from the
/// edge, as from the gateway (`services/gateway/tests/hostile_heads.rs`), and never reach the
/// origin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heads_that_are_not_http_or_too_big_get_400_and_never_reach_the_origin() {
    let origin = start_origin().await;
    let edge = start_edge(origin.addr, |_| {}).await;
    let addr = edge.url.trim_start_matches("http://").to_owned();
    let seen_before: u32 = origin.origin.seen.lock().unwrap().values().sum();
    let huge_header = format!(
        "GET / HTTP/1.1\r\nhost: test\r\nx-big: {}\r\n\r\n",
        "a".repeat(1 << 20)
    );
    let huge_url = format!(
        "GET /{} HTTP/1.1\r\nhost: test\r\n\r\n",
        "a".repeat(1 << 20)
    );
    let many_headers = format!(
        "GET / HTTP/1.1\r\nhost: test\r\n{}\r\n",
        (0..300)
            .map(|n| format!("x-{n}: v\r\n"))
            .collect::<String>()
    );
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("not HTTP", b"\x00\x01\x02 hello\r\n\r\n".to_vec()),
        ("a bad request line", b"GET\r\n\r\n".to_vec()),
        (
            "a bad header line",
            b"GET / HTTP/1.1\r\nno colon here\r\n\r\n".to_vec(),
        ),
        ("a 1 MiB header", huge_header.into_bytes()),
        ("a 1 MiB URL", huge_url.into_bytes()),
        ("300 header lines", many_headers.into_bytes()),
    ];
    for (what, bytes) in cases {
        let addr = addr.clone();
        let answer = tokio::task::spawn_blocking(move || send_raw(&addr, &bytes))
            .await
            .unwrap();
        assert!(
            answer.starts_with("HTTP/1.1 400 "),
            "{what}: {:?}",
            answer.lines().next()
        );
    }
    let seen_after: u32 = origin.origin.seen.lock().unwrap().values().sum();
    assert_eq!(seen_after, seen_before);
}

/// The edge shares the gateway's send deadline (`gateway::connections::SendDeadline`): a head
/// sent a line every 200 ms is cut off once `request_send_secs` (1 s here) have passed since its
/// first byte, and never reaches the origin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_head_sent_a_line_at_a_time_is_cut_off_at_the_send_deadline() {
    use std::io::{Read, Write};
    let origin = start_origin().await;
    let edge = start_edge(origin.addr, |s| s.request_send_secs = 1).await;
    let addr = edge.url.trim_start_matches("http://").to_owned();
    let closed = tokio::task::spawn_blocking(move || {
        let mut slow = std::net::TcpStream::connect(&addr).unwrap();
        slow.write_all(b"GET /slow HTTP/1.1\r\nhost: test\r\n")
            .unwrap();
        // Bounded: 150 lines would take 30 s; the edge must close long before.
        for n in 0..150 {
            std::thread::sleep(Duration::from_millis(200));
            if slow.write_all(format!("x-{n}: v\r\n").as_bytes()).is_err() {
                return true;
            }
        }
        slow.set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut buf = [0u8; 1024];
        match slow.read(&mut buf) {
            Ok(0) => true,
            Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
            Ok(_) => false,
        }
    })
    .await
    .unwrap();
    assert!(closed, "the slow head was not cut off");
    assert_eq!(origin.origin.count("/slow"), 0);
    assert_eq!(edge.get("/edge/healthz").await.status(), 200);
}
