//! A toy server for the harness's own tests.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};

/// A keep-alive HTTP server answering `200 ok` to everything, frozen during
/// [5 s, 6 s), [15 s, 16 s), ... after `epoch`.
pub async fn freezing_server(epoch: Instant) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let _ = socket.set_nodelay(true);
                let mut buf = vec![0u8; 4096];
                let mut have = 0;
                loop {
                    match socket.read(&mut buf[have..]).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => have += n,
                    }
                    while let Some(end) = buf[..have].windows(4).position(|w| w == b"\r\n\r\n") {
                        let phase = epoch.elapsed().as_secs_f64() % 10.0;
                        if (5.0..6.0).contains(&phase) {
                            tokio::time::sleep(Duration::from_secs_f64(6.0 - phase)).await;
                        }
                        if socket
                            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                            .await
                            .is_err()
                        {
                            return;
                        }
                        buf.copy_within(end + 4..have, 0);
                        have -= end + 4;
                    }
                }
            });
        }
    });
    addr
}
