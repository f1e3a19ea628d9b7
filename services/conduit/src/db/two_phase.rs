//! Two-phase commit across shards: one write that changes rows on two PostgreSQL servers commits
//! on both or on neither, even when the app host coordinating it dies half-way.
//!
//! Each shard is one PostgreSQL primary, ACID on its own. A global transaction opens a local
//! transaction (a *branch*) on every shard it touches. One of them, the *decider* (the first shard
//! named), never prepares: its local COMMIT is the commit point. The protocol, after the handler
//! has done its work on every branch:
//!
//! ```text
//!  coordinator (an app host)          decider shard D                 other shard S
//!  ── begin ──────────────────────────> INSERT two_phase_transactions
//!                                       (txid, participants), COMMIT   (durable before any vote)
//!  ── BEGIN on every branch, the handler's work on each ───────────────────────────────>
//!  ── phase 1: vote ────────────────────────────────────────────────> PREPARE TRANSACTION gid
//!  ── phase 2: decide ────────────────> UPDATE ... outcome = 'commit'
//!                                       COMMIT  ◀── the global commit point
//!  ── finish ────────────────────────────────────────────────────────> COMMIT PREPARED gid
//!                                     > DELETE the row (forget the transaction)
//! ```
//!
//! Why each step is where it is:
//! - The transaction's id (`txid`) is an id from the decider's `next_id()`, so it names the
//!   decider in its low bits, is never handed out twice, and is committed before any shard votes:
//!   a prepared branch always names a transaction whose record exists. Each branch's global id
//!   (`gid`) is `conduit-2pc:<txid>:<shard>`: nothing in it comes from the process's memory.
//! - The decision is written in the decider's own local transaction, together with the decider's
//!   share of the work (the approach of Vitess's "decision record"): no separate coordinator log,
//!   and no window in which the decider committed but the decision is not written.
//! - A prepared branch is on disk and belongs to no connection: if the coordinator dies, or its
//!   connection drops, PostgreSQL keeps it, holding its locks, until someone commits or rolls it
//!   back. This module never lets a connection that is inside a transaction go back to the pool:
//!   a branch abandoned before its vote is closed (the server rolls it back), one after its vote
//!   is left prepared, for recovery. Dropping a [`GlobalTransaction`] is therefore a crash, as far
//!   as the servers can tell, and recovery is what finishes it.
//!
//! Recovery ([`recover`], at start and every few seconds): every prepared branch older than a
//! grace period is resolved by its transaction's record on the decider. `commit` commits it;
//! no record, or no decision, is *presumed abort*: recovery writes `abort` into the record first
//! (`WHERE outcome IS NULL`, so if the coordinator is deciding at that moment, one of the two
//! waits for the other's row lock and loses), then rolls the branch back. "The prepared
//! transaction does not exist" is taken as done only after a rescan of `pg_prepared_xacts` shows
//! it gone: a sharding proxy once took it as success straight away and so hid orphans.
//!
//! The cost, paid by every cross-shard write: one more committed round trip on the decider (the
//! record), a PREPARE and a COMMIT PREPARED per other shard (each an fsync), and locks held across
//! two round trips instead of one. Writes on a single shard skip all of it: [`Coordinator::begin`]
//! with one shard is a plain local transaction.
//!
//! The blocking window, shown by the drills: a branch prepared whose coordinator died holds its
//! row locks until recovery runs, at least the grace period later. That is 2PC's known weakness;
//! three-phase commit does not remove it under partitions (stage 8's models show why).

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use sqlx::{pool::PoolConnection, Executor, PgConnection, PgPool, Postgres};

use super::bucket_of;

/// The start of every global transaction id this app prepares: recovery touches only these,
/// never a prepared transaction someone else made on the same server.
pub const GID_PREFIX: &str = "conduit-2pc";

/// The shard that decides transaction `txid`: its id came from that shard's `next_id()`, whose
/// bucket is the shard's own number (`shard_identity`, set by `Shards::prepare`).
fn decider_of(txid: i64) -> u8 {
    bucket_of(txid)
}

/// The global id of the branch on `shard` of transaction `txid`.
pub fn gid(txid: i64, shard: u8) -> String {
    format!("{GID_PREFIX}:{txid}:{shard}")
}

/// The transaction and shard a global id names, if it is one of ours.
pub fn parse_gid(gid: &str) -> Option<(i64, u8)> {
    let mut parts = gid.strip_prefix(GID_PREFIX)?.strip_prefix(':')?.split(':');
    let txid = parts.next()?.parse().ok()?;
    let shard = parts.next()?.parse().ok()?;
    parts.next().is_none().then_some((txid, shard))
}

/// Where a coordinator can be made to crash, for the drills: the four moments at which a dead
/// coordinator leaves the shards in a different state for recovery to finish.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FaultPoint {
    /// One branch prepared, others still open: recovery must roll the prepared one back.
    AfterFirstPrepare,
    /// Every branch prepared, no decision: recovery must roll them all back.
    AfterAllPrepares,
    /// The decision committed, nothing finished: recovery must commit every prepared branch.
    AfterDecision,
    /// One branch committed, others still prepared: recovery must commit the rest.
    AfterFirstCommitPrepared,
}

