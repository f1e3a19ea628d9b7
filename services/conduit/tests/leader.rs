//! Stage 8 at the app's database seam: the primary pool follows the leader Patroni names, over
//! real Patroni, PostgreSQL and etcd. The primary host crashes; while there is no leader, writes
//! are refused with a 503 (never a 500, never a hang); once the replica is promoted, the same
//! `Database`, with nothing restarted, writes there. A planned switchover back is followed too.
//! And a primary whose Patroni alone is silent has its writes refused (a 503): the fence. And the
//! replica poller, which stage 8 points at the primary too, keeps one connection to it.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::time::Duration;

use archlab::{
    consensus::{ConsensusStore, StoreKind},
    etcd::TestEtcd,
    patroni::{PatroniCluster, PatroniNode, Replication},
    postgres::{free_port, PostgresServer},
};
use conduit::{
    db::Database,
    error::ApiError,
    metrics::DbMetrics,
    settings::{DatabaseSettings, LeaderCandidate},
};

/// Bounds every wait: a failover takes about the leader TTL (10 s); never reached on a healthy
/// cluster, however busy the machine.
const PATIENCE: Duration = Duration::from_secs(120);

/// Runs `sql` on the primary through the seam until it succeeds; every failure on the way must be
/// a 503 (the primary refused at once, moving, or unreachable). Returns how many were refused.
async fn write_through(db: &Database, sql: &str) -> usize {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let mut refused = 0;
    loop {
        let outcome = match db.write() {
            Ok(pool) => sqlx::raw_sql(sql)
                .execute(pool)
                .await
                .map(drop)
                .map_err(ApiError::from),
            Err(e) => Err(e),
        };
        match outcome {
            Ok(()) => return refused,
            Err(e @ ApiError::DatabaseUnavailable(_)) => {
                refused += 1;
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "never written: {sql}: {e}"
                );
            }
            Err(e) => panic!("{sql}: not a 503: {e:?}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Rows of `t` on `node`'s server, read directly (`None` if it cannot answer yet).
async fn count_on(node: &PatroniNode) -> Option<i64> {
    use sqlx::Connection;
    let options = node.server.connect_options("postgres", "postgres");
    let mut conn = sqlx::PgConnection::connect_with(&options).await.ok()?;
    sqlx::query_scalar("SELECT count(*) FROM t")
        .fetch_one(&mut conn)
        .await
        .ok()
}

async fn wait_for_leader(db: &Database, name: &str) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while db.leader() != Some(name) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the seam never followed {name} (it follows {:?})",
            db.leader()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn writes_follow_the_primary_through_a_crash_and_a_switchover_without_a_restart() {
    let etcd = TestEtcd::start().await.unwrap();
    let dir = tempfile::Builder::new()
        .prefix("conduit-leader-test")
        .tempdir()
        .unwrap();
    let nodes: Vec<PatroniNode> = (1..=2)
        .map(|n| PatroniNode {
            name: format!("db_{n}"),
            server: PostgresServer::new(
                dir.path().join(format!("db-{n}")),
                "127.0.0.1",
                free_port().unwrap(),
            ),
            rest_port: free_port().unwrap(),
        })
        .collect();
    let cluster = PatroniCluster {
        scope: format!("conduit-test-{}", std::process::id()),
        nodes,
        store: ConsensusStore {
            kind: StoreKind::Etcd,
            endpoints: etcd.cluster.endpoints(),
        },
        replication: Replication::Async,
        password: "test".into(),
    };
    let _stop = CrashOnDrop(&cluster);
    cluster.start().await.unwrap();
    let [a, b] = [&cluster.nodes[0], &cluster.nodes[1]];
    let name = |n: &PatroniNode| format!("{}:{}", n.server.address, n.server.port);

    let settings = DatabaseSettings {
        url: a.server.url("postgres", "postgres").into(),
        leader_candidates: cluster
            .nodes
            .iter()
            .map(|n| LeaderCandidate {
                url: n.server.url("postgres", "postgres").into(),
                patroni: n.rest_url(),
            })
            .collect(),
        ..DatabaseSettings::default()
    };
    let db = Database::connect_lazy(&settings, None, DbMetrics::default()).unwrap();
    db.start_polling();
    wait_for_leader(&db, &name(a)).await;
    write_through(
        &db,
        "CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1)",
    )
    .await;
    // Replicated before the crash (asynchronous replication may lose what is not: stage 8's
    // drills count that; this test is about where writes go).
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while count_on(b).await != Some(1) {
        assert!(tokio::time::Instant::now() < deadline, "never replicated");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The primary's Patroni alone stops answering (frozen; its PostgreSQL runs on), for longer
    // than the seam stays patient with a silent Patroni and less than the leader key lives (its
    // last renewal was at most a cycle before, 2 s; the key lives 10 s). The server would still
    // take writes, but a Patroni that cannot answer cannot renew its key or demote its server
    // either: the seam refuses writes (a 503) rather than risk a second primary's lost writes.
    let patroni = a.running().unwrap().expect("a's Patroni runs");
    let cmdline = std::fs::read_to_string(format!("/proc/{}/cmdline", patroni.pid)).unwrap();
    assert!(
        cmdline.contains("patroni"),
        "pid {} is not Patroni: {cmdline:?}",
        patroni.pid
    );
    let frozen = Frozen::stop(patroni.pid);
    tokio::time::sleep(PATRONI_SILENT).await;
    let during = match db.write() {
        Ok(pool) => sqlx::raw_sql("INSERT INTO t VALUES (10)")
            .execute(pool)
            .await
            .map(drop)
            .map_err(ApiError::from),
        Err(e) => Err(e),
    };
    drop(frozen);
    assert!(
        matches!(during, Err(ApiError::DatabaseUnavailable(_))),
        "a write was not refused while the primary's Patroni was silent: {during:?}"
    );
    // Patroni answers again: so does the seam, on the same primary.
    write_through(&db, "INSERT INTO t VALUES (10)").await;
    assert_eq!(db.leader(), Some(name(a).as_str()));
    write_through(&db, "DELETE FROM t WHERE id = 10").await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while count_on(b).await != Some(1) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the delete never replicated"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The primary's host crashes; the seam is not told, it finds out from Patroni.
    let crash_at = cluster.primary().await.unwrap();
    assert_eq!(crash_at, 0);
    a.crash().unwrap();
    let refused = write_through(&db, "INSERT INTO t VALUES (2)").await;
    assert!(refused > 0, "a write succeeded with no primary to take it");
    assert_eq!(db.leader(), Some(name(b).as_str()));
    assert_eq!(count_on(b).await, Some(2), "the new primary has both rows");

    // The old primary comes back as a replica, and a planned switchover moves the primary to it:
    // the seam follows again, and the connections it had to b are retired.
    cluster.restart(0).await.unwrap();
    cluster.switchover(1, 0).await.unwrap();
    wait_for_leader(&db, &name(a)).await;
    write_through(&db, "INSERT INTO t VALUES (3)").await;
    assert_eq!(
        count_on(a).await,
        Some(3),
        "the write went to the new primary"
    );
}

/// How long the primary's Patroni is kept silent: past the seam's patience with a silent Patroni
/// (3 s, `db::leader`'s `DOUBT_BOUND`, plus a poll's 1 s timeout), within the leader key's life
/// (so no failover happens meanwhile).
const PATRONI_SILENT: Duration = Duration::from_secs(5);

/// A process stopped with SIGSTOP, continued when dropped (passed or failed).
struct Frozen(i32);

impl Frozen {
    fn stop(pid: i32) -> Self {
        assert!(signal(pid, "-STOP"), "kill -STOP {pid}");
        Self(pid)
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        // Not asserted: a panic in a drop while the test unwinds would abort it.
        signal(self.0, "-CONT");
    }
}

/// Sends `which` (`-STOP`, `-CONT`) to `pid` with kill(1); whether it was delivered.
fn signal(pid: i32, which: &str) -> bool {
    std::process::Command::new("kill")
        .args([which, &pid.to_string()])
        .status()
        .is_ok_and(|s| s.success())
}

/// Kills the cluster at the end of the test, passed or failed (before etcd goes).
struct CrashOnDrop<'a>(&'a PatroniCluster);

impl Drop for CrashOnDrop<'_> {
    fn drop(&mut self) {
        for node in &self.0.nodes {
            let _ = node.crash();
        }
    }
}

/// Stage 8 polls every database host as a replica, the primary among them (which host is which
/// changes with each failover). The primary answers a replica's poll with no row, and the
/// poller must keep its connection all the same: until this was found it dropped it and opened
/// a new one at every poll, a new server process every 50 ms from each app host, which stage
/// 8's primary paid for in every write (stages/08-consensus/README.md, "A new server process
/// every poll"). Seen from the server: one poller backend answering two polls.
#[tokio::test]
async fn the_replica_poller_keeps_its_connection_to_a_server_that_is_no_replica() {
    use sqlx::{Connection, Row};
    let app = common::TestApp::start_with(|s| {
        s.database.replicas = vec![s.database.url.clone()];
    })
    .await;
    let mut server = sqlx::PgConnection::connect(app.settings.database.url.expose())
        .await
        .unwrap();
    // The query only a replica's poll sends (the primary's own poll asks another).
    let polls = "SELECT pid, extract(epoch FROM query_start)::float8 AS at FROM pg_stat_activity \
                 WHERE application_name = 'conduit-lag-poller' \
                 AND query LIKE '%pg_last_wal_replay_lsn%' AND query_start IS NOT NULL";
    let mut first_seen = std::collections::HashMap::<i32, f64>::new();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let rows = sqlx::query(polls).fetch_all(&mut server).await.unwrap();
        let again = rows.iter().any(|row| {
            let (pid, at): (i32, f64) = (row.get("pid"), row.get("at"));
            *first_seen.entry(pid).or_insert(at) < at
        });
        if again {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no poller connection answered a second poll: {} connections seen, one poll each",
            first_seen.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
