//! The app as a front door (stages 1 to 3 put it straight on the network): clients that are slow,
//! idle, too many or malformed get a bounded answer or a closed connection, over raw TCP.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::time::Duration;

use common::TestApp;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// Everything the server sends until it closes the connection. The bound only turns a broken
/// server (one that never closes) into a failure instead of a hang; it is not what is tested.
async fn read_until_closed(stream: &mut TcpStream) -> Vec<u8> {
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(120), stream.read_to_end(&mut answer))
        .await
        .expect("the server closes the connection")
        .ok();
    answer
}

async fn connect(app: &TestApp) -> TcpStream {
    TcpStream::connect(app.base.trim_start_matches("http://"))
        .await
        .unwrap()
}

const TAGS: &[u8] = b"GET /api/tags HTTP/1.1\r\nHost: test\r\n\r\n";

#[tokio::test]
async fn slow_headers_and_idle_connections_are_closed_after_the_header_read_timeout() {
    let app = TestApp::start_with(|s| s.server.header_read_timeout_ms = 200).await;

    // Half a request head, then nothing: closed without an answer.
    let mut slow = connect(&app).await;
    slow.write_all(b"GET /api/tags HTTP/1.1\r\nHost: te")
        .await
        .unwrap();
    let answer = read_until_closed(&mut slow).await;
    assert!(
        !answer.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer)
    );

    // Nothing at all: closed too.
    let mut silent = connect(&app).await;
    read_until_closed(&mut silent).await;

    // A request answered, then idle on a keep-alive connection: closed after the same bound.
    let mut idle = connect(&app).await;
    idle.write_all(TAGS).await.unwrap();
    let answer = read_until_closed(&mut idle).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        !answer.contains("connection: close"),
        "kept alive until idle: {answer}"
    );
}

#[tokio::test]
async fn a_connection_beyond_the_bound_is_closed_at_once_and_a_place_comes_back() {
    let app = TestApp::start_with(|s| s.server.max_connections = 2).await;
    // Two connections hold both places (each proves it is served).
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut stream = connect(&app).await;
        stream.write_all(TAGS).await.unwrap();
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).await.unwrap();
        assert_eq!(&head, b"HTTP/1.1 200");
        held.push(stream);
    }
    // A third is accepted by the kernel, then closed unanswered.
    let mut refused = connect(&app).await;
    let _ = refused.write_all(TAGS).await;
    assert_eq!(read_until_closed(&mut refused).await, b"");

    // One place given back: a new connection is served (the place returns when the server
    // notices the close, so ask until then; the deadline only turns a place that never comes
    // back into a failure instead of a hang).
    drop(held.pop());
    let mut served = false;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while std::time::Instant::now() < deadline {
        let mut stream = connect(&app).await;
        let _ = stream.write_all(TAGS).await;
        let mut head = [0u8; 12];
        if stream.read_exact(&mut head).await.is_ok() {
            assert_eq!(&head, b"HTTP/1.1 200");
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(served, "a place came back");
}

#[tokio::test]
async fn malformed_and_oversized_request_heads_get_a_4xx_not_a_hang() {
    let app = TestApp::start().await;
    let status_of =
        |answer: &[u8]| String::from_utf8_lossy(&answer[..answer.len().min(12)]).into_owned();

    // Not HTTP.
    let mut garbage = connect(&app).await;
    garbage
        .write_all(b"\x16\x03\x01 hello\r\n\r\n")
        .await
        .unwrap();
    let answer = read_until_closed(&mut garbage).await;
    assert_eq!(status_of(&answer), "HTTP/1.1 400");

    // A header of 1 MiB: refused with 431 once hyper's buffer is full.
    let mut huge = connect(&app).await;
    let mut request = b"GET /api/tags HTTP/1.1\r\nHost: test\r\nX-Big: ".to_vec();
    request.extend(std::iter::repeat_n(b'a', 1 << 20));
    request.extend(b"\r\n\r\n");
    let _ = huge.write_all(&request).await;
    let answer = read_until_closed(&mut huge).await;
    assert_eq!(status_of(&answer), "HTTP/1.1 431");

    // A URL of 1 MiB: the same bound (the request line is part of the head).
    let mut long = connect(&app).await;
    let mut request = b"GET /api/tags?".to_vec();
    request.extend(std::iter::repeat_n(b'a', 1 << 20));
    request.extend(b" HTTP/1.1\r\nHost: test\r\n\r\n");
    let _ = long.write_all(&request).await;
    let answer = read_until_closed(&mut long).await;
    assert_eq!(status_of(&answer), "HTTP/1.1 431");
}
