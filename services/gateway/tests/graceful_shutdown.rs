//! SIGTERM drains: a request in flight through the gateway when it is told to stop still gets
//! its answer, and the gateway then exits on its own.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

/// An upstream that answers `/readyz` at once and anything else after `delay`.
fn slow_upstream(delay: Duration) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
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
                    thread::sleep(delay);
                }
                let _ = stream.write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                );
            });
        }
    });
    addr
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn get(addr: &str, path: &str) -> std::io::Result<String> {
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

struct Gateway(Child);

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn sigterm_lets_a_request_in_flight_finish_then_exits() {
    let upstream = slow_upstream(Duration::from_millis(1_500));
    let listen = format!("127.0.0.1:{}", free_port());
    let mut gateway = Gateway(
        Command::new(env!("CARGO_BIN_EXE_gateway"))
            .arg("serve")
            .env("GATEWAY_LISTEN", &listen)
            .env("GATEWAY_UPSTREAMS", format!("[\"{upstream}\"]"))
            .env("GATEWAY_SHUTDOWN_GRACE_SECS", "3")
            .env("GATEWAY_ACCESS_LOG", "false")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let started = Instant::now();
    while get(&listen, "/gateway/healthz").is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "gateway never listened"
        );
        thread::sleep(Duration::from_millis(50));
    }

    let in_flight = {
        let listen = listen.clone();
        thread::spawn(move || get(&listen, "/slow"))
    };
    thread::sleep(Duration::from_millis(300));
    let status = Command::new("kill")
        .args(["-TERM", &gateway.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());

    let response = in_flight
        .join()
        .unwrap()
        .expect("the request in flight is answered");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.ends_with("ok"), "{response}");

    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if gateway.0.try_wait().unwrap().is_some() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the gateway did not exit after its grace period"
        );
        thread::sleep(Duration::from_millis(100));
    }
}
