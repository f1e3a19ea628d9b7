//! Stage 8 end to end, over each consensus store (`up 8 --dcs etcd`, `--dcs zookeeper`): the
//! primary's host crashes (Patroni and PostgreSQL killed at once) and the stage goes on.
//!
//! - While no host holds the leader key, every write is refused with a 503 (never a 500, never a
//!   hang) and the writer's reads are answered: the replica keeps serving them.
//! - Once Patroni promotes the replica, writes are accepted again with nothing restarted: the app
//!   hosts found the new primary themselves.
//! - The crashed host, brought back by `up`, rejoins as a replica of the new primary (rewound to
//!   its history), and everything acknowledged before and after the crash is there.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::path::PathBuf;

use archlab::{
    consensus::StoreKind,
    lab::Lab,
    patroni::{streams_to, PatroniCluster},
    stage::{Layout, Stage},
};
use common::{get, wait_until, TestLab, PATIENCE};
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread")]
async fn over_etcd_a_crashed_primary_is_replaced_and_writes_resume_without_a_restart() {
    crash_the_primary(StoreKind::Etcd, common::net(150, 10)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn over_zookeeper_a_crashed_primary_is_replaced_and_writes_resume_without_a_restart() {
    crash_the_primary(StoreKind::ZooKeeper, common::net(160, 10)).await;
}

/// Posts an article as `token`; the status and the body.
async fn post_article(
    http: &reqwest::Client,
    endpoint: &str,
    token: &str,
    title: &str,
) -> (u16, Value) {
    let response = http
        .post(format!("{endpoint}/api/articles"))
        .header("authorization", format!("Token {token}"))
        .json(&json!({"article": {"title": title, "description": "d", "body": "b", "tagList": []}}))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// The lab's own view of the stage's Patroni cluster, to find and crash the primary's host.
fn patroni(lab: &TestLab, dcs: StoreKind) -> PatroniCluster {
    let layout = Layout {
        dcs: Some(dcs),
        ..Layout::default()
    };
    let stage = Stage::find_with("8", layout)
        .unwrap()
        .on_network(lab.net.parse().unwrap());
    Lab::new(lab.state.path(), PathBuf::new())
        .patroni_cluster(&stage)
        .unwrap()
}

async fn crash_the_primary(dcs: StoreKind, net: String) {
    let lab = TestLab::new("archlab-stage8", net);
    let endpoint = lab.up_with("8", &["--dcs", dcs.as_str()]);
    let http = reqwest::Client::new();
    let ann = common::register(&http, &endpoint, "ann").await;
    let (status, created) = post_article(&http, &endpoint, &ann, "Before the crash").await;
    assert_eq!(status, 201, "{created}");
    let before = created["article"]["slug"].as_str().unwrap().to_owned();

    let cluster = patroni(&lab, dcs);
    let old = cluster.primary().await.expect("one primary");
    cluster.nodes[old].crash().unwrap();

    // Until a replica holds the leader key (it expires a TTL after the crash), writes are
    // refused at once and reads go on; then the first write is accepted.
    let start = std::time::Instant::now();
    let mut refused = 0;
    let after = loop {
        assert!(
            start.elapsed() < PATIENCE,
            "writes never came back after the crash"
        );
        let (status, body) = post_article(&http, &endpoint, &ann, "After the crash").await;
        match status {
            201 => break body["article"]["slug"].as_str().unwrap().to_owned(),
            503 => refused += 1,
            other => panic!("a write during the failover got {other}: {body}"),
        }
        // The writer's own read: past the edge's cache (it is logged in), so a database serves it.
        let (status, body, _) = get(
            &http,
            &format!("{endpoint}/api/articles/{before}"),
            Some(&ann),
        )
        .await;
        assert_eq!(status, 200, "a read during the failover: {body}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert!(
        refused > 0,
        "no write was refused: the crash cannot have been seen"
    );
    let new = cluster.primary().await.expect("one primary");
    assert_ne!(new, old, "the crashed host cannot be the primary");

    // `up` brings the crashed host back: Patroni rewinds it and it follows the new primary.
    lab.up_with("8", &["--dcs", dcs.as_str()]);
    wait_until("the old primary streams from the new one", || {
        streams_to(&cluster.nodes[new], &cluster.nodes[old])
    })
    .await;
    for slug in [&before, &after] {
        let (status, body, _) = get(&http, &format!("{endpoint}/api/articles/{slug}"), None).await;
        assert_eq!(status, 200, "{slug}: {body}");
    }
}
