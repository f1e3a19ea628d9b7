//! SIGTERM drains: a request in flight through the gateway when it is told to stop still gets
//! its answer, and the gateway then exits on its own.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::{
    process::Command,
    thread,
    time::{Duration, Instant},
};

use common::{free_listen_address, get, Gateway};

#[test]
fn sigterm_lets_a_request_in_flight_finish_then_exits() {
    let (upstream, received) = common::slow_upstream_counted(Duration::from_millis(1_500));
    let listen = free_listen_address();
    let mut gateway = Gateway::start(&listen, &upstream, &[("GATEWAY_SHUTDOWN_GRACE_SECS", "3")]);

    let in_flight = {
        let listen = listen.clone();
        thread::spawn(move || get(&listen, "/slow"))
    };
    // Wait until the request is at the upstream, in flight through the gateway.
    let deadline = Instant::now() + Duration::from_secs(30);
    while received.load(std::sync::atomic::Ordering::SeqCst) == 0 {
        assert!(
            Instant::now() < deadline,
            "the request never reached the upstream"
        );
        thread::sleep(Duration::from_millis(10));
    }
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
