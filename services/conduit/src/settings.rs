//! Settings: every bound the app has, with the reason for its default.
//!
//! Layered as in zero-to-production: built-in defaults, then an optional TOML file
//! (`conduit serve --config FILE` or `APP_CONFIG=FILE`), then environment variables named
//! `APP_<SECTION>__<KEY>` (for example `APP_DATABASE__URL`, `APP_SERVER__LISTEN`). The native lab
//! and the compose files configure each app host through those variables.

use std::{fmt, net::SocketAddr, path::PathBuf, time::Duration};

use figment::{
    providers::{Env, Format, Serialized, Toml},
    Figment,
};
use serde::{Deserialize, Serialize};

/// All of the app's configuration.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// The HTTP server and its request bounds.
    pub server: ServerSettings,
    /// The PostgreSQL connection pool.
    pub database: DatabaseSettings,
    /// Token signing.
    pub auth: AuthSettings,
    /// Where uploaded media lives and how large it may be.
    pub media: MediaSettings,
    /// The read cache in front of the database (stage 3 on).
    pub cache: CacheSettings,
    /// The CDN edges in front of the stage (stage 6 on).
    pub edge: EdgeSettings,
}

impl Settings {
    /// Loads defaults, then `file` (if any), then `APP_…` environment variables.
    pub fn load(file: Option<&std::path::Path>) -> Result<Self, Box<figment::Error>> {
        let mut figment = Figment::from(Serialized::defaults(Settings::default()));
        if let Some(file) = file {
            figment = figment.merge(Toml::file_exact(file));
        }
        figment
            .merge(Env::prefixed("APP_").split("__").ignore(&["config"]))
            .extract()
            .map_err(Box::new)
    }
}

/// The HTTP server.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSettings {
    /// Address to listen on. Port 0 picks a free port (tests do this). The lab gives every host
    /// its own loopback address, so the app keeps one well-known port on each.
    pub listen: SocketAddr,
    /// A request that takes longer than this is answered 503. Five seconds is far beyond any
    /// healthy request here (they take milliseconds) yet short enough that a stuck database
    /// shows up as errors in a load test instead of as an ever-growing queue.
    pub request_timeout_ms: u64,
    /// Largest JSON request body. The biggest legitimate body is an article; 256 KiB holds a very
    /// long one in Markdown while keeping a flood of large bodies cheap to refuse.
    pub max_json_body_bytes: usize,
    /// Requests handled at once by one app process; beyond this it answers 503 at once (load
    /// shedding) instead of queueing without bound. 1024 is far above what the database pool can
    /// serve concurrently, so it only trips on overload, never under a healthy load.
    pub max_in_flight_requests: usize,
    /// How long a graceful shutdown waits for in-flight requests before giving up.
    pub shutdown_grace_ms: u64,
    /// On SIGTERM, keep serving with `/readyz` answering 503 until a SIGINT comes, for at most
    /// this long, before closing the listener, so a load balancer's health check takes the host
    /// out first and no new request meets a closed port. 0 without a load balancer (nothing to
    /// wait for). Behind stage 4's gateway the lab sets a generous bound and ends the drain with a
    /// SIGINT as soon as the gateway reports the host out of rotation: a condition, not a window
    /// that a slow machine could outrun.
    pub drain_ms: u64,
    /// The proxies in front of this app (the stage's gateway and edges) whose `X-Forwarded-For`
    /// is believed when they are a request's peer: the client a throttle counts is then the
    /// address they forwarded for (`throttle::ClientAddress`). Empty when clients connect
    /// directly (stages 1 to 3), so no client can choose its own address by sending the header.
    pub trusted_proxies: Vec<std::net::IpAddr>,
    /// How long a connection may take to send a request's head (start line and headers), counted
    /// from when the server starts waiting for it: at the connection's start and after each
    /// answer, so it also closes idle keep-alive connections (hyper has one timer for both). A
    /// real client sends its headers at once; 30 s (hyper's own default, which `axum::serve`
    /// never switched on) bounds how long a client that sends nothing, or a byte now and then,
    /// holds a connection, and is long enough that clients which keep connections open, the
    /// gateway's pool (idle 20 s) and the harness (10 s), always give them up first: a request
    /// written into a connection the server is closing is lost in flight.
    pub header_read_timeout_ms: u64,
    /// Connections open at once; one more is closed as soon as it is accepted. 4,096 is four
    /// times [`Self::max_in_flight_requests`], room for idle keep-alive connections beside the
    /// busy ones (a gateway keeps a pool open), and at hyper's 8 KiB read buffer plus a task per
    /// connection, tens of megabytes at the bound: what a connection flood can cost.
    pub max_connections: usize,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            request_timeout_ms: 5_000,
            max_json_body_bytes: 256 * 1024,
            max_in_flight_requests: 1024,
            shutdown_grace_ms: 10_000,
            drain_ms: 0,
            trusted_proxies: Vec::new(),
            header_read_timeout_ms: 30_000,
            max_connections: 4_096,
        }
    }
}

