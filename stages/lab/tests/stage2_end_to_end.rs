//! Stage 2 end to end: three hosts (app, database, file host), each with its own address; media
//! bytes live on the file host's disk and clients read them from the file host directly, while
//! only the app can write there.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use common::TestLab;

use serde_json::Value;

#[tokio::test]
async fn stage_2_keeps_media_on_the_file_host_and_serves_it_from_there() {
    let lab = TestLab::new("archlab-e2e2", common::net(30, 25));
    let endpoint = lab.up("2");

    // Three hosts, three addresses, all healthy.
    let status: Value = lab.status();
    let services = status["services"].as_array().unwrap();
    let roles: Vec<&str> = services
        .iter()
        .map(|s| s["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, vec!["app", "database", "files"]);
    let mut addresses: Vec<&str> = services
        .iter()
        .map(|s| s["address"].as_str().unwrap())
        .collect();
    addresses.dedup();
    assert_eq!(addresses.len(), 3, "{status}");
    assert!(services.iter().all(|s| s["healthy"] == true), "{status}");

    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let token = common::register(&http, &endpoint, "files").await;
    let png = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDRstage-two".to_vec();
    let media: Value = http
        .post(format!("{endpoint}/api/media"))
        .header("Authorization", format!("Token {token}"))
        .header("Content-Type", "image/png")
        .body(png.clone())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let url = media["media"]["url"].as_str().unwrap().to_owned();
    let files_host = services.iter().find(|s| s["role"] == "files").unwrap();
    let files_base = format!(
        "http://{}:{}",
        files_host["address"].as_str().unwrap(),
        files_host["port"]
    );
    assert!(
        url.starts_with(&files_base),
        "clients are sent to the file host: {url}"
    );

    // The bytes are on the file host's disk, not the app host's.
    let name = url.rsplit('/').next().unwrap();
    let on_files_host = lab
        .state
        .path()
        .join("02-split/files/nginx/www/media")
        .join(name);
    assert_eq!(std::fs::read(&on_files_host).unwrap(), png);
    assert!(!lab
        .state
        .path()
        .join("02-split/app/app/media/media")
        .join(name)
        .exists());

    // Served by nginx with the right type and caching; writes without the app's key refused.
    let response = http.get(&url).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "image/png");
    assert_eq!(
        response.headers()["cache-control"],
        "public, max-age=31536000, immutable"
    );
    assert!(response.headers().contains_key("etag"));
    assert_eq!(response.bytes().await.unwrap().as_ref(), png.as_slice());
    let put = http
        .put(format!("{files_base}/media/planted.png"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 403);
    let delete = http.delete(&url).send().await.unwrap();
    assert_eq!(delete.status(), 403);
}
