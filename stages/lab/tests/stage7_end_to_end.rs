//! Stage 7 end to end: media on a three-node object store cluster (Garage).
//!
//! - An upload is stored in the cluster and read back through the edge and the gateway's media
//!   pool, with its type and the app's media headers.
//! - One node down: uploads and reads keep working, every one of them.
//! - Two nodes down: an upload is a clear 503 with the RealWorld error body, never a hang.
//! - The nodes back: the cluster heals and the upload made with one node down reads back from
//!   every node.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use common::TestLab;

/// A PNG the app accepts (its signature, then anything).
fn png(tag: u8) -> Vec<u8> {
    let mut bytes = b"\x89PNG\r\n\x1a\n".to_vec();
    bytes.extend(std::iter::repeat_n(tag, 4096));
    bytes
}

async fn upload(
    http: &reqwest::Client,
    endpoint: &str,
    token: &str,
    bytes: Vec<u8>,
) -> reqwest::Response {
    http.post(format!("{endpoint}/api/media"))
        .header("authorization", format!("Token {token}"))
        .header("content-type", "application/octet-stream")
        .body(bytes)
        .send()
        .await
        .unwrap()
}

/// Uploads `bytes` and returns the media URL the app answered with.
async fn upload_ok(http: &reqwest::Client, endpoint: &str, token: &str, bytes: Vec<u8>) -> String {
    let response = upload(http, endpoint, token, bytes).await;
    assert_eq!(response.status().as_u16(), 201);
    let body: serde_json::Value = response.json().await.unwrap();
    body["media"]["url"].as_str().unwrap().to_owned()
}

/// Reads `url` and checks the bytes and the media headers.
async fn read_back(http: &reqwest::Client, url: &str, expected: &[u8]) {
    let response = http.get(url).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 200, "{url}");
    let headers = response.headers().clone();
    assert_eq!(headers["content-type"], "image/png", "{url}");
    assert_eq!(headers["x-content-type-options"], "nosniff", "{url}");
    assert!(
        headers["cache-control"]
            .to_str()
            .unwrap()
            .contains("immutable"),
        "{url}: {headers:?}"
    );
    assert_eq!(&response.bytes().await.unwrap()[..], expected, "{url}");
}

#[tokio::test(flavor = "multi_thread")]
async fn media_live_on_the_cluster_and_survive_one_lost_node_but_not_two() {
    let net = common::net(150, 10);
    let lab = TestLab::new("archlab-stage7", net.clone());
    let near = lab.up("7");
    let gateway = format!("http://127.{net}.7.1:8080");
    let http = reqwest::Client::new();
    let alice = common::register(&http, &near, "alice").await;

    // Stored in the cluster, read through the edge (and from the far PoP too).
    let first = png(1);
    let url = upload_ok(&http, &near, &alice, first.clone()).await;
    assert!(url.starts_with(&format!("{near}/media/")), "{url}");
    read_back(&http, &url, &first).await;
    read_back(&http, &url.replace(".31:", ".32:"), &first).await;

    // One node down: nothing fails. Reads go to the gateway itself, past the edge's copies,
    // several times so every node of the media pool is asked.
    lab.kill_host("objects-1");
    let second = png(2);
    let second_url = upload_ok(&http, &near, &alice, second.clone()).await;
    let through_gateway = |url: &str| url.replace(&near, &gateway);
    for _ in 0..6 {
        read_back(&http, &through_gateway(&url), &first).await;
        read_back(&http, &through_gateway(&second_url), &second).await;
    }

    // Two down: no quorum. An upload is a clear 503 with the RealWorld error body.
    lab.kill_host("objects-2");
    let refused = upload(&http, &near, &alice, png(3)).await;
    assert_eq!(refused.status().as_u16(), 503);
    let body: serde_json::Value = refused.json().await.unwrap();
    assert!(body["errors"]["media"][0].is_string(), "{body}");

    // Back: the cluster heals; uploads work again, and what was written with one node down
    // reads back from every node.
    lab.up("7");
    let third = png(4);
    let third_url = upload_ok(&http, &near, &alice, third.clone()).await;
    read_back(&http, &through_gateway(&third_url), &third).await;
    let file = second_url.rsplit('/').next().unwrap();
    for node in 41..=43 {
        let direct = format!("http://127.{net}.7.{node}:3902/media/{file}");
        let response = http
            .get(&direct)
            .header("host", "media.web.archlab")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 200, "{direct}");
        assert_eq!(
            &response.bytes().await.unwrap()[..],
            &second[..],
            "{direct}"
        );
    }
}