impl ServerSettings {
    /// [`Self::header_read_timeout_ms`] as a duration.
    pub fn header_read_timeout(&self) -> Duration {
        Duration::from_millis(self.header_read_timeout_ms)
    }

    /// [`Self::request_timeout_ms`] as a duration.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }
}

/// The PostgreSQL pool.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseSettings {
    /// A `postgres://` URL.
    pub url: Secret,
    /// Connections per app process. PostgreSQL runs one process per connection, and past a few
    /// busy ones per core they only add context switches (an informal comparison on the 2-core
    /// reference machine: 4 beat 8, which beat 16, on single-article reads). 8 suits a 2-core
    /// database host; the lab sets 4 per core of the stage's database budget instead.
    pub max_connections: u32,
    /// How long a request waits for a free connection before failing. Short, so an exhausted pool
    /// turns into fast errors, not into the request timeout.
    pub acquire_timeout_ms: u64,
    /// Server-side limit on any one statement, so a runaway query cannot hold a connection for
    /// longer than a request may live.
    pub statement_timeout_ms: u64,
    /// `postgres://` URLs of streaming replicas that take reads (stage 5 on). Empty: every read
    /// goes to the primary at `url`.
    pub replicas: Vec<Secret>,
    /// Stage 7: `postgres://` URLs of the primaries of shards 1, 2, ...; `url` is shard 0. Empty:
    /// one database (see `db::shards`).
    pub shards: Vec<Secret>,
    /// Stage 7: the replicas of shards 1, 2, ...: `shard_replicas[n - 1]` are shard `n`'s, as
    /// `replicas` are shard 0's. A shard past the end of the list, or with an empty one, has
    /// none, and its reads go to its primary.
    pub shard_replicas: Vec<Vec<Secret>>,
    /// Connections per app process to each replica, as `max_connections` is to the primary (the
    /// lab sizes both from the hosts' budgets).
    pub replica_max_connections: u32,
    /// How often each app host polls every replica's replay position and the primary's position.
    /// 50 ms: a user's own write shows on a replica within a poll of its replay, and polling
    /// costs each server one trivial query per app host per poll (20 a second).
    pub replica_poll_ms: u64,
    /// Stage 7: how often each app host asks a shard's primary that has no replicas whether it
    /// answers (`db::watch`), so a dead shard's requests are refused within this (plus the poll
    /// timeout) instead of each waiting out `acquire_timeout_ms`. 250 ms: a quarter of a second
    /// of slow refusals after a crash, for four trivial queries a second per app host per shard.
    pub primary_poll_ms: u64,
    /// Stage 8: every database host, each as the `postgres://` URL of its server and the
    /// `http://` URL of the Patroni beside it. Non-empty: the primary pool connects to whichever
    /// host Patroni names the leader (`db::leader`), and `url` is only where it starts. Empty:
    /// `url` is the primary for good, as in stages 1 to 7.
    pub leader_candidates: Vec<LeaderCandidate>,
    /// Stage 8: how often each app host asks every Patroni which host leads. 200 ms: a failover
    /// takes seconds (the leader key's TTL is 10 s), so this adds at most a fifth of a second to
    /// it, for a few trivial HTTP requests a second per app host per database host.
    pub leader_poll_ms: u64,
    /// Stage 8: a Patroni that has not answered `GET /primary` within this is in doubt that
    /// time (`db::leader`). Longer than a replica's poll: Patroni answers after asking its own
    /// PostgreSQL, and on a 0.2-core host busy being the primary a drill saw it take over 250 ms
    /// for seconds at a time. 1 s: a failover is seen at most a second later; the leader key's
    /// TTL (10 s) dwarfs it.
    pub leader_poll_timeout_ms: u64,
    /// A poll that takes longer than this counts as failed and takes the replica out of
    /// rotation. A loopback answer takes well under a millisecond; a small host's CPU quota can
    /// hold it up for a scheduling period or two (20 ms each); 250 ms is past both.
    pub replica_poll_timeout_ms: u64,
    /// A replica further behind than this (in time) leaves rotation: the staleness an anonymous
    /// reader may see, give or take a poll. One second is invisible to a person reading a list,
    /// and far more than a healthy replica lags here (milliseconds).
    pub replica_max_lag_ms: u64,
    /// A replica further behind than this (in WAL bytes) leaves rotation too: a burst of writes
    /// can put a replica many bytes behind before it is a second behind, and it then takes long
    /// to catch up. 16 MiB is one WAL segment.
    pub replica_max_lag_bytes: u64,
    /// Whether reads may also go to the primary, drawn against the replicas by how busy each
    /// is. No by default: "how busy" is connections in use, which does not see that the
    /// primary's CPU also goes to writes, WAL senders and position queries, so with it on the
    /// primary took a fifth of the reads and stayed the bottleneck while the replicas idled
    /// (stages/05-replicas/results/pair-stage5-read-heavy.json). Off, the primary serves reads
    /// only when no replica can (none in rotation, or none past the reader's position).
    pub primary_takes_reads: bool,
    /// A replica out of rotation comes back only under this lag (and half the byte bound), so one
    /// near the bound does not flap in and out with every poll.
    pub replica_rejoin_lag_ms: u64,
    /// `session`: a logged-in user reads only from replicas that show their own writes and
    /// everything they have seen before (read-your-writes, monotonic reads; see `db::session`).
    /// `none`: reads go to any replica in rotation, to show what the guard prevents.
    pub consistency: Consistency,
    /// Redis URL for users' positions (`db::session`): the cache host's database 1. Empty: no
    /// store, so with replicas and `consistency = "session"` logged-in users read the primary.
    pub positions_url: String,
    /// Longest wait for the position store. Longer than the cache's 50 ms on purpose: a cache
    /// that does not answer only costs a database read, but a position that cannot be recorded
    /// weakens read-your-writes. Stage 5's cache host is small (0.05 core), and its CPU quota
    /// can hold Redis up for a few 20 ms periods under load; 500 ms is far past that.
    pub positions_timeout_ms: u64,
}

