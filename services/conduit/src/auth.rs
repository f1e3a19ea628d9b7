//! Authentication: argon2 password hashes and HS256 JWTs carried as `Authorization: Token <jwt>`.
//!
//! Tokens are self-contained (user id and expiry, signed with the shared secret), so any app host
//! can check any token without asking anyone: this is what keeps the app tier stateless when
//! stage 4 puts several app hosts behind a load balancer.

use std::sync::{
    atomic::{AtomicUsize, Ordering},
    Arc,
};

use argon2::{
    password_hash::{rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString},
    Argon2,
};
use axum::{extract::FromRequestParts, http::request::Parts};
use jsonwebtoken::{errors::ErrorKind, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tokio::sync::Semaphore;

use crate::{
    error::{ApiError, ApiResult},
    settings::AuthSettings,
    AppState,
};

/// Signs and checks tokens, hashes and verifies passwords.
#[derive(Clone)]
pub struct Auth {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    ttl_secs: u64,
    /// Bounds concurrent argon2 work (see [`AuthSettings::max_concurrent_hashes`]).
    hashing: Arc<Semaphore>,
    /// Hashes running or waiting for a place, and the most there may be
    /// ([`AuthSettings::max_waiting_hashes`] more than the places).
    admitted: Arc<AtomicUsize>,
    max_admitted: usize,
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    /// The user's id.
    sub: i64,
    /// Issued at, seconds since the epoch.
    iat: i64,
    /// Expiry, seconds since the epoch.
    exp: i64,
}

/// What a client's position cookie carries (see [`crate::db::session`]): a WAL position per
/// shard, signed with the tokens' key so a client cannot send its reads to the primary by
/// inventing one. It has no `sub`, so it can never pass as a login token, nor a token as it.
#[derive(Debug, Serialize, Deserialize)]
struct PositionClaims {
    /// The positions, shard 0's first, each as sixteen hex digits, separated by commas; an
    /// empty one for a shard the holder has no position on. One shard: one position, no comma.
    pos: String,
    /// Expiry, seconds since the epoch.
    exp: i64,
}

impl Auth {
    /// Builds the signer and checker from settings.
    pub fn new(settings: &AuthSettings) -> Self {
        let secret = settings.jwt_secret.expose().as_bytes();
        let mut validation = Validation::new(Algorithm::HS256);
        // Tokens are issued and checked by the same clock here; no leeway needed.
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp"]);
        // This app never issues `nbf`, but a token that carries one is not valid before it.
        validation.validate_nbf = true;
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            ttl_secs: settings.token_ttl_secs,
            hashing: Arc::new(Semaphore::new(settings.max_concurrent_hashes.max(1))),
            admitted: Arc::default(),
            max_admitted: settings.max_concurrent_hashes.max(1) + settings.max_waiting_hashes,
        }
    }

    /// A fresh token for `user_id`.
    pub fn issue(&self, user_id: i64) -> ApiResult<String> {
        let now = OffsetDateTime::now_utc().unix_timestamp();
        self.issue_with_expiry(user_id, now, now + self.ttl_secs as i64)
    }

    /// A token with explicit times (tests use it to make expired tokens).
    pub fn issue_with_expiry(&self, user_id: i64, iat: i64, exp: i64) -> ApiResult<String> {
        let claims = Claims {
            sub: user_id,
            iat,
            exp,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|e| ApiError::Internal(anyhow::Error::new(e).context("signing a token")))
    }

    /// The user id in a valid token; 401 otherwise.
    pub fn verify(&self, token: &str) -> ApiResult<i64> {
        match jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation) {
            Ok(data) => Ok(data.claims.sub),
            Err(e) if matches!(e.kind(), ErrorKind::ExpiredSignature) => {
                Err(ApiError::Unauthorized {
                    field: "token",
                    message: "has expired",
                })
            }
            Err(_) => Err(ApiError::Unauthorized {
                field: "token",
                message: "is invalid",
            }),
        }
    }

    /// A signed statement that its holder may have seen shard `n` at `positions[n]` (anywhere,
    /// for `None`), valid for `ttl_secs`.
    pub fn sign_positions(&self, positions: &[Option<u64>], ttl_secs: u64) -> ApiResult<String> {
        let pos: Vec<String> = positions
            .iter()
            .map(|p| p.map(|p| format!("{p:016x}")).unwrap_or_default())
            .collect();
        let claims = PositionClaims {
            pos: pos.join(","),
            exp: OffsetDateTime::now_utc().unix_timestamp() + ttl_secs as i64,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|e| ApiError::Internal(anyhow::Error::new(e).context("signing a position")))
    }

    /// The positions in a valid, unexpired statement made by [`Auth::sign_positions`], shard 0's
    /// first; `None` for anything else (a position that does not parse spoils the statement).
    pub fn positions_in(&self, signed: &str) -> Option<Vec<Option<u64>>> {
        let data = jsonwebtoken::decode::<PositionClaims>(signed, &self.decoding, &self.validation)
            .ok()?;
        data.claims
            .pos
            .split(',')
            .map(|p| match p {
                "" => Some(None),
                p => u64::from_str_radix(p, 16).ok().map(Some),
            })
            .collect()
    }

    /// Hashes a password with argon2id and a random salt, off the async threads.
    pub async fn hash_password(&self, password: String) -> ApiResult<String> {
        self.run_hash(move || hash_password_blocking(&password))
            .await
    }

    /// Checks a password against a stored hash, off the async threads.
    pub async fn verify_password(&self, password: String, hash: String) -> ApiResult<bool> {
        self.run_hash(move || {
            let parsed = PasswordHash::new(&hash)
                .map_err(|e| anyhow::anyhow!("stored password hash is malformed: {e}"))?;
            Ok(Argon2::default()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok())
        })
        .await
    }

    /// Runs one argon2 computation on the blocking pool, at most `max_concurrent_hashes` at once
    /// and `max_waiting_hashes` waiting: past that, 503 at once.
    ///
    /// The place is held by the computation, not by the request: a request that times out while
    /// its hash runs drops its future, but the blocking thread runs the hash to the end, and a
    /// place given back then would let one more hash start beside it. Held to the end, the host
    /// never computes more than its bound, however many requests gave up.
    async fn run_hash<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> ApiResult<T> + Send + 'static,
    ) -> ApiResult<T> {
        let admission = Admission::new(self.admitted.clone(), self.max_admitted)
            .ok_or(ApiError::Unavailable("busy checking passwords, try again"))?;
        let place = self
            .hashing
            .clone()
            .acquire_owned()
            .await
            .map_err(anyhow::Error::new)?;
        tokio::task::spawn_blocking(move || {
            let _held = (place, admission);
            work()
        })
        .await
        .map_err(anyhow::Error::new)?
    }

    /// Hashes running or waiting now (tests watch it).
    pub fn hashes_admitted(&self) -> usize {
        self.admitted.load(Ordering::SeqCst)
    }
}

