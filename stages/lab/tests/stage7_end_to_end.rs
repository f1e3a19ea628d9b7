//! Stage 7 end to end: media on a three-node object store cluster (Garage).
//!
//! - An upload is stored in the cluster and read back through the edge and the gateway's media
//!   pool, with its type and the app's media headers.
//! - One node down: uploads and reads keep working, every one of them.
//! - Two nodes down: an upload is a clear 503 with the RealWorld error body, never a hang.
//! - The nodes back: the cluster heals and the upload made with one node down reads back from
//!   every node.
//!
//! And the database split by author over two shards, with two-phase commit across them: the
//! same answers as one database, exact counts, one shard's primary down refusing only its
//! authors' requests (by name, at once), a replica per shard serving its reads with each
//! writer still seeing their own writes, and the drills (an app host's coordinator crashed
//! at each fault point, a participant killed) under load, which lose nothing and leave nothing
//! in doubt.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use common::{as_superuser, get, reads_on, wait_until, TestLab};
use serde_json::Value;

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
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap();
    assert_eq!(status, 201, "{body}");
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
    // Media that do not exist: the app's answer (JSON, as its own route gives at stages 1 to 6),
    // not the store's HTML page; through the edge, and for HEAD without a body.
    let missing = format!("{near}/media/999999999.png");
    let response = http.get(&missing).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 404);
    assert_eq!(response.headers()["content-type"], "application/json");
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body,
        serde_json::json!({"errors": {"media": ["not found"]}})
    );
    let head = http.head(&missing).send().await.unwrap();
    assert_eq!(head.status().as_u16(), 404);
    assert!(head.bytes().await.unwrap().is_empty());

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
    let body: Value = refused.json().await.unwrap();
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

/// Users whose home is each of the stage's shards (`db-1`, `db-2`), counted on the servers
/// themselves.
async fn users_per_shard(net: &str) -> Vec<i64> {
    let mut counts = Vec::new();
    for host in [51, 52] {
        let url = format!("postgres://conduit@127.{net}.7.{host}:5432/conduit");
        let pool = sqlx::PgPool::connect(&url).await.unwrap();
        counts.push(
            sqlx::query_scalar(&format!("SELECT count(*) FROM users {AT_HOME}"))
                .fetch_one(&pool)
                .await
                .unwrap(),
        );
    }
    counts
}

/// The users whose home is the shard asked, of two: every shard holds every user's row, and a
/// user's home is their bucket's shard (the low byte of their id, mod 2), the one the shard's
/// `shard_identity` names.
const AT_HOME: &str = "WHERE (id & 255) % 2 = (SELECT shard_id FROM shard_identity)";