/// Stage 8: one database host the primary may move to.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaderCandidate {
    /// Its PostgreSQL server, as a `postgres://` URL.
    pub url: Secret,
    /// Its Patroni's REST API (`http://address:8008`): `GET /primary` answers 200 there only
    /// while this host is the leader.
    pub patroni: String,
}

/// What a logged-in user is promised when reads go to replicas.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Consistency {
    /// Read-your-writes and monotonic reads per user (the default).
    Session,
    /// Nothing beyond the replicas' lag bound: only to show what `session` prevents.
    None,
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        Self {
            url: Secret::from("postgres://conduit@127.0.0.1:5432/conduit"),
            max_connections: 8,
            acquire_timeout_ms: 2_000,
            statement_timeout_ms: 5_000,
            replicas: Vec::new(),
            shards: Vec::new(),
            shard_replicas: Vec::new(),
            replica_max_connections: 8,
            replica_poll_ms: 50,
            primary_poll_ms: 250,
            leader_candidates: Vec::new(),
            leader_poll_ms: 200,
            leader_poll_timeout_ms: 1_000,
            replica_poll_timeout_ms: 250,
            replica_max_lag_ms: 1_000,
            replica_max_lag_bytes: 16 * 1024 * 1024,
            replica_rejoin_lag_ms: 250,
            primary_takes_reads: false,
            consistency: Consistency::Session,
            positions_url: String::new(),
            positions_timeout_ms: 500,
        }
    }
}

