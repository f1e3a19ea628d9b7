//! Stage 8's other consensus store end to end: three real ZooKeeper members elect a leader and
//! reach ZAB's broadcast phase; the leader crashes (SIGKILL) and the two left elect another in a
//! new epoch, whose zxids are numbered past everything the old one logged; the crashed member
//! comes back as a follower. A znode is read through whichever member lives, as the drills read
//! Patroni's leader key.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::Duration;

use archlab::zookeeper::TestZooKeeper;
use nix::sys::signal::Signal;

/// Bounds every wait for an election: never reached by a healthy ensemble, however busy the
/// machine.
const PATIENCE: Duration = Duration::from_secs(60);

#[tokio::test]
async fn a_crashed_leader_is_replaced_in_a_new_epoch() {
    let test = TestZooKeeper::start().await.unwrap();
    let ensemble = &test.ensemble;
    let first = ensemble.wait_for_leader(|_| true, PATIENCE).await.unwrap();
    let before = ensemble.members[first.member].zab_state().await.unwrap();
    assert_eq!(
        before.last_zxid >> 32,
        before.epoch,
        "a zxid's high half is its epoch"
    );

    // Reads: ZooKeeper's own znode (no data), and a path nobody made; a reader keeps its session
    // (on the first member) between reads.
    assert_eq!(ensemble.get("/zookeeper").await, Some(Some(String::new())));
    let mut reader = ensemble.reader();
    for _ in 0..3 {
        assert_eq!(reader.get("/archlab-no-such-znode").await, Some(None));
    }

    ensemble.members[first.member]
        .stop_with(Signal::SIGKILL)
        .unwrap();
    let second = ensemble
        .wait_for_leader(|l| l.member != first.member, PATIENCE)
        .await
        .unwrap();
    assert!(second.term > first.term, "{first:?} then {second:?}");
    let after = ensemble.members[second.member].zab_state().await.unwrap();
    assert!(
        after.last_zxid > before.last_zxid,
        "the new leader numbers past the old one's history: {before:?} then {after:?}"
    );
    assert_eq!(after.last_zxid >> 32, after.epoch);

    // With a member dead, a read goes through one that lives.
    assert_eq!(ensemble.get("/archlab-no-such-znode").await, Some(None));

    ensemble.restart(first.member).await.unwrap();
    let back = ensemble.members[first.member].zab_state().await.unwrap();
    assert!(!back.is_leader, "it rejoins as a follower: {back:?}");
    assert_eq!(
        ensemble.leader().await.map(|l| l.member),
        Some(second.member),
        "of the new leader"
    );

    // A reader's session is with the first member that answers; that member killed, the next
    // read opens a session with another.
    let mut reader = ensemble.reader();
    assert_eq!(reader.get("/zookeeper").await, Some(Some(String::new())));
    ensemble.members[0].stop_with(Signal::SIGKILL).unwrap();
    ensemble
        .wait_for_leader(|l| l.member != 0, PATIENCE)
        .await
        .unwrap();
    assert_eq!(reader.get("/zookeeper").await, Some(Some(String::new())));
}
