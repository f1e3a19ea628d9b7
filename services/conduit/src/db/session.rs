//! Session consistency across requests and app hosts: a logged-in user sees their own writes
//! (read-your-writes) and never an older state after a newer one (monotonic reads), while their
//! reads still go to replicas.
//!
//! The mechanism is one number per user, their *position*: the WAL position of the newest
//! database state they may have seen. It lives in Redis (database 1 of the cache host, so
//! emptying the cache never forgets it), where every app host sees it, and it only moves forward.
//!
//! ```text
//! request of user U            ┌─ Redis: pos:U ─┐
//!   read:  GET pos:U  ─────────┤                ├─> a replica that replayed ≥ pos:U, else the primary
//!   after: pos:U = max(pos:U, what this request may have seen)
//!            a write that committed:  the primary's position now (past its commit)
//!            a read on a replica:     that replica's replay position now (past what it showed)
//!            a read on the primary:   the primary's position now
//! ```
//!
//! "Now" is measured *after* the handler ran, so it is at or past everything the request could
//! have read or written. If Redis cannot be reached, a logged-in user's reads go to the primary,
//! which is never behind: safe first. Anonymous readers have no position; they read any replica in
//! rotation, which is at most `database.replica_max_lag_ms` behind (plus one poll).
//!
//! A client that writes with its token and then reads without one (a page rendered for anyone,
//! the RealWorld test suite) is nobody's session on its reads. So every acknowledged write also
//! gives the client its position in a cookie ([`POSITION_COOKIE`], signed with the tokens' key,
//! expiring with the Redis position), and a read carrying it goes to a replica past it: the
//! client's own floor, whoever it is logged in as. This is the classic "cookie after a POST" of
//! replica routing and CDNs (Rails' database selector keeps the time of the last write in the
//! session for the same reason); at stage 6 the edge passes requests with cookies to the origin,
//! so the same cookie also keeps a client that just wrote from being served the edge's copy.
//!
//! Stage 7 splits the data over shards, each a primary with its own replicas and its own WAL, so
//! a position is one shard's: a user has one per shard (`pos:U` on shard 0, `pos:U:S` on shard
//! S), a request one [`ReadSession`] per shard (a `Reader` for shard S routes by S's), and the
//! cookie one position per shard. "What the request may have seen" is measured per shard too:
//! the primaries it used ([`touched`]: its writes, and its reads that had to be current) at their
//! positions now, the replicas it read at theirs.
//!
//! A read that fails on a replica (the replica died between two polls) takes it out of rotation
//! at once and is run again on the primary, once: it was a read, so running it twice is safe.
//!
//! `database.consistency = "none"` turns positions off, to show what they prevent: every read then
//! goes to any replica, and the harness counts a user's own writes they could not see.

use std::{
    cell::Cell,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
};

use anyhow::Context;
use axum::{
    extract::{Request, State},
    http::Method,
    middleware::Next,
    response::{IntoResponse, Response},
};
use tokio::sync::OnceCell;

use super::{
    lsn::Lsn,
    replicas::{ReadTarget, Replica},
    Database,
};
use crate::{cache::redis::RedisStore, error::ApiError, AppState};

/// How long a user's position is kept after their last request. It only matters while a replica
/// in rotation may still be behind it, and a replica in rotation is at most
/// `replica_max_lag_ms` (a second by default) behind: a minute is far past that.
pub const POSITION_TTL_SECS: u64 = 60;

/// The cookie a client's own position rides in (see the module's documentation).
pub const POSITION_COOKIE: &str = "archlab-position";

/// Where users' positions live: Redis, with the cache's timeouts and breaker.
pub struct Positions {
    store: RedisStore,
}