/// JWT signing.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSettings {
    /// HMAC key for HS256 tokens. Every app host of a stage shares it, which is what makes the app
    /// stateless: any host can check any token. No default: `serve` refuses to start without one
    /// of at least [`MIN_JWT_SECRET_BYTES`] (the lab and the compose files generate one per
    /// machine; by hand, `head -c 32 /dev/urandom | base64`).
    pub jwt_secret: Secret,
    /// Token lifetime. A day, as most RealWorld back ends do; a real system would add refresh tokens.
    pub token_ttl_secs: u64,
    /// Concurrent password hashes. Argon2 is made to be slow (~20 ms of CPU each); more hashes at
    /// once than cores only queues work on the blocking pool, so the rest wait their turn.
    pub max_concurrent_hashes: usize,
    /// Hashes that may wait for one of those places; one more is refused at once with 503 and
    /// `Retry-After`. Measured on stage 1's 0.2-core box under a flood of logins (about 7 served
    /// a second): 10 admitted wait about 1.4 s at the median, well inside the 5 s request
    /// timeout even on a machine twice as slow, so a login admitted finishes, and the rest of a
    /// flood is told at once instead of timing out after 5 s, which it did before this bound,
    /// lowering the logins served (docs/security.md).
    pub max_waiting_hashes: usize,
    /// Login and registration attempts one client (see `server.trusted_proxies`) may make at
    /// once, then [`Self::client_attempts_per_minute`]. Ten covers a person mistyping a
    /// password a few times or a family behind one address; a script gets 429.
    pub client_attempt_burst: u32,
    /// The steady rate of attempts per client: one every 2 s. The lab raises both client
    /// bounds, since its harness sends every simulated user from one address.
    pub client_attempts_per_minute: u32,
    /// Failed logins one account may take at once, from any number of clients, then
    /// [`Self::account_failures_per_minute`].
    pub account_failure_burst: u32,
    /// The steady rate of failed logins per account: 5 a minute is 7,200 guesses a day at the
    /// most, against a password of at least 8 characters; a correct password never counts.
    pub account_failures_per_minute: u32,
}

/// The shortest token key `serve` accepts: 32 bytes, the size of HS256's hash, which RFC 7518
/// (section 3.2) requires of an HMAC key. A shorter one can be guessed offline from any token.
pub const MIN_JWT_SECRET_BYTES: usize = 32;

impl AuthSettings {
    /// Whether the key is fit to sign tokens with: an error naming the setting if it is missing
    /// or shorter than [`MIN_JWT_SECRET_BYTES`].
    pub fn check_key(&self) -> anyhow::Result<()> {
        let len = self.jwt_secret.expose().len();
        anyhow::ensure!(
            len >= MIN_JWT_SECRET_BYTES,
            "auth.jwt_secret (APP_AUTH__JWT_SECRET) is {}: tokens need a key of at least {MIN_JWT_SECRET_BYTES} \
             bytes (make one with `head -c 32 /dev/urandom | base64`)",
            if len == 0 { "missing".to_owned() } else { format!("{len} bytes") }
        );
        Ok(())
    }
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            jwt_secret: Secret::from(""),
            token_ttl_secs: 24 * 3600,
            max_concurrent_hashes: 2,
            max_waiting_hashes: 8,
            client_attempt_burst: 10,
            client_attempts_per_minute: 30,
            account_failure_burst: 10,
            account_failures_per_minute: 5,
        }
    }
}

/// Which object store holds media.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum MediaStoreKind {
    /// Files on the app host's own disk, under `root` (stage 1).
    Local,
    /// A WebDAV file server at `url` (stage 2: nginx on the file host).
    Http,
    /// An S3 object store cluster, any of whose nodes answers for all (stage 7: Garage).
    S3,
}

