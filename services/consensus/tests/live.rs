//! Multi-Paxos and ZAB as three processes over loopback UDP (`consensus::live`): through a kill, a
//! freeze and a partition of the leader the clients' history stays linearizable, and each
//! protocol's seeded bug that shows outside the model (a Multi-Paxos leader that answers reads
//! without the log; a ZAB leader that commits without a quorum) is caught by the same checker.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use consensus::live::{run, Fault, FaultKind, LiveOptions, LiveReport, Protocol};
use std::sync::Mutex;
use std::time::Duration;

/// One live run at a time: each is three servers saving to disk and eight clients, and their
/// timeouts are tuned for a machine that is busy, not for four runs competing on it.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Runs `options`, alone.
fn run_alone(options: &LiveOptions) -> anyhow::Result<LiveReport> {
    let _turn = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    run(options, &|line| eprintln!("{line}"))
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

fn options(protocol: Protocol, net: [u8; 3], dir: &std::path::Path) -> LiveOptions {
    LiveOptions {
        protocol,
        program: env!("CARGO_BIN_EXE_consensus").into(),
        net,
        port: 7000,
        duration: secs(12.0),
        faults: vec![],
        bug: None,
        dir: dir.to_owned(),
    }
}

/// A kill at 1.5 s, a freeze at 5 s and a partition at 8.5 s, each of the leader, each for 2 s,
/// in a run of 12 s.
fn through_three_faults(protocol: Protocol, net: [u8; 3]) -> LiveReport {
    let dir = tempfile::tempdir().unwrap();
    let options = LiveOptions {
        faults: vec![
            Fault {
                kind: FaultKind::Kill,
                at: secs(1.5),
                lasts: secs(2.0),
            },
            Fault {
                kind: FaultKind::Freeze,
                at: secs(5.0),
                lasts: secs(2.0),
            },
            Fault {
                kind: FaultKind::Partition,
                at: secs(8.5),
                lasts: secs(2.0),
            },
        ],
        ..options(protocol, net, dir.path())
    };
    run_alone(&options).unwrap()
}

fn assert_linearizable_and_answering(report: &LiveReport) {
    let l = &report.linearizability;
    assert_eq!(report.faults.len(), 3);
    assert_eq!(
        (l.linearizable_keys, l.violating_keys, l.undecided_keys),
        (4, 0, 0),
        "{l:?}"
    );
    // Not vacuous: the servers answered, and answered again after the last fault healed.
    assert!(l.ok > 100, "{l:?}");
    let after_the_last_fault: u64 = report.ok_per_second[11..].iter().sum();
    assert!(after_the_last_fault > 0, "{:?}", report.ok_per_second);
}

#[test]
fn the_register_stays_linearizable_through_a_killed_a_frozen_and_a_partitioned_leader() {
    let report = through_three_faults(Protocol::MultiPaxos, [127, 0, 78]);
    assert_linearizable_and_answering(&report);
}

#[test]
fn zab_stays_linearizable_through_a_killed_a_frozen_and_a_partitioned_leader() {
    let report = through_three_faults(Protocol::Zab, [127, 0, 80]);
    assert_linearizable_and_answering(&report);
}

#[test]
fn a_partitioned_leader_that_reads_locally_is_caught_serving_stale_values() {
    let dir = tempfile::tempdir().unwrap();
    let options = LiveOptions {
        duration: secs(6.0),
        faults: vec![Fault {
            kind: FaultKind::Partition,
            at: secs(2.0),
            lasts: secs(3.0),
        }],
        bug: Some("leader-reads-locally".to_owned()),
        ..options(Protocol::MultiPaxos, [127, 0, 79], dir.path())
    };
    let report = run_alone(&options).unwrap();
    let l = &report.linearizability;
    assert!(l.violating_keys >= 1, "{l:?}");
    assert!(!l.stale_reads.is_empty(), "{l:?}");
}

#[test]
fn a_partitioned_zab_leader_that_commits_without_a_quorum_is_caught_losing_writes() {
    let dir = tempfile::tempdir().unwrap();
    let options = LiveOptions {
        duration: secs(6.0),
        faults: vec![Fault {
            kind: FaultKind::Partition,
            at: secs(2.0),
            lasts: secs(3.0),
        }],
        bug: Some("leader-commits-without-quorum".to_owned()),
        ..options(Protocol::Zab, [127, 0, 81], dir.path())
    };
    let report = run_alone(&options).unwrap();
    let l = &report.linearizability;
    assert!(l.violating_keys >= 1, "{l:?}");
}

#[test]
fn a_bug_of_another_protocol_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let options = LiveOptions {
        bug: Some("leader-reads-locally".to_owned()),
        ..options(Protocol::Zab, [127, 0, 82], dir.path())
    };
    let error = run_alone(&options).unwrap_err().to_string();
    assert!(error.contains("not a seeded bug of zab"), "{error}");
    assert!(error.contains("leader-commits-without-quorum"), "{error}");
}
