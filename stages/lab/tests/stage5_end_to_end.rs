//! Stage 5 end to end: a primary with streaming replicas, reads split from writes.
//!
//! - With replay paused on the replica, a writer still sees their own writes, an anonymous reader
//!   is served the replica's older state (so the replica really is in use), and no stale entry
//!   reaches the cache; once replay resumes, the replica catches up.
//! - A replica killed under reads: every read is answered (retried on the primary), and the
//!   replica rejoins when it is back.
//! - Short drills: the primary killed (reads go on, writes fail fast, nothing lost), and a
//!   replica lagging by an apply delay (no read-your-writes or monotonic-read violation).

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use common::{as_superuser, get, reads_matching, reads_on, wait_until, TestLab};
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread")]
async fn replicas_serve_reads_yet_writers_see_their_writes_and_the_cache_stays_fresh() {
    let net = common::net(110, 20);
    let lab = TestLab::new("archlab-stage5", net.clone());
    // One app host and one replica, so every anonymous read goes to that replica (the primary
    // takes reads only when no replica can), and a bound on lag so loose that a paused replica
    // stays in rotation: the session guard, not the lag bound, must keep the writer's reads right.
    let endpoint = lab.up_with(
        "5",
        &[
            "--app-hosts",
            "1",
            "--replicas",
            "1",
            "--app-setting",
            "database.replica_max_lag_ms=600000",
            "--app-setting",
            "database.replica_max_lag_bytes=1000000000000",
        ],
    );
    let replica = format!("127.{net}.5.21");
    let app = format!("http://127.{net}.5.11:8080");
    let http = reqwest::Client::new();
    let ann = common::register(&http, &endpoint, "ann").await;

    // An article, visible on the replica before replay is paused.
    let created: Value = http
        .post(format!("{endpoint}/api/articles"))
        .header("authorization", format!("Token {ann}"))
        .json(&json!({"article": {"title": "Replicas", "description": "d", "body": "b", "tagList": []}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let slug = created["article"]["slug"].as_str().unwrap().to_owned();
    let article = format!("{endpoint}/api/articles/{slug}");
    let comments = format!("{article}/comments");
    // Comments are not cached: an anonymous reader's come from the replica, which answers 404
    // until it has replayed the article.
    wait_until("the replica shows the article", || async {
        get(&http, &comments, None).await.0 == 200
    })
    .await;
    assert!(
        reads_on(&http, &app, "replica-1").await > 0,
        "anonymous reads go to the replica"
    );

    as_superuser(&replica, "SELECT pg_wal_replay_pause()").await;

    // A comment: its writer sees it at once; an anonymous reader, served by the paused replica,
    // does not (which shows the replica is behind and in use).
    let response = http
        .post(&comments)
        .header("authorization", format!("Token {ann}"))
        .json(&json!({"comment": {"body": "written while replay is paused"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let position_cookie = response
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("archlab-position="))
        .and_then(|v| v.split(';').next())
        .expect("a write gives the client its position in a cookie")
        .to_owned();
    for _ in 0..5 {
        let (status, body, _) = get(&http, &comments, Some(&ann)).await;
        assert_eq!(status, 200);
        assert_eq!(body["comments"].as_array().unwrap().len(), 1, "{body}");
    }
    let (_, body, _) = get(&http, &comments, None).await;
    assert_eq!(
        body["comments"].as_array().unwrap().len(),
        0,
        "the paused replica serves anonymous readers: {body}"
    );
    // The writer's client reading without its token, but with the cookie its write gave it,
    // sees the comment (its reads go past its own position); a cookie the app did not sign is
    // ignored, and such a reader is served by the paused replica again.
    let anonymous_with = |cookie: String| {
        let (http, comments) = (&http, &comments);
        async move {
            let response = http
                .get(comments)
                .header("cookie", cookie)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
            let body: Value = response.json().await.unwrap();
            body["comments"].as_array().unwrap().len()
        }
    };
    assert_eq!(anonymous_with(position_cookie.clone()).await, 1);
    assert_eq!(
        anonymous_with("archlab-position=ffffffffffffffff".to_owned()).await,
        0
    );

    // A favorite changes the cached article. Its next fill must come from the primary: the
    // entry shows the favorite, to anonymous readers too, and stays right on the next hit.
    let favorited: Value = http
        .post(format!("{article}/favorite"))
        .header("authorization", format!("Token {ann}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(favorited["article"]["favoritesCount"], 1, "{favorited}");
    let (_, filled, first) = get(&http, &article, None).await;
    let (_, hit, second) = get(&http, &article, None).await;
    assert_eq!(filled["article"]["favoritesCount"], 1, "{filled}");
    assert_eq!(
        hit["article"]["favoritesCount"], 1,
        "no stale entry cached: {hit}"
    );
    assert_eq!((first.as_str(), second.as_str()), ("miss", "hit"));
    let (_, mine, _) = get(&http, &article, Some(&ann)).await;
    assert_eq!(mine["article"]["favorited"], true, "{mine}");

    // Replay resumes: the replica catches up and shows the comment to everyone.
    as_superuser(&replica, "SELECT pg_wal_replay_resume()").await;
    wait_until("the replica catches up", || async {
        let (_, body, _) = get(&http, &comments, None).await;
        body["comments"].as_array().is_some_and(|c| c.len() == 1)
    })
    .await;

    // Keys the cache has never held fill from the replica (in rotation, so at most a second
    // behind, far less than an entry or a tombstone lives), not from the primary.
    let replica_fills = "target=\"replica-1\",reason=\"cache_fill\"";
    let before = reads_matching(&http, &app, replica_fills).await;
    let mut n = 0;
    wait_until("a cache fill reads the replica", || {
        n += 1;
        let profile = format!("{endpoint}/api/profiles/nobody-{n}");
        let (http, app) = (&http, &app);
        async move {
            // A busy machine can make one Redis call miss its bound ("bypass", nothing filled):
            // the next name simply tries again.
            let (status, _, _) = get(http, &profile, None).await;
            assert_eq!(status, 404);
            reads_matching(http, app, replica_fills).await > before
        }
    })
    .await;

    // The replica killed: reads are still answered (a read that fails on it runs again on the
    // primary, and the poller takes it out), and it rejoins once the lab starts it again.
    let status = lab.status();
    let pid = status["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["role"] == "replica")
        .and_then(|s| s["pid"].as_i64())
        .unwrap();
    let killed = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    for _ in 0..50 {
        let (status, body, _) = get(&http, &comments, None).await;
        let logs = || {
            ["gateway/gateway/gateway.log", "app-1/app/app.log"]
                .map(|log| {
                    let path = lab.state.path().join("05-replicas").join(log);
                    std::fs::read_to_string(path).unwrap_or_default()
                })
                .join("\n")
        };
        assert_eq!(status, 200, "{body}\n{}", logs());
    }
    lab.up("5");
    let before = reads_on(&http, &app, "replica-1").await;
    wait_until("the replica takes reads again", || async {
        let _ = get(&http, &comments, None).await;
        reads_on(&http, &app, "replica-1").await > before
    })
    .await;
}

/// A short drill on stage 5 (which brings the stage up fresh, and down at the end); returns the
/// lab, its state kept, and the drill's report.
fn drill(net: String, args: &[&str]) -> (TestLab, Value) {
    let lab = TestLab::new("archlab-drill5", net);
    let out_file = lab.state.path().join("drill.json").display().to_string();
    let quick = ["--quick", "--out", out_file.as_str()];
    let (ok, text) = lab.archlab(&[&["drill", "5"], args, &quick].concat());
    assert!(ok, "{text}");
    let report = serde_json::from_str(&std::fs::read_to_string(out_file).unwrap()).unwrap();
    (lab, report)
}

#[test]
fn the_primary_killed_reads_go_on_writes_fail_fast_and_nothing_is_lost() {
    let (lab, report) = drill(
        common::net(130, 10),
        &["kill", "--service", "database", "--rate", "100"],
    );
    assert_eq!(report["checks"]["lost_writes"], 0, "{}", report["checks"]);
    let ops = report["operations"].as_object().unwrap();
    let writes = [
        "create_article",
        "create_comment",
        "favorite",
        "follow",
        "upload_media",
    ];
    // Reads the harness makes as a logged-in user: one whose last write reached the primary but
    // not yet a replica when it died is refused (503) rather than shown a state without it.
    let logged_in_reads = ["feed", "read_article"];
    let mut refused = 0;
    for (name, c) in ops {
        // Nothing hangs: a request to a stage without its primary is answered, never left unknown.
        assert_eq!(c["unknown"], 0, "{name}: {c}");
        if writes.contains(&name.as_str()) {
            refused += c["failed"].as_u64().unwrap();
        } else if !logged_in_reads.contains(&name.as_str()) {
            assert_eq!(
                c["failed"], 0,
                "reads are served by the replicas: {name}: {c}"
            );
        }
    }
    assert!(
        refused > 0,
        "writes fail while the primary is down: {ops:?}"
    );
    // The primary back, writes resume. The drill restarted it, but whether writes resumed within
    // its short run depends on how busy the machine is; that they do, once the primary has gone
    // through crash recovery, does not. So: the stage up again from the drill's state (the
    // primary's data dir as the kill left it) and a write.
    let endpoint = lab.up("5");
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let http = reqwest::Client::new();
        let mut n = 0;
        wait_until("writes resume after the primary is back", || {
            n += 1;
            let name = format!("after-{n}");
            let request = http
                .post(format!("{endpoint}/api/users"))
                .json(&json!({"user": {"username": name, "email": format!("{name}@example.com"), "password": "password-after"}}))
                .send();
            async move { request.await.is_ok_and(|r| r.status() == 201) }
        })
        .await;
    });
}

#[test]
fn a_lagging_replica_breaks_no_session_guarantee() {
    let (_lab, report) = drill(
        common::net(140, 10),
        &[
            "apply-delay",
            "--service",
            "replica",
            "--workload",
            "write-heavy",
            "--rate",
            "60",
        ],
    );
    let k = &report["checks"];
    assert!(k["ryw_checks"].as_u64().unwrap() > 0, "{k}");
    assert!(k["monotonic_checks"].as_u64().unwrap() > 0, "{k}");
    assert_eq!(k["ryw_violations"], 0, "{k}");
    assert_eq!(k["monotonic_violations"], 0, "{k}");
    assert_eq!(k["lost_writes"], 0, "{k}");
    assert_eq!(
        report["counts"]["failed"], 0,
        "{}\n{}",
        report["counts"], report["operations"]
    );
}

/// Seeding ends with a checkpoint on the primary and a restartpoint on each replica
/// (`Lab::checkpoint_after_seeding`): without it a replica keeps every page the data set changed
/// dirty until the primary's next timed checkpoint, and a promotion or a measurement minutes
/// later pays for writing them out.
#[tokio::test(flavor = "multi_thread")]
async fn seeding_ends_with_the_replica_checkpointed() {
    let net = common::net(150, 10);
    let lab = TestLab::new("archlab-stage5-seed", net.clone());
    lab.up_with("5", &["--app-hosts", "1", "--replicas", "1"]);
    let replica = format!("127.{net}.5.21");
    let before = last_checkpoint(&replica).await;
    let (ok, out) = lab.archlab(&[
        "seed",
        "5",
        "--users",
        "20",
        "--articles",
        "100",
        "--images",
        "10",
    ]);
    assert!(ok, "{out}");
    let after = last_checkpoint(&replica).await;
    assert!(
        after > before,
        "the replica made no restartpoint after seeding (WAL position {before} -> {after})"
    );
}

/// Where the server at `address` made its last checkpoint (a replica: restartpoint).
async fn last_checkpoint(address: &str) -> i64 {
    use sqlx::Row;
    let mut conn = common::superuser(address).await;
    sqlx::query("SELECT (checkpoint_lsn - '0/0'::pg_lsn)::int8 FROM pg_control_checkpoint()")
        .fetch_one(&mut conn)
        .await
        .unwrap()
        .get(0)
}