/// The S3 object store (`media.store = "s3"`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct S3Settings {
    /// Every node's S3 URL. Each app host starts with its own node (spreading the load) and
    /// moves to the next when one fails: any node answers for the whole cluster.
    pub endpoints: Vec<String>,
    /// The bucket media live in.
    pub bucket: String,
    /// The region requests are signed for (the store names it).
    pub region: String,
    /// The app's key id.
    pub access_key_id: String,
    /// The app's secret key.
    pub secret_access_key: Secret,
    /// Longest wait for a connection to a node. Loopback and a LAN connect in well under a
    /// millisecond; 250 ms moves on from a node that cannot accept, as the gateway does.
    pub connect_timeout_ms: u64,
    /// Longest wait for a node's whole answer. An upload is at most `max_bytes` (5 MiB), which a
    /// node stores in tens of milliseconds, so this only trips on a node that hangs (two nodes
    /// down: it waits for a quorum it cannot get). 4 s: under the app's own request bound (5 s),
    /// so that such an upload is answered with the store's own 503 ("media: store unavailable")
    /// and not raced by the app's generic "request timed out" (at 5 s both, the stage 7 test of
    /// two lost nodes got either). Start-up refuses a value not under the request bound
    /// ([`MediaSettings::check_bounds`]).
    pub request_timeout_ms: u64,
}

impl MediaSettings {
    /// With an object store, whether a node that hangs is answered by the store's own timeout
    /// (503 "media: store unavailable") before the app's request bound cuts the request off with
    /// a generic "request timed out": the store's bound must be the shorter.
    pub fn check_bounds(&self, server: &ServerSettings) -> anyhow::Result<()> {
        if self.store == MediaStoreKind::S3 {
            anyhow::ensure!(
                self.s3.request_timeout_ms < server.request_timeout_ms,
                "media.s3.request_timeout_ms ({}) must be below server.request_timeout_ms ({}): \
                 a hanging store node would otherwise be answered as a generic timeout",
                self.s3.request_timeout_ms,
                server.request_timeout_ms
            );
        }
        Ok(())
    }
}

impl Default for S3Settings {
    fn default() -> Self {
        Self {
            endpoints: Vec::new(),
            bucket: "media".into(),
            region: "garage".into(),
            access_key_id: String::new(),
            secret_access_key: Secret::from(""),
            connect_timeout_ms: 250,
            request_timeout_ms: 4_000,
        }
    }
}

/// Media uploads.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MediaSettings {
    /// Where the bytes go.
    pub store: MediaStoreKind,
    /// Folder of the local-filesystem store (stage 1: files on the app host's own disk).
    pub root: PathBuf,
    /// Base URL of the file server (`store = "http"`), e.g. `http://127.10.2.3:8081`.
    pub url: String,
    /// Sent as `x-file-write-key` with every request to the file server, which accepts writes
    /// only with it. Empty: no key. (A real system would use mutual TLS or signed requests.)
    pub write_key: Secret,
    /// Largest upload. 5 MiB fits any web image worth serving; larger ones belong in a resize
    /// pipeline, which this project does not model.
    pub max_bytes: usize,
    /// Prefix of the `url` returned for an upload. Empty: a path on this app (`/media/<id>.<ext>`);
    /// stage 2 sets the file host's URL, so clients fetch images from it directly.
    pub public_base_url: String,
    /// The object store, when `store = "s3"`.
    pub s3: S3Settings,
}

impl Default for MediaSettings {
    fn default() -> Self {
        Self {
            store: MediaStoreKind::Local,
            root: PathBuf::from("media"),
            url: String::new(),
            write_key: Secret::from(""),
            max_bytes: 5 * 1024 * 1024,
            public_base_url: String::new(),
            s3: S3Settings::default(),
        }
    }
}

/// Which cache sits in front of the database.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum CacheBackend {
    /// No cache: every read goes to the database (stages 1 and 2).
    None,
    /// Redis at `url` (stage 3 on).
    Redis,
}

