//! Stage 8: the primary pool follows whichever database host Patroni names the leader.
//!
//! Up to stage 7 the primary's address was configuration: fixed for the life of the app. In
//! stage 8 the primary can move (a crash failover, a planned switchover), decided by Patroni
//! through a consensus store, and the app must follow without a restart. Each app host asks every
//! database host's Patroni `GET /primary` every `database.leader_poll_ms`; it answers 200 only on
//! the leader. When one host answers 200 and it is not the one the pool connects to:
//!
//! 1. the pool's connect options are replaced with that host's (`PgPool::set_connect_options`):
//!    every connection opened from now on goes to the new primary;
//! 2. the moment is recorded, and every connection opened before it is closed instead of being
//!    handed out again (the pool's `before_acquire` check compares a connection's age with the
//!    time since the switch). A connection to the old primary would otherwise keep serving: if
//!    the old primary still runs (demoted, or not yet), writes there are refused or, worse, lost.
//!
//! While no host answers 200 (the leader key has expired and nobody has taken it yet), the primary
//! is called down (after two polls if the old leader's Patroni is gone, after two seconds if it
//! is only slow or unsure: see [`DOUBT_BOUND`]) and every request that needs it gets a 503 at
//! once, as a dead shard's primary
//! does in stage 7 ([`super::watch`]), rather than waiting out the pool's acquire timeout against a
//! server that will not come back. A request already on a connection to the old primary when it
//! is demoted gets PostgreSQL's "read-only transaction" error, also a 503
//! ([`crate::error::ApiError`]): the client may retry, and the retry goes to the new primary.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use sqlx::{postgres::PgConnectOptions, PgPool};

/// Polls in a row that must find no leader before the primary is called down, when the leader
/// followed so far cannot be reached at all (its Patroni refuses connections: the host is gone).
/// Two polls (0.4 s by default) still come long before the pool's acquire timeout.
const MISSES_FOR_DOWN: u32 = 2;

/// How long the leader followed so far may stay in doubt, no other host claiming the lead,
/// before the primary is called down: no answer within `database.leader_poll_timeout_ms`, or an
/// answer other than 200. A Patroni on a small host that is busy being the primary answers late,
/// or answers 503 when its own check of PostgreSQL times out (measured in a stage 8 drill: with
/// two polls as the bound, writes were refused for a second or more several times a minute
/// after a failover, while the key was valid and PostgreSQL took writes). Writes sent meanwhile
/// are safe from one thing at least: a demoted PostgreSQL refuses them itself (SQLSTATE 25006, a
/// 503). A frozen or lost leader stays in doubt: after 3 s writes are refused at once instead of
/// waiting on it, well inside the 10 s its key takes to expire.
///
/// The bound is also a fence, and is kept when the leader's server itself would still take
/// writes. A Patroni too starved to answer is too starved to renew its key or to demote its
/// server: in a stage 8 crash trial the promoted primary's Patroni missed its cycles for 26 s, its
/// key expired, the other host took it, and for 9 s both servers ran as primaries. A version of
/// this follower that, past the bound, asked the server itself (`pg_is_in_recovery()`) and kept
/// writing to it lost 10 acknowledged writes there; refusing them (503) loses none
/// (stages/08-consensus/README.md, "A starved Patroni").
const DOUBT_BOUND: Duration = Duration::from_secs(3);

/// No host is the leader (yet).
const NONE: usize = usize::MAX;

/// One database host the primary may move to.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// For logs: the host's address and port.
    pub name: String,
    /// How the pool connects to its server.
    pub options: PgConnectOptions,
    /// Its Patroni's `GET /primary` URL.
    pub primary_url: String,
}

/// When the pool last moved to another host: connections opened before then are closed.
#[derive(Debug)]
pub struct SwitchClock {
    start: Instant,
    /// Milliseconds from `start` to the last switch (0: none yet).
    last_switch_ms: AtomicU64,
}

impl SwitchClock {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            last_switch_ms: AtomicU64::new(0),
        }
    }

    fn mark(&self) {
        let now = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_switch_ms.store(now, Ordering::Release);
    }

    /// Whether a connection `age` old was opened after the last switch. Conservative by the
    /// millisecond rounding: a connection opened within a millisecond of a switch is closed too.
    pub fn opened_since_switch(&self, age: Duration) -> bool {
        let last = Duration::from_millis(self.last_switch_ms.load(Ordering::Acquire));
        let since_switch = self.start.elapsed().saturating_sub(last);
        age < since_switch
    }
}

/// What one candidate's Patroni answered to `GET /primary`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    /// 200: it holds the leader key and runs as the primary.
    Leader,
    /// Another status: not the leader, or not sure of its own server right now.
    NotLeader,
    /// No connection: Patroni is not running there.
    Unreachable,
    /// Nothing within the timeout: slow, or frozen.
    Silent,
}

/// Follows the leader for one primary pool.
#[derive(Debug)]
pub struct LeaderFollower {
    candidates: Vec<Candidate>,
    pool: PgPool,
    clock: Arc<SwitchClock>,
    /// The candidate the pool connects to ([`NONE`] until the first poll finds one).
    leader: AtomicUsize,
    up: AtomicBool,
    every: Duration,
    timeout: Duration,
    client: reqwest::Client,
    started: AtomicBool,
}

