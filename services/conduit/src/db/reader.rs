//! The `Reader` extractor: where a handler's reads go, shard by shard.
//!
//! A handler takes a [`Reader`] and reads through [`Reader::pool`]; the reader picks, once per
//! request and shard, a replica that can show what this request needs, or the primary when none
//! can, by the rules of [`super::session`] (read-your-writes and monotonic reads per user, the
//! client's own floor from its cookie). Before stage 5 there are no replicas and a `Reader` is the
//! primary, so stages 1 to 4 run the same handlers unchanged; from stage 7 `Reader::on(shard)`
//! reads a shard through that shard's own session.

use std::sync::{atomic::Ordering, Arc};

use axum::{extract::FromRequestParts, http::request::Parts};
use sqlx::PgPool;

use super::{
    lsn::Lsn,
    replicas::ReadTarget,
    session::{new_sessions, ReadSession, Route, Sessions, Tried},
    Database,
};
use crate::{
    error::{ApiError, ApiResult},
    AppState,
};

/// The extractor handlers read through: [`Reader::pool`] for reads that may be as stale as the
/// request allows, [`Reader::primary`] for reads that must be current. The choice is made once
/// per request and shard, at its first read there, so all of a request's reads on a shard see
/// one server's state.
#[derive(Clone)]
pub struct Reader {
    db: Database,
    /// Which shard `db` is (0 unsharded): its session is `sessions[shard]`.
    shard: u8,
    sessions: Sessions,
    shards: Arc<super::Shards>,
    /// Reads for what the app's cache keeps, in a sharded stage: primaries only (see
    /// [`Reader::for_cache_fill`]).
    for_cache: bool,
}

impl FromRequestParts<AppState> for Reader {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        // Without the middleware (no replicas configured): sessions that read the primaries.
        let sessions = parts
            .extensions
            .get::<Sessions>()
            .cloned()
            .unwrap_or_else(|| {
                let none = vec![None; state.shards.len()];
                new_sessions(None, &none, &vec![None; none.len()])
            });
        Ok(Reader {
            db: state.db.clone(),
            shard: 0,
            sessions,
            shards: state.shards.clone(),
            for_cache: false,
        })
    }
}

impl Reader {
    /// The reader for shard `shard`'s data (stage 7): its replicas and its primary, with this
    /// request's session on that shard. Unsharded, this reader itself.
    pub fn on(&self, shard: u8) -> Reader {
        Reader {
            db: self.shards.shard(shard).clone(),
            shard,
            ..self.clone()
        }
    }

    /// The reader for the shard holding the row with `id`.
    pub fn for_id(&self, id: i64) -> Reader {
        self.on(self.shards.shard_of(id))
    }

    /// The shards, for reads that span them.
    pub fn shards(&self) -> &super::Shards {
        &self.shards
    }

    /// A reader for what the app's cache will keep and share: every read on a primary. An entry
    /// shared by everyone must not miss a write that a replica has not replayed yet, which
    /// stage 5 ensures with stamps that let a fill read a replica known to be far enough; a stamp
    /// names one server's WAL, and in a sharded stage an entry may come from several shards (a
    /// list head) or from a shard its key does not name (a profile, by username), so fills there
    /// read primaries and entries carry no stamp. The reads still count as this request's, so
    /// the user's positions on those shards rise to what the primaries showed. While any
    /// shard's primary is down the cache keeps nothing (`Cache::fills_paused`) and this reader
    /// reads as the request does, replicas included, so that shard's data stays readable.
    pub fn for_cache_fill(&self) -> Reader {
        Reader {
            for_cache: !self.shards.any_primary_down(),
            ..self.clone()
        }
    }

    fn session(&self) -> &ReadSession {
        &self.sessions[usize::from(self.shard)]
    }

    /// The pool for this request's reads on this shard: chosen at the first call, the same
    /// after. A 503 when no server can show what this user must see (the primary down, and no
    /// replica has replayed their position): failing at once beats waiting on a dead primary.
    pub async fn pool(&self) -> ApiResult<&PgPool> {
        if self.for_cache {
            self.session().read_primary.store(true, Ordering::Relaxed);
            return self.db.write();
        }
        let target = self
            .session()
            .chosen
            .get_or_init(|| async {
                let (target, route) = self.choose().await;
                let label = match &target {
                    Some(ReadTarget::Primary) => "primary",
                    Some(ReadTarget::Replica(replica)) => replica.name.as_str(),
                    None => "none",
                };
                self.db.metrics.read(label, route.as_str());
                target
            })
            .await;
        match target {
            Some(ReadTarget::Primary) => self.db.write(),
            Some(ReadTarget::Replica(replica)) => Ok(&replica.pool),
            // No replicas: the primary is all there is, and it is down (a shard's watch says).
            None if self.db.replicas.is_none() => Err(self.db.primary_down()),
            None => Err(ApiError::DatabaseUnavailable(
                "no server can show your latest changes now, try again",
            )),
        }
    }

