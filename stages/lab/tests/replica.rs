//! A streaming replica end to end (stage 5's building block): copied from a real primary with
//! `pg_basebackup`, it replays what the primary commits, serves it, refuses writes, catches up
//! after being down (its slot kept the WAL), and its slot goes when it is deleted.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::time::{Duration, Instant};

use archlab::{
    postgres::{free_port, PostgresServer, TestPostgres},
    replica::{replay_lag, ReplicaServer},
};
use sqlx::{Connection, PgConnection};

/// Bounds every wait for replay: never reached on a healthy pair, however busy the machine.
const PATIENCE: Duration = Duration::from_secs(60);

async fn connect(server: &PostgresServer) -> PgConnection {
    PgConnection::connect_with(&server.connect_options("postgres", "conduit"))
        .await
        .unwrap()
}

/// The primary's WAL position after a commit there: the insert position, which is past the
/// commit record even where, as on test servers, `synchronous_commit` is off and the record may
/// not be written out yet (`pg_current_wal_lsn()`, the write position, can then be before it).
async fn commit_lsn(primary: &mut PgConnection, sql: &str) -> String {
    sqlx::raw_sql(sql).execute(&mut *primary).await.unwrap();
    sqlx::query_scalar("SELECT pg_current_wal_insert_lsn()::text")
        .fetch_one(&mut *primary)
        .await
        .unwrap()
}

/// Rows of `t` on `server`.
async fn rows(server: &PostgresServer) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM t")
        .fetch_one(&mut connect(server).await)
        .await
        .unwrap()
}

/// Waits until `replica` has replayed the WAL up to `lsn`.
async fn wait_replayed(replica: &PostgresServer, lsn: &str) {
    let start = Instant::now();
    loop {
        let mut conn = connect(replica).await;
        let done: bool = sqlx::query_scalar("SELECT pg_last_wal_replay_lsn() >= $1::pg_lsn")
            .bind(lsn)
            .fetch_one(&mut conn)
            .await
            .unwrap();
        if done {
            return;
        }
        assert!(start.elapsed() < PATIENCE, "replica never replayed {lsn}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_replica_follows_its_primary_serves_reads_refuses_writes_and_catches_up() {
    let primary = TestPostgres::start().await.unwrap();
    let dir = common::state_dir("archlab-replica");
    let replica = ReplicaServer {
        server: PostgresServer::new(dir.path().join("r1"), "127.0.0.1", free_port().unwrap()),
        primary: primary.server.clone(),
        name: "r1".into(),
    };
    replica.start().await.unwrap();

    // What the primary commits, the replica serves once it has replayed it.
    let mut p = connect(&primary.server).await;
    let lsn = commit_lsn(&mut p, "CREATE TABLE t (id int); INSERT INTO t VALUES (1)").await;
    wait_replayed(&replica.server, &lsn).await;
    assert_eq!(rows(&replica.server).await, 1);
    let mut r = connect(&replica.server).await;

    // It refuses writes.
    let refused = sqlx::query("INSERT INTO t VALUES (2)")
        .execute(&mut r)
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("read-only"), "{refused}");

    // The primary sees it by name, streaming; the lag is measurable.
    let state: String =
        sqlx::query_scalar("SELECT state FROM pg_stat_replication WHERE application_name = 'r1'")
            .fetch_one(&mut p)
            .await
            .unwrap();
    assert_eq!(state, "streaming");
    replay_lag(&primary.server, &replica.server).await.unwrap();

    // Down while the primary writes: the slot keeps the WAL, and it catches up when back.
    drop(r);
    replica.stop().unwrap();
    let lsn = commit_lsn(&mut p, "INSERT INTO t SELECT generate_series(2, 1000)").await;
    replica.start().await.unwrap();
    wait_replayed(&replica.server, &lsn).await;
    assert_eq!(rows(&replica.server).await, 1000);
    // Caught up: at most what the idle primary wrote since (a checkpoint, autovacuum's records).
    let lag = replay_lag(&primary.server, &replica.server).await.unwrap();
    assert!(lag.bytes < 1 << 20, "{lag:?}");

    // Deleted: its slot goes too, so the primary stops keeping WAL for it.
    replica.delete().await.unwrap();
    let slots: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_replication_slots")
        .fetch_one(&mut p)
        .await
        .unwrap();
    assert_eq!(slots, 0);
}