impl LeaderFollower {
    /// A follower for `candidates`; `pool` must be built with [`LeaderFollower::fresh_only`] on
    /// `clock` so that switching closes the old connections. Polls every `every`, a Patroni that
    /// takes longer than `timeout` counting as not the leader. Not polling until
    /// [`LeaderFollower::start`].
    pub fn new(
        candidates: Vec<Candidate>,
        pool: PgPool,
        clock: Arc<SwitchClock>,
        every: Duration,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(timeout.max(Duration::from_millis(1)))
            .build()?;
        Ok(Self {
            candidates,
            pool,
            clock,
            leader: AtomicUsize::new(NONE),
            up: AtomicBool::new(true),
            every: every.max(Duration::from_millis(1)),
            timeout,
            client,
            started: AtomicBool::new(false),
        })
    }

    /// A new switch clock, for [`LeaderFollower::fresh_only`] and [`LeaderFollower::new`].
    pub fn clock() -> Arc<SwitchClock> {
        Arc::new(SwitchClock::new())
    }

    /// `options` with a check that hands out only connections opened since the last switch.
    pub fn fresh_only(
        options: sqlx::postgres::PgPoolOptions,
        clock: &Arc<SwitchClock>,
    ) -> sqlx::postgres::PgPoolOptions {
        let clock = clock.clone();
        options.before_acquire(move |_connection, meta| {
            let fresh = clock.opened_since_switch(meta.age);
            Box::pin(async move { Ok(fresh) })
        })
    }

    /// Whether some host is the leader, as far as the last polls know.
    pub fn up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// The candidate the pool connects to now, by name (`None` before the first leader is found).
    pub fn leader(&self) -> Option<&str> {
        self.candidates
            .get(self.leader.load(Ordering::Acquire))
            .map(|c| c.name.as_str())
    }

    /// Starts polling (once; later calls do nothing), for as long as the runtime lives.
    pub fn start(self: &Arc<Self>) {
        if self.started.swap(true, Ordering::AcqRel) {
            return;
        }
        let follower = self.clone();
        tokio::spawn(async move { follower.poll().await });
    }

    /// What every candidate's `GET /primary` answers now.
    async fn answers(&self) -> Vec<Answer> {
        let asks = self.candidates.iter().map(|c| {
            let request = self.client.get(&c.primary_url).send();
            async move {
                match request.await {
                    Ok(r) if r.status() == reqwest::StatusCode::OK => Answer::Leader,
                    Ok(_) => Answer::NotLeader,
                    Err(e) if e.is_timeout() => Answer::Silent,
                    Err(_) => Answer::Unreachable,
                }
            }
        });
        futures::future::join_all(asks).await
    }

    async fn poll(self: Arc<Self>) {
        let mut misses = 0;
        let mut in_doubt_since: Option<Instant> = None;
        let mut tick = tokio::time::interval(self.every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let answers = self.answers().await;
            let leaders: Vec<usize> = (0..answers.len())
                .filter(|&i| answers[i] == Answer::Leader)
                .collect();
            let followed = answers.get(self.leader.load(Ordering::Acquire));
            // No other host claims the lead and the one followed is alive but in doubt: it may
            // only be busy. Given more patience (see DOUBT_BOUND).
            if leaders.is_empty() && matches!(followed, Some(Answer::Silent | Answer::NotLeader)) {
                let since = *in_doubt_since.get_or_insert_with(Instant::now);
                if since.elapsed() < DOUBT_BOUND {
                    continue;
                }
                // In doubt for too long: called down at this poll.
                misses = misses.max(MISSES_FOR_DOWN - 1);
            } else {
                in_doubt_since = None;
            }
            match leaders[..] {
                [leader] => {
                    misses = 0;
                    if self.leader.load(Ordering::Acquire) != leader {
                        self.follow(leader);
                    }
                    if !self.up.swap(true, Ordering::AcqRel) {
                        tracing::info!(leader = %self.candidates[leader].name, "a leader again: writes are served");
                    }
                }
                // None yet (a failover under way), or two at once (Patroni never says so for
                // long; sending writes to either could lose them): no primary.
                ref leaders => {
                    misses += 1;
                    if misses >= MISSES_FOR_DOWN && self.up.swap(false, Ordering::AcqRel) {
                        let count = |a: Answer| answers.iter().filter(|&&b| b == a).count();
                        tracing::warn!(
                            leaders = leaders.len(),
                            not_leader = count(Answer::NotLeader),
                            unreachable = count(Answer::Unreachable),
                            silent = count(Answer::Silent),
                            timeout_ms = self.timeout.as_millis() as u64,
                            "no single database host is the leader: writes are refused"
                        );
                    }
                }
            }
        }
    }

    /// Points the pool at candidate `leader` and retires every connection opened before.
    fn follow(&self, leader: usize) {
        let candidate = &self.candidates[leader];
        self.pool.set_connect_options(candidate.options.clone());
        self.clock.mark();
        let before = self.leader.swap(leader, Ordering::AcqRel);
        match self.candidates.get(before) {
            Some(old) => {
                tracing::warn!(from = %old.name, to = %candidate.name, "the primary moved: writes follow it")
            }
            None => tracing::info!(leader = %candidate.name, "the primary is {}", candidate.name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_connections_opened_after_the_last_switch_are_fresh() {
        let clock = SwitchClock::new();
        // No switch yet: every connection opened since the clock started is fresh.
        std::thread::sleep(Duration::from_millis(5));
        assert!(clock.opened_since_switch(Duration::ZERO));
        clock.mark();
        // Opened well before the switch: retired.
        assert!(!clock.opened_since_switch(Duration::from_secs(60)));
        std::thread::sleep(Duration::from_millis(5));
        // Opened just now, after the switch: fresh.
        assert!(clock.opened_since_switch(Duration::ZERO));
    }
}
