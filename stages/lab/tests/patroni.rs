//! Stage 8's database hosts end to end: two real PostgreSQL servers run by Patroni over a real
//! three-member etcd, and again over a real three-member ZooKeeper. The first becomes the primary
//! (its leader key in the store names it) and the second its replica; a planned
//! switchover moves the primary with every commit kept; the primary host crashes and the replica
//! takes over once the leader key expires, on a new timeline, taking writes; the crashed host comes
//! back, rewinds to the new history and follows as a replica; synchronous replication switched on
//! in the running cluster makes it the synchronous standby.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::Duration;

use archlab::{
    consensus::{ConsensusCluster, ConsensusStore, StoreKind},
    etcd::TestEtcd,
    partition::{Cut, CutHost, CutKind},
    patroni::{
        streams_to, PatroniCluster, PatroniNode, Replication, LEADER_TTL_SECS, SERVER_NICENESS,
    },
    postgres::{free_port, host_user, PostgresServer},
    zookeeper::TestZooKeeper,
};
use sqlx::{Connection, PgConnection};

/// Bounds every wait: a failover takes about the leader TTL (10 s), a rejoin a few seconds;
/// never reached on a healthy cluster, however busy the machine.
const PATIENCE: Duration = Duration::from_secs(120);

async fn connect(node: &PatroniNode) -> PgConnection {
    PgConnection::connect_with(&node.server.connect_options("postgres", "postgres"))
        .await
        .unwrap()
}

async fn rows(node: &PatroniNode) -> Vec<i32> {
    sqlx::query_scalar("SELECT id FROM t ORDER BY id")
        .fetch_all(&mut connect(node).await)
        .await
        .unwrap()
}

/// A process's nice value, from `/proc/<pid>/stat` (the 19th field, after the parenthesised name).
fn niceness(pid: i32) -> i64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after_name = &stat[stat.rfind(')').unwrap() + 2..];
    after_name.split(' ').nth(16).unwrap().parse().unwrap()
}

/// Waits until `node` (a replica) has replayed everything up to the primary's position now.
async fn wait_replayed(primary: &PatroniNode, replica: &PatroniNode) {
    let lsn: String = sqlx::query_scalar("SELECT pg_current_wal_insert_lsn()::text")
        .fetch_one(&mut connect(primary).await)
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let done: bool = sqlx::query_scalar("SELECT pg_last_wal_replay_lsn() >= $1::pg_lsn")
            .bind(&lsn)
            .fetch_one(&mut connect(replica).await)
            .await
            .unwrap_or(false);
        if done {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} never replayed {lsn}",
            replica.name
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until `primary` streams WAL to `replica`.
async fn wait_streaming(primary: &PatroniNode, replica: &PatroniNode) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !streams_to(primary, replica).await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} never streamed to {}",
            primary.name,
            replica.name
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs `sql` on `node`, again while its server still refuses writes as a standby finishing its
/// promotion (SQLSTATE 25006, read-only transaction); any other error fails the test.
async fn write_when_promoted(node: &PatroniNode, sql: &str) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        match sqlx::raw_sql(sql).execute(&mut connect(node).await).await {
            Ok(_) => return,
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("25006") => {}
            Err(e) => panic!("{}: {sql}: {e}", node.name),
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} never took writes",
            node.name
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn over_etcd_the_primary_moves_on_switchover_and_on_crash_and_the_old_one_follows() {
    let etcd = TestEtcd::start().await.unwrap();
    let store = ConsensusStore {
        kind: StoreKind::Etcd,
        endpoints: etcd.cluster.endpoints(),
    };
    switchover_crash_and_rejoin(store, &ConsensusCluster::Etcd(etcd.cluster.clone())).await;
}