impl FaultPoint {
    /// Every point, in protocol order.
    pub const ALL: [FaultPoint; 4] = [
        FaultPoint::AfterFirstPrepare,
        FaultPoint::AfterAllPrepares,
        FaultPoint::AfterDecision,
        FaultPoint::AfterFirstCommitPrepared,
    ];
}

/// What the coordinator does when it reaches its fault point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Crash {
    /// Abort the process (the drill against a running stage).
    Process,
    /// Abandon the transaction exactly as a dead process would (its connections closed, nothing
    /// more sent) and return [`TwoPhaseError::Crashed`]: for tests inside one process.
    Abandon,
}

/// Why a global transaction did not commit, or may not have.
#[derive(Debug, thiserror::Error)]
pub enum TwoPhaseError {
    /// Nothing was committed: every branch was rolled back, or is left prepared without a
    /// decision, which recovery will roll back.
    #[error("global transaction aborted: {0}")]
    Aborted(#[source] sqlx::Error),
    /// Recovery had already decided to abort this transaction (the coordinator was slower than
    /// the grace period); nothing was committed.
    #[error("global transaction aborted by recovery before its decision")]
    AbortedByRecovery,
    /// The decider's COMMIT was sent but no answer came back: the transaction may or may not
    /// have committed; recovery will finish it either way, consistently on every shard.
    #[error("global transaction outcome unknown: {0}")]
    Unknown(#[source] sqlx::Error),
    /// Drills only: the coordinator was made to crash here.
    #[error("coordinator crashed (drill) at {0:?}")]
    Crashed(FaultPoint),
    /// The handler asked for a shard it did not name at `begin`: a bug.
    #[error("shard {0} is not a participant of this transaction")]
    NotAParticipant(u8),
}

impl From<TwoPhaseError> for crate::error::ApiError {
    fn from(error: TwoPhaseError) -> Self {
        match error {
            TwoPhaseError::Aborted(cause) => cause.into(),
            TwoPhaseError::AbortedByRecovery | TwoPhaseError::Unknown(_) => {
                tracing::warn!(error = %error, "cross-shard write not acknowledged");
                Self::DatabaseUnavailable("write not completed, try again")
            }
            TwoPhaseError::Crashed(_) | TwoPhaseError::NotAParticipant(_) => {
                Self::Internal(anyhow::Error::new(error))
            }
        }
    }
}

/// Whether `error` is an answer from the server (so the statement certainly failed) rather than a
/// lost connection (so it may have run).
fn server_answered(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(_))
}

/// SQLSTATE 42704, `undefined_object`: what COMMIT/ROLLBACK PREPARED answer for a gid the server
/// does not hold (already finished, or never prepared).
fn is_undefined_object(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(db) if db.code().as_deref() == Some("42704"))
}

/// Counts for `/metrics`, kept as plain atomics so the coordinator needs no registry.
#[derive(Debug, Default)]
pub struct TwoPhaseStats {
    /// Global transactions committed (decision written and acknowledged).
    pub committed: AtomicU64,
    /// Global transactions aborted by their coordinator (a branch failed before the decision).
    pub aborted: AtomicU64,
    /// Branches left prepared by a coordinator (a COMMIT PREPARED that failed), for recovery.
    pub left_to_recovery: AtomicU64,
    /// Branches recovery committed.
    pub recovered_commits: AtomicU64,
    /// Branches recovery rolled back.
    pub recovered_rollbacks: AtomicU64,
    /// Prepared branches of ours seen on all shards at the last recovery pass.
    pub in_doubt: AtomicU64,
    /// Age of the oldest of them, in milliseconds (0 when none).
    pub oldest_in_doubt_ms: AtomicU64,
}

/// Starts and finishes global transactions over a fixed set of shards (their primaries).
#[derive(Debug)]
pub struct Coordinator {
    /// Shard `n`'s primary is `shards[n]`.
    shards: Vec<PgPool>,
    /// Prepared branches younger than this are left alone by recovery: their coordinator may
    /// still be working on them.
    grace: Duration,
    /// Where a drill made this coordinator crash, once armed (never, outside drills and tests).
    crash_at: std::sync::OnceLock<(FaultPoint, Crash)>,
    /// Exported in `/metrics`.
    pub stats: Arc<TwoPhaseStats>,
}

impl Coordinator {
    /// A coordinator over `shards` (indexed by shard number); recovery leaves prepared branches
    /// younger than `grace` to their coordinator.
    pub fn new(shards: Vec<PgPool>, grace: Duration) -> Self {
        Self {
            shards,
            grace,
            crash_at: std::sync::OnceLock::new(),
            stats: Arc::default(),
        }
    }

    /// Drills: crash in the way `crash` says when reaching `point`. Compiled into tests and into
    /// builds with the `drills` feature only; a production build has no way to arm it.
    #[cfg(any(test, feature = "drills"))]
    pub fn crash_at(self, point: FaultPoint, crash: Crash) -> Self {
        let _ = self.crash_at.set((point, crash));
        self
    }

