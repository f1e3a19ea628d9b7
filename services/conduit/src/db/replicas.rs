//! Stage 5's replicas as one app host sees them: how far behind each is, whether it is in
//! rotation, and which one a read goes to.
//!
//! ```text
//!                   every poll_ms (50 ms)
//!   primary ──── insert position ───> history of (position, when seen)
//!   replica-N ── replayed position ─> lag: bytes behind the newest position,
//!                                          time since the oldest position it has not replayed
//!                                     rotation: out past max_lag, back in under rejoin_lag
//! ```
//!
//! Each app host polls on its own (a dedicated connection per server, so a poll never waits for a
//! pooled connection and a query never waits for a poll), and decides on its own: no coordinator,
//! nothing to fail. Lag in *time* is measured against the primary's own positions as this host
//! saw them, so it needs no clock shared between machines.
//!
//! A read that needs nothing in particular goes to the less busy of two replicas drawn at random
//! (power of two choices, by requests in flight); a read that must show a given write goes only
//! to a replica known to have replayed past that write's position. "Known" means as of the last
//! poll, so a replica may well be further on than the app thinks: the check errs towards the
//! primary, never towards a stale row.

use std::{
    collections::VecDeque,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use rand::Rng;
use sqlx::{postgres::PgConnectOptions, ConnectOptions, Connection, PgConnection, PgPool};

use super::lsn::Lsn;
use crate::settings::DatabaseSettings;

/// Primary positions remembered for measuring lag in time. At one poll every 50 ms this is
/// 25 s of history, far past the lag at which a replica leaves rotation; a replica further
/// behind than the oldest entry is reported as at least that far behind, which is all rotation
/// needs to know.
const HISTORY: usize = 512;

/// When a replica leaves rotation and when it comes back.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LagBounds {
    /// Out of rotation when this far behind in time...
    pub max_time: Duration,
    /// ...or in WAL bytes.
    pub max_bytes: u64,
    /// Back in rotation only once under this time behind (and under half `max_bytes`), so a
    /// replica near the bound does not flap in and out with every poll.
    pub rejoin_time: Duration,
}

impl LagBounds {
    /// The bounds `settings` give.
    pub fn from_settings(settings: &DatabaseSettings) -> Self {
        Self {
            max_time: Duration::from_millis(settings.replica_max_lag_ms),
            max_bytes: settings.replica_max_lag_bytes,
            rejoin_time: Duration::from_millis(settings.replica_rejoin_lag_ms),
        }
    }

    /// Whether a replica `lag` behind is in rotation after this poll, given whether it was
    /// before: hysteresis between the bound to leave and the lower bound to come back.
    pub fn in_rotation(&self, was_in: bool, lag: Lag) -> bool {
        if was_in {
            lag.time <= self.max_time && lag.bytes <= self.max_bytes
        } else {
            lag.time <= self.rejoin_time && lag.bytes <= self.max_bytes / 2
        }
    }
}

/// How far a replica is behind the primary, as of a poll.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Lag {
    /// WAL bytes the primary had written that the replica had not replayed.
    pub bytes: u64,
    /// How long ago the primary had reached the first position the replica has not replayed;
    /// zero when it has replayed everything seen. The staleness of its data, to within a poll.
    pub time: Duration,
}

/// The primary's positions as polled, oldest first.
#[derive(Debug, Default)]
struct PrimaryHistory {
    seen: VecDeque<(Lsn, Instant)>,
}

impl PrimaryHistory {
    fn record(&mut self, position: Lsn, at: Instant) {
        // Only new positions matter: the time lag is measured from when one was first seen.
        if self
            .seen
            .back()
            .is_some_and(|(newest, _)| *newest >= position)
        {
            return;
        }
        if self.seen.len() == HISTORY {
            self.seen.pop_front();
        }
        self.seen.push_back((position, at));
    }

    fn newest(&self) -> Option<Lsn> {
        self.seen.back().map(|(lsn, _)| *lsn)
    }

    /// A position the primary had reached by the end of any moment before `since`: the first
    /// one seen at or after `since` (it was seen after that moment), else the newest (nothing
    /// new since, so the primary was there all along). `None` before the first poll.
    fn reached_before(&self, since: Instant) -> Option<Lsn> {
        self.seen
            .iter()
            .find(|(_, at)| *at >= since)
            .or(self.seen.back())
            .map(|(lsn, _)| *lsn)
    }