/// The read cache (see `crate::cache`). Every bound here is about failing fast: the cache only
/// ever makes things faster, so waiting on it must never make them slower by much.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheSettings {
    /// `none` or `redis`.
    pub backend: CacheBackend,
    /// `redis://host:port`.
    pub url: String,
    /// Longest life of an entry. Writes delete what they change, so the TTL is not what keeps
    /// entries fresh; it bounds the one case deletes cannot cover (a load that read the row just
    /// before a write and stored it just after the write's delete) and lets unread entries go.
    /// Five minutes keeps the popular set warm through a whole benchmark sweep.
    pub ttl_secs: u64,
    /// Each TTL is drawn from `ttl_secs` ± this fraction, so entries filled together (after a
    /// cold start) do not expire together and cause a burst of misses.
    pub ttl_jitter: f64,
    /// Life of a "not found" entry. Long enough to absorb a flood of requests for a missing
    /// article; short, so a just-created one (whose key writes also delete) is never hidden long.
    pub not_found_ttl_secs: u64,
    /// Longest wait for any Redis answer. A loopback Redis answers in well under a millisecond,
    /// and a host budget of a fifth of a core can delay it by up to 8 ms in a 10 ms scheduling
    /// period; 50 ms is far beyond both, and a request that falls back after it is still fast.
    pub op_timeout_ms: u64,
    /// Longest wait for Redis to take an invalidation. Longer than `op_timeout_ms` on purpose, as
    /// `database.positions_timeout_ms` is: a read that gives up costs one database read, but an
    /// invalidation that gives up leaves a stale entry that other app hosts, whose Redis answers,
    /// keep serving until it is delivered (see `cache::redis`). A write waits this long at most,
    /// once per outage. Stage 5's cache host is small (0.05 core), and its CPU quota can hold
    /// Redis up for a few 20 ms periods under load; 500 ms is far past that.
    pub invalidation_timeout_ms: u64,
    /// Longest wait for a new connection (a restarted or frozen Redis).
    pub connect_timeout_ms: u64,
    /// Consecutive failures that open the circuit breaker. Five tolerates a stray slow answer,
    /// and bounds how many requests pay the timeout before the rest skip the cache.
    pub breaker_failures: u32,
    /// How long the breaker stays open before one request probes Redis again. One second: a
    /// returning Redis is used again within a second, and a dead one costs one probe per second.
    pub breaker_open_ms: u64,
    /// Invalidations remembered while Redis is unreachable, delivered when it returns; beyond
    /// this the whole cache is emptied on return instead.
    pub max_pending_invalidations: usize,
}

impl Default for CacheSettings {
    fn default() -> Self {
        Self {
            backend: CacheBackend::None,
            url: "redis://127.0.0.1:6379".into(),
            ttl_secs: 300,
            ttl_jitter: 0.1,
            not_found_ttl_secs: 5,
            op_timeout_ms: 50,
            invalidation_timeout_ms: 500,
            connect_timeout_ms: 200,
            breaker_failures: 5,
            breaker_open_ms: 1_000,
            max_pending_invalidations: 10_000,
        }
    }
}

/// The CDN edges (stage 6 on): the app tells them what may be shared (`Cache-Control`,
/// `Surrogate-Key`, `ETag`) and purges what each write changed (see `crate::edge`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EdgeSettings {
    /// Every edge's base URL (`http://127.10.6.31:8080`). Empty: no edge in front, no purges,
    /// no surrogate keys or validators computed.
    pub purge_urls: Vec<String>,
    /// The key the edges accept purges with (`x-purge-key`).
    pub purge_key: Secret,
    /// Longest wait for one edge's answer to a purge. A purge is one hash-map walk at the edge,
    /// well under a millisecond; 500 ms only trips when the edge is down or stuck, and the write
    /// that purges waits for it, so it must stay short.
    pub purge_timeout_ms: u64,
    /// Each purge is sent again this long after the first. A read served by a replica just
    /// after the purge may still show the state before the write (a replica in rotation may lag
    /// by up to a second, `database.replica_max_lag_ms`), and the edge would keep that until it
    /// expires; the second purge, past the lag, drops it. 0: one purge only.
    pub repurge_after_ms: u64,
}

impl Default for EdgeSettings {
    fn default() -> Self {
        Self {
            purge_urls: Vec::new(),
            purge_key: Secret::default(),
            purge_timeout_ms: 500,
            repurge_after_ms: 1_500,
        }
    }
}

/// A string that never appears in logs or `Debug` output (database passwords, signing keys).
#[derive(Clone, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// The secret itself, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Self(value.to_owned())
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Self(value)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment's test jail returns its own error type
mod tests {
    use super::*;