impl Positions {
    /// The store `settings` ask for: some when reads may go to replicas (any shard's), users
    /// are promised session consistency, and a store is named (`database.positions_url`).
    pub fn from_settings(
        settings: &crate::settings::DatabaseSettings,
        cache: &crate::settings::CacheSettings,
    ) -> anyhow::Result<Option<Arc<Self>>> {
        let any_replicas =
            !settings.replicas.is_empty() || settings.shard_replicas.iter().any(|r| !r.is_empty());
        if !any_replicas
            || settings.consistency != crate::settings::Consistency::Session
            || settings.positions_url.is_empty()
        {
            return Ok(None);
        }
        let store = Self::new(
            &settings.positions_url,
            settings.positions_timeout_ms,
            cache,
        )
        .context("database.positions_url")?;
        Ok(Some(Arc::new(store)))
    }

    /// Positions kept in the Redis at `url` (the cache host's database 1), waiting at most
    /// `timeout_ms` for an answer; the cache's other bounds (breaker, connect timeout) apply.
    pub fn new(
        url: &str,
        timeout_ms: u64,
        cache: &crate::settings::CacheSettings,
    ) -> anyhow::Result<Self> {
        let settings = crate::settings::CacheSettings {
            url: url.to_owned(),
            op_timeout_ms: timeout_ms,
            ..cache.clone()
        };
        Ok(Self {
            store: RedisStore::new(&settings)?,
        })
    }

    /// `pos:U` for shard 0 (stage 5's one database), `pos:U:S` for shard S: a position is a
    /// place in one server's WAL, so each shard's is a number of its own.
    fn key(user: i64, shard: u8) -> String {
        if shard == 0 {
            format!("pos:{user}")
        } else {
            format!("pos:{user}:{shard}")
        }
    }

    /// The user's position on `shard`, `None` if they have none; an error if Redis cannot say.
    pub async fn get(&self, user: i64, shard: u8) -> anyhow::Result<Option<Lsn>> {
        let bytes = self
            .store
            .get(&Self::key(user, shard))
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(bytes.and_then(|b| {
            let text = std::str::from_utf8(&b).ok()?;
            u64::from_str_radix(text, 16).ok().map(Lsn)
        }))
    }

    /// Moves the user's position on `shard` forward to `seen` (never back).
    pub async fn raise(&self, user: i64, shard: u8, seen: Lsn) -> anyhow::Result<()> {
        // Sixteen hex digits: byte order is number order, which the store's compare relies on.
        let value = format!("{:016x}", seen.0);
        self.store
            .raise(&Self::key(user, shard), &value, POSITION_TTL_SECS)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))
    }
}

/// Put in a response by a handler that created a user, who sent no token to be known by: the
/// middleware starts that user's position at the write.
#[derive(Debug, Clone, Copy)]
pub struct Registered(pub i64);

/// Why a read went where it went: the `reason` label of `db_reads`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// A replica, any in rotation (an anonymous reader, or consistency off).
    AnyReplica,
    /// A replica that had replayed past the user's position.
    CaughtUpReplica,
    /// The primary, drawn as the less busy of two candidates (`database.primary_takes_reads`).
    PrimaryBalanced,
    /// The primary: no replica had replayed past the user's position (the guard's cost).
    PrimaryReplicasBehind,
    /// The primary: no replica in rotation (none configured, or all down or lagging).
    PrimaryNoReplica,
    /// The primary: the user's position could not be read (Redis down): safe first.
    PrimaryPositionUnknown,
    /// The primary: the handler asked for current data (see each call of [`Reader::primary`]).
    PrimaryCurrent,
    /// A second try, elsewhere, of a read that failed (on a replica that died, or on a primary
    /// that did).
    Retry,
    /// A cache fill: a replica known to be past the entry's last invalidation, else the primary
    /// (see `Cache::in_front_of`).
    CacheFill,
}

impl Route {
    /// The label.
    pub fn as_str(self) -> &'static str {
        match self {
            Route::AnyReplica => "any_replica",
            Route::CaughtUpReplica => "caught_up_replica",
            Route::PrimaryBalanced => "balanced",
            Route::PrimaryReplicasBehind => "replicas_behind",
            Route::PrimaryNoReplica => "no_replica",
            Route::PrimaryPositionUnknown => "position_unknown",
            Route::PrimaryCurrent => "current",
            Route::Retry => "retry",
            Route::CacheFill => "cache_fill",
        }
    }
}