    /// Drills against a running stage: the process aborts when it next reaches `point`, as a
    /// crashed host would (no destructor runs, no connection is closed politely). Armed once;
    /// `false` if it already was.
    #[cfg(any(test, feature = "drills"))]
    pub fn arm(&self, point: FaultPoint) -> bool {
        self.crash_at.set((point, Crash::Process)).is_ok()
    }

    fn pool(&self, shard: u8) -> Result<&PgPool, TwoPhaseError> {
        self.shards
            .get(usize::from(shard))
            .ok_or(TwoPhaseError::NotAParticipant(shard))
    }

    /// Reaching `point`: carries on, or crashes if a drill armed it.
    fn reached(&self, point: FaultPoint) -> Result<(), TwoPhaseError> {
        match self.crash_at.get().copied() {
            Some((at, Crash::Process)) if at == point => {
                tracing::error!(?point, "drill: the coordinator crashes here");
                std::process::abort()
            }
            Some((at, Crash::Abandon)) if at == point => Err(TwoPhaseError::Crashed(point)),
            _ => Ok(()),
        }
    }

    /// Opens a global transaction over `shards` (the first decides; repeats are ignored). With a
    /// single shard it is an ordinary local transaction: no record, no prepare.
    ///
    /// Takes the shards by value before anything is awaited, and the transaction holds the
    /// coordinator by `Arc`: a handler's future then borrows nothing across its awaits, which
    /// axum needs (a borrowed slice held over an await makes the future's `Send` depend on a
    /// lifetime the compiler cannot name).
    pub fn begin(
        self: &Arc<Self>,
        shards: &[u8],
    ) -> impl std::future::Future<Output = Result<GlobalTransaction, TwoPhaseError>> + Send + 'static
    {
        let mut participants: Vec<u8> = Vec::with_capacity(shards.len());
        for shard in shards {
            if !participants.contains(shard) {
                participants.push(*shard);
            }
        }
        let coordinator = self.clone();
        async move { coordinator.open(participants).await }
    }

    async fn open(
        self: Arc<Self>,
        participants: Vec<u8>,
    ) -> Result<GlobalTransaction, TwoPhaseError> {
        let Some(&decider) = participants.first() else {
            return Err(TwoPhaseError::NotAParticipant(0));
        };
        // Connections are taken in shard order, whichever shard decides: two transactions
        // over the same shards, one deciding on each, would otherwise each hold one shard's
        // connection and wait for the other's, and with small pools (two per app host per
        // shard in the lab) enough of them stall every request until the acquire timeout.
        let mut in_shard_order = participants.clone();
        in_shard_order.sort_unstable();
        let mut conns = Vec::with_capacity(participants.len());
        for &shard in &in_shard_order {
            let conn = self
                .pool(shard)?
                .clone()
                .acquire()
                .await
                .map_err(TwoPhaseError::Aborted)?;
            conns.push((shard, conn));
        }
        let mut take = |shard: u8| {
            let at = conns.iter().position(|(s, _)| *s == shard);
            at.map(|at| conns.swap_remove(at).1)
                .ok_or(TwoPhaseError::NotAParticipant(shard))
        };
        let mut decider_conn = take(decider)?;
        // The record, committed on its own before anything else happens (autocommit).
        let txid = if participants.len() > 1 {
            let as_smallints: Vec<i16> = participants.iter().map(|s| i16::from(*s)).collect();
            sqlx::query_scalar::<_, i64>(
                "INSERT INTO two_phase_transactions (participants) VALUES ($1) RETURNING txid",
            )
            .bind(&as_smallints)
            .fetch_one(&mut *decider_conn)
            .await
            .map_err(TwoPhaseError::Aborted)?
        } else {
            0
        };
        let mut branches = Vec::with_capacity(participants.len());
        branches.push(Branch::open(decider, decider_conn).await?);
        for &shard in &participants[1..] {
            branches.push(Branch::open(shard, take(shard)?).await?);
        }
        Ok(GlobalTransaction {
            coordinator: self,
            txid,
            branches,
        })
    }
}

/// Where one branch is in the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BranchState {
    /// Inside `BEGIN`: the handler's work goes here.
    Open,
    /// `PREPARE TRANSACTION` succeeded: it now belongs to the server, not the connection.
    Prepared,
    /// Committed or rolled back; its connection is back to normal.
    Finished,
}

/// One shard's part of a global transaction, on a connection of its own.
struct Branch {
    shard: u8,
    /// `None` only while being dropped.
    conn: Option<PoolConnection<Postgres>>,
    state: BranchState,
}

impl Branch {
    async fn open(shard: u8, mut conn: PoolConnection<Postgres>) -> Result<Self, TwoPhaseError> {
        conn.execute("BEGIN")
            .await
            .map_err(TwoPhaseError::Aborted)?;
        Ok(Self {
            shard,
            conn: Some(conn),
            state: BranchState::Open,
        })
    }

    fn conn(&mut self) -> &mut PgConnection {
        // Only `drop` takes it out.
        self.conn.as_deref_mut().unwrap_or_else(|| unreachable!())
    }

