//! Media uploads and downloads, body limits, unknown routes, operations endpoints.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use common::{assert_error, TestApp};
use reqwest::{multipart, StatusCode};
use serde_json::{json, Value};

/// A valid 1x1 PNG.
const PNG: &[u8] = &[
    0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A, 0x00, 0x00, 0x00, 0x0D, 0x49, 0x48, 0x44, 0x52,
    0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, 0x08, 0x06, 0x00, 0x00, 0x00, 0x1F, 0x15, 0xC4,
    0x89, 0x00, 0x00, 0x00, 0x0A, 0x49, 0x44, 0x41, 0x54, 0x78, 0x9C, 0x63, 0x00, 0x01, 0x00, 0x00,
    0x05, 0x00, 0x01, 0x0D, 0x0A, 0x2D, 0xB4, 0x00, 0x00, 0x00, 0x00, 0x49, 0x45, 0x4E, 0x44, 0xAE,
    0x42, 0x60, 0x82,
];

async fn upload(
    app: &TestApp,
    token: Option<&str>,
    bytes: Vec<u8>,
    claimed_type: &str,
) -> (StatusCode, Value) {
    let part = multipart::Part::bytes(bytes)
        .file_name("upload.bin")
        .mime_str(claimed_type)
        .unwrap();
    let mut request = app
        .client
        .post(app.url("/api/media"))
        .multipart(multipart::Form::new().part("file", part));
    if let Some(token) = token {
        request = request.header("Authorization", format!("Token {token}"));
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn media_upload_and_download() {
    let app = TestApp::start_with(|s| s.media.max_bytes = 64 * 1024).await;
    let token = app.register("jake").await;

    // Multipart upload; the type is sniffed from the bytes, not taken from the claim.
    let (status, body) = upload(&app, Some(&token), PNG.to_vec(), "application/octet-stream").await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let media = &body["media"];
    assert_eq!(media["contentType"], "image/png");
    assert_eq!(media["size"], PNG.len());
    let id = media["id"].as_str().unwrap().to_owned();
    assert_eq!(media["url"], format!("/media/{id}.png"));

    // A form is one part, named `file`: another name, or a second part, is refused.
    for form in [
        multipart::Form::new().part("image", multipart::Part::bytes(PNG.to_vec())),
        multipart::Form::new()
            .part("file", multipart::Part::bytes(PNG.to_vec()))
            .text("caption", "x"),
    ] {
        let response = app
            .client
            .post(app.url("/api/media"))
            .header("Authorization", format!("Token {token}"))
            .multipart(form)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
        let body: Value = response.json().await.unwrap();
        assert_eq!(
            body["errors"]["media"][0],
            "the form must have one part, named file"
        );
    }

    // The bytes are on this host's disk, under the store's folder.
    let on_disk =
        std::fs::read(app.media_dir.path().join("media").join(format!("{id}.png"))).unwrap();
    assert_eq!(on_disk, PNG);

    let response = app
        .client
        .get(app.url(&format!("/media/{id}.png")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let headers = response.headers().clone();
    assert_eq!(headers["content-type"], "image/png");
    // A browser must not second-guess the type the bytes were checked for.
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert_eq!(
        headers["cache-control"],
        "public, max-age=31536000, immutable"
    );
    let etag = headers["etag"].to_str().unwrap().to_owned();
    assert!(etag.starts_with('"') && etag.len() == 66, "{etag}");
    assert_eq!(response.bytes().await.unwrap().as_ref(), PNG);
    let response = app
        .client
        .get(app.url(&format!("/media/{id}")))
        .header("If-None-Match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_MODIFIED);

    // A raw body works too.
    let response = app
        .client
        .post(app.url("/api/media"))
        .header("Authorization", format!("Token {token}"))
        .header("Content-Type", "image/gif")
        .body(b"GIF89a\x01\x00\x01\x00".to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["media"]["contentType"], "image/gif");

    // Refused: not an image whatever the claim (415), too large (413), empty (422), no token (401).
    let (status, body) = upload(
        &app,
        Some(&token),
        b"<svg onload=alert(1)>".to_vec(),
        "image/png",
    )
    .await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_error(&body, "media");
    let mut big = PNG.to_vec();
    big.resize(200 * 1024, 0);
    let (status, body) = upload(&app, Some(&token), big, "image/png").await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert_error(&body, "body");
    let (status, _) = upload(&app, Some(&token), vec![], "image/png").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let (status, _) = upload(&app, None, PNG.to_vec(), "image/png").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // Unknown or malformed ids never reach the store.
    for bad in ["999999", "..%2F..%2Fetc%2Fpasswd", "abc", "-1"] {
        let (status, body) = app.get(&format!("/media/{bad}"), None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{bad}");
        assert_error(&body, "media");
    }
}

#[tokio::test]
async fn limits_unknown_routes_and_bad_bodies() {
    let app = TestApp::start_with(|s| s.server.max_json_body_bytes = 4 * 1024).await;
    let token = app.register("jake").await;

    // Over the JSON limit: 413 with an error body.
    let big = "x".repeat(8 * 1024);
    let (status, body) = app
        .post(
            "/api/articles",
            Some(&token),
            json!({"article": {"title": "t", "description": "d", "body": big}}),
        )
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert_error(&body, "body");

    // Malformed JSON, wrong content type, no body: 422.
    for (content_type, raw) in [
        ("application/json", "{\"user\":"),
        ("text/plain", "{}"),
        ("application/json", ""),
    ] {
        let response = app
            .client
            .post(app.url("/api/users"))
            .header("Content-Type", content_type)
            .body(raw.to_owned())
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "{content_type} {raw:?}"
        );
        let body: Value = response.json().await.unwrap();
        assert_error(&body, "body");
    }

    // Unknown routes: 404 JSON; wrong method: 405 JSON.
    let (status, body) = app.get("/api/nothing-here", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_error(&body, "route");
    let (status, body) = app
        .call(reqwest::Method::PATCH, "/api/tags", None, None)
        .await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_error(&body, "method");
}

#[tokio::test]
async fn health_readiness_and_metrics() {
    let app = TestApp::start().await;
    let (status, _) = app.get("/healthz", None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = app.get("/readyz", None).await;
    assert_eq!(status, StatusCode::OK);
    app.get("/api/tags", None).await;
    app.get("/api/articles/nope-1", None).await;

    let text = app.metrics_text().await;
    assert!(
        text.contains(r#"http_requests_total{method="GET",route="/api/tags",status="200"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"route="/api/articles/{slug}",status="404""#),
        "{text}"
    );
    assert!(text.contains("http_request_duration_seconds_bucket"));
    assert!(
        text.contains(r#"db_pool_connections{pool="primary",state="max"} 8"#),
        "{text}"
    );
}

#[tokio::test]
async fn a_stopped_database_means_not_ready_and_503s_not_500s() {
    let app = TestApp::start_with(|s| s.database.acquire_timeout_ms = 500).await;
    let (status, _) = app.get("/api/tags", None).await;
    assert_eq!(status, StatusCode::OK);
    app.pg.server.stop().unwrap();

    let (status, _) = app.get("/healthz", None).await;
    assert_eq!(status, StatusCode::OK, "the process itself is fine");
    let (status, body) = app.get("/readyz", None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_error(&body, "database");
    let (status, body) = app.get("/api/tags", None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    // The database's fault, not this app host's: every host would answer the same.
    assert_error(&body, "database");

    // Back again: ready, and requests succeed on fresh connections.
    app.pg.server.start(&[]).await.unwrap();
    let (status, _) = app.get("/readyz", None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = app.get("/api/tags", None).await;
    assert_eq!(status, StatusCode::OK);
}

/// The in-flight limit and the request timeout, each reached on purpose: a request whose body
/// never comes holds the only place, so the next request is refused at once (load shedding,
/// 503), and the stalled one is answered 503 when its time is up; then the place is free again.
#[tokio::test]
async fn beyond_the_in_flight_limit_requests_get_503_at_once_and_a_stalled_one_times_out() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let app = TestApp::start_with(|s| {
        s.server.max_in_flight_requests = 1;
        s.server.request_timeout_ms = 5_000;
    })
    .await;
    let address = app.base.trim_start_matches("http://").to_owned();
    let mut stalled = tokio::net::TcpStream::connect(&address).await.unwrap();
    stalled
        .write_all(
            b"POST /api/users HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n\
              Content-Length: 100\r\n\r\n{",
        )
        .await
        .unwrap();

    // Until the stalled request has taken the place, another may still get it first; so ask
    // until one is refused (a bounded number of times: the stalled one holds it for 5 s).
    let mut refused = None;
    for _ in 0..500 {
        let (status, body) = app.get("/api/tags", None).await;
        if status == StatusCode::SERVICE_UNAVAILABLE {
            refused = Some(body);
            break;
        }
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let refused = refused.expect("a request beyond the limit is refused");
    assert_eq!(
        refused["errors"]["server"][0], "server overloaded, try again",
        "{refused}"
    );

    // The stalled request's own answer: 503, the request timed out. (The bound on the read is
    // only there so that a broken server fails the test instead of hanging it.)
    let mut answer = Vec::new();
    tokio::time::timeout(std::time::Duration::from_secs(120), async {
        let mut chunk = [0u8; 1024];
        while !String::from_utf8_lossy(&answer).contains("timed out") {
            let n = stalled.read(&mut chunk).await.unwrap();
            if n == 0 {
                break;
            }
            answer.extend_from_slice(&chunk[..n]);
        }
    })
    .await
    .expect("the stalled request is answered");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("request timed out"), "{answer}");

    // The place is free again.
    let mut status = StatusCode::SERVICE_UNAVAILABLE;
    for _ in 0..500 {
        status = app.get("/api/tags", None).await.0;
        if status == StatusCode::OK {
            break;
        }
    }
    assert_eq!(status, StatusCode::OK);
}

/// One part of a hand-made multipart body: its field name and its bytes.
type Part = (String, Vec<u8>);

/// A multipart body with `boundary` around `parts`, cut after `keep` bytes (a client that
/// stopped mid-way, or lied about its length, is one of the cases).
fn multipart_body(boundary: &str, parts: &[Part], keep: usize) -> Vec<u8> {
    let mut body = Vec::new();
    for (name, bytes) in parts {
        body.extend_from_slice(
            format!(
                "--{boundary}\r\ncontent-disposition: form-data; name=\"{name}\"; \
                 filename=\"x.bin\"\r\ncontent-type: image/png\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(bytes);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    body.truncate(keep);
    body
}

/// Any multipart body (any part names, any bytes, a boundary in the header that the body may
/// not use, a body cut anywhere): 201 for exactly one `file` part that is an image, otherwise a
/// 4xx with the RealWorld error body; never a 5xx. One app for every case, so the cases are
/// many and the test is quick.
#[test]
fn any_multipart_body_is_stored_or_refused_with_a_realworld_error() {
    use proptest::prelude::*;
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (app, token) = runtime.block_on(async {
        let app = TestApp::start().await;
        let token = app.register("uploader").await;
        (app, token)
    });
    // The boundary quoted in the header, since it may hold characters (`=`, `/`, `:`, ...)
    // that a bare one may not.
    let send = |boundary: &str, body: Vec<u8>| {
        runtime.block_on(async {
            let response = app
                .client
                .post(app.url("/api/media"))
                .header("Authorization", format!("Token {token}"))
                .header(
                    "content-type",
                    format!("multipart/form-data; boundary=\"{boundary}\""),
                )
                .body(body)
                .send()
                .await
                .unwrap();
            let status = response.status();
            let answer = response.json::<Value>().await.unwrap_or(Value::Null);
            (status, answer)
        })
    };
    // The one kind of body that is stored, with such a boundary: the property below reaches it
    // only now and then.
    let one_image = [("file".to_owned(), PNG.to_vec())];
    let (status, answer) = send(
        "a=b/c:d?",
        multipart_body("a=b/c:d?", &one_image, usize::MAX),
    );
    assert_eq!(status, StatusCode::CREATED, "{answer}");

    let part = (
        prop_oneof![
            Just("file".to_owned()),
            Just("image".to_owned()),
            "[a-z\"; ]{0,6}"
        ],
        prop_oneof![
            Just(PNG.to_vec()),
            prop::collection::vec(any::<u8>(), 0..40)
        ],
    );
    let case = (
        "[a-zA-Z0-9'()+_,./:=?-]{1,40}",
        any::<bool>(),
        prop::collection::vec(part, 0..3),
        any::<prop::sample::Index>(),
        any::<bool>(),
    );
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(64));
    runner
        .run(&case, |(boundary, same_boundary, parts, cut, whole)| {
            let header_boundary = if same_boundary {
                boundary.clone()
            } else {
                format!("{boundary}x")
            };
            let full = multipart_body(&boundary, &parts, usize::MAX);
            let keep = if whole {
                full.len()
            } else {
                cut.index(full.len() + 1)
            };
            let (status, answer) = send(&header_boundary, full[..keep].to_vec());
            prop_assert!(!status.is_server_error(), "{status} {answer}");
            // Whole up to its close delimiter (`--boundary--`): the CRLF after it may be cut, as
            // RFC 2046 makes it part of an optional epilogue.
            let closed = keep + 2 >= full.len();
            let one_image_named_file = same_boundary
                && closed
                && parts.len() == 1
                && parts[0].0 == "file"
                && parts[0].1.starts_with(b"\x89PNG");
            if status == StatusCode::CREATED {
                prop_assert!(one_image_named_file, "stored: {parts:?}");
            } else {
                prop_assert!(status.is_client_error(), "{status} {answer}");
                prop_assert!(
                    answer["errors"].as_object().is_some_and(|e| !e.is_empty()),
                    "{status} {answer}"
                );
            }
            Ok(())
        })
        .unwrap();
}