    #[test]
    fn an_object_store_bound_not_under_the_request_bound_is_refused() {
        let server = ServerSettings::default();
        let mut media = MediaSettings {
            store: MediaStoreKind::S3,
            ..MediaSettings::default()
        };
        assert!(media.check_bounds(&server).is_ok(), "the defaults hold");
        media.s3.request_timeout_ms = server.request_timeout_ms;
        let refused = media.check_bounds(&server).unwrap_err().to_string();
        assert!(refused.contains("media.s3.request_timeout_ms"), "{refused}");
    }

    #[test]
    fn a_missing_or_short_signing_key_is_refused_with_the_setting_named() {
        let with_key = |key: &str| AuthSettings {
            jwt_secret: Secret::from(key),
            ..AuthSettings::default()
        };
        let missing = with_key("").check_key().unwrap_err().to_string();
        assert!(
            missing.contains("APP_AUTH__JWT_SECRET") && missing.contains("missing"),
            "{missing}"
        );
        let short = with_key(&"k".repeat(MIN_JWT_SECRET_BYTES - 1))
            .check_key()
            .unwrap_err()
            .to_string();
        assert!(short.contains("31 bytes"), "{short}");
        assert!(with_key(&"k".repeat(MIN_JWT_SECRET_BYTES))
            .check_key()
            .is_ok());
    }

    #[test]
    fn secrets_are_redacted_in_debug_output() {
        let settings = Settings::default();
        let shown = format!("{settings:?}");
        assert!(!shown.contains("archlab-local-lab-secret"));
        assert!(shown.contains("Secret(***)"));
    }

    #[test]
    fn environment_overrides_defaults() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("APP_SERVER__LISTEN", "127.0.0.9:9999");
            jail.set_env("APP_DATABASE__MAX_CONNECTIONS", "3");
            let settings = Settings::load(None).map_err(|e| e.to_string())?;
            assert_eq!(settings.server.listen.to_string(), "127.0.0.9:9999");
            assert_eq!(settings.database.max_connections, 3);
            Ok(())
        });
    }

    #[test]
    fn replicas_come_as_a_list_in_one_variable() {
        figment::Jail::expect_with(|jail| {
            jail.set_env(
                "APP_DATABASE__REPLICAS",
                r#"["postgres://a@127.0.0.2/c", "postgres://a@127.0.0.3/c"]"#,
            );
            jail.set_env("APP_DATABASE__CONSISTENCY", "none");
            let settings = Settings::load(None).map_err(|e| e.to_string())?;
            let urls: Vec<&str> = settings
                .database
                .replicas
                .iter()
                .map(|s| s.expose())
                .collect();
            assert_eq!(
                urls,
                ["postgres://a@127.0.0.2/c", "postgres://a@127.0.0.3/c"]
            );
            assert_eq!(settings.database.consistency, Consistency::None);
            Ok(())
        });
    }

    /// The form the lab writes for stage 8 (`stages/lab/src/topology.rs`): a list of tables.
    #[test]
    fn leader_candidates_come_as_a_list_of_tables_in_one_variable() {
        figment::Jail::expect_with(|jail| {
            jail.set_env(
                "APP_DATABASE__LEADER_CANDIDATES",
                r#"[{url = "postgres://a@127.0.0.2:5432/c", patroni = "http://127.0.0.2:8008"}, {url = "postgres://a@127.0.0.3:5432/c", patroni = "http://127.0.0.3:8008"}]"#,
            );
            let settings = Settings::load(None).map_err(|e| e.to_string())?;
            let candidates: Vec<(&str, &str)> = settings
                .database
                .leader_candidates
                .iter()
                .map(|c| (c.url.expose(), c.patroni.as_str()))
                .collect();
            assert_eq!(
                candidates,
                [
                    ("postgres://a@127.0.0.2:5432/c", "http://127.0.0.2:8008"),
                    ("postgres://a@127.0.0.3:5432/c", "http://127.0.0.3:8008")
                ]
            );
            Ok(())
        });
    }

    #[test]
    fn unknown_keys_are_rejected() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("APP_SERVER__LISTN", "127.0.0.9:9999");
            assert!(Settings::load(None).is_err());
            Ok(())
        });
    }
}
