//! Test support: a stand-in app host, a gateway process, plain HTTP/1.1 over a socket.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs, dead_code)]

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

/// An upstream that answers `/readyz` at once and anything else after `delay`, each answer
/// `200 ok` on a connection it then closes.
pub fn slow_upstream(delay: Duration) -> String {
    slow_upstream_counted(delay).0
}

/// [`slow_upstream`], with a count of the requests it has received (health checks aside), so a
/// test can wait until one is in flight instead of sleeping for "long enough".
pub fn slow_upstream_counted(delay: Duration) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let received = Arc::new(AtomicUsize::new(0));
    let count = received.clone();
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let count = count.clone();
            thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let mut seen = Vec::new();
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                if !seen.starts_with(b"GET /readyz") {
                    count.fetch_add(1, Ordering::SeqCst);
                    thread::sleep(delay);
                }
                let _ = stream.write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                );
            });
        }
    });
    (addr, received)
}

/// A loopback address with a free port.
pub fn free_listen_address() -> String {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    format!("127.0.0.1:{port}")
}

/// One request on a connection of its own (`connection: close`); the whole response.
pub fn get(addr: &str, path: &str) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response)
}

/// The gateway binary, killed when dropped.
pub struct Gateway(pub Child);

impl Gateway {
    /// `gateway serve` on `listen` in front of `upstream`, with extra `GATEWAY_*` settings;
    /// returns once it answers `/gateway/healthz` with 200 (its upstream passed a check).
    pub fn start(listen: &str, upstream: &str, env: &[(&str, &str)]) -> Gateway {
        let gateway = Gateway(
            Command::new(env!("CARGO_BIN_EXE_gateway"))
                .arg("serve")
                .env("GATEWAY_LISTEN", listen)
                .env("GATEWAY_UPSTREAMS", format!("[\"{upstream}\"]"))
                .env("GATEWAY_ACCESS_LOG", "false")
                .envs(env.iter().copied())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let started = Instant::now();
        while !get(listen, "/gateway/healthz").is_ok_and(|r| r.starts_with("HTTP/1.1 200")) {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "gateway never became healthy"
            );
            thread::sleep(Duration::from_millis(50));
        }
        gateway
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Sends `GET path` on the keep-alive connection `stream` and reads the stand-in's whole
/// answer (`200 ok`); panics if the gateway closes the connection first.
pub fn request_on(stream: &mut TcpStream, path: &str) {
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nhost: test\r\n\r\n").as_bytes())
        .unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    while !seen.ends_with(b"\r\n\r\nok") {
        let n = stream.read(&mut buf).unwrap();
        assert!(
            n > 0,
            "{path}: closed before the answer: {:?}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&buf[..n]);
    }
    assert!(seen.starts_with(b"HTTP/1.1 200"), "{path}");
}
