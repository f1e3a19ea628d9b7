//! The one HTTP error type. Every failure a client can see is an [`ApiError`], rendered as the
//! RealWorld error body `{"errors": {"<field>": ["<message>"]}}` with the status the spec lists.
//!
//! A database or store failure becomes a 500 that says nothing internal: the cause is logged once,
//! inside the request's span, and the client reads `{"errors": {"server": ["internal error"]}}`.

use std::collections::BTreeMap;

use axum::{
    http::{header::RETRY_AFTER, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use serde_json::json;

/// Field-keyed error messages, as RealWorld clients expect them.
pub type FieldErrors = BTreeMap<String, Vec<String>>;

/// Everything a handler can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 401: no usable credentials. The message says which (`is missing`, `is invalid`, ...).
    #[error("unauthorized: {field} {message}")]
    Unauthorized {
        /// The error key: `token` or `credentials`.
        field: &'static str,
        /// What is wrong with it.
        message: &'static str,
    },
    /// 403: authenticated, but not the owner of `resource`.
    #[error("forbidden: {0}")]
    Forbidden(&'static str),
    /// 404: no such `resource` (article, profile, comment, media, route).
    #[error("not found: {0}")]
    NotFound(&'static str),
    /// 409: a unique field is taken.
    #[error("conflict on {0}")]
    Conflict(&'static str),
    /// 422: the request is well-formed HTTP but its content is not acceptable.
    #[error("unprocessable: {0:?}")]
    Unprocessable(FieldErrors),
    /// 413: the body is over the limit for this route.
    #[error("payload too large")]
    PayloadTooLarge,
    /// 415: an upload that is not one of the accepted image types.
    #[error("unsupported media type")]
    UnsupportedMediaType,
    /// 429: a client or an account has used its allowance of password attempts (see
    /// [`crate::throttle`]); sent with `Retry-After`.
    #[error("too many attempts: {field}")]
    TooManyAttempts {
        /// The error key: `client` (too many attempts from one address) or `credentials` (too
        /// many failed logins at one account).
        field: &'static str,
        /// Whole seconds until one more attempt is allowed.
        retry_after_secs: u64,
    },
    /// 503: overloaded or timed out; retrying later may work.
    #[error("unavailable: {0}")]
    Unavailable(&'static str),
    /// 503: the database (not this app host) cannot serve the request; every app host would
    /// answer the same. Sent with [`FAULT_SCOPE`]` : shared`, so a load balancer does not take
    /// this host out of rotation for it (it would only move the load, then take them all out).
    #[error("database unavailable: {0}")]
    DatabaseUnavailable(&'static str),
    /// 503: shard `n`'s primary is down (stage 7; its watch or its replicas' poller says so): the
    /// request needed it, and other shards' requests are served. Shared, as
    /// [`ApiError::DatabaseUnavailable`].
    #[error("shard {0} unavailable")]
    ShardDown(u8),
    /// 503: the media store cannot take or give bytes now (stage 7: no object-store node has a
    /// quorum). Shared by every app host, like [`ApiError::DatabaseUnavailable`].
    #[error("media store unavailable")]
    MediaStoreUnavailable,
    /// 500: our fault. Logged, never shown.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl ApiError {
    /// The error of a step *after* a write committed (reading its result back for the answer):
    /// the write stands, so the answer must not say it was refused, as "primary down: writes
    /// refused" would. Still a 503; used only where sending the write again is harmless
    /// (favoriting twice counts once). A stage 8 drill's register history caught a committed
    /// write answered "writes refused" (`archlab::history`).
    pub fn after_commit(self) -> Self {
        match self {
            Self::DatabaseUnavailable(_) | Self::ShardDown(_) => Self::DatabaseUnavailable(
                "the change was made, but reading it back failed: try GET",
            ),
            other => other,
        }
    }

    /// A 422 for one field.
    pub fn invalid(field: &str, message: impl Into<String>) -> Self {
        let mut errors = FieldErrors::new();
        errors.insert(field.to_owned(), vec![message.into()]);
        Self::Unprocessable(errors)
    }

    /// The status code of this error.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::TooManyAttempts { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Unavailable(_)
            | Self::DatabaseUnavailable(_)
            | Self::ShardDown(_)
            | Self::MediaStoreUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn body(&self) -> serde_json::Value {
        let one = |field: &str, message: String| json!({ "errors": { field: [message] } });
        match self {
            Self::Unauthorized { field, message } => one(field, (*message).to_owned()),
            Self::Forbidden(resource) => one(resource, "forbidden".to_owned()),
            Self::NotFound(resource) => one(resource, "not found".to_owned()),
            Self::Conflict(field) => one(field, "has already been taken".to_owned()),
            Self::Unprocessable(errors) => json!({ "errors": errors }),
            Self::PayloadTooLarge => one("body", "is too large".to_owned()),
            Self::UnsupportedMediaType => {
                one("media", "must be a PNG, JPEG, GIF or WebP image".to_owned())
            }
            Self::TooManyAttempts { field, .. } => {
                one(field, "too many attempts, try again later".to_owned())
            }
            Self::Unavailable(what) => one("server", (*what).to_owned()),
            Self::DatabaseUnavailable(what) => one("database", (*what).to_owned()),
            Self::ShardDown(shard) => one(
                "database",
                format!("shard {shard} is down: its authors' data cannot be changed or read now, try again"),
            ),
            Self::MediaStoreUnavailable => one("media", "store unavailable, try again".to_owned()),
            Self::Internal(_) => one("server", "internal error".to_owned()),
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(error: sqlx::Error) -> Self {
        match &error {
            // No connection free in time, or the database cannot be reached: a retry may work, and
            // the client should not read it as a bug (503, not 500). Still logged, as a warning.
            // Both are the database's state, shared by every app host (a pool times out when its
            // server is slow or gone): a load balancer gains nothing by skipping this host.
            sqlx::Error::PoolTimedOut => Self::DatabaseUnavailable("busy, try again"),
            // SQLSTATE class 22, "data exception": the value itself cannot be stored or compared,
            // e.g. a NUL character in text (PostgreSQL text cannot hold one). Client data, so 422.
            sqlx::Error::Database(db) if db.code().is_some_and(|c| c.starts_with("22")) => {
                Self::invalid(
                    "body",
                    "contains a value that cannot be stored (e.g. a NUL character)",
                )
            }
            sqlx::Error::Database(db) if db.is_foreign_key_violation() => {
                match db.constraint().and_then(foreign_key_error) {
                    Some(answer) => answer,
                    None => Self::Internal(anyhow::Error::new(error).context("database query")),
                }
            }
            // SQLSTATE 25006, "read-only SQL transaction": a write reached a server that is not
            // (or no longer) the primary, a stage 8 primary demoted or one still finishing its
            // promotion. The write did not happen; a retry goes where the primary is now.
            //
            // SQLSTATE 55000, "object not in prerequisite state", is how a server still in
            // recovery refuses the primary's WAL functions ("recovery is in progress"): the
            // position a write's session records, asked of a primary finishing its promotion.
            sqlx::Error::Database(db)
                if matches!(db.code().as_deref(), Some("25006" | "55000")) =>
            {
                tracing::warn!(error = %error, "a write reached a server that is not the primary");
                Self::DatabaseUnavailable("the primary is moving, try again")
            }
            sqlx::Error::Io(_) | sqlx::Error::PoolClosed => {
                tracing::warn!(error = %error, "database unreachable");
                Self::DatabaseUnavailable("unavailable, try again")
            }
            _ => Self::Internal(anyhow::Error::new(error).context("database query")),
        }
    }
}

/// What a write that failed on a foreign key means to the client, by constraint (PostgreSQL's
/// default names, from `migrations/0001_schema.sql`). The acting user's own row missing means a
/// valid token for a user who no longer exists: 401, as for any token that names nobody. Any
/// other row missing was deleted between the handler's check and its write: 404 for it. A
/// sharded stage drops the keys that would cross shards (`0004_sharding.sql`).
fn foreign_key_error(constraint: &str) -> Option<ApiError> {
    match constraint {
        "articles_author_id_fkey"
        | "comments_author_id_fkey"
        | "favorites_user_id_fkey"
        | "follows_follower_id_fkey"
        | "media_owner_id_fkey" => Some(ApiError::Unauthorized {
            field: "token",
            message: "is invalid",
        }),
        "comments_article_id_fkey"
        | "favorites_article_id_fkey"
        | "article_tags_article_id_fkey" => Some(ApiError::NotFound("article")),
        "follows_followee_id_fkey" => Some(ApiError::NotFound("profile")),
        _ => None,
    }
}

impl From<object_store::Error> for ApiError {
    fn from(error: object_store::Error) -> Self {
        match error {
            object_store::Error::NotFound { .. } => Self::NotFound("media"),
            // The store did not answer (every node tried: see `object_cluster`), or answered
            // 5xx: its state, not a bug here; a retry may work.
            object_store::Error::Generic { .. } => {
                tracing::warn!(error = %error, "media store unavailable");
                Self::MediaStoreUnavailable
            }
            other => Self::Internal(anyhow::Error::new(other).context("object store")),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match &self {
            // Logged here, once, inside the request span that TraceLayer opened.
            Self::Internal(cause) => tracing::error!(error = ?cause, "request failed"),
            Self::Unavailable(what) | Self::DatabaseUnavailable(what) => {
                tracing::warn!(what, "request refused")
            }
            Self::ShardDown(shard) => tracing::warn!(shard, "request refused: shard down"),
            Self::MediaStoreUnavailable => tracing::warn!("request refused: media store"),
            _ => {}
        }
        let mut response = (self.status(), Json(self.body())).into_response();
        if matches!(
            self,
            Self::DatabaseUnavailable(_) | Self::ShardDown(_) | Self::MediaStoreUnavailable
        ) {
            response
                .headers_mut()
                .insert(FAULT_SCOPE, axum::http::HeaderValue::from_static("shared"));
        }
        match self {
            Self::TooManyAttempts {
                retry_after_secs, ..
            } => {
                response
                    .headers_mut()
                    .insert(RETRY_AFTER, retry_after_secs.into());
            }
            // This host is full (the request limit, the hash queue) or was too slow: a second
            // later it may not be. Said so a client backs off instead of retrying at once.
            Self::Unavailable(_) => {
                response
                    .headers_mut()
                    .insert(RETRY_AFTER, axum::http::HeaderValue::from_static("1"));
            }
            _ => {}
        }
        response
    }
}

/// Maps a unique-constraint violation to a 409 on the field it protects, anything else through.
pub fn conflict_on_unique(error: sqlx::Error, fields: &[(&str, &'static str)]) -> ApiError {
    if let sqlx::Error::Database(db) = &error {
        if db.is_unique_violation() {
            if let Some(constraint) = db.constraint() {
                for (name, field) in fields {
                    if constraint == *name {
                        return ApiError::Conflict(field);
                    }
                }
            }
        }
    }
    error.into()
}

/// Response header on a 5xx whose cause is shared by every app host (the database), not this
/// host: `shared`. The gateway's passive health check leaves the host in rotation for it.
pub const FAULT_SCOPE: &str = "x-fault-scope";

/// Shorthand for handler results.
pub type ApiResult<T> = Result<T, ApiError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_a_client_should_retry_later_say_when() {
        let throttled = ApiError::TooManyAttempts {
            field: "credentials",
            retry_after_secs: 12,
        }
        .into_response();
        assert_eq!(throttled.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(throttled.headers()[RETRY_AFTER], "12");
        let busy = ApiError::Unavailable("busy checking passwords, try again").into_response();
        assert_eq!(busy.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(busy.headers()[RETRY_AFTER], "1");
        // The database's outage is not this host's to time: no promise made.
        let shared = ApiError::DatabaseUnavailable("unavailable, try again").into_response();
        assert!(!shared.headers().contains_key(RETRY_AFTER));
    }
}
