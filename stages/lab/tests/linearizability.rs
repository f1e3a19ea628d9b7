//! The linearizability checker of the stage 8 drills (`archlab::history`, `todc-utils`'s
//! `WGLChecker`), tested on histories nobody here wrote: Jepsen's etcd runs with known verdicts
//! (`tests/data/jepsen-etcd/README.md` says where they come from). Two are linearizable and two
//! are not; a checker that answered the same for all four would fail here.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use todc_utils::{
    specifications::etcd::{history_from_log, EtcdSpecification},
    WGLChecker,
};

fn verdict(log: &str) -> bool {
    let path = format!(
        "{}/tests/data/jepsen-etcd/{log}",
        env!("CARGO_MANIFEST_DIR")
    );
    WGLChecker::<EtcdSpecification>::is_linearizable(history_from_log(path))
}

#[test]
fn jepsens_etcd_histories_get_their_known_verdicts() {
    assert!(!verdict("etcd_000.log"));
    assert!(!verdict("etcd_001.log"));
    assert!(verdict("etcd_005.log"));
    assert!(verdict("etcd_007.log"));
}
