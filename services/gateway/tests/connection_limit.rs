//! The client-connection bounds: beyond `max_connections` a new connection is closed at once
//! (and counted), and an idle keep-alive connection is closed after `client_idle_secs`, which
//! gives its place back.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::{
    io::{Read, Write},
    net::TcpStream,
    thread,
    time::{Duration, Instant},
};

use common::{free_listen_address, get, request_on, slow_upstream, Gateway};

/// A keep-alive connection that has had one request answered.
fn served_connection(listen: &str) -> TcpStream {
    let mut stream = TcpStream::connect(listen).unwrap();
    request_on(&mut stream, "/one");
    stream
}

/// Reads until the gateway closes `stream`; what it sent before closing.
fn read_until_closed(stream: &mut TcpStream) -> Vec<u8> {
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return seen,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return seen,
            Err(e) => panic!("not closed: {e}"),
        }
    }
}

#[test]
fn a_connection_beyond_the_cap_is_closed_and_idle_ones_give_their_place_back() {
    let upstream = slow_upstream(Duration::ZERO);
    let listen = free_listen_address();
    let _gateway = Gateway::start(
        &listen,
        &upstream,
        &[
            ("GATEWAY_MAX_CONNECTIONS", "2"),
            ("GATEWAY_CLIENT_IDLE_SECS", "1"),
        ],
    );
    // The readiness probe's own connection closes; give its place a moment to come back.
    thread::sleep(Duration::from_millis(200));

    let mut first = served_connection(&listen);
    let idle_since = Instant::now();
    let mut second = served_connection(&listen);

    // A third connection while two are open: closed without an answer.
    let mut third = TcpStream::connect(&listen).unwrap();
    third
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let _ = third.write_all(b"GET /three HTTP/1.1\r\nhost: test\r\n\r\n");
    assert_eq!(
        read_until_closed(&mut third),
        b"",
        "the third got an answer"
    );

    // The two idle keep-alive connections are closed after about a second...
    assert_eq!(read_until_closed(&mut first), b"");
    assert_eq!(read_until_closed(&mut second), b"");
    let idle = idle_since.elapsed();
    // Not before the idle time; the upper bound only catches "never" (a busy machine is slow).
    assert!(
        idle >= Duration::from_millis(900) && idle < Duration::from_secs(30),
        "closed after {idle:?}"
    );

    // ...and their places are free again.
    thread::sleep(Duration::from_millis(100));
    let metrics = get(&listen, "/gateway/metrics").unwrap();
    assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
    assert!(
        metrics.contains("gateway_client_connections_refused_total 1\n"),
        "{metrics}"
    );
}