#[tokio::test(flavor = "multi_thread")]
async fn the_database_is_split_by_author_and_favorites_across_shards_count_exactly() {
    let net = common::net(160, 10);
    let lab = TestLab::new("archlab-stage7-shards", net.clone());
    let near = lab.up("7");
    let status = lab.status();
    let databases: Vec<&str> = status["services"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["role"] == "database")
        .filter_map(|s| s["host"].as_str())
        .collect();
    assert_eq!(databases, ["db-1", "db-2"], "{status}");

    // Users until both shards hold some (buckets are drawn at random), each with an article.
    let http = reqwest::Client::new();
    let mut tokens = Vec::new();
    let mut slugs = Vec::new();
    for n in 0..40 {
        let token = common::register(&http, &near, &format!("writer{n}")).await;
        let created: Value = http
            .post(format!("{near}/api/articles"))
            .header("authorization", format!("Token {token}"))
            .json(
                &serde_json::json!({"article": {"title": format!("sharded {n}"),
                "description": "d", "body": "b", "tagList": ["shards"]}}),
            )
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        slugs.push(created["article"]["slug"].as_str().unwrap().to_owned());
        tokens.push(token);
        let per_shard = users_per_shard(&net).await;
        if tokens.len() >= 4 && per_shard.iter().all(|n| *n >= 2) {
            break;
        }
    }
    // Everyone favorites every article: same-shard and cross-shard favorites alike.
    for token in &tokens {
        for slug in &slugs {
            let response = http
                .post(format!("{near}/api/articles/{slug}/favorite"))
                .header("authorization", format!("Token {token}"))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status().as_u16(), 200);
        }
    }
    // The list merged from both shards, read as a logged-in user (past the edge's cache).
    let list: serde_json::Value = http
        .get(format!("{near}/api/articles?tag=shards&limit=100"))
        .header("authorization", format!("Token {}", tokens[0]))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["articlesCount"], slugs.len(), "{list}");
    let articles = list["articles"].as_array().unwrap();
    assert_eq!(articles.len(), slugs.len());
    for article in articles {
        assert_eq!(article["favoritesCount"], tokens.len(), "{article}");
        assert_eq!(article["favorited"], true, "{article}");
    }
    // Newest first across shards: the titles come back in the reverse order of writing.
    let titles: Vec<&str> = articles
        .iter()
        .map(|a| a["title"].as_str().unwrap())
        .collect();
    let expected: Vec<String> = (0..slugs.len())
        .rev()
        .map(|n| format!("sharded {n}"))
        .collect();
    assert_eq!(titles, expected);

    // Shard 1's primary down: its authors' requests are refused with a 503 that names it (the
    // shard's watch, not a pool's timeout, which would say "busy"); shard 0's go on.
    let on_shard_1 = usernames_on(&net, 52).await;
    let writer = |n: usize| format!("writer{n}");
    let (home_1, home_0): (Vec<usize>, Vec<usize>) =
        (0..tokens.len()).partition(|n| on_shard_1.contains(&writer(*n)));
    let (one, zero) = (home_1[0], home_0[0]);
    lab.kill_host("db-2");
    let create = |token: &str, title: String| {
        http.post(format!("{near}/api/articles"))
            .header("authorization", format!("Token {token}"))
            .json(
                &serde_json::json!({"article": {"title": title, "description": "d", "body": "b"}}),
            )
            .send()
    };
    // Until every app host's watch has seen it (polls every 250 ms; each request goes to either
    // host): bounded, so a watch that never notices fails the test.
    let mut refused = Vec::new();
    for attempt in 0..200 {
        let response = create(&tokens[one], format!("refused {attempt}"))
            .await
            .unwrap();
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap();
        if status == 503 && body.to_string().contains("shard 1 is down") {
            refused.push(body);
            if refused.len() == 4 {
                break;
            }
        } else {
            refused.clear();
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(
        refused.len(),
        4,
        "shard 1's author never refused by name: {refused:?}"
    );
    assert_eq!(
        refused[0]["errors"]["database"][0],
        "shard 1 is down: its authors' data cannot be changed or read now, try again"
    );
    // Shard 0's author writes and favorites their own article as before.
    let response = create(&tokens[zero], "still written".into()).await.unwrap();
    assert_eq!(
        response.status().as_u16(),
        201,
        "{:?}",
        response.text().await
    );
    let unfavorite = |slug: &str, token: &str| {
        http.delete(format!("{near}/api/articles/{slug}/favorite"))
            .header("authorization", format!("Token {token}"))
            .send()
    };
    let response = unfavorite(&slugs[zero], &tokens[zero]).await.unwrap();
    assert_eq!(
        response.status().as_u16(),
        200,
        "{:?}",
        response.text().await
    );
    // A favorite that needs shard 1 (its author lives there) is refused before anything is
    // prepared, by name.
    let response = unfavorite(&slugs[one], &tokens[zero]).await.unwrap();
    assert_eq!(response.status().as_u16(), 503);
    assert!(response.text().await.unwrap().contains("shard 1 is down"));
}

/// The comment bodies of `comments` (a comments URL) as `token` (anonymous: `None`) sees them.
async fn comment_bodies(
    http: &reqwest::Client,
    comments: &str,
    token: Option<&str>,
) -> Vec<String> {
    let (status, body, _) = get(http, comments, token).await;
    assert_eq!(status, 200, "{comments}: {body}");
    body["comments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["body"].as_str().unwrap().to_owned())
        .collect()
}

/// Each shard with a replica of its own (`--replicas 2`), stage 5's routing on each: anonymous
/// reads of a shard's rows come from its replica; with that replica's replay paused, a writer
/// still sees their own comment whichever shard is their home (the position is kept per user
/// *and shard*, and a write raises it on the shard it touched), while an anonymous reader is
/// served the paused replica's older state; and with the shard's primary killed, its rows are
/// still read from its replica while its authors' writes are refused by name.
#[tokio::test(flavor = "multi_thread")]
async fn each_shard_reads_from_its_own_replica_and_writers_still_see_their_writes() {
    let net = common::net(160, 10);
    let lab = TestLab::new("archlab-stage7-replicas", net.clone());
    // One app host (its metrics are the stage's), and a lag bound so loose that a paused replica
    // stays in rotation: the positions, not the bound, must keep the writers' reads right.
    // Every request below goes to the gateway, past the edge: the endpoint is not needed.
    lab.up_with(
        "7",
        &[
            "--replicas",
            "2",
            "--app-hosts",
            "1",
            "--app-setting",
            "database.replica_max_lag_ms=600000",
            "--app-setting",
            "database.replica_max_lag_bytes=1000000000000",
        ],
    );
    let status = lab.status();
    let replicas: Vec<&str> = status["services"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["role"] == "replica")
        .filter_map(|s| s["host"].as_str())
        .collect();
    assert_eq!(replicas, ["replica-1", "replica-2"], "{status}");
    // Past the edge, whose copies would hide where a read went.
    let gateway = format!("http://127.{net}.7.1:8080");
    let app = format!("http://127.{net}.7.11:8080");
    let shard_1_replica = format!("127.{net}.7.62");
    let http = reqwest::Client::new();

    // A writer on each shard (homes are drawn at random), each with an article.
    let mut writers: [Option<(String, String)>; 2] = [None, None];
    for n in 0..40 {
        let name = format!("reader{n}");
        let token = common::register(&http, &gateway, &name).await;
        let home = usize::from(usernames_on(&net, 52).await.contains(&name));
        if writers[home].is_none() {
            let created: Value = http
                .post(format!("{gateway}/api/articles"))
                .header("authorization", format!("Token {token}"))
                .json(
                    &serde_json::json!({"article": {"title": format!("on shard {home}"),
                    "description": "d", "body": "b"}}),
                )
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let slug = created["article"]["slug"].as_str().unwrap().to_owned();
            writers[home] = Some((token, slug));
        }
        if writers.iter().all(Option::is_some) {
            break;
        }
    }
    let [Some((zero, _)), Some((one, slug_1))] = writers else {
        panic!("no writer on one of the shards after 40 registrations")
    };
    let comments = format!("{gateway}/api/articles/{slug_1}/comments");

    // Anonymous reads of shard 1's rows come from shard 1's replica once it has the article.
    wait_until("shard 1's replica shows the article", || async {
        get(&http, &comments, None).await.0 == 200
    })
    .await;
    assert!(
        reads_on(&http, &app, "shard-1-replica-1").await > 0,
        "anonymous reads of shard 1 go to its replica"
    );

    as_superuser(&shard_1_replica, "SELECT pg_wal_replay_pause()").await;
    // A comment by shard 1's author, and one by shard 0's (its row on shard 1, the article's
    // shard): each writer sees their own at once, though shard 1's replica has neither.
    for (token, text) in [(&one, "from the author"), (&zero, "from the other shard")] {
        let response = http
            .post(&comments)
            .header("authorization", format!("Token {token}"))
            .json(&serde_json::json!({"comment": {"body": text}}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 201);
        assert!(
            comment_bodies(&http, &comments, Some(token))
                .await
                .contains(&text.to_owned()),
            "{text}: its writer sees it"
        );
    }
    // An anonymous reader is served the paused replica: neither comment yet.
    assert!(
        comment_bodies(&http, &comments, None).await.is_empty(),
        "the replica is behind and in use"
    );
    as_superuser(&shard_1_replica, "SELECT pg_wal_replay_resume()").await;
    wait_until("the replica catches up", || async {
        comment_bodies(&http, &comments, None).await.len() == 2
    })
    .await;

    // Shard 1's primary down: its rows are read from its replica; its authors' writes are
    // refused by name once the replicas' poller has seen it.
    lab.kill_host("db-2");
    wait_until("shard 1's author refused by name", || async {
        let response = http
            .post(format!("{gateway}/api/articles"))
            .header("authorization", format!("Token {one}"))
            .json(&serde_json::json!({"article": {"title": "refused", "description": "d", "body": "b"}}))
            .send()
            .await
            .unwrap();
        response.status().as_u16() == 503
            && response.text().await.unwrap().contains("shard 1 is down")
    })
    .await;
    assert_eq!(comment_bodies(&http, &comments, None).await.len(), 2);
    assert_eq!(comment_bodies(&http, &comments, Some(&zero)).await.len(), 2);
    let response = http
        .post(format!("{gateway}/api/articles"))
        .header("authorization", format!("Token {zero}"))
        .json(
            &serde_json::json!({"article": {"title": "written", "description": "d", "body": "b"}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status().as_u16(),
        201,
        "shard 0's author still writes"
    );
}

/// The usernames of the users whose home is the shard on host `host` (51: shard 0, 52: shard 1).
async fn usernames_on(net: &str, host: u8) -> Vec<String> {
    let url = format!("postgres://conduit@127.{net}.7.{host}:5432/conduit");
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    sqlx::query_scalar(&format!("SELECT username FROM users {AT_HOME}"))
        .fetch_all(&pool)
        .await
        .unwrap()
}

/// A short drill on stage 7 (fresh, and down at the end): the drill's report.
fn drill7(net: String, args: &[&str]) -> Value {
    let lab = TestLab::new("archlab-drill7", net);
    let out_file = lab.state.path().join("drill.json").display().to_string();
    let quick = ["--quick", "--workload", "write-heavy", "--rate", "40"];
    let (ok, text) = lab.archlab(&[&["drill", "7"], args, &quick, &["--out", &out_file]].concat());
    assert!(ok, "{text}");
    serde_json::from_str(&std::fs::read_to_string(out_file).unwrap()).unwrap()
}

/// A two-phase commit counter of the report, summed over the app hosts.
fn two_phase(report: &Value, name: &str) -> f64 {
    report["drill"]["shards"]["two_phase"][name]
        .as_f64()
        .unwrap_or(0.0)
}

/// The coordinator (an app host, the `conduit-drills` build) crashes at each of its four fault
/// points under the write-heavy load: the crash leaves branches in doubt, recovery finishes them
/// the way the point requires (rolled back before the decision, committed after it), nothing
/// stays prepared, every article's count equals its favorite rows on both shards, and no
/// acknowledged write is lost.
///
/// With two shards a global transaction has one prepared branch: the decider commits its own
/// work with the decision. So a crash after the first COMMIT PREPARED leaves nothing in doubt
/// here (it was the last); with three shards it leaves one, which the coordinator's unit tests
/// show (`cargo test -p conduit --lib two_phase`).
#[test]
fn a_coordinator_crash_at_any_point_is_finished_by_recovery_and_loses_nothing() {
    for (point, outcome) in [
        ("after-first-prepare", Some("rollback")),
        ("after-all-prepares", Some("rollback")),
        ("after-decision", Some("commit")),
        ("after-first-commit-prepared", None),
    ] {
        let report = drill7(
            common::net(170, 10),
            &["coordinator-crash", "--service", "app", "--point", point],
        );
        let drill = &report["drill"];
        assert!(drill["crashed_at_s"].is_number(), "{point}: {drill}");
        assert_eq!(
            report["checks"]["lost_writes"], 0,
            "{point}: {}",
            report["checks"]
        );
        let shards = &drill["shards"];
        assert_eq!(shards["shards"], 2, "{point}: {shards}");
        let left_by_crash = shards["in_doubt_after_crash"].as_u64().unwrap();
        assert_eq!(
            left_by_crash >= 1,
            outcome.is_some(),
            "{point}: what the crash left prepared: {shards}"
        );
        assert_eq!(shards["in_doubt_left"], 0, "{point}: {shards}");
        assert!(
            shards["articles"].as_u64().unwrap() > 0,
            "{point}: {shards}"
        );
        assert_eq!(shards["favorite_count_mismatches"], 0, "{point}: {shards}");
        assert!(
            two_phase(&report, "two_phase_transactions_total{outcome=\"commit\"}") > 0.0,
            "{point}: the load crossed shards: {shards}"
        );
        if let Some(outcome) = outcome {
            let recovered = format!("two_phase_recovered_branches_total{{outcome=\"{outcome}\"}}");
            assert!(
                two_phase(&report, &recovered) >= 1.0,
                "{point}: recovery finished the crash's branches by {outcome}: {shards}"
            );
        }
    }
}

/// A participant's PostgreSQL (shard 1's) killed under the write-heavy load and started again:
/// prepared branches survive its restart, recovery finishes whatever was in flight, counts stay
/// exact and nothing acknowledged is lost.
#[test]
fn a_participant_killed_and_restarted_loses_nothing_and_leaves_no_count_wrong() {
    let report = drill7(
        common::net(170, 10),
        &["kill", "--service", "database", "--host", "db-2"],
    );
    assert_eq!(report["checks"]["lost_writes"], 0, "{}", report["checks"]);
    let shards = &report["drill"]["shards"];
    assert_eq!(shards["in_doubt_left"], 0, "{shards}");
    assert_eq!(shards["favorite_count_mismatches"], 0, "{shards}");
    assert!(
        report["counts"]["failed"].as_u64().unwrap() > 0,
        "the shard was down for a while: {}",
        report["counts"]
    );
}