    /// Whether this request is a second try after its read on the primary failed: the primary is
    /// probably down, though its poller may not know yet.
    pub fn avoids_primary(&self) -> bool {
        self.session().retry_of == Some(Tried::Primary)
    }

    /// Whether this request is a second try after its read on a replica failed: its cache
    /// fills read the primary too.
    pub fn avoids_replicas(&self) -> bool {
        self.session().retry_of == Some(Tried::Replica)
    }

    /// A cache fill for this request reads the primary: if the request fails, its second try
    /// keeps off the primary. (No position is measured for it: the entry's stamp says what it
    /// showed, see [`Reader::saw`].)
    pub fn fill_reads_primary(&self) {
        self.session()
            .filled_on_primary
            .store(true, Ordering::Relaxed);
    }

    /// A cache fill for this request reads a replica: if the request fails, its second try reads
    /// the primary.
    pub fn fill_reads_replica(&self) {
        self.session()
            .filled_on_replica
            .store(true, Ordering::Relaxed);
    }

    /// The primary, for a read that must show the latest committed state whatever the user's
    /// position (each caller says why).
    pub fn primary(&self) -> &PgPool {
        self.session().read_primary.store(true, Ordering::Relaxed);
        self.db.primary()
    }

    /// The request served a cache entry stamped `stamp` (see `Cache::in_front_of`): the user has
    /// seen the database as of that position.
    pub fn saw(&self, stamp: Option<Lsn>) {
        if let Some(lsn) = stamp {
            self.session().cached.fetch_max(lsn.0, Ordering::Relaxed);
        }
    }

    async fn choose(&self) -> (Option<ReadTarget>, Route) {
        let Some(replicas) = &self.db.replicas else {
            // Nowhere else to read: the primary, unless a shard's watch knows it is down.
            let primary = self.db.primary_up().then_some(ReadTarget::Primary);
            return (primary, Route::PrimaryNoReplica);
        };
        let session = self.session();
        let primary_up = replicas.primary_up();
        // Where a read goes when the choice below leaves only the primary: nowhere if it is
        // known to be down.
        let primary_if_up = |route| (primary_up.then_some(ReadTarget::Primary), route);
        let needed = match (session.user, &self.db.positions) {
            (Some(user), Some(positions)) => match positions.get(user, self.shard).await {
                Ok(position) => position,
                Err(e) => {
                    tracing::debug!(error = %e, "position unknown: reading the primary");
                    return primary_if_up(Route::PrimaryPositionUnknown);
                }
            },
            // Guarded, but no store to keep positions in (a stage without a cache host): safe
            // first, as when the store does not answer.
            (Some(_), None) if self.db.session_guard => {
                return primary_if_up(Route::PrimaryPositionUnknown);
            }
            _ => None,
        };
        // The client's own floor (its cookie), with or without a user.
        let needed = match (needed, session.client) {
            (Some(user), Some(client)) => Some(user.max(client)),
            (user, client) => user.or(client),
        };
        match session.retry_of {
            Some(Tried::Replica) => return primary_if_up(Route::Retry),
            Some(Tried::Primary) => {
                return match replicas.choose(needed, None) {
                    Some(target) => (Some(target), Route::Retry),
                    None => primary_if_up(Route::Retry),
                }
            }
            None => {}
        }
        // A user who has just written (or read) is usually ahead of what the last poll, up to
        // 50 ms ago, knew of the replicas, though a replica on loopback replays within a
        // millisecond or two. Rather than send every such read to the primary, ask one replica
        // where it is now: one trivial query, and the read stays off the primary.
        if let (Some(position), None) = (needed, replicas.choose(needed, None)) {
            if let Some(ReadTarget::Replica(replica)) = replicas.choose(None, None) {
                if replica
                    .replayed_now()
                    .await
                    .is_ok_and(|now| now >= position)
                {
                    return (Some(ReadTarget::Replica(replica)), Route::CaughtUpReplica);
                }
            }
        }
        // The primary takes reads only while its poller reaches it: a dead primary would fail
        // every read drawn to it until then.
        let primary = (self.db.primary_takes_reads && primary_up).then(|| self.db.primary());
        match replicas.choose(needed, primary) {
            Some(ReadTarget::Replica(replica)) if needed.is_some() => {
                (Some(ReadTarget::Replica(replica)), Route::CaughtUpReplica)
            }
            Some(ReadTarget::Replica(replica)) => {
                (Some(ReadTarget::Replica(replica)), Route::AnyReplica)
            }
            // The primary was drawn, or was all that was left: which, says the route.
            _ if replicas.choose(needed, None).is_some() => {
                (Some(ReadTarget::Primary), Route::PrimaryBalanced)
            }
            _ if replicas.choose(None, None).is_some() => {
                primary_if_up(Route::PrimaryReplicasBehind)
            }
            _ => primary_if_up(Route::PrimaryNoReplica),
        }
    }
}