    /// The lag of a replica that has replayed up to `replayed`, at `now`.
    fn lag_of(&self, replayed: Lsn, now: Instant) -> Lag {
        let Some(newest) = self.newest() else {
            return Lag::default();
        };
        let first_unreplayed = self.seen.iter().find(|(lsn, _)| *lsn > replayed);
        Lag {
            bytes: newest.bytes_after(replayed),
            time: first_unreplayed.map_or(Duration::ZERO, |(_, at)| now.duration_since(*at)),
        }
    }
}

/// One replica: its pool for reads, and what the last poll said about it.
#[derive(Debug)]
pub struct Replica {
    /// `replica-1`, `replica-2`, ... in the order of `database.replicas`: the label in metrics.
    pub name: String,
    /// Connections for reads.
    pub pool: PgPool,
    /// For the poller's own connection.
    options: PgConnectOptions,
    replayed: AtomicU64,
    lag_bytes: AtomicU64,
    lag_micros: AtomicU64,
    in_rotation: AtomicBool,
}

impl Replica {
    /// The position it had replayed at the last poll (0 before the first).
    pub fn replayed(&self) -> Lsn {
        Lsn(self.replayed.load(Ordering::Acquire))
    }

    /// Its lag at the last poll.
    pub fn lag(&self) -> Lag {
        Lag {
            bytes: self.lag_bytes.load(Ordering::Relaxed),
            time: Duration::from_micros(self.lag_micros.load(Ordering::Relaxed)),
        }
    }

    /// Records that it had replayed `position` (from a poll, or a request that asked it): the
    /// known position only moves forward.
    pub fn saw_replayed(&self, position: Lsn) {
        self.replayed.fetch_max(position.0, Ordering::AcqRel);
    }

    /// Asks it now how far it has replayed (one trivial query on its pool), and remembers the
    /// answer: for a read whose user is ahead of what the last poll said.
    pub async fn replayed_now(&self) -> Result<Lsn, sqlx::Error> {
        let position = super::replay_position(&self.pool).await?;
        self.saw_replayed(position);
        Ok(position)
    }

    /// Whether reads may go to it.
    pub fn in_rotation(&self) -> bool {
        self.in_rotation.load(Ordering::Acquire)
    }

    /// Takes it out of rotation at once (a read on it failed); the next good poll decides when
    /// it comes back.
    pub fn suspend(&self) {
        if self.in_rotation.swap(false, Ordering::AcqRel) {
            tracing::warn!(replica = %self.name, "a read failed on this replica: out of rotation");
        }
    }
}

/// Where one request's reads go.
#[derive(Debug, Clone)]
pub enum ReadTarget {
    /// The primary.
    Primary,
    /// This replica.
    Replica(Arc<Replica>),
}

/// How busy a pool is: connections in use over its maximum. Counts every query on the server
/// from this app host, so the primary's writes weigh on it as they should.
fn busy(pool: &PgPool) -> f64 {
    let in_use = pool.size().saturating_sub(pool.num_idle() as u32);
    f64::from(in_use) / f64::from(pool.options().get_max_connections().max(1))
}

