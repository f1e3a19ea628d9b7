//! What the gateway answers to request heads that are not HTTP, or too big: 400 and a close,
//! never a hang and never a request sent on to an app host. pingora decides it while reading
//! the head (pingora-core 0.9, `protocols/http/v1/common.rs`): at most `MAX_HEADER_SIZE`
//! (1 MiB less one byte) of head and `MAX_HEADERS` (256) header lines. A head under those
//! bounds but over the app's (its 431) is the app's to answer (`services/conduit/tests/front_door.rs`).

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::{
    io::{Read, Write},
    net::TcpStream,
    sync::atomic::Ordering,
    thread,
    time::{Duration, Instant},
};

use common::{free_listen_address, request_on, slow_upstream_counted, Gateway};

/// Sends `bytes` on a new connection and reads until the gateway closes it (a 30 s read
/// timeout only guards against a hang); what it sent back.
fn send(listen: &str, bytes: &[u8]) -> String {
    let mut stream = TcpStream::connect(listen).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    // The gateway may close before it has read everything (a head over its bound): a write
    // error then is part of the answer, not a failure.
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

#[test]
fn heads_that_are_not_http_or_too_big_get_400_and_never_reach_an_app_host() {
    let (upstream, requests) = slow_upstream_counted(Duration::ZERO);
    let listen = free_listen_address();
    let _gateway = Gateway::start(&listen, &upstream, &[]);
    let before = requests.load(Ordering::SeqCst);

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
    for (what, bytes) in [
        ("not HTTP", b"\x00\x01\x02 hello\r\n\r\n".to_vec()),
        ("a bad request line", b"GET\r\n\r\n".to_vec()),
        (
            "a bad header line",
            b"GET / HTTP/1.1\r\nno colon here\r\n\r\n".to_vec(),
        ),
        ("a 1 MiB header", huge_header.into_bytes()),
        ("a 1 MiB URL", huge_url.into_bytes()),
        ("300 header lines", many_headers.into_bytes()),
    ] {
        let answer = send(&listen, &bytes);
        assert!(
            answer.starts_with("HTTP/1.1 400 "),
            "{what}: {:?}",
            answer.lines().next()
        );
    }
    assert_eq!(requests.load(Ordering::SeqCst), before);
}

/// A client that sends its request head one line at a time, a line every 200 ms, never
/// finishing: pingora's per-read timeout never fires, but `request_send_secs` (1 s here) counts
/// from the head's first byte, so the connection is closed without the request reaching an app
/// host. A keep-alive connection idle between its requests for longer than the deadline is
/// served as usual: each request's clock starts at its own first byte.
#[test]
fn a_request_head_sent_a_line_at_a_time_is_cut_off_at_the_send_deadline() {
    let (upstream, requests) = slow_upstream_counted(Duration::ZERO);
    let listen = free_listen_address();
    let _gateway = Gateway::start(&listen, &upstream, &[("GATEWAY_REQUEST_SEND_SECS", "1")]);
    let before = requests.load(Ordering::SeqCst);

    let mut slow = TcpStream::connect(&listen).unwrap();
    slow.write_all(b"GET /slow HTTP/1.1\r\nhost: test\r\n")
        .unwrap();
    let began = Instant::now();
    // Bounded: 150 lines would take 30 s; the gateway must close long before.
    let mut closed = false;
    for n in 0..150 {
        thread::sleep(Duration::from_millis(200));
        if slow.write_all(format!("x-{n}: v\r\n").as_bytes()).is_err() {
            closed = true;
            break;
        }
    }
    let elapsed = began.elapsed();
    if !closed {
        // The writes may all have gone into the socket's buffer: the read tells.
        slow.set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut buf = [0u8; 1024];
        closed = match slow.read(&mut buf) {
            Ok(0) => true,
            Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
            // An answer, or a read timeout (WouldBlock): not closed.
            Ok(_) => false,
        };
    }
    assert!(closed, "the slow head was not cut off in {elapsed:?}");
    // Not before the deadline: it counts from the first byte.
    assert!(
        elapsed >= Duration::from_secs(1),
        "cut off after {elapsed:?}"
    );

    // The deadline is per request: a keep-alive connection that outlives it, served a request
    // before and a request after, is not cut off.
    let mut kept = TcpStream::connect(&listen).unwrap();
    request_on(&mut kept, "/before");
    // Idle longer than the deadline, less than `client_idle_secs`.
    thread::sleep(Duration::from_millis(1500));
    request_on(&mut kept, "/after");
    assert_eq!(requests.load(Ordering::SeqCst), before + 2);
}
