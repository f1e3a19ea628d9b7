//! Whether a shard's primary answers, for a shard without replicas (stage 7).
//!
//! Stage 5's replica pollers also poll the primary, so its app hosts know within 50 ms that it is
//! gone and refuse writes at once ([`super::session::track`]). A shard with no replicas has no
//! poller, and a request to its dead primary waits out the pool's acquire timeout (2 s) before
//! its 503: meanwhile it holds a place in the gateway's and the app's queues that the other
//! shards' requests need, and its answer ("busy, try again") names the wrong cause. So each such
//! shard gets a watch: one trivial query every `database.primary_poll_ms` on a connection of its
//! own, and while the last one failed, every request that needs that primary is refused at once
//! with a 503 that names the shard ([`crate::error::ApiError::ShardDown`]); the other shards'
//! requests go on as before.
//!
//! Not for stages 1 to 4: their one database serves every request, so a refusal would buy
//! nothing over the wait, and the watch would only cost queries.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use sqlx::postgres::PgConnectOptions;

use super::{
    lsn::Lsn,
    replicas::{poll_position, Link, NoAnswer},
};

/// Polls in a row that must get no answer in time before the watch calls the primary down: one
/// slow poll on a busy machine is not a dead server, and calling it one refuses every request
/// of the shard until the next poll; two (half a second at the default period) still come well
/// before the pool's 2 s acquire timeout. A refused or broken connection needs no second poll.
const SLOW_POLLS_FOR_DOWN: u32 = 2;

/// One primary's liveness, as its last poll found it.
#[derive(Debug)]
pub struct PrimaryWatch {
    primary: PgConnectOptions,
    every: Duration,
    timeout: Duration,
    /// Whether the last poll succeeded (true until one says otherwise, as for the replicas'
    /// poller: a primary still starting is waited for by the pool, not refused).
    up: AtomicBool,
    started: AtomicBool,
}

impl PrimaryWatch {
    /// A watch on the primary `primary` connects to, polled every `every`, a poll failing after
    /// `timeout`. Not polling until [`PrimaryWatch::start`].
    pub fn new(primary: PgConnectOptions, every: Duration, timeout: Duration) -> Self {
        Self {
            primary,
            every: every.max(Duration::from_millis(1)),
            timeout: timeout.max(Duration::from_millis(1)),
            up: AtomicBool::new(true),
            started: AtomicBool::new(false),
        }
    }

    /// Whether the primary answered its last poll.
    pub fn up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// Starts polling (once; later calls do nothing), for as long as the runtime lives.
    pub fn start(self: &Arc<Self>) {
        if self.started.swap(true, Ordering::AcqRel) {
            return;
        }
        let watch = self.clone();
        tokio::spawn(async move { watch.poll().await });
    }

    async fn poll(self: Arc<Self>) {
        let mut link = Link::default();
        let mut slow_in_a_row = 0;
        let mut tick = tokio::time::interval(self.every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let polled = poll_position(
                &self.primary,
                &mut link,
                Lsn::PRIMARY_POSITION_SQL,
                self.timeout,
            )
            .await;
            slow_in_a_row = match &polled {
                Err(e) if e.is::<NoAnswer>() => slow_in_a_row + 1,
                _ => 0,
            };
            match polled {
                Err(e) if e.is::<NoAnswer>() && slow_in_a_row < SLOW_POLLS_FOR_DOWN => {
                    tracing::debug!(error = %e, "shard primary slow to answer one poll");
                }
                Ok(_) => {
                    if !self.up.swap(true, Ordering::AcqRel) {
                        tracing::info!("shard primary answering again: its requests are served");
                    }
                }
                Err(e) => {
                    if self.up.swap(false, Ordering::AcqRel) {
                        tracing::warn!(error = %e, "shard primary not answering: its requests are refused");
                    }
                }
            }
        }
    }
}