#[tokio::test]
async fn over_zookeeper_the_primary_moves_on_switchover_and_on_crash_and_the_old_one_follows() {
    let zookeeper = TestZooKeeper::start().await.unwrap();
    let store = ConsensusStore {
        kind: StoreKind::ZooKeeper,
        endpoints: zookeeper.ensemble.endpoints(),
    };
    switchover_crash_and_rejoin(
        store,
        &ConsensusCluster::ZooKeeper(zookeeper.ensemble.clone()),
    )
    .await;
}

/// Two Patroni nodes, `<prefix>_1` and `<prefix>_2` (a node's name is also its OS user), in
/// folders under `dir`, node `n` listening on `address(n)`, asynchronous, over `store`.
fn two_node_cluster(
    dir: &tempfile::TempDir,
    prefix: &str,
    address: impl Fn(u8) -> String,
    store: ConsensusStore,
) -> PatroniCluster {
    let nodes = (1..=2)
        .map(|n| PatroniNode {
            name: format!("{prefix}_{n}"),
            server: PostgresServer::new(
                dir.path().join(format!("{prefix}-{n}")),
                address(n),
                free_port().unwrap(),
            ),
            rest_port: free_port().unwrap(),
        })
        .collect();
    PatroniCluster {
        scope: format!("{prefix}-{}", std::process::id()),
        nodes,
        store,
        replication: Replication::Async,
        password: "test".into(),
    }
}