    /// Runs `sql`, without parameters (the simple query protocol, as `BEGIN`, `PREPARE
    /// TRANSACTION` and friends need no plan).
    async fn run(&mut self, sql: &str) -> Result<(), sqlx::Error> {
        self.conn().execute(sql).await.map(|_| ())
    }
}

impl Drop for Branch {
    /// A connection still inside `BEGIN` must not go back to the pool (the next user would run
    /// inside this transaction): it is closed, and the server rolls the transaction back. A
    /// prepared branch is unaffected by its connection closing: it waits for recovery.
    fn drop(&mut self) {
        if self.state == BranchState::Open {
            if let Some(conn) = self.conn.take() {
                drop(conn.detach());
            }
        }
    }
}

/// A transaction over several shards; see the module's documentation for its protocol.
pub struct GlobalTransaction {
    coordinator: Arc<Coordinator>,
    /// 0 for a single-shard transaction (no record).
    txid: i64,
    /// The decider first.
    branches: Vec<Branch>,
}

impl GlobalTransaction {
    /// The connection of the branch on `shard`, for the handler's statements there.
    pub fn on(&mut self, shard: u8) -> Result<&mut PgConnection, TwoPhaseError> {
        self.branches
            .iter_mut()
            .find(|b| b.shard == shard)
            .map(Branch::conn)
            .ok_or(TwoPhaseError::NotAParticipant(shard))
    }

    /// The id of the global transaction (0 when it spans one shard).
    pub fn txid(&self) -> i64 {
        self.txid
    }

    /// Commits on every shard, or on none. `Ok` means the decision is durable: every branch is
    /// committed, or will be by recovery (a shard that failed to answer its COMMIT PREPARED).
    pub async fn commit(mut self) -> Result<(), TwoPhaseError> {
        let coordinator = self.coordinator.clone();
        let txid = self.txid;
        if self.branches.len() == 1 {
            let decider = &mut self.branches[0];
            decider.run("COMMIT").await.map_err(|e| {
                if server_answered(&e) {
                    TwoPhaseError::Aborted(e)
                } else {
                    TwoPhaseError::Unknown(e)
                }
            })?;
            decider.state = BranchState::Finished;
            return Ok(());
        }

        // Phase 1: every other shard votes by preparing.
        for i in 1..self.branches.len() {
            let branch = &mut self.branches[i];
            let prepare = format!("PREPARE TRANSACTION '{}'", gid(txid, branch.shard));
            if let Err(error) = branch.run(&prepare).await {
                // A failed PREPARE leaves nothing prepared (the server rolls the branch back).
                branch.state = BranchState::Finished;
                return Err(self.aborted(TwoPhaseError::Aborted(error)).await);
            }
            branch.state = BranchState::Prepared;
            if i == 1 {
                coordinator.reached(FaultPoint::AfterFirstPrepare)?;
            }
        }
        coordinator.reached(FaultPoint::AfterAllPrepares)?;

        // Phase 2: the decision, committed with the decider's own work.
        let decided = sqlx::query(
            "UPDATE two_phase_transactions SET outcome = 'commit', decided_at = clock_timestamp() \
             WHERE txid = $1 AND outcome IS NULL",
        )
        .bind(txid)
        .execute(self.branches[0].conn())
        .await;
        match decided {
            Ok(done) if done.rows_affected() == 1 => {}
            Ok(_) => return Err(self.aborted(TwoPhaseError::AbortedByRecovery).await),
            Err(error) => return Err(self.aborted(TwoPhaseError::Aborted(error)).await),
        }
        if let Err(error) = self.branches[0].run("COMMIT").await {
            if server_answered(&error) {
                self.branches[0].state = BranchState::Finished;
                return Err(self.aborted(TwoPhaseError::Aborted(error)).await);
            }
            // The branches stay prepared (their connections are fine); recovery reads the
            // record, which says 'commit' if the COMMIT got through and nothing otherwise.
            return Err(TwoPhaseError::Unknown(error));
        }
        self.branches[0].state = BranchState::Finished;
        coordinator.stats.committed.fetch_add(1, Ordering::Relaxed);
        coordinator.reached(FaultPoint::AfterDecision)?;

        // Finish: committed now whatever happens; what fails here is left to recovery.
        let mut all_finished = true;
        for i in 1..self.branches.len() {
            let branch = &mut self.branches[i];
            let finish = format!("COMMIT PREPARED '{}'", gid(txid, branch.shard));
            match branch.run(&finish).await {
                Ok(()) => branch.state = BranchState::Finished,
                Err(error) => {
                    all_finished = false;
                    coordinator
                        .stats
                        .left_to_recovery
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(txid, shard = branch.shard, %error,
                        "COMMIT PREPARED failed: the branch is committed by recovery");
                }
            }
            if i == 1 {
                coordinator.reached(FaultPoint::AfterFirstCommitPrepared)?;
            }
        }
        if all_finished {
            self.forget().await;
        }
        Ok(())
    }

