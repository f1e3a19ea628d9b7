//! Multi-Paxos as three processes over loopback UDP (`consensus::live`): through a kill, a freeze
//! and a partition of the leader the clients' history stays linearizable, and a server that
//! answers reads without the log is caught by the same checker.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use consensus::live::{run, Fault, FaultKind, LiveOptions};
use consensus::multi_paxos::Bug;
use std::time::Duration;

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

fn options(net: [u8; 3], dir: &std::path::Path) -> LiveOptions {
    LiveOptions {
        program: env!("CARGO_BIN_EXE_consensus").into(),
        net,
        port: 7000,
        duration: secs(12.0),
        faults: vec![],
        bug: None,
        dir: dir.to_owned(),
    }
}

#[test]
fn the_register_stays_linearizable_through_a_killed_a_frozen_and_a_partitioned_leader() {
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
        ..options([127, 0, 78], dir.path())
    };
    let report = run(&options, &|line| eprintln!("{line}")).unwrap();
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
fn a_partitioned_leader_that_reads_locally_is_caught_serving_stale_values() {
    let dir = tempfile::tempdir().unwrap();
    let options = LiveOptions {
        duration: secs(6.0),
        faults: vec![Fault {
            kind: FaultKind::Partition,
            at: secs(2.0),
            lasts: secs(3.0),
        }],
        bug: Some(Bug::LeaderReadsLocally),
        ..options([127, 0, 79], dir.path())
    };
    let report = run(&options, &|line| eprintln!("{line}")).unwrap();
    let l = &report.linearizability;
    assert!(l.violating_keys >= 1, "{l:?}");
    assert!(!l.stale_reads.is_empty(), "{l:?}");
}
