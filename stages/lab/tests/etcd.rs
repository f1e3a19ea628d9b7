//! The consensus store of stage 8 end to end: three real etcd members form a cluster and agree
//! on one leader; the leader crashes (SIGKILL) and the two left elect another in a later term,
//! keeping every acknowledged key and taking new writes; the crashed member comes back as a
//! follower of the new leader; with two members down, a write is refused, not acknowledged.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::{process::Command, time::Duration};

use archlab::{
    consensus::Leadership,
    etcd::{EtcdMember, TestEtcd},
};
use nix::sys::signal::Signal;

/// Bounds every wait for an election: never reached by a healthy cluster, however busy the
/// machine (one takes about a second here).
const PATIENCE: Duration = Duration::from_secs(60);

/// `etcdctl` against the given members; its output, or its error output if it failed.
fn etcdctl(endpoints: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoints}"))
        // A write without a majority would wait for ever; the refusal is what is tested.
        .arg("--command-timeout=3s")
        .args(args)
        .output()
        .expect("etcdctl (Debian's etcd-client) runs");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn endpoint(member: &EtcdMember) -> String {
    format!("{}:{}", member.address, member.client_port)
}

#[tokio::test]
async fn a_crashed_leader_is_replaced_by_election_and_no_acknowledged_key_is_lost() {
    let test = TestEtcd::new().unwrap();
    let cluster = &test.cluster;
    let first = cluster.start().await.unwrap();
    for member in &cluster.members {
        assert!(member.healthy().await, "{} is not healthy", member.name);
    }
    etcdctl(&cluster.endpoints(), &["put", "written-before", "1"]).unwrap();

    // The leader crashes: no goodbye to its peers.
    cluster.members[first.member]
        .stop_with(Signal::SIGKILL)
        .unwrap();
    let second = cluster
        .wait_for_leader(|l| l.member != first.member, PATIENCE)
        .await
        .unwrap();
    assert!(
        second.term > first.term,
        "a new leader is elected in a later term: {first:?} then {second:?}"
    );

    // The two left are a majority: the key acknowledged before is there, and writes go on.
    let survivors: Vec<String> = (0..3)
        .filter(|&i| i != first.member)
        .map(|i| endpoint(&cluster.members[i]))
        .collect();
    let survivors = survivors.join(",");
    let read = etcdctl(&survivors, &["get", "written-before", "--print-value-only"]).unwrap();
    assert_eq!(read.trim(), "1");
    etcdctl(&survivors, &["put", "written-after", "2"]).unwrap();

    // The crashed member comes back from its data folder and follows the new leader.
    cluster.restart(first.member).await.unwrap();
    let back = cluster.members[first.member].status().await.unwrap();
    assert!(!back.leads(), "it rejoins as a follower: {back:?}");
    let read = etcdctl(
        &endpoint(&cluster.members[first.member]),
        &[
            "get",
            "written-after",
            "--print-value-only",
            "--consistency=l",
        ],
    )
    .unwrap();
    assert_eq!(read.trim(), "2");

    // Two down: the one left is a minority and refuses to acknowledge a write.
    let Leadership { member: leader, .. } =
        cluster.wait_for_leader(|_| true, PATIENCE).await.unwrap();
    let followers: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    cluster.members[leader].stop_with(Signal::SIGKILL).unwrap();
    cluster.members[followers[0]]
        .stop_with(Signal::SIGKILL)
        .unwrap();
    let alone = endpoint(&cluster.members[followers[1]]);
    let refused = etcdctl(&alone, &["put", "written-alone", "3"]);
    assert!(
        refused.is_err(),
        "a minority acknowledged a write: {refused:?}"
    );
}