/// One request's reading state, shared by the [`Reader`] its handler uses and the middleware
/// ([`track`]) that records what the request may have seen.
#[derive(Debug)]
pub struct ReadSession {
    /// The logged-in user, if any.
    pub(super) user: Option<i64>,
    /// The position the client's cookie carries, if any: its reads go past it.
    pub(super) client: Option<Lsn>,
    /// Set for the second try of a read that failed: where the first went.
    pub(super) retry_of: Option<Tried>,
    /// Where its reads go; `None` inside: nowhere can serve them.
    pub(super) chosen: OnceCell<Option<ReadTarget>>,
    pub(super) read_primary: AtomicBool,
    /// Whether a cache fill read the primary, or a replica (for the second try if it failed).
    pub(super) filled_on_primary: AtomicBool,
    pub(super) filled_on_replica: AtomicBool,
    /// The newest stamp of a cache entry the request served (0: none).
    pub(super) cached: AtomicU64,
}

/// Where a failed first try of a read went, so the second goes elsewhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Tried {
    Primary,
    Replica,
}

impl ReadSession {
    fn new(user: Option<i64>, client: Option<Lsn>, retry_of: Option<Tried>) -> Self {
        Self {
            user,
            client,
            retry_of,
            chosen: OnceCell::new(),
            read_primary: AtomicBool::new(false),
            filled_on_primary: AtomicBool::new(false),
            filled_on_replica: AtomicBool::new(false),
            cached: AtomicU64::new(0),
        }
    }

    /// The replica this request read from, if it did.
    fn replica(&self) -> Option<&Arc<Replica>> {
        match self.chosen.get() {
            Some(Some(ReadTarget::Replica(replica))) => Some(replica),
            _ => None,
        }
    }

    fn read_primary(&self) -> bool {
        self.read_primary.load(Ordering::Relaxed)
            || matches!(self.chosen.get(), Some(Some(ReadTarget::Primary)))
    }
}

/// Every shard's [`ReadSession`] for one request, shard `n`'s at `n` (one, unsharded): a
/// position is a place in one server's WAL, so each shard's reads are routed and recorded on
/// their own.
pub(super) type Sessions = Arc<[Arc<ReadSession>]>;

pub(super) fn new_sessions(
    user: Option<i64>,
    clients: &[Option<Lsn>],
    retry_of: &[Option<Tried>],
) -> Sessions {
    clients
        .iter()
        .zip(retry_of)
        .map(|(client, retry)| Arc::new(ReadSession::new(user, *client, *retry)))
        .collect()
}

tokio::task_local! {
    /// The shards whose primaries the request running in this task used (bit `n`: shard `n`),
    /// set by [`touched`] and read by [`track`]: a write, or a read that had to be current,
    /// leaves the user's position on those shards at the primary's.
    static TOUCHED: Cell<u64>;
}

/// Records that the current request used shard `shard`'s primary ([`Database::write`], a
/// global transaction's participants). Nothing outside a request (recovery, seeding).
pub fn touched(shard: u8) {
    let _ = TOUCHED.try_with(|t| t.set(t.get() | bit(shard)));
}

/// Shard `shard`'s bit in [`TOUCHED`]: at most 64 shards (`Shards::connect` checks).
fn bit(shard: u8) -> u64 {
    1u64.checked_shl(u32::from(shard)).unwrap_or(0)
}

/// Where a session's failed first try read: the primary if it read there at all (its chosen
/// server, or a cache fill), else its replica (or a fill's, which took itself out of rotation);
/// `None` if it read nowhere.
fn tried_by(session: &ReadSession) -> Option<(Tried, Option<Arc<Replica>>)> {
    match session.chosen.get() {
        _ if session.read_primary() || session.filled_on_primary.load(Ordering::Relaxed) => {
            Some((Tried::Primary, None))
        }
        Some(Some(ReadTarget::Replica(replica))) => Some((Tried::Replica, Some(replica.clone()))),
        _ if session.filled_on_replica.load(Ordering::Relaxed) => Some((Tried::Replica, None)),
        _ => None,
    }
}