/// Every replica of the stage, with the primary's history they are measured against.
#[derive(Debug)]
pub struct ReplicaSet {
    replicas: Vec<Arc<Replica>>,
    /// The primary pool: its connect options say where the primary is now (in stage 8 they
    /// move with the leader, [`super::leader`]). Polled on a connection of its own.
    primary: PgPool,
    history: Mutex<PrimaryHistory>,
    bounds: LagBounds,
    poll_every: Duration,
    poll_timeout: Duration,
    started: AtomicBool,
    /// Whether the last poll of the primary succeeded (true until a poll says otherwise).
    primary_up: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl ReplicaSet {
    /// The replicas at `urls` of the primary the pool `primary` connects to, named `<names>-1`, ...,
    /// each with a lazy pool (as the primary's: the app starts while they come up), polled as
    /// `settings` say. Nothing is in rotation before its first good poll.
    pub fn new(
        settings: &DatabaseSettings,
        urls: &[crate::settings::Secret],
        names: &str,
        primary: PgPool,
        connect: impl Fn(&str, u32) -> anyhow::Result<(PgConnectOptions, PgPool)>,
    ) -> anyhow::Result<Self> {
        let replicas = urls
            .iter()
            .enumerate()
            .map(|(i, url)| {
                let (options, pool) = connect(url.expose(), settings.replica_max_connections)?;
                Ok(Arc::new(Replica {
                    name: format!("{names}-{}", i + 1),
                    pool,
                    options,
                    replayed: AtomicU64::new(0),
                    lag_bytes: AtomicU64::new(0),
                    lag_micros: AtomicU64::new(0),
                    in_rotation: AtomicBool::new(false),
                }))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Self {
            replicas,
            primary,
            history: Mutex::default(),
            bounds: LagBounds::from_settings(settings),
            poll_every: Duration::from_millis(settings.replica_poll_ms.max(1)),
            poll_timeout: Duration::from_millis(settings.replica_poll_timeout_ms.max(1)),
            started: AtomicBool::new(false),
            primary_up: AtomicBool::new(true),
        })
    }

    /// Every replica, in configuration order.
    pub fn all(&self) -> &[Arc<Replica>] {
        &self.replicas
    }

    /// Whether the primary answered its last poll.
    pub fn primary_up(&self) -> bool {
        self.primary_up.load(Ordering::Acquire)
    }

    /// The primary's newest polled position: every later read on the primary shows at least
    /// this much (0 before the first poll).
    pub fn primary_polled(&self) -> Lsn {
        lock(&self.history).newest().unwrap_or(Lsn(0))
    }

    /// A position at or past every write committed more than `ago` ago, from the polled
    /// history; `None` before the first poll.
    pub fn primary_reached_before(&self, ago: Duration) -> Option<Lsn> {
        let since = Instant::now().checked_sub(ago)?;
        lock(&self.history).reached_before(since)
    }

    /// Where a read that must show position `at_least` (anything, with `None`) goes: among the
    /// replicas in rotation known to have replayed that far, and the primary if `primary` is
    /// given (it is always far enough), the less busy of two drawn at random. `None` when no
    /// candidate is left (no primary given, and no replica qualifies).
    pub fn choose(&self, at_least: Option<Lsn>, primary: Option<&PgPool>) -> Option<ReadTarget> {
        let mut candidates: Vec<(ReadTarget, &PgPool)> = self
            .replicas
            .iter()
            .filter(|r| r.in_rotation() && at_least.is_none_or(|lsn| r.replayed() >= lsn))
            .map(|r| (ReadTarget::Replica(r.clone()), &r.pool))
            .collect();
        if let Some(pool) = primary {
            candidates.push((ReadTarget::Primary, pool));
        }
        let n = candidates.len();
        let pick = match n {
            0 => return None,
            1 => 0,
            _ => {
                let mut rng = rand::thread_rng();
                let a = rng.gen_range(0..n);
                let b = (a + rng.gen_range(1..n)) % n;
                if busy(candidates[b].1) < busy(candidates[a].1) {
                    b
                } else {
                    a
                }
            }
        };
        Some(candidates.swap_remove(pick).0)
    }

    /// Starts the pollers (once; later calls do nothing): one task for the primary's position
    /// and one per replica, each on its own connection, each at `replica_poll_ms`. They live as
    /// long as the runtime.
    pub fn start_polling(self: &Arc<Self>) {
        if self.started.swap(true, Ordering::AcqRel) {
            return;
        }
        let set = self.clone();
        tokio::spawn(async move { set.poll_primary().await });
        for replica in &self.replicas {
            let set = self.clone();
            let replica = replica.clone();
            tokio::spawn(async move { set.poll_replica(&replica).await });
        }
    }

    async fn poll_primary(self: Arc<Self>) {
        let mut link = Link::default();
        let mut polled_at: Option<(String, u16)> = None;
        let mut tick = tokio::time::interval(self.poll_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            // Stage 8: the primary moved (a failover, a switchover). Poll the new one, and
            // forget the old one's positions: the new primary's history forked from the old one
            // where it was promoted, and whatever the old primary wrote past that point (lost
            // with asynchronous replication) no replica will ever replay.
            let options = self.primary.connect_options();
            let target = (options.get_host(), options.get_port());
            if polled_at.as_ref().map(|(h, p)| (h.as_str(), *p)) != Some(target) {
                if polled_at.is_some() {
                    *lock(&self.history) = PrimaryHistory::default();
                    link.close();
                }
                polled_at = Some((target.0.to_owned(), target.1));
            }
            let polled = self
                .poll(&options, &mut link, Lsn::PRIMARY_POSITION_SQL)
                .await;
            match polled {
                // Keep the last history when the primary is unreachable: replicas are then
                // measured against the last position it reached, which is what they can show.
                Ok(position) => {
                    lock(&self.history).record(position, Instant::now());
                    if !self.primary_up.swap(true, Ordering::AcqRel) {
                        tracing::info!("primary answering again: it takes reads again");
                    }
                }
                Err(e) => {
                    if self.primary_up.swap(false, Ordering::AcqRel) {
                        tracing::warn!(error = %e, "primary not answering: reads go to replicas");
                    }
                }
            }
        }
    }

    async fn poll_replica(self: Arc<Self>, replica: &Replica) {
        // A server that is not in recovery is no replica (promoted by hand, or a mistake in the
        // settings): no row, which fails the poll and keeps it out. Nor is one that has received
        // nothing by streaming since it started (`pg_last_wal_receive_lsn()` is NULL): in stage 8
        // that is a crashed primary back as a replica before Patroni has rewound it, whose
        // positions belong to the old primary's history and say nothing of the new one's (a
        // drill saw reads served by it miss the reader's own writes). Patroni promotes the most
        // advanced replica, so a replica that does stream from the new primary is never ahead
        // of its history.
        const REPLAYED: &str = "SELECT (pg_last_wal_replay_lsn() - '0/0'::pg_lsn)::int8 \
             WHERE pg_is_in_recovery() AND pg_last_wal_receive_lsn() IS NOT NULL";
        // While the primary does not answer, one exception: a replica just promoted (stage 8,
        // before the app has moved its primary pool there) shows everything it has written, and
        // is the only server that can show a writer their latest changes; refusing it left a
        // writer's reads without a server for that moment (a stage 8 test caught a 503).
        const REPLAYED_OR_PROMOTED: &str = "SELECT (CASE WHEN pg_is_in_recovery() \
             THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_flush_lsn() END \
             - '0/0'::pg_lsn)::int8 \
             WHERE NOT pg_is_in_recovery() OR pg_last_wal_receive_lsn() IS NOT NULL";
        let mut link = Link::default();
        let mut tick = tokio::time::interval(self.poll_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let sql = if self.primary_up() {
                REPLAYED
            } else {
                REPLAYED_OR_PROMOTED
            };
            let polled = self.poll(&replica.options, &mut link, sql).await;
            let was_in = replica.in_rotation();
            let now_in = match polled {
                Ok(replayed) => {
                    let lag = lock(&self.history).lag_of(replayed, Instant::now());
                    replica.saw_replayed(replayed);
                    replica.lag_bytes.store(lag.bytes, Ordering::Relaxed);
                    replica
                        .lag_micros
                        .store(lag.time.as_micros() as u64, Ordering::Relaxed);
                    if self.primary_up() {
                        self.bounds.in_rotation(was_in, lag)
                    } else {
                        // The primary is down: lag can only grow (by WAL it wrote and never
                        // sent, which no replica will get), yet no server anywhere is further
                        // on. Rotation stays as it was when the primary went: replicas then in
                        // rotation keep serving reads; one out (far behind) stays out.
                        was_in
                    }
                }
                Err(e) => {
                    if was_in {
                        tracing::warn!(replica = %replica.name, error = %e, "replica not answering: out of rotation");
                    }
                    false
                }
            };
            replica.in_rotation.store(now_in, Ordering::Release);
            if was_in != now_in {
                let lag = replica.lag();
                tracing::info!(
                    replica = %replica.name,
                    in_rotation = now_in,
                    lag_ms = lag.time.as_millis() as u64,
                    lag_bytes = lag.bytes,
                    "replica rotation changed"
                );
            }
        }
    }

    async fn poll(
        &self,
        options: &PgConnectOptions,
        link: &mut Link,
        sql: &'static str,
    ) -> anyhow::Result<Lsn> {
        poll_position(options, link, sql, self.poll_timeout).await
    }
}

/// How long a poller waits on one attempt to connect, across polls, before it gives the attempt
/// up and begins another. Waiting is the point (see [`Link::Opening`]), but not for ever: an
/// attempt whose first packet a cut network dropped is retried by the kernel only 1, 3, 7, 15,
/// 31 s after it began, so an attempt begun during a cut would outlast the cut by seconds (begun
/// at the start of a drill's 20 s isolation, its next try would come 11 s after the heal: by
/// that arithmetic, not measured). One second bounds that delay, and one abandoned attempt a
/// second per poller still keeps a frozen server's queue short: about 20 over a 20 s freeze,
/// where an attempt every poll (each given up after its 250 ms timeout) left about 80.
const CONNECT_ATTEMPT_BOUND: Duration = Duration::from_secs(1);

/// A poller's connection to its server: none yet, one being opened, or one open.
#[derive(Debug, Default)]
pub(super) enum Link {
    /// None: the next poll opens one.
    #[default]
    Closed,
    /// A connection attempt that has not finished, kept from one poll to the next (up to
    /// [`CONNECT_ATTEMPT_BOUND`]). A server that is frozen or starved of CPU still completes TCP
    /// handshakes (its kernel does), so an attempt given up at every poll and begun again at the
    /// next leaves one more connection waiting in its listen queue each time, and when the server
    /// wakes it starts a backend for every one of them at once. After a 20 s freeze of stage 8's
    /// primary, about 190 connections reached it in the 4 s after the thaw, 58 sessions of the
    /// pollers and 53 of the app's pools in the 12 s after it, and PostgreSQL refused some:
    /// "sorry, too many clients already" (stages/08-consensus/
    /// README.md, "The second set again").
    Opening {
        /// When the attempt began.
        began: Instant,
        /// The attempt, run as a task of its own so that it outlives a poll's timeout.
        task: tokio::task::JoinHandle<sqlx::Result<PgConnection>>,
    },
    /// Open.
    Open(PgConnection),
}

impl Link {
    /// Drops the connection, or gives up the attempt under way.
    fn close(&mut self) {
        if let Link::Opening { task, .. } = self {
            task.abort();
        }
        *self = Link::Closed;
    }

    /// Begins an attempt to connect.
    fn open(options: &PgConnectOptions) -> Self {
        let options = options.clone().application_name("conduit-lag-poller");
        Link::Opening {
            began: Instant::now(),
            task: tokio::spawn(async move { options.connect().await }),
        }
    }

    /// Waits for the attempt under way, if any, to finish, and keeps its connection.
    async fn finish_opening(&mut self) -> anyhow::Result<()> {
        if let Link::Opening { task, .. } = self {
            let opened = task.await;
            // Finished, either way: a task's handle is not awaited twice.
            *self = Link::Closed;
            *self = Link::Open(opened.context("the connection attempt's task")??);
        }
        Ok(())
    }
}

/// One position query over `link`, opening a connection first if there is none, all within
/// `timeout`. A broken connection, or an open one that does not answer, is dropped, so the next
/// poll starts afresh (an error the server answers with keeps it: [`answered_with_an_error`]);
/// an attempt to open one that is still under way is kept for the next poll to wait on
/// ([`Link::Opening`]); an answer without a row keeps the connection.
/// Shared by the replicas' pollers and a shard's [`super::watch::PrimaryWatch`].
pub(super) async fn poll_position(
    options: &PgConnectOptions,
    link: &mut Link,
    sql: &'static str,
    timeout: Duration,
) -> anyhow::Result<Lsn> {
    let attempt = async {
        if matches!(link, Link::Opening { began, .. } if began.elapsed() > CONNECT_ATTEMPT_BOUND) {
            link.close();
        }
        let begun_by_an_earlier_poll = matches!(link, Link::Opening { .. });
        if let Link::Closed = link {
            *link = Link::open(options);
        }
        if let Err(e) = link.finish_opening().await {
            // An attempt of an earlier poll that has failed since says little about the server
            // now (it may be back): this poll tries again, once.
            if !begun_by_an_earlier_poll {
                return Err(e);
            }
            *link = Link::open(options);
            link.finish_opening().await?;
        }
        let Link::Open(conn) = link else {
            anyhow::bail!("no connection");
        };
        let offset: Option<i64> = sqlx::query_scalar(sql).fetch_optional(&mut *conn).await?;
        Ok(offset)
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(Ok(Some(offset))) => Ok(Lsn::from_sql(offset)),
        // An answer, with no row: the server is up but no streaming replica (in stage 8 the
        // primary itself, polled among the replicas since any host may be either). The
        // connection is sound and kept: dropping it made every poll open a new one, and each
        // a new server process: about 20 a second on stage 8's primary, whose writes took 33 to
        // 215 ms at rest until this was found, 3 ms since (stages/08-consensus/README.md).
        Ok(Ok(None)) => Err(anyhow::anyhow!(
            "not a streaming replica (not in recovery, or nothing received yet)"
        )),
        Ok(Err(e)) => {
            if !answered_with_an_error(&e) {
                if let Link::Open(conn) = std::mem::take(link) {
                    let _ = conn.close_hard().await;
                }
            }
            Err(e)
        }
        Err(_) => {
            if let Link::Open(_) = link {
                *link = Link::Closed;
            }
            Err(NoAnswer(timeout).into())
        }
    }
}

/// Whether a failed poll was the server answering with an error over a sound connection, which
/// is then kept. The case that matters: in stage 8 the app moves its primary pool to a replica as
/// soon as its Patroni holds the leader key, a second or two before its PostgreSQL has finished
/// promoting, and until then the primary's position query fails ("recovery is in progress"). A
/// crash drill's kept logs showed the pollers opening a new connection to the promoting server
/// 17 times in the 2.0 s it took to promote, a server process each on its 0.2-core host
/// (stages/08-consensus/results/trials/logs/crash-promotion-poller-reconnects-excerpt.log),
/// because every failure dropped the connection. Not kept: a connection the server ends
/// (SQLSTATE class 57, operator intervention, such as a shutdown) or calls broken (class 08).
fn answered_with_an_error(e: &anyhow::Error) -> bool {
    let Some(sqlx::Error::Database(db)) = e.downcast_ref::<sqlx::Error>() else {
        return false;
    };
    let code = db.code();
    !code.is_some_and(|c| c.starts_with("57") || c.starts_with("08"))
}

/// A poll that got no answer in time: the server may be gone, or only slow (a small host's CPU
/// quota, a checkpoint), unlike a refused or broken connection, which says it is gone.
#[derive(Debug, thiserror::Error)]
#[error("no answer within {0:?}")]
pub(super) struct NoAnswer(pub Duration);

#[cfg(test)]
mod tests {
    use super::*;

    /// A server that completes TCP handshakes and then says nothing, as a frozen PostgreSQL's
    /// kernel does: ten polls of 50 ms wait on one connection attempt, not one each.
    #[tokio::test]
    async fn polls_of_a_silent_server_wait_on_one_connection_attempt() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicU64::new(0));
        let counter = accepted.clone();
        let server = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                held.push(stream);
            }
        });
        let options = PgConnectOptions::new()
            .host("127.0.0.1")
            .port(port)
            .username("nobody");
        let mut link = Link::default();
        let started = Instant::now();
        for _ in 0..10 {
            let polled = poll_position(
                &options,
                &mut link,
                "SELECT 1::int8",
                Duration::from_millis(50),
            )
            .await;
            assert!(polled.unwrap_err().is::<NoAnswer>());
        }
        // One attempt, and one more per CONNECT_ATTEMPT_BOUND that passed (on a slow machine
        // the ten polls may take longer than it): never one a poll.
        let allowed =
            1 + (started.elapsed().as_secs_f64() / CONNECT_ATTEMPT_BOUND.as_secs_f64()) as u64;
        let attempts = accepted.load(Ordering::SeqCst);
        assert!(
            (1..=allowed).contains(&attempts) && attempts < 10,
            "{attempts} attempts"
        );
        server.abort();
    }

    /// A query the server answers with an error (here a division by zero; in stage 8 a promoting
    /// server asked for a primary's position) leaves the poller's connection, and its server
    /// process, in place: the next poll runs on the same backend.
    #[tokio::test]
    async fn an_error_the_server_answers_with_keeps_the_connection() {
        let pg = archlab::postgres::TestPostgres::start().await.unwrap();
        let options: PgConnectOptions = pg.url().parse().unwrap();
        let mut link = Link::default();
        let timeout = Duration::from_secs(30);
        let backend = "SELECT pg_backend_pid()::int8";
        let before = poll_position(&options, &mut link, backend, timeout)
            .await
            .unwrap();
        let failed = poll_position(&options, &mut link, "SELECT (1 / 0)::int8", timeout).await;
        assert!(failed.is_err());
        let after = poll_position(&options, &mut link, backend, timeout)
            .await
            .unwrap();
        assert_eq!(
            before, after,
            "the same server process before and after the error"
        );
    }

    fn bounds() -> LagBounds {
        LagBounds {
            max_time: Duration::from_millis(1_000),
            max_bytes: 1_000,
            rejoin_time: Duration::from_millis(250),
        }
    }

    fn lag(ms: u64, bytes: u64) -> Lag {
        Lag {
            bytes,
            time: Duration::from_millis(ms),
        }
    }

    #[test]
    fn a_replica_leaves_past_the_bound_and_returns_only_well_under_it() {
        let b = bounds();
        assert!(
            b.in_rotation(true, lag(1_000, 1_000)),
            "at the bound: stays"
        );
        assert!(!b.in_rotation(true, lag(1_001, 0)), "past it in time: out");
        assert!(!b.in_rotation(true, lag(0, 1_001)), "past it in bytes: out");
        assert!(
            !b.in_rotation(false, lag(600, 0)),
            "under the bound but not enough: still out"
        );
        assert!(!b.in_rotation(false, lag(0, 600)), "bytes too: still out");
        assert!(
            b.in_rotation(false, lag(250, 500)),
            "under the rejoin bounds: back"
        );
    }

    #[test]
    fn time_lag_counts_from_when_the_first_unreplayed_position_was_seen() {
        let t0 = Instant::now();
        let mut history = PrimaryHistory::default();
        history.record(Lsn(100), t0);
        history.record(Lsn(100), t0 + Duration::from_millis(50)); // no new write: ignored
        history.record(Lsn(200), t0 + Duration::from_millis(100));
        history.record(Lsn(300), t0 + Duration::from_millis(150));
        let now = t0 + Duration::from_millis(400);
        assert_eq!(history.lag_of(Lsn(300), now), lag(0, 0), "caught up");
        assert_eq!(
            history.lag_of(Lsn(150), now),
            lag(300, 150),
            "200 seen at 100 ms"
        );
        assert_eq!(
            history.lag_of(Lsn(50), now),
            lag(400, 250),
            "behind everything seen"
        );
        assert_eq!(
            PrimaryHistory::default().lag_of(Lsn(0), now),
            Lag::default()
        );
    }

    #[test]
    fn a_position_reached_before_a_moment_is_the_first_seen_after_it() {
        let t0 = Instant::now();
        let mut history = PrimaryHistory::default();
        assert_eq!(history.reached_before(t0), None);
        history.record(Lsn(100), t0);
        history.record(Lsn(200), t0 + Duration::from_millis(100));
        history.record(Lsn(300), t0 + Duration::from_millis(200));
        // A write committed before t0 + 50 ms was in the WAL by the poll at t0 + 100 ms.
        assert_eq!(
            history.reached_before(t0 + Duration::from_millis(50)),
            Some(Lsn(200))
        );
        assert_eq!(history.reached_before(t0), Some(Lsn(100)));
        // Nothing new seen since: the newest position covers it.
        assert_eq!(
            history.reached_before(t0 + Duration::from_secs(5)),
            Some(Lsn(300))
        );
    }

    #[test]
    fn history_is_bounded() {
        let t0 = Instant::now();
        let mut history = PrimaryHistory::default();
        for i in 0..(HISTORY as u64 * 2) {
            history.record(Lsn(i + 1), t0);
        }
        assert_eq!(history.seen.len(), HISTORY);
        assert_eq!(history.newest(), Some(Lsn(HISTORY as u64 * 2)));
    }
}
