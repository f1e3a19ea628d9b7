//! The gateway's settings: every bound with its reason.
//!
//! Defaults, then an optional TOML file (`gateway serve --config FILE`), then environment
//! variables `GATEWAY_<KEY>` (nested: `GATEWAY_HEALTH__INTERVAL_MS`). Upstreams are a list:
//! `GATEWAY_UPSTREAMS='["127.10.4.11:8080","127.10.4.12:8080"]'`.

use figment::{
    providers::{Env, Format, Serialized, Toml},
    Figment,
};
use serde::{Deserialize, Serialize};

/// How the gateway picks an app host for a request.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Selection {
    /// Each healthy host in turn (pingora's `RoundRobin`).
    RoundRobin,
    /// The less busy of two hosts picked at random ("power of two choices" on in-flight
    /// requests): nearly as good as asking every host, at the cost of two counters.
    LeastLoaded,
}

/// Active health checks: `GET path` on every upstream, every `interval_ms`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HealthSettings {
    /// The app's readiness route: 200 only when it can reach its database.
    pub path: String,
    /// How often each upstream is checked. One second: a dead host is out of rotation within
    /// about `unhealthy_after` seconds even if no request notices first (requests usually do:
    /// see `passive_down_ms`).
    pub interval_ms: u64,
    /// A check that takes longer than this failed. The app answers `/readyz` in about a
    /// millisecond; 500 ms only fails a host that is stuck.
    pub timeout_ms: u64,
    /// Consecutive passed checks that bring a host back.
    pub healthy_after: usize,
    /// Consecutive failed checks that take a host out. Two: one lost packet is not a dead host.
    pub unhealthy_after: usize,
}

impl Default for HealthSettings {
    fn default() -> Self {
        Self {
            path: "/readyz".into(),
            interval_ms: 1_000,
            timeout_ms: 500,
            healthy_after: 1,
            unhealthy_after: 2,
        }
    }
}

/// The media pool (stage 7 on): `GET /media/…` goes to the object store's web endpoints instead
/// of the app hosts, balanced and health-checked the same way. The app stores media there and
/// names them `/media/<id>.<ext>`; the store serves them to anyone, so this pool takes reads only.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct MediaSettings {
    /// Every object-store node's web endpoint, `address:port`. Empty: no media pool, and
    /// `/media/…` goes to the app hosts like everything else (stages 1 to 6).
    pub upstreams: Vec<String>,
    /// The `Host` the store's web endpoint knows the media bucket by (Garage: the bucket's name
    /// and its web root domain).
    pub host: String,
    /// The port of each node's health route (Garage's admin API: `GET /health`, 200 once the
    /// node sees a quorum). Its web port has no health route of its own.
    pub health_port: u16,
}

/// Everything the gateway needs.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GatewaySettings {
    /// Where clients connect.
    pub listen: String,
    /// The app hosts, `address:port`.
    pub upstreams: Vec<String>,
    /// `round_robin` or `least_loaded`.
    pub selection: Selection,
    /// The media pool, if any.
    pub media: MediaSettings,
    /// Active health checks.
    pub health: HealthSettings,
    /// After a connect failure or a 5xx, the host is skipped for this long without waiting for
    /// the health check (passive health). Two health-check intervals: long enough for the
    /// active check to confirm the host is down, short enough that a host that only shed one
    /// burst of load is back within seconds.
    pub passive_down_ms: u64,
    /// Longest wait for a TCP connection to an app host. On loopback or a LAN a connect takes
    /// well under a millisecond; 250 ms means a host that cannot accept is skipped quickly.
    pub connect_timeout_ms: u64,
    /// Longest wait for an app host's response (and between its reads). Above the app's own
    /// 5 s request timeout, so the app answers its 503 before the gateway gives up.
    pub read_timeout_ms: u64,
    /// Longest wait to write a request to an app host.
    pub write_timeout_ms: u64,
    /// An idle pooled connection to an app host is closed after this. Keep-alive saves a TCP
    /// handshake per request; 20 s covers any pause in traffic worth keeping a socket for, and
    /// is under the app's own idle bound (its 30 s header-read timeout), so the gateway, which
    /// reuses the connection, always gives it up first: reused just as the app closed it, a
    /// request would be lost in flight.
    pub idle_timeout_ms: u64,
    /// Largest request body. Above the app's 5 MiB media limit plus the multipart envelope, so
    /// the app's own limit is the one clients meet; anything larger is refused here (413).
    pub max_body_bytes: u64,
    /// Requests in flight through the gateway at once; beyond it, 503 at once. Far above what
    /// the app hosts serve concurrently (their own limit is 1,024 each), so it only trips when
    /// something is badly wrong.
    pub max_in_flight: usize,
    /// Client connections open at once; a connection beyond it is closed as soon as it is
    /// accepted (and counted). Each holds a socket and its buffers; with `max_in_flight`, which
    /// also bounds the connections to app hosts (one per request in flight), the gateway needs at
    /// most about 16,400 open files, within the lab machine's limit (`ulimit -n`: 20,000).
    pub max_connections: usize,
    /// A client's keep-alive connection with no new request for this long is closed, so idle
    /// clients give their places back. The same minute pingora allows a new connection for its
    /// first request.
    pub client_idle_secs: u64,
    /// A client must send each request whole (head and body) within this long of its first
    /// byte, or its connection is closed: pingora's own timeout is per read, so without this a
    /// client sending a byte every few seconds holds its place for ever. 30 s, as the app's
    /// header-read timeout; a body slower than that would miss the app's 5 s request timeout
    /// anyway.
    pub request_send_secs: u64,
    /// Worker threads. One: the gateway shares a small CPU budget, and one thread avoids
    /// cross-thread wake-ups; raise it with the budget.
    pub threads: usize,
    /// On SIGTERM, keep serving requests in flight for up to this long, then stop.
    pub shutdown_grace_secs: u64,
    /// One line per request at info level (method, path, status, upstream, time, request id).
    pub access_log: bool,
}

impl Default for GatewaySettings {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            upstreams: Vec::new(),
            selection: Selection::RoundRobin,
            media: MediaSettings::default(),
            health: HealthSettings::default(),
            passive_down_ms: 2_000,
            connect_timeout_ms: 250,
            read_timeout_ms: 10_000,
            write_timeout_ms: 10_000,
            idle_timeout_ms: 20_000,
            max_body_bytes: 8 * 1024 * 1024,
            max_in_flight: 8_192,
            max_connections: 8_192,
            client_idle_secs: 60,
            request_send_secs: 30,
            threads: 1,
            shutdown_grace_secs: 10,
            access_log: true,
        }
    }
}

impl GatewaySettings {
    /// Defaults, then `file` (if any), then `GATEWAY_…` variables.
    pub fn load(file: Option<&std::path::Path>) -> Result<Self, Box<figment::Error>> {
        let mut figment = Figment::from(Serialized::defaults(GatewaySettings::default()));
        if let Some(file) = file {
            figment = figment.merge(Toml::file_exact(file));
        }
        figment
            .merge(Env::prefixed("GATEWAY_").split("__"))
            .extract()
            .map_err(Box::new)
    }
}