/// Runs the rest of the stack for `request` with its sessions, and says which shards' primaries
/// it used ([`touched`]).
async fn run_tracked(next: Next, request: Request) -> (Response, u64) {
    TOUCHED
        .scope(Cell::new(0), async move {
            let response = next.run(request).await;
            (response, TOUCHED.with(Cell::get))
        })
        .await
}

/// Middleware, in front of every route when any shard has replicas: gives the request its
/// [`ReadSession`]s, runs a read again if it failed (on the primary if it failed on a replica),
/// and afterwards moves the user's position on each shard past whatever the request may have
/// seen there.
pub async fn track(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let shards = state.shards.clone();
    if !shards.has_replicas() {
        return next.run(request).await;
    }
    let db = &state.db;
    // The token is checked again by the handler's own extractor, which answers 401 if it is bad;
    // here a bad one simply means "no position".
    let user = crate::auth::bearer_user(request.headers(), &state.auth);
    let reads_only = matches!(*request.method(), Method::GET | Method::HEAD);
    if !reads_only && !shards.sharded() && !db.primary_up() {
        // Fail fast: a write would otherwise wait out the pool's acquire timeout against a
        // primary that its poller already knows to be down. Reads are still served. (Sharded,
        // which shard a write needs is known only inside it: `Database::write` refuses there.)
        return db.primary_down().into_response();
    }
    let n = shards.len();
    let clients = if db.session_guard {
        client_positions(request.headers(), &state.auth, n)
    } else {
        vec![None; n]
    };
    let retry = reads_only.then(|| copy_of(&request));
    let mut sessions = new_sessions(user, &clients, &vec![None; n]);
    let mut request = request;
    request.extensions_mut().insert(sessions.clone());
    let (mut response, mut touched) = run_tracked(next.clone(), request).await;
    let tried: Vec<_> = sessions.iter().map(|s| tried_by(s)).collect();
    if let Some(mut again) = retry {
        if response.status().is_server_error() && tried.iter().any(Option::is_some) {
            for (_, replica) in tried.iter().flatten() {
                if let Some(replica) = replica {
                    replica.suspend();
                }
            }
            let retry_of: Vec<Option<Tried>> =
                tried.iter().map(|t| t.as_ref().map(|t| t.0)).collect();
            let fresh = new_sessions(user, &clients, &retry_of);
            again.extensions_mut().insert(fresh.clone());
            (response, touched) = run_tracked(next, again).await;
            sessions = fresh;
        }
    }
    let user = user.or_else(|| response.extensions().get::<Registered>().map(|r| r.0));
    let wrote = !reads_only && response.status().is_success();
    let tracked_user = user.zip(shards.positions());
    let gives_cookie = wrote && db.session_guard;
    if tracked_user.is_none() && !gives_cookie {
        return response;
    }
    let seen: Vec<Option<Lsn>> = futures::future::join_all(shards.all().map(|(shard, db)| {
        let session = sessions[usize::from(shard)].clone();
        // Unsharded, a write always measures the primary (as before shards had their own
        // positions); sharded, only the primaries it used.
        let primary = touched & bit(shard) != 0 || (wrote && !shards.sharded());
        async move {
            // A shard without replicas is read only on its primary: no position to keep.
            match db.replicas() {
                Some(_) => seen_position(db, &session, primary).await,
                None => None,
            }
        }
    }))
    .await;
    if gives_cookie {
        let floors: Vec<Option<Lsn>> = clients
            .iter()
            .zip(&seen)
            .map(|(client, seen)| (*client).max(*seen))
            .collect();
        if floors.iter().any(Option::is_some) {
            give_position_cookie(&mut response, &state.auth, &floors);
        }
    }
    if let Some((user, positions)) = tracked_user {
        let raises = seen.iter().zip(0u8..).filter_map(|(seen, shard)| {
            let seen = (*seen)?;
            Some(async move {
                // Tried twice: a position not recorded is the one way this guard can fail (the
                // user's next read may find the old one and a replica behind the new one).
                let mut result = positions.raise(user, shard, seen).await;
                if result.is_err() {
                    result = positions.raise(user, shard, seen).await;
                }
                if let Err(e) = result {
                    db.metrics.position_not_recorded();
                    tracing::warn!(user, shard, error = %e, "the user's position could not be recorded");
                }
            })
        });
        futures::future::join_all(raises).await;
    }
    response
}