    /// Commits if `outcome` (the handler's work on the branches) is `Ok`, else rolls back and
    /// hands the error on: the one way a handler ends a global transaction.
    pub async fn settle<T, E: From<TwoPhaseError>>(self, outcome: Result<T, E>) -> Result<T, E> {
        match outcome {
            Ok(value) => {
                self.commit().await?;
                Ok(value)
            }
            Err(error) => {
                self.rollback().await;
                Err(error)
            }
        }
    }

    /// Rolls back every branch (the handler changed its mind, or a step failed): open ones with
    /// `ROLLBACK`, prepared ones with `ROLLBACK PREPARED`; the record is deleted if nothing is
    /// left prepared. A branch that cannot be reached stays for recovery, which presumes abort.
    pub async fn rollback(mut self) {
        self.abort().await;
    }

    /// Rolls back after a failed step, counts it, and hands back `error` to return.
    async fn aborted(&mut self, error: TwoPhaseError) -> TwoPhaseError {
        self.abort().await;
        self.coordinator
            .stats
            .aborted
            .fetch_add(1, Ordering::Relaxed);
        error
    }

    async fn abort(&mut self) {
        let txid = self.txid;
        let mut all_finished = true;
        for branch in &mut self.branches {
            let sql = match branch.state {
                BranchState::Open => "ROLLBACK".to_owned(),
                BranchState::Prepared => format!("ROLLBACK PREPARED '{}'", gid(txid, branch.shard)),
                BranchState::Finished => continue,
            };
            match branch.run(&sql).await {
                Ok(()) => branch.state = BranchState::Finished,
                // An open branch whose connection failed is closed on drop (rolled back by its
                // server); a prepared one waits for recovery.
                Err(_) => all_finished &= branch.state == BranchState::Open,
            }
        }
        if all_finished && txid != 0 {
            self.forget().await;
        }
    }

    /// Deletes the record: nothing of the transaction is left on any shard. Best effort: a record
    /// left behind is pruned by recovery.
    async fn forget(&mut self) {
        let result = sqlx::query("DELETE FROM two_phase_transactions WHERE txid = $1")
            .bind(self.txid)
            .execute(self.branches[0].conn())
            .await;
        if let Err(error) = result {
            tracing::debug!(txid = self.txid, %error, "record not deleted; recovery prunes it");
        }
    }
}

/// What one recovery pass found and did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Prepared branches of ours on all shards at the start of the pass.
    pub in_doubt: usize,
    /// The age of the oldest of them.
    pub oldest: Duration,
    /// Branches committed (their decision said commit).
    pub committed: usize,
    /// Branches rolled back (no decision: presumed abort).
    pub rolled_back: usize,
    /// Branches left for the next pass (younger than the grace period, or a shard did not answer).
    pub left: usize,
    /// Records deleted (their transactions finished on every shard).
    pub pruned: u64,
}

/// The outcome recovery applies to a prepared branch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Commit,
    Abort,
}

impl Coordinator {
    /// One recovery pass over every shard: finishes each prepared branch of ours older than the
    /// grace period by its transaction's record, then prunes records of finished transactions.
    /// Safe to run on every app host at once: every step is idempotent, and the decision is taken
    /// once, in the record, under its row lock.
    pub async fn recover(&self) -> anyhow::Result<RecoveryReport> {
        let mut report = RecoveryReport::default();
        // Each shard's clock as the scan starts, read before any shard is scanned: a record
        // decided before this moment on its decider had all its branches prepared before it
        // too, so the scan sees every one of them still prepared (see the pruning below).
        let mut scan_started = Vec::with_capacity(self.shards.len());
        for pool in &self.shards {
            scan_started.push(
                sqlx::query_scalar::<_, time::OffsetDateTime>("SELECT clock_timestamp()")
                    .fetch_one(pool)
                    .await
                    .ok(),
            );
        }
        let mut prepared: Vec<(u8, String, Duration)> = Vec::new();
        let mut every_shard_scanned = true;
        for (shard, pool) in self.shards.iter().enumerate() {
            let shard = u8::try_from(shard)?;
            match Self::prepared_on(pool).await {
                Ok(found) => prepared.extend(found.into_iter().map(|(gid, age)| (shard, gid, age))),
                Err(error) => {
                    every_shard_scanned = false;
                    tracing::warn!(shard, %error, "recovery could not scan a shard");
                }
            }
        }
        report.in_doubt = prepared.len();
        report.oldest = prepared
            .iter()
            .map(|(_, _, age)| *age)
            .max()
            .unwrap_or_default();
        self.stats
            .in_doubt
            .store(prepared.len() as u64, Ordering::Relaxed);
        self.stats.oldest_in_doubt_ms.store(
            u64::try_from(report.oldest.as_millis()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );

        for (shard, gid, age) in &prepared {
            let Some((txid, _)) = parse_gid(gid) else {
                continue;
            };
            if *age < self.grace {
                report.left += 1;
                continue;
            }
            let finished = async {
                let outcome = self.outcome_of(txid).await?;
                self.finish(*shard, gid, outcome).await?;
                anyhow::Ok(outcome)
            }
            .await;
            match finished {
                Ok(Outcome::Commit) => {
                    report.committed += 1;
                    self.stats.recovered_commits.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Outcome::Abort) => {
                    report.rolled_back += 1;
                    self.stats
                        .recovered_rollbacks
                        .fetch_add(1, Ordering::Relaxed);
                }
                Err(error) => {
                    report.left += 1;
                    tracing::warn!(gid, %error, "recovery could not finish a prepared branch");
                }
            }
        }

        // Forget records whose transactions are over. A record decided (commit or abort) before
        // the scan started, with no branch seen prepared, has none left anywhere: its branches
        // were all prepared before its decision, hence before the scan, and the scan saw none.
        // A record never decided, begun a grace period before the scan, is deleted too, which is
        // the same as deciding abort: a branch prepared after the scan finds no record, and its
        // coordinator's decision finds no row to update. Not a younger one: its coordinator may
        // be doing the handler's work right now, and deleting its record would abort a healthy
        // write (it did: one registration in a RealWorld run got a 503 that way). Only when every
        // shard was scanned: a branch on a shard that did not answer could still need its record.
        if every_shard_scanned {
            for (decider, (pool, started)) in self.shards.iter().zip(&scan_started).enumerate() {
                let Some(started) = started else { continue };
                let still: Vec<i64> = prepared
                    .iter()
                    .filter_map(|(_, gid, _)| parse_gid(gid))
                    .map(|(txid, _)| txid)
                    .filter(|txid| usize::from(decider_of(*txid)) == decider)
                    .collect();
                report.pruned += sqlx::query(
                    "DELETE FROM two_phase_transactions \
                     WHERE txid <> ALL($2) AND (decided_at < $1 OR \
                           (decided_at IS NULL AND begun_at < $1 - make_interval(secs => $3)))",
                )
                .bind(started)
                .bind(&still)
                .bind(self.grace.as_secs_f64())
                .execute(pool)
                .await?
                .rows_affected();
            }
        }
        Ok(report)
    }

    /// Our prepared branches on the server behind `pool`, with their ages.
    async fn prepared_on(pool: &PgPool) -> Result<Vec<(String, Duration)>, sqlx::Error> {
        let rows: Vec<(String, f64)> = sqlx::query_as(
            "SELECT gid, extract(epoch FROM now() - prepared)::float8 FROM pg_prepared_xacts \
             WHERE database = current_database() AND starts_with(gid, $1)",
        )
        .bind(format!("{GID_PREFIX}:"))
        .fetch_all(pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(gid, age)| (gid, Duration::from_secs_f64(age.max(0.0))))
            .collect())
    }