/// The same story over either store: Patroni's behaviour does not depend on which one decides.
/// The leader key the drills watch is read in the store too.
async fn switchover_crash_and_rejoin(store: ConsensusStore, consensus: &ConsensusCluster) {
    let dir = tempfile::Builder::new()
        .prefix("archlab-patroni-test")
        .tempdir()
        .unwrap();
    let cluster = two_node_cluster(&dir, "db", |_| "127.0.0.1".into(), store);
    let _stop = StopOnDrop(&cluster);
    cluster.start().await.unwrap();
    let [a, b] = [&cluster.nodes[0], &cluster.nodes[1]];
    assert_eq!(
        cluster.primary().await,
        Some(0),
        "the first node bootstraps and leads"
    );
    assert!(b.is_replica().await);
    let key_names = |name: &str| {
        let (key, name) = (cluster.leader_key(), name.to_owned());
        async move { assert_eq!(consensus.get(&key).await, Some(Some(name)), "{key}") }
    };
    key_names(&a.name).await;
    // The server runs below its Patroni's priority, so that the fence never starves behind it.
    let server = a.postmaster().unwrap().expect("a's server runs");
    let patroni = a.running().unwrap().expect("a's Patroni runs");
    assert_eq!(niceness(server.pid), i64::from(SERVER_NICENESS));
    assert_eq!(niceness(patroni.pid), 0);
    let first_timeline = a.state().await.unwrap().timeline.unwrap();

    sqlx::raw_sql("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1)")
        .execute(&mut connect(a).await)
        .await
        .unwrap();
    wait_streaming(a, b).await;

    // Planned: the primary hands over; nothing committed is lost, and a writes on b.
    cluster.switchover(0, 1).await.unwrap();
    assert_eq!(cluster.wait_for_new_primary(0, PATIENCE).await.unwrap(), 1);
    key_names(&b.name).await;
    write_when_promoted(b, "INSERT INTO t VALUES (2)").await;
    assert_eq!(rows(b).await, vec![1, 2]);
    wait_streaming(b, a).await;
    wait_replayed(b, a).await;

    // Unplanned: b's host crashes. Nobody releases the leader key; a takes over once it expires.
    let crashed_at = tokio::time::Instant::now();
    b.crash().unwrap();
    assert_eq!(cluster.wait_for_new_primary(1, PATIENCE).await.unwrap(), 0);
    let took = crashed_at.elapsed();
    assert!(
        took >= Duration::from_secs(u64::from(LEADER_TTL_SECS)) / 2,
        "a took over before the leader key could expire ({took:?}): two primaries were possible"
    );
    let state = a.state().await.unwrap();
    assert!(
        state.timeline.unwrap() > first_timeline,
        "a promotion starts a new timeline: {state:?}"
    );
    // Patroni answers 200 on /primary once it has asked its server to promote itself; the server
    // may refuse writes (read-only) for a moment longer. That moment is part of the outage.
    write_when_promoted(a, "INSERT INTO t VALUES (3)").await;
    assert_eq!(rows(a).await, vec![1, 2, 3]);

    // b comes back, rewinds to a's history, and follows it.
    cluster.restart(1).await.unwrap();
    assert!(
        b.is_replica().await,
        "the crashed primary rejoins as a replica"
    );
    wait_streaming(a, b).await;
    wait_replayed(a, b).await;
    assert_eq!(rows(b).await, vec![1, 2, 3]);

    // Synchronous replication, switched on in the running cluster: the primary now waits for b
    // before it acknowledges a commit (PostgreSQL says b is its synchronous standby).
    cluster.set_replication(Replication::Sync).await.unwrap();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let sync: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_stat_replication \
             WHERE application_name = $1 AND sync_state = 'sync')",
        )
        .bind(&b.name)
        .fetch_one(&mut connect(a).await)
        .await
        .unwrap();
        if sync {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "b never became synchronous"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The primary's host cut off from the store and the replica, still running and still reachable
/// by clients (`archlab::partition`): its Patroni can no longer renew the leader key, so it
/// demotes its own server, and once the key expires the replica takes over. Healed, the old
/// primary rewinds onto the new history and follows. Without the cut nothing here would happen:
/// the test shows the rules cut what they claim to.
#[tokio::test]
async fn over_etcd_a_partitioned_primary_steps_down_and_follows_once_healed() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: cutting a host off needs root (iptables)");
        return;
    }
    let etcd = TestEtcd::start().await.unwrap();
    let dir = tempfile::Builder::new()
        .prefix("archlab-patroni-cut")
        .tempdir()
        .unwrap();
    // Addresses of their own (a cut is by address and OS user), and names no other test uses (a
    // name is a user: the cut must not catch another test's servers).
    let block = std::process::id() % 200 + 20;
    let store = ConsensusStore {
        kind: StoreKind::Etcd,
        endpoints: etcd.cluster.endpoints(),
    };
    let cluster = two_node_cluster(&dir, "cut", |n| format!("127.77.{block}.{n}"), store);
    let _stop = StopOnDrop(&cluster);
    cluster.start().await.unwrap();
    let [a, b] = [&cluster.nodes[0], &cluster.nodes[1]];
    assert_eq!(cluster.primary().await, Some(0));
    sqlx::raw_sql("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1)")
        .execute(&mut connect(a).await)
        .await
        .unwrap();
    wait_streaming(a, b).await;
    wait_replayed(a, b).await;

    let uid = |name: &str| host_user(name).unwrap().unwrap().0;
    let cut = Cut::start(
        &CutHost {
            name: a.name.clone(),
            address: a.server.address.clone(),
            uid: uid(&a.name),
        },
        CutKind::Partitioned,
        &[uid(&b.name)],
    )
    .unwrap();
    // a can no longer renew the key, and b takes it once it expires.
    assert_eq!(cluster.wait_for_new_primary(0, PATIENCE).await.unwrap(), 1);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while a.is_primary().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the cut-off primary never stepped down"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    write_when_promoted(b, "INSERT INTO t VALUES (2)").await;

    cut.heal().unwrap();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !a.is_replica().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the old primary never rejoined as a replica"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    wait_streaming(b, a).await;
    wait_replayed(b, a).await;
    assert_eq!(rows(a).await, vec![1, 2]);
}

/// Stops the cluster at the end of the test, passed or failed (before etcd goes).
struct StopOnDrop<'a>(&'a PatroniCluster);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        for node in &self.0.nodes {
            let _ = node.crash();
        }
    }
}