/// A position at or past everything the request may have read or written on `db`, measured
/// now: the newest of what it read or wrote there (`primary`: it used the primary) and the
/// stamps of the cache entries it served.
async fn seen_position(db: &Database, session: &ReadSession, primary: bool) -> Option<Lsn> {
    let cached = Some(Lsn(session.cached.load(Ordering::Relaxed))).filter(|lsn| lsn.0 > 0);
    let measured = if primary || session.read_primary() {
        if !db.primary_up() {
            // Not a primary its poller knows to be down: asking would wait out the pool's
            // acquire timeout, after the request itself may have waited it out once (a drill's
            // harness, with a 3 s timeout, saw such a 503 as "unknown"). As when the query fails.
            return cached;
        }
        db.primary_position().await
    } else if let Some(replica) = session.replica() {
        replica.replayed_now().await
    } else {
        return cached;
    };
    match measured {
        Ok(position) => Some(cached.map_or(position, |c| c.max(position))),
        Err(e) => {
            // Not knowing what a read showed is only a risk to monotonic reads, and only if the
            // user's next read finds a replica between the two; a write's position unknown is a
            // risk to read-your-writes: logged at warn.
            tracing::warn!(error = %ApiError::from(e), "the user's position could not be measured");
            cached
        }
    }
}

/// The positions in the request's [`POSITION_COOKIE`], one per shard (`shards` of them), if it
/// carries a valid one; `None` for each shard otherwise.
fn client_positions(
    headers: &axum::http::HeaderMap,
    auth: &crate::auth::Auth,
    shards: usize,
) -> Vec<Option<Lsn>> {
    let mut positions = headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .filter(|(name, _)| *name == POSITION_COOKIE)
        .find_map(|(_, value)| auth.positions_in(value))
        .unwrap_or_default();
    positions.resize(shards, None);
    positions.into_iter().map(|p| p.map(Lsn)).collect()
}

/// Hands the client its positions after a write, one per shard: they live as long as a user's
/// position in Redis, for the same reason ([`POSITION_TTL_SECS`]). Not readable by scripts
/// (`HttpOnly`), sent on same-site requests and top-level navigation (`SameSite=Lax`), for
/// every path of the API.
fn give_position_cookie(response: &mut Response, auth: &crate::auth::Auth, floors: &[Option<Lsn>]) {
    let floors: Vec<Option<u64>> = floors.iter().map(|f| f.map(|lsn| lsn.0)).collect();
    let Ok(signed) = auth.sign_positions(&floors, POSITION_TTL_SECS) else {
        return;
    };
    let cookie = format!(
        "{POSITION_COOKIE}={signed}; Max-Age={POSITION_TTL_SECS}; Path=/; HttpOnly; SameSite=Lax"
    );
    if let Ok(value) = axum::http::HeaderValue::from_str(&cookie) {
        response
            .headers_mut()
            .append(axum::http::header::SET_COOKIE, value);
    }
}

/// A bodiless copy of a GET or HEAD request, to run it again.
fn copy_of(request: &Request) -> Request {
    let mut copy = Request::new(axum::body::Body::empty());
    *copy.method_mut() = request.method().clone();
    *copy.uri_mut() = request.uri().clone();
    *copy.version_mut() = request.version();
    *copy.headers_mut() = request.headers().clone();
    *copy.extensions_mut() = request.extensions().clone();
    copy
}
