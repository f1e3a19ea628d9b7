//! Throttles on the two routes that hash a password, login and registration: what a guessing
//! attack, a credential-stuffing run or a registration flood may cost.
//!
//! Each argon2 hash costs about 26 ms of CPU (measured on stage 1's box, docs/security.md), so
//! these routes are the cheapest way to burn an app host's budget and the only way to guess
//! passwords. Two token buckets stand in front of the hash:
//!
//! - **per client** (its address, see [`ClientAddress`]): every login and registration attempt
//!   takes a token, so one client cannot flood either route;
//! - **per account** (the e-mail a login names): every *failed* login takes a token, so guesses
//!   at one account are slow even when they come from many clients. A correct password takes
//!   none, so the owner is not locked out by their own logins, only (for a while) by a guesser.
//!
//! An empty bucket answers 429 with `Retry-After` before any hash is computed. The buckets live in
//! each app host's memory: behind stage 4's load balancer a client gets each host's allowance
//! (stated, not hidden; a shared bucket would need a round trip to the cache on every attempt).

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::Mutex,
    time::{Duration, Instant},
};

use axum::{
    extract::{ConnectInfo, FromRequestParts},
    http::request::Parts,
};

use crate::{
    error::ApiError,
    settings::{AuthSettings, ServerSettings},
    AppState,
};

/// Most keys one bucket set remembers. A key whose bucket has refilled carries no information and
/// is dropped when the set is full; if every remembered key is still short of tokens (a flood of
/// distinct e-mails or addresses), the set is cleared rather than grown: 100,000 keys of about
/// 100 bytes is 10 MB per set, a bound on what an attacker can make a host remember. Clearing
/// forgives every key at once, which is why the per-client bucket stands in front of the
/// per-account one: a flood of distinct e-mails from one client is stopped before it gets here.
pub const MAX_TRACKED_KEYS: usize = 100_000;

/// A token bucket per key: `burst` tokens at most, refilled at `per_minute`.
pub struct Buckets {
    burst: f64,
    per_minute: f64,
    buckets: Mutex<HashMap<String, Bucket>>,
}

