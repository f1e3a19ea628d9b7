//! The wrk2 demonstration: a server that freezes for 1 s every 10 s, driven at a fixed rate over a
//! bounded number of connections. A tenth of all scheduled requests fall into a freeze and wait
//! 0 to 1 s for it to end, so the corrected p99 must be near 0.9 s; measured from the actual send
//! (uncorrected), only the few requests in flight when the freeze began see it, and the p99 stays
//! far below.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use loadtest::run::{run, Mode, RunConfig};
use loadtest::workload::{ConduitWorkload, DataSet, WorkloadFile};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrected_latency_sees_the_freeze_that_uncorrected_latency_hides() {
    let epoch = Instant::now();
    let addr = common::freezing_server(epoch).await;
    let (_, file) = WorkloadFile::load("url").unwrap();
    let workload = Arc::new(ConduitWorkload::new(&file, DataSet::default(), "/", 1).unwrap());
    let config = RunConfig {
        target: addr,
        mode: Mode::Open { rate: 500.0 },
        duration: Duration::from_secs(20),
        warmup: Duration::ZERO,
        connections: 16,
        timeout: Duration::from_secs(5),
        seed: 1,
        live: None,
        monotonic_checks: false,
        pops: Vec::new(),
    };
    let out = run(&config, workload).await;
    let s = &out.summary;
    let c = &s.counts;
    assert_eq!(c.scheduled, c.sent + c.dropped, "{c:?}");
    assert_eq!(c.sent, c.ok + c.failed + c.unknown, "{c:?}");
    assert!(c.scheduled >= 9_900 && c.scheduled <= 10_000, "{c:?}");
    assert_eq!(c.failed + c.unknown, 0, "{c:?}");
    let corrected = s.corrected.p99;
    let uncorrected = s.uncorrected.p99;
    println!(
        "corrected p99 {corrected} ms, uncorrected p99 {uncorrected} ms, max {} ms",
        s.corrected.max
    );
    assert!(
        (750.0..=1050.0).contains(&corrected),
        "corrected p99 {corrected} ms should be near 900 ms"
    );
    assert!(
        uncorrected < 100.0,
        "uncorrected p99 {uncorrected} ms should hide the freeze"
    );
    assert!(
        s.corrected.max >= 950.0,
        "the longest wait is about a whole freeze"
    );
}