    /// The outcome of transaction `txid`, deciding `abort` if nobody decided yet. The UPDATE
    /// waits for the row lock of a coordinator that is deciding at this very moment, so it sees
    /// that decision, or makes its own that the coordinator will then see.
    async fn outcome_of(&self, txid: i64) -> anyhow::Result<Outcome> {
        let decider = self.pool(decider_of(txid))?;
        sqlx::query(
            "UPDATE two_phase_transactions SET outcome = 'abort', decided_at = clock_timestamp() \
             WHERE txid = $1 AND outcome IS NULL",
        )
        .bind(txid)
        .execute(decider)
        .await?;
        let outcome: Option<String> =
            sqlx::query_scalar("SELECT outcome FROM two_phase_transactions WHERE txid = $1")
                .bind(txid)
                .fetch_optional(decider)
                .await?
                .flatten();
        // No record at all: its coordinator forgot it after rolling everything back, or its
        // begin never committed. Either way nothing committed: abort.
        Ok(match outcome.as_deref() {
            Some("commit") => Outcome::Commit,
            _ => Outcome::Abort,
        })
    }

    /// Applies `outcome` to the prepared branch `gid` on `shard`. "Does not exist" is success
    /// only if a rescan confirms the branch is gone (another host finished it first).
    async fn finish(&self, shard: u8, gid: &str, outcome: Outcome) -> anyhow::Result<()> {
        let pool = self.pool(shard)?;
        let verb = match outcome {
            Outcome::Commit => "COMMIT PREPARED",
            Outcome::Abort => "ROLLBACK PREPARED",
        };
        // `gid` came from pg_prepared_xacts and parsed as ours: digits and colons only.
        match sqlx::raw_sql(&format!("{verb} '{gid}'"))
            .execute(pool)
            .await
        {
            Ok(_) => Ok(()),
            Err(error) if is_undefined_object(&error) => {
                let still: i64 =
                    sqlx::query_scalar("SELECT count(*) FROM pg_prepared_xacts WHERE gid = $1")
                        .bind(gid)
                        .fetch_one(pool)
                        .await?;
                anyhow::ensure!(
                    still == 0,
                    "{gid} still prepared after '{verb}' said it does not exist"
                );
                Ok(())
            }
            Err(error) => Err(error.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use archlab::postgres::TestPostgres;

    use super::*;

    #[test]
    fn global_ids_name_their_transaction_and_shard_and_nothing_else_is_ours() {
        assert_eq!(parse_gid(&gid(4_353, 2)), Some((4_353, 2)));
        for other in [
            "pgbench:1:2",
            "conduit-2pc:1",
            "conduit-2pc:1:2:3",
            "conduit-2pc:x:1",
        ] {
            assert_eq!(parse_gid(other), None, "{other}");
        }
    }

    /// `n` real PostgreSQL servers, shard `i` on server `i`, each migrated, with its shard number
    /// set and a table `ledger` for the tests' writes.
    struct Shards {
        servers: Vec<TestPostgres>,
        pools: Vec<PgPool>,
    }

    impl Shards {
        async fn start(n: u8) -> Self {
            let mut servers = Vec::new();
            let mut pools = Vec::new();
            for shard in 0..n {
                let server = TestPostgres::start().await.unwrap();
                let pool = PgPool::connect(&server.url()).await.unwrap();
                super::super::MIGRATOR.run(&pool).await.unwrap();
                sqlx::query("UPDATE shard_identity SET shard_id = $1")
                    .bind(i32::from(shard))
                    .execute(&pool)
                    .await
                    .unwrap();
                sqlx::raw_sql("CREATE TABLE ledger (entry text PRIMARY KEY)")
                    .execute(&pool)
                    .await
                    .unwrap();
                servers.push(server);
                pools.push(pool);
            }
            Self { servers, pools }
        }

        /// A coordinator whose recovery finishes any prepared branch at once (grace 0).
        fn coordinator(&self) -> Arc<Coordinator> {
            Arc::new(Coordinator::new(self.pools.clone(), Duration::ZERO))
        }

        /// One that crashes, as `crash` says, at `point`.
        fn crashing(&self, point: FaultPoint) -> Arc<Coordinator> {
            Arc::new(
                Coordinator::new(self.pools.clone(), Duration::ZERO)
                    .crash_at(point, Crash::Abandon),
            )
        }

        /// Which shards hold ledger entry `entry`.
        async fn holding(&self, entry: &str) -> Vec<u8> {
            let mut holding = Vec::new();
            for (shard, pool) in self.pools.iter().enumerate() {
                let n: i64 = sqlx::query_scalar("SELECT count(*) FROM ledger WHERE entry = $1")
                    .bind(entry)
                    .fetch_one(pool)
                    .await
                    .unwrap();
                if n == 1 {
                    holding.push(u8::try_from(shard).unwrap());
                }
            }
            holding
        }

        /// Prepared branches and transaction records left on all shards.
        async fn leftovers(&self) -> (i64, i64) {
            let (mut prepared, mut records) = (0, 0);
            for pool in &self.pools {
                prepared += sqlx::query_scalar::<_, i64>("SELECT count(*) FROM pg_prepared_xacts")
                    .fetch_one(pool)
                    .await
                    .unwrap();
                records +=
                    sqlx::query_scalar::<_, i64>("SELECT count(*) FROM two_phase_transactions")
                        .fetch_one(pool)
                        .await
                        .unwrap();
            }
            (prepared, records)
        }
    }

    /// Writes ledger entry `entry` on every shard of `tx`.
    async fn write_everywhere(tx: &mut GlobalTransaction, shards: &[u8], entry: &str) {
        for shard in shards {
            sqlx::query("INSERT INTO ledger (entry) VALUES ($1)")
                .bind(entry)
                .execute(tx.on(*shard).unwrap())
                .await
                .unwrap();
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_global_transaction_commits_on_every_shard_or_on_none() {
        let shards = Shards::start(2).await;
        let coordinator = shards.coordinator();

        let mut tx = coordinator.begin(&[1, 0]).await.unwrap();
        assert_eq!(decider_of(tx.txid()), 1, "the first shard named decides");
        write_everywhere(&mut tx, &[0, 1], "both").await;
        tx.commit().await.unwrap();
        assert_eq!(shards.holding("both").await, [0, 1]);
        assert_eq!(
            shards.leftovers().await,
            (0, 0),
            "nothing prepared, record forgotten"
        );

        // A vote fails: shard 0 already holds "dup", so its INSERT fails and the branch is
        // dropped with the transaction; shard 1's write is rolled back with it.
        let mut tx = coordinator.begin(&[0, 1]).await.unwrap();
        write_everywhere(&mut tx, &[1], "dup").await;
        let failed = sqlx::query("INSERT INTO ledger (entry) VALUES ('both')")
            .execute(tx.on(0).unwrap())
            .await;
        assert!(failed.is_err());
        drop(tx);
        assert_eq!(shards.holding("dup").await, Vec::<u8>::new());
        // Dropped like a crash: its record stays until a recovery pass forgets it.
        assert_eq!(shards.leftovers().await, (0, 1));
        let report = coordinator.recover().await.unwrap();
        assert_eq!((report.in_doubt, report.pruned), (0, 1), "{report:?}");

        // Rolled back on purpose, after nothing went wrong.
        let mut tx = coordinator.begin(&[0, 1]).await.unwrap();
        write_everywhere(&mut tx, &[0, 1], "changed-mind").await;
        tx.rollback().await;
        assert_eq!(shards.holding("changed-mind").await, Vec::<u8>::new());
        assert_eq!(shards.leftovers().await, (0, 0));

        // One shard: a local transaction, no record and no prepare.
        let mut tx = coordinator.begin(&[1]).await.unwrap();
        assert_eq!(tx.txid(), 0);
        write_everywhere(&mut tx, &[1], "local").await;
        tx.commit().await.unwrap();
        assert_eq!(shards.holding("local").await, [1]);

        // The pools are whole afterwards: no connection went back inside a transaction.
        for pool in &shards.pools {
            let in_tx: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE datname = current_database() AND state LIKE 'idle in transaction%'",
            )
            .fetch_one(pool)
            .await
            .unwrap();
            assert_eq!(in_tx, 0);
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_recovery_pass_leaves_a_transaction_at_work_within_its_grace_period_alone() {
        let shards = Shards::start(2).await;
        // Two app hosts: one coordinating a write, the other's periodic recovery passing by
        // while the write's handler is still at work (record begun, nothing prepared yet).
        let grace = Duration::from_secs(60);
        let coordinating = Arc::new(Coordinator::new(shards.pools.clone(), grace));
        let other_host = Arc::new(Coordinator::new(shards.pools.clone(), grace));

        let mut tx = coordinating.begin(&[0, 1]).await.unwrap();
        write_everywhere(&mut tx, &[0, 1], "at-work").await;
        let report = other_host.recover().await.unwrap();
        assert_eq!(
            report.pruned, 0,
            "a record within its grace period is kept: {report:?}"
        );
        tx.commit().await.unwrap();
        assert_eq!(shards.holding("at-work").await, [0, 1]);
        assert_eq!(shards.leftovers().await, (0, 0));
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn recovery_finishes_what_a_crashed_coordinator_left_consistently_on_every_shard() {
        let shards = Shards::start(3).await;
        for point in FaultPoint::ALL {
            let entry = format!("{point:?}");
            let crashing = shards.crashing(point);
            let mut tx = crashing.begin(&[0, 1, 2]).await.unwrap();
            write_everywhere(&mut tx, &[0, 1, 2], &entry).await;
            assert!(matches!(tx.commit().await, Err(TwoPhaseError::Crashed(p)) if p == point));

            let before = shards.holding(&entry).await;
            let recovery = shards.coordinator();
            let report = recovery.recover().await.unwrap();
            let (expected, prepared) = match point {
                FaultPoint::AfterFirstPrepare => (vec![], 1),
                FaultPoint::AfterAllPrepares => (vec![], 2),
                FaultPoint::AfterDecision => (vec![0, 1, 2], 2),
                FaultPoint::AfterFirstCommitPrepared => (vec![0, 1, 2], 1),
            };
            assert_eq!(report.in_doubt, prepared, "{point:?}: {report:?}");
            assert_eq!(
                report.committed + report.rolled_back,
                prepared,
                "{point:?}: {report:?}"
            );
            assert_eq!(
                shards.holding(&entry).await,
                expected,
                "{point:?}: before recovery {before:?}"
            );
            // The next pass finds nothing in doubt and forgets the record.
            let again = recovery.recover().await.unwrap();
            assert_eq!(again.in_doubt, 0, "{point:?}");
            assert_eq!(shards.leftovers().await, (0, 0), "{point:?}");
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_prepared_branch_survives_its_server_restarting_and_recovery_commits_it() {
        let mut shards = Shards::start(2).await;
        let crashing = shards.crashing(FaultPoint::AfterDecision);
        let mut tx = crashing.begin(&[0, 1]).await.unwrap();
        write_everywhere(&mut tx, &[0, 1], "restarted").await;
        assert!(tx.commit().await.is_err());
        assert_eq!(
            shards.holding("restarted").await,
            [0],
            "shard 1 is only prepared"
        );

        shards.pools[1].close().await;
        shards.servers[1].server.stop().unwrap();
        shards.servers[1].server.start(&[]).await.unwrap();
        shards.pools[1] = PgPool::connect(&shards.servers[1].url()).await.unwrap();

        let report = shards.coordinator().recover().await.unwrap();
        assert_eq!((report.in_doubt, report.committed), (1, 1), "{report:?}");
        assert_eq!(shards.holding("restarted").await, [0, 1]);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn recovery_deciding_first_makes_a_late_coordinator_abort() {
        let shards = Shards::start(2).await;
        let coordinator = shards.coordinator();
        let mut tx = coordinator.begin(&[0, 1]).await.unwrap();
        write_everywhere(&mut tx, &[0, 1], "late").await;
        // Recovery (another app host) gives up on this transaction before its coordinator
        // decides, as it would once the grace period passed.
        assert_eq!(
            coordinator.outcome_of(tx.txid()).await.unwrap(),
            Outcome::Abort
        );
        assert!(matches!(
            tx.commit().await,
            Err(TwoPhaseError::AbortedByRecovery)
        ));
        assert_eq!(shards.holding("late").await, Vec::<u8>::new());
        assert_eq!(shards.leftovers().await.0, 0, "nothing left prepared");
        // A branch recovery is asked to finish that no longer exists: done, after a rescan.
        coordinator
            .finish(1, &gid(tx_id_never_used(), 1), Outcome::Abort)
            .await
            .unwrap();
    }

    /// A transaction id no test began.
    fn tx_id_never_used() -> i64 {
        (1 << 40) | 1
    }
}