#[derive(Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Buckets {
    /// Buckets of `burst` tokens, refilled at `per_minute` tokens a minute (both at least 1).
    pub fn new(burst: u32, per_minute: u32) -> Self {
        Self {
            burst: f64::from(burst.max(1)),
            per_minute: f64::from(per_minute.max(1)),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes a token from `key`'s bucket; when it has none, how long until it has one.
    pub fn take(&self, key: &str, now: Instant) -> Result<(), Duration> {
        self.update(key, now, true)
    }

    /// Whether `key`'s bucket has a token, without taking it; when not, how long until it has.
    pub fn check(&self, key: &str, now: Instant) -> Result<(), Duration> {
        self.update(key, now, false)
    }

    fn update(&self, key: &str, now: Instant, take: bool) -> Result<(), Duration> {
        let mut buckets = self
            .buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !buckets.contains_key(key) && buckets.len() >= MAX_TRACKED_KEYS {
            let full = |b: &Bucket| self.refilled(*b, now) >= self.burst;
            buckets.retain(|_, b| !full(b));
            if buckets.len() >= MAX_TRACKED_KEYS {
                tracing::warn!(
                    keys = buckets.len(),
                    "throttle full of keys short of tokens: forgetting them all"
                );
                buckets.clear();
            }
        }
        let tokens = buckets
            .get(key)
            .map_or(self.burst, |b| self.refilled(*b, now));
        if tokens < 1.0 {
            return Err(Duration::from_secs_f64(
                (1.0 - tokens) * 60.0 / self.per_minute,
            ));
        }
        if take {
            buckets.insert(
                key.to_owned(),
                Bucket {
                    tokens: tokens - 1.0,
                    at: now,
                },
            );
        }
        Ok(())
    }

    fn refilled(&self, bucket: Bucket, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        (bucket.tokens + elapsed * self.per_minute / 60.0).min(self.burst)
    }
}

/// The two throttles of one app host.
pub struct Throttles {
    /// Login and registration attempts per client address.
    pub per_client: Buckets,
    /// Failed logins per account (the e-mail, lower-cased as login compares it).
    pub per_account: Buckets,
}

impl Throttles {
    /// The throttles `settings` describe.
    pub fn new(settings: &AuthSettings) -> Self {
        Self {
            per_client: Buckets::new(
                settings.client_attempt_burst,
                settings.client_attempts_per_minute,
            ),
            per_account: Buckets::new(
                settings.account_failure_burst,
                settings.account_failures_per_minute,
            ),
        }
    }

    /// Counts an attempt to log in or register from `client`: 429 when it has none left.
    pub fn attempt_from(&self, client: ClientAddress) -> Result<(), ApiError> {
        self.per_client
            .take(&client.0.to_string(), Instant::now())
            .map_err(|wait| too_many("client", wait))
    }

    /// Whether `account` may try a password now: 429 when its failures have used its allowance.
    pub fn account_may_try(&self, account: &str) -> Result<(), ApiError> {
        self.per_account
            .check(account, Instant::now())
            .map_err(|wait| too_many("credentials", wait))
    }

    /// Counts a failed login at `account`.
    pub fn failed_login(&self, account: &str) {
        // An empty bucket was refused by `account_may_try` before the hash; one emptied since by
        // a concurrent failure only means the next try waits.
        let _ = self.per_account.take(account, Instant::now());
    }
}

fn too_many(field: &'static str, wait: Duration) -> ApiError {
    ApiError::TooManyAttempts {
        field,
        // Whole seconds, rounded up: a client that waits this long finds a token.
        retry_after_secs: wait.as_secs() + u64::from(wait.subsec_nanos() > 0),
    }
}

/// The address of the client a request comes from: the connection's peer, or, when the peer is
/// one of `server.trusted_proxies` (the stage's gateway and edges), the address it says it
/// forwarded for. `X-Forwarded-For` is read from the right, the entries the trusted proxies
/// appended, and the first address no trusted proxy owns is the client: entries to its left were
/// sent by the client itself and prove nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddress(pub IpAddr);

impl ClientAddress {
    /// The client behind `peer`, given the request's `X-Forwarded-For` values.
    pub fn behind(peer: IpAddr, forwarded_for: &[&str], trusted: &[IpAddr]) -> Self {
        let mut client = peer;
        let mut hops = forwarded_for
            .iter()
            .rev()
            .flat_map(|value| value.rsplit(','))
            .map(str::trim);
        while trusted.contains(&client) {
            match hops.next().map(str::parse::<IpAddr>) {
                Some(Ok(hop)) => client = hop,
                // No entry, or one that is not an address: the last trusted hop is all we know.
                _ => break,
            }
        }
        Self(client)
    }

    fn of(parts: &Parts, server: &ServerSettings) -> Self {
        // Requests that never came over a socket (a router driven in-process) have no peer.
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map_or(IpAddr::from([0, 0, 0, 0]), |info| info.0.ip());
        let forwarded: Vec<&str> = parts
            .headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        Self::behind(peer, &forwarded, &server.trusted_proxies)
    }
}

impl FromRequestParts<AppState> for ClientAddress {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        Ok(Self::of(parts, &state.settings.server))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// An address no proxy of the test trusts: 10.x.y.z.
    fn untrusted() -> impl Strategy<Value = IpAddr> {
        any::<[u8; 3]>().prop_map(|[a, b, c]| IpAddr::from([10, a, b, c]))
    }

    proptest! {
        /// Whatever a client writes into `X-Forwarded-For` (addresses it wants to be, garbage,
        /// commas, a trusted proxy's own address), the throttle sees the address the first
        /// trusted proxy saw it come from: the edge appends it, the gateway appends the edge.
        #[test]
        fn a_client_cannot_choose_its_address_through_the_trusted_proxies(
            client in untrusted(),
            forged in prop::collection::vec(
                prop_oneof![
                    "[0-9.,: a-f]{0,20}",
                    untrusted().prop_map(|a| a.to_string()),
                    Just("127.10.6.31".to_owned()),
                ],
                0..4,
            ),
            same_line in any::<bool>(),
        ) {
            let (edge, gateway) = (ip("127.10.6.31"), ip("127.10.6.1"));
            let trusted = [edge, gateway];
            // The edge appends the client to what it was sent, the gateway the edge; they may
            // arrive as one line or as several.
            let mut lines: Vec<String> = forged.clone();
            if same_line {
                let mut all = forged.clone();
                all.push(client.to_string());
                all.push(edge.to_string());
                lines = vec![all.join(", ")];
            } else {
                lines.push(client.to_string());
                lines.push(edge.to_string());
            }
            let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
            prop_assert_eq!(ClientAddress::behind(gateway, &lines, &trusted).0, client);
        }

        /// A peer that is not a trusted proxy is the client, whatever it forwards.
        #[test]
        fn an_untrusted_peer_is_the_client_whatever_it_forwards(
            peer in untrusted(),
            forwarded in prop::collection::vec("[ -~]{0,30}", 0..4),
        ) {
            let forwarded: Vec<&str> = forwarded.iter().map(String::as_str).collect();
            let trusted = [ip("127.10.6.1")];
            prop_assert_eq!(ClientAddress::behind(peer, &forwarded, &trusted).0, peer);
        }
    }

    #[test]
    fn a_bucket_gives_its_burst_then_one_token_per_refill_interval() {
        // 3 at once, then one every 2 s (30 a minute).
        let buckets = Buckets::new(3, 30);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(buckets.take("a", t0), Ok(()));
        }
        assert_eq!(buckets.take("a", t0), Err(Duration::from_secs(2)));
        assert_eq!(
            buckets.take("b", t0),
            Ok(()),
            "another key has its own bucket"
        );
        assert_eq!(
            buckets.take("a", t0 + Duration::from_millis(500)),
            Err(Duration::from_millis(1500)),
            "the wait shrinks as the bucket refills"
        );
        assert_eq!(buckets.take("a", t0 + Duration::from_secs(2)), Ok(()));
        assert!(buckets.take("a", t0 + Duration::from_secs(2)).is_err());
        // Refilled for an hour: still only the burst.
        let later = t0 + Duration::from_secs(3600);
        for _ in 0..3 {
            assert_eq!(buckets.take("a", later), Ok(()));
        }
        assert!(buckets.take("a", later).is_err());
    }

    #[test]
    fn checking_a_bucket_takes_nothing() {
        let buckets = Buckets::new(1, 1);
        let t0 = Instant::now();
        for _ in 0..5 {
            assert_eq!(buckets.check("a", t0), Ok(()));
        }
        assert_eq!(buckets.take("a", t0), Ok(()));
        assert_eq!(buckets.check("a", t0), Err(Duration::from_secs(60)));
    }

    #[test]
    fn the_keys_remembered_are_bounded() {
        let buckets = Buckets::new(1, 1);
        let t0 = Instant::now();
        for n in 0..MAX_TRACKED_KEYS {
            assert_eq!(buckets.take(&n.to_string(), t0), Ok(()));
        }
        assert!(buckets.take("0", t0).is_err(), "still remembered");
        // A new key at the bound: every bucket is still empty, so all are forgotten.
        assert_eq!(buckets.take("new", t0), Ok(()));
        assert_eq!(buckets.buckets.lock().unwrap().len(), 1);
        assert_eq!(buckets.take("0", t0), Ok(()), "forgiven");

        // Full again, but this time the old keys have refilled: only they are dropped.
        let buckets = Buckets::new(1, 1);
        for n in 0..MAX_TRACKED_KEYS - 1 {
            assert_eq!(buckets.take(&n.to_string(), t0), Ok(()));
        }
        let later = t0 + Duration::from_secs(61);
        assert_eq!(buckets.take("recent", later), Ok(()));
        assert_eq!(buckets.take("newest", later), Ok(()));
        assert_eq!(buckets.buckets.lock().unwrap().len(), 2);
        assert!(buckets.take("recent", later).is_err(), "kept: it is empty");
    }

    #[test]
    fn the_client_is_the_first_address_no_trusted_proxy_owns_read_from_the_right() {
        let gateway = ip("127.10.6.1");
        let edge = ip("127.10.6.31");
        let trusted = [gateway, edge];
        // Straight to the app: the peer, whatever the client claims.
        assert_eq!(
            ClientAddress::behind(ip("10.0.0.9"), &["1.2.3.4"], &trusted),
            ClientAddress(ip("10.0.0.9"))
        );
        // Through the gateway only.
        assert_eq!(
            ClientAddress::behind(gateway, &["10.0.0.9"], &trusted),
            ClientAddress(ip("10.0.0.9"))
        );
        // Through an edge and the gateway, with a forged entry on the left and spaces.
        assert_eq!(
            ClientAddress::behind(gateway, &["6.6.6.6, 10.0.0.9 ,127.10.6.31"], &trusted),
            ClientAddress(ip("10.0.0.9"))
        );
        // The same, the entries in two header lines.
        assert_eq!(
            ClientAddress::behind(gateway, &["6.6.6.6, 10.0.0.9", "127.10.6.31"], &trusted),
            ClientAddress(ip("10.0.0.9"))
        );
        // A trusted proxy that forwarded nothing, or garbage: itself.
        assert_eq!(
            ClientAddress::behind(gateway, &[], &trusted),
            ClientAddress(gateway)
        );
        assert_eq!(
            ClientAddress::behind(gateway, &["not-an-address"], &trusted),
            ClientAddress(gateway)
        );
        // Nothing trusted: never the header.
        assert_eq!(
            ClientAddress::behind(gateway, &["10.0.0.9"], &[]),
            ClientAddress(gateway)
        );
    }

    #[test]
    fn retry_after_is_whole_seconds_rounded_up() {
        let secs = |wait| match too_many("client", wait) {
            ApiError::TooManyAttempts {
                retry_after_secs, ..
            } => retry_after_secs,
            _ => unreachable!(),
        };
        assert_eq!(secs(Duration::from_millis(1)), 1);
        assert_eq!(secs(Duration::from_secs(2)), 2);
        assert_eq!(secs(Duration::from_millis(2001)), 3);
    }
}
