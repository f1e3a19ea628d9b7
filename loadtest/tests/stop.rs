//! A run ended early by its caller (`Live::stop`, what a drill does once its stage has
//! recovered): it returns before its duration, counts every request it released, and measures
//! only the time it ran.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::{
    sync::{atomic::Ordering, Arc},
    time::{Duration, Instant},
};

use loadtest::run::{run, Live, Mode, RunConfig};
use loadtest::workload::{ConduitWorkload, DataSet, WorkloadFile};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_run_ends_early_and_measures_only_what_it_ran() {
    let addr = common::freezing_server(Instant::now()).await;
    let (_, file) = WorkloadFile::load("url").unwrap();
    let workload = Arc::new(ConduitWorkload::new(&file, DataSet::default(), "/", 1).unwrap());
    let live = Arc::new(Live::default());
    let duration = Duration::from_secs(600);
    let config = RunConfig {
        target: addr,
        mode: Mode::Open { rate: 200.0 },
        duration,
        warmup: Duration::ZERO,
        connections: 8,
        timeout: Duration::from_secs(5),
        seed: 1,
        live: Some(live.clone()),
        monotonic_checks: false,
        pops: Vec::new(),
    };
    // Stop once 100 responses are in: a condition, as a drill's is.
    let watcher = live.clone();
    tokio::spawn(async move {
        while watcher.done.load(Ordering::Relaxed) < 100 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        watcher.stop.store(true, Ordering::Relaxed);
    });
    // Bounded, so that a run that ignores the stop fails here instead of running ten minutes.
    let out = tokio::time::timeout(Duration::from_secs(120), run(&config, workload))
        .await
        .expect("the run must end once stopped");
    let c = &out.summary.counts;
    assert!(
        out.measured_secs < duration.as_secs_f64(),
        "{}",
        out.measured_secs
    );
    assert!(c.ok >= 100, "{c:?}");
    assert_eq!(c.scheduled, c.sent + c.dropped, "{c:?}");
    assert_eq!(c.sent, c.ok + c.failed + c.unknown, "{c:?}");
    assert_eq!(
        out.summary.seconds.len() as f64,
        out.measured_secs.ceil(),
        "one series point per measured second"
    );
    assert!(!live.measuring.load(Ordering::Relaxed));
}