/// One hash counted among those admitted, until dropped.
struct Admission(Arc<AtomicUsize>);

impl Admission {
    /// Counts one more hash, unless `max` are already counted.
    fn new(admitted: Arc<AtomicUsize>, max: usize) -> Option<Self> {
        admitted
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Self(admitted))
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Hashes a password exactly as registration does (the seeder uses it too).
pub fn hash_password_blocking(password: &str) -> ApiResult<String> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("hashing a password: {e}")))
}

/// The caller, authenticated: a valid token is required.
#[derive(Debug, Clone, Copy)]
pub struct AuthUser {
    /// The user's id.
    pub id: i64,
}

/// The caller if a token was sent. A token that is sent but invalid is still a 401.
#[derive(Debug, Clone, Copy)]
pub struct MaybeAuthUser(pub Option<AuthUser>);

impl MaybeAuthUser {
    /// The viewer's id, or 0 (no user has id 0) for "anonymous" in queries.
    pub fn viewer_id(&self) -> i64 {
        self.0.map_or(0, |user| user.id)
    }
}

fn token_from(parts: &Parts) -> ApiResult<Option<&str>> {
    let Some(value) = parts.headers.get(axum::http::header::AUTHORIZATION) else {
        return Ok(None);
    };
    // Not text, not the `Token` scheme, or an empty token: all simply invalid.
    match value.to_str().ok().and_then(|v| v.strip_prefix("Token ")) {
        Some(token) if !token.trim().is_empty() => Ok(Some(token.trim())),
        _ => Err(ApiError::Unauthorized {
            field: "token",
            message: "is invalid",
        }),
    }
}

