//! End to end: `archlab up 1` brings the real stage up (PostgreSQL + the conduit binary), a client
//! registers, uploads an image and writes an article over HTTP, `down` and `up` again, and finds
//! both still there. Needs the workspace's binaries built (`cargo build` before `cargo test`;
//! `scripts/test` does this).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;

use common::TestLab;

use serde_json::{json, Value};

const PNG_HEADER: &[u8] = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR";

fn app_pid_file(lab: &TestLab) -> PathBuf {
    lab.state.path().join("01-monolith/box/app/app.pid.json")
}

fn pids(status: &Value) -> Vec<Option<i64>> {
    status["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["pid"].as_i64())
        .collect()
}

#[tokio::test]
async fn stage_1_serves_keeps_data_across_down_and_up_and_stops_only_its_own_processes() {
    // A network away from the default 10, derived from our PID.
    let lab = TestLab::new("archlab-e2e", common::net(100, 150));
    let endpoint = lab.up("1");
    let http = reqwest::Client::builder().no_proxy().build().unwrap();

    // Every service healthy, with a PID, address and log.
    let status = lab.status();
    let services = status["services"].as_array().unwrap();
    assert_eq!(services.len(), 2, "{status}");
    for s in services {
        assert_eq!(s["healthy"], true, "{s}");
        assert!(
            s["pid"].as_i64().is_some() && s["log"].as_str().is_some(),
            "{s}"
        );
        assert!(s["address"]
            .as_str()
            .unwrap()
            .starts_with(&format!("127.{}.", lab.net)));
    }

    // A second lab on the same addresses refuses to start instead of mistaking ours for its own.
    let intruder = TestLab::beside("archlab-intruder", lab.net.clone());
    let (ok, out) = intruder.archlab(&["up", "1"]);
    assert!(!ok && out.contains("already in use"), "{out}");
    drop(intruder);

    // `up` again is a no-op: same processes.
    let before = pids(&status);
    assert_eq!(lab.up("1"), endpoint);
    assert_eq!(pids(&lab.status()), before);

    // A user, an image, an article.
    let token = common::register(&http, &endpoint, "e2e").await;
    let media: Value = http
        .post(format!("{endpoint}/api/media"))
        .header("Authorization", format!("Token {token}"))
        .header("Content-Type", "image/png")
        .body(PNG_HEADER.to_vec())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let media_url = format!("{endpoint}{}", media["media"]["url"].as_str().unwrap());
    let article: Value = http
        .post(format!("{endpoint}/api/articles"))
        .header("Authorization", format!("Token {token}"))
        .json(&json!({"article": {"title": "Survives restarts", "description": "d", "body": &media_url}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let slug = article["article"]["slug"].as_str().unwrap().to_owned();

    let read_back = |endpoint: String| {
        let http = http.clone();
        let (slug, media_path) = (
            slug.clone(),
            media["media"]["url"].as_str().unwrap().to_owned(),
        );
        async move {
            let article: Value = http
                .get(format!("{endpoint}/api/articles/{slug}"))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            assert_eq!(
                article["article"]["title"], "Survives restarts",
                "{article}"
            );
            let image = http
                .get(format!("{endpoint}{media_path}"))
                .send()
                .await
                .unwrap();
            assert_eq!(image.status(), 200);
            assert_eq!(image.headers()["content-type"], "image/png");
            assert_eq!(image.bytes().await.unwrap().as_ref(), PNG_HEADER);
        }
    };
    read_back(endpoint.clone()).await;

    // Down: every process gone, nothing answers.
    let (ok, out) = lab.archlab(&["down"]);
    assert!(ok, "{out}");
    let status = lab.status();
    assert!(pids(&status).iter().all(Option::is_none), "{status}");
    assert!(http
        .get(format!("{endpoint}/healthz"))
        .send()
        .await
        .is_err());

    // A stale PID file naming a live process that is not ours (this test) is never signalled.
    let me = std::process::id();
    std::fs::write(
        app_pid_file(&lab),
        format!(r#"{{"pid": {me}, "start_ticks": 1}}"#),
    )
    .unwrap();
    let (ok, out) = lab.archlab(&["down"]);
    assert!(ok, "{out}");
    assert!(out.contains("stale"), "{out}");

    // Up again: the same data.
    let endpoint = lab.up("1");
    read_back(endpoint).await;
}