/// The user a request's valid bearer token names, if any; a missing or bad token is `None` (the
/// handler's own extractor is what answers 401). For middleware that only needs to know whose
/// request it is.
pub fn bearer_user(headers: &axum::http::HeaderMap, auth: &Auth) -> Option<i64> {
    let value = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let token = value.strip_prefix("Token ")?.trim();
    auth.verify(token).ok()
}

impl FromRequestParts<AppState> for MaybeAuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> ApiResult<Self> {
        let user = match token_from(parts)? {
            Some(token) => Some(AuthUser {
                id: state.auth.verify(token)?,
            }),
            None => None,
        };
        Ok(MaybeAuthUser(user))
    }
}

impl FromRequestParts<AppState> for AuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> ApiResult<Self> {
        MaybeAuthUser::from_request_parts(parts, state)
            .await?
            .0
            .ok_or(ApiError::Unauthorized {
                field: "token",
                message: "is missing",
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    /// The request parts of a request carrying `value` as its Authorization header.
    fn parts_with_authorization(value: axum::http::HeaderValue) -> Parts {
        let mut request = axum::http::Request::new(());
        request
            .headers_mut()
            .insert(axum::http::header::AUTHORIZATION, value);
        request.into_parts().0
    }

    /// The edge case of [`a_token_with_any_character_changed_is_refused`], every time: the last
    /// character of the signature carries two bits that base64 does not use, so a lenient
    /// decoder would accept some changes to it.
    #[test]
    fn every_change_to_the_signatures_last_character_is_refused() -> TestResult {
        let auth = auth();
        let token = auth.issue(42)?;
        let last = token.len() - 1;
        for replacement in b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_" {
            let mut edited = token.clone().into_bytes();
            edited[last] = *replacement;
            let edited = String::from_utf8(edited)?;
            if edited != token {
                assert!(auth.verify(&edited).is_err(), "{edited}");
            }
        }
        Ok(())
    }

    proptest::proptest! {
        /// Whatever bytes a client sends as its Authorization header: a token to check, or a
        /// 401, never a panic; and garbage never verifies as a user.
        #[test]
        fn any_authorization_header_is_a_token_or_a_401(
            value in proptest::collection::vec(proptest::num::u8::ANY, 0..200),
        ) {
            // Bytes a header cannot hold (control characters) never reach the app.
            let Ok(header) = axum::http::HeaderValue::from_bytes(&value) else {
                return Ok(());
            };
            match token_from(&parts_with_authorization(header)) {
                Ok(Some(token)) => {
                    proptest::prop_assert!(value.starts_with(b"Token "));
                    proptest::prop_assert!(!token.is_empty() && token == token.trim());
                    proptest::prop_assert!(auth().verify(token).is_err());
                }
                Ok(None) => proptest::prop_assert!(false, "a header was sent"),
                Err(error) => {
                    proptest::prop_assert_eq!(error.status(), axum::http::StatusCode::UNAUTHORIZED)
                }
            }
        }

        /// A valid token with any one character changed is refused (its signature no longer
        /// matches, or it no longer parses): a token cannot be edited into another user's.
        #[test]
        fn a_token_with_any_character_changed_is_refused(
            user in 1..i64::MAX,
            at in proptest::num::usize::ANY,
            replacement in "[A-Za-z0-9_.=-]",
        ) {
            let auth = auth();
            let token = auth.issue(user).map_err(|e| proptest::test_runner::TestCaseError::fail(e.to_string()))?;
            let at = at % token.len();
            let mut edited = token.clone();
            edited.replace_range(at..=at, &replacement);
            if edited != token {
                proptest::prop_assert!(auth.verify(&edited).is_err(), "{edited}");
            }
        }
    }

    /// Runs until `done` holds, or fails the test after 30 s (a broken bound would hang it).
    async fn until(what: &str, done: impl Fn() -> bool) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !done() {
            assert!(std::time::Instant::now() < deadline, "never: {what}");
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
    }

    #[tokio::test]
    async fn a_hash_holds_its_place_until_it_ends_and_one_more_than_may_wait_is_refused_at_once(
    ) -> TestResult {
        let auth = Auth::new(&AuthSettings {
            jwt_secret: "a test key of thirty-two bytes or more".into(),
            max_concurrent_hashes: 1,
            max_waiting_hashes: 1,
            ..AuthSettings::default()
        });
        // A "hash" that runs until the test lets it end.
        let (release, held) = std::sync::mpsc::channel::<()>();
        let (started, has_started) = tokio::sync::oneshot::channel::<()>();
        let first = tokio::spawn({
            let auth = auth.clone();
            async move {
                auth.run_hash(move || {
                    let _ = started.send(());
                    let _ = held.recv();
                    Ok(1)
                })
                .await
            }
        });
        has_started.await?;
        // The request gives up (a timeout drops its future); its hash runs on, and keeps its place.
        first.abort();
        assert!(first.await.is_err_and(|e| e.is_cancelled()));
        assert_eq!(auth.hashes_admitted(), 1);

        // One more may wait for the place...
        let second = tokio::spawn({
            let auth = auth.clone();
            async move { auth.run_hash(|| Ok(2)).await }
        });
        until("the second hash waits", || auth.hashes_admitted() == 2).await;
        // ...and the next is refused at once, without waiting for anything.
        match auth.run_hash(|| Ok(3)).await {
            Err(ApiError::Unavailable(what)) => {
                assert_eq!(what, "busy checking passwords, try again")
            }
            other => panic!("expected a 503, got {:?}", other.map(|_| ())),
        }
        assert!(
            !second.is_finished(),
            "the second may not start while the first hash runs"
        );

        release.send(())?;
        assert_eq!(second.await??, 2);
        until("every place is given back", || auth.hashes_admitted() == 0).await;
        assert_eq!(auth.run_hash(|| Ok(4)).await?, 4);
        Ok(())
    }

    fn auth() -> Auth {
        Auth::new(&AuthSettings {
            jwt_secret: "a test key of thirty-two bytes or more".into(),
            ..AuthSettings::default()
        })
    }

    /// `claims` signed as `header` says, with the test key.
    fn signed(
        header: &Header,
        claims: &serde_json::Value,
    ) -> Result<String, jsonwebtoken::errors::Error> {
        jsonwebtoken::encode(
            header,
            claims,
            &EncodingKey::from_secret(b"a test key of thirty-two bytes or more"),
        )
    }

    fn refused_as_invalid(result: ApiResult<i64>) -> bool {
        matches!(
            result,
            Err(ApiError::Unauthorized {
                field: "token",
                message: "is invalid"
            })
        )
    }

    /// The classic attacks on a JWT checker: an unsigned token (`alg: none`), the right key under
    /// another algorithm, a token not valid yet, a token with no expiry. The key is right in
    /// every case; only HS256 tokens with a future `exp` pass.
    #[test]
    fn unsigned_other_algorithm_not_yet_valid_and_endless_tokens_are_refused() -> TestResult {
        let auth = auth();
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let claims = serde_json::json!({"sub": 1, "iat": now, "exp": now + 600});
        // `{"alg":"none","typ":"JWT"}` in base64url, the claims of a good token, no signature.
        let good = signed(&Header::new(Algorithm::HS256), &claims)?;
        let payload = good.split('.').nth(1).ok_or("no payload")?;
        let unsigned = format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{payload}.");
        assert!(refused_as_invalid(auth.verify(&unsigned)));
        for algorithm in [Algorithm::HS384, Algorithm::HS512] {
            let token = signed(&Header::new(algorithm), &claims)?;
            assert!(refused_as_invalid(auth.verify(&token)), "{algorithm:?}");
        }
        let not_yet = serde_json::json!({"sub": 1, "iat": now, "nbf": now + 300, "exp": now + 600});
        assert!(refused_as_invalid(
            auth.verify(&signed(&Header::new(Algorithm::HS256), &not_yet)?)
        ));
        let endless = serde_json::json!({"sub": 1, "iat": now});
        assert!(refused_as_invalid(
            auth.verify(&signed(&Header::new(Algorithm::HS256), &endless)?)
        ));
        // The same claims, properly signed, pass: the refusals above are about the token's form.
        assert_eq!(
            auth.verify(&signed(&Header::new(Algorithm::HS256), &claims)?)?,
            1
        );
        Ok(())
    }

    #[test]
    fn a_token_round_trips() -> TestResult {
        let auth = auth();
        let token = auth.issue(42)?;
        assert_eq!(auth.verify(&token)?, 42);
        Ok(())
    }

    #[test]
    fn a_position_statement_is_neither_a_token_nor_forgeable() -> TestResult {
        let auth = auth();
        let signed = auth.sign_positions(&[Some(0x1_6B37_4D48)], 60)?;
        assert_eq!(auth.positions_in(&signed), Some(vec![Some(0x1_6B37_4D48)]));
        // One per shard, a shard without one kept in its place.
        let signed_2 = auth.sign_positions(&[None, Some(5)], 60)?;
        assert_eq!(auth.positions_in(&signed_2), Some(vec![None, Some(5)]));
        // Neither passes as the other.
        assert!(auth.verify(&signed).is_err());
        assert_eq!(auth.positions_in(&auth.issue(7)?), None);
        // Signed by another key, or expired: nothing.
        let other = Auth::new(&AuthSettings {
            jwt_secret: crate::settings::Secret::from("another secret, long enough to be accepted"),
            ..AuthSettings::default()
        });
        assert_eq!(
            auth.positions_in(&other.sign_positions(&[Some(5)], 60)?),
            None
        );
        let claims = PositionClaims {
            pos: format!("{:016x}", 5),
            exp: OffsetDateTime::now_utc().unix_timestamp() - 10,
        };
        let expired =
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &auth.encoding)?;
        assert_eq!(auth.positions_in(&expired), None);
        Ok(())
    }

    #[test]
    fn expired_and_tampered_tokens_are_refused() -> TestResult {
        let auth = auth();
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let expired = auth.issue_with_expiry(1, now - 100, now - 10)?;
        assert!(matches!(
            auth.verify(&expired),
            Err(ApiError::Unauthorized {
                message: "has expired",
                ..
            })
        ));
        let token = auth.issue(1)?;
        let mut tampered = token.clone().into_bytes();
        let i = tampered.len() - 3;
        tampered[i] = if tampered[i] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(tampered)?;
        assert!(auth.verify(&tampered).is_err());
        let other = Auth::new(&AuthSettings {
            jwt_secret: "another-secret".into(),
            ..AuthSettings::default()
        });
        assert!(other.verify(&token).is_err());
        Ok(())
    }

    #[tokio::test]
    async fn passwords_verify_only_with_the_right_password() -> TestResult {
        let auth = auth();
        let hash = auth.hash_password("hunter22".into()).await?;
        assert!(
            auth.verify_password("hunter22".into(), hash.clone())
                .await?
        );
        assert!(!auth.verify_password("hunter23".into(), hash).await?);
        Ok(())
    }
}
