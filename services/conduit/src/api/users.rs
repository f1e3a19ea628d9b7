//! Registration, login, the current user: `POST /api/users`, `POST /api/users/login`,
//! `GET /api/user`, `PUT /api/user`.

use axum::{extract::State, http::StatusCode, routing::get, routing::post, Extension, Router};
use serde::Deserialize;
use sqlx::{FromRow, Row};

use crate::{
    auth::AuthUser,
    cache::Key,
    db::session::Registered,
    error::{conflict_on_unique, ApiError, ApiResult},
    extract::ApiJson,
    model::{
        empty_as_null, present_or_null, User, UserBody, Validator, MAX_EMAIL, MAX_PASSWORD,
        MAX_USERNAME,
    },
    throttle::ClientAddress,
    AppState,
};

/// Routes of this module.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/users", post(register))
        .route("/api/users/login", post(login))
        .route("/api/user", get(current_user).put(update_user))
}

#[derive(Deserialize)]
#[serde(bound(deserialize = "T: Deserialize<'de>"))]
struct Envelope<T> {
    #[serde(default, deserialize_with = "crate::model::object_or_null")]
    user: Option<T>,
}

impl<T> Envelope<T> {
    fn into_inner(self) -> ApiResult<T> {
        self.user
            .ok_or_else(|| ApiError::invalid("user", "can't be blank"))
    }
}

#[derive(Deserialize)]
struct NewUser {
    username: Option<String>,
    email: Option<String>,
    password: Option<String>,
}

#[derive(Deserialize)]
struct LoginUser {
    email: Option<String>,
    password: Option<String>,
}

/// Every field optional, and each is `Option<Option<String>>` to tell absent (keep) from null.
/// `bio` and `image` may be null or "" to clear them; `email`, `username` and `password` may not.
#[derive(Deserialize)]
struct UpdateUser {
    #[serde(default, deserialize_with = "present_or_null")]
    email: Option<Option<String>>,
    #[serde(default, deserialize_with = "present_or_null")]
    username: Option<Option<String>>,
    #[serde(default, deserialize_with = "present_or_null")]
    password: Option<Option<String>>,
    #[serde(default, deserialize_with = "present_or_null")]
    bio: Option<Option<String>>,
    #[serde(default, deserialize_with = "present_or_null")]
    image: Option<Option<String>>,
}

/// A registration as `register` stores it: a username, an e-mail and a password that passed
/// every rule. No `Debug`: it holds a password.
struct Registration {
    username: String,
    email: String,
    password: String,
}

impl NewUser {
    /// The registration asked for, or a 422 naming every field that is wrong.
    fn checked(self) -> ApiResult<Registration> {
        let mut v = Validator::default();
        // Checked as sent, before `required` trims it: a username with white space around it is
        // refused like one with white space inside, so the rule is one rule (the document's).
        let username = self.username.map(|name| v.username(name));
        let username = v.required("username", username, MAX_USERNAME);
        let email = v.required("email", self.email, MAX_EMAIL);
        let email = v.email(email);
        let password = v.password(self.password);
        v.finish()?;
        Ok(Registration {
            username,
            email,
            password,
        })
    }
}

/// What a login tries: an e-mail, trimmed and lower-cased, and a password exactly as typed.
/// No `Debug`: it holds a password.
struct Credentials {
    email: String,
    password: String,
}

impl LoginUser {
    /// The credentials to try, or a 422 when either is blank.
    fn checked(self) -> ApiResult<Credentials> {
        let mut v = Validator::default();
        let email = v.required("email", self.email, MAX_EMAIL).to_lowercase();
        // Not trimmed: a password is compared exactly as typed.
        let password = self.password.unwrap_or_default();
        if password.is_empty() {
            v.fail("password", "can't be blank");
        }
        v.finish()?;
        Ok(Credentials { email, password })
    }
}

/// A change to the current user that passed every rule: `None` keeps a field; `bio` and
/// `image` as sent (`Some(None)` or `Some("")` clears them). No `Debug`: it may hold a
/// password.
struct UserChanges {
    username: Option<String>,
    email: Option<String>,
    password: Option<String>,
    bio: Option<Option<String>>,
    image: Option<Option<String>>,
}

impl UpdateUser {
    /// The change asked for, or a 422 naming every field that is wrong.
    fn checked(self) -> ApiResult<UserChanges> {
        let mut v = Validator::default();
        // Present but null is as blank as "".
        let username = self
            .username
            .map(|u| u.map(|name| v.username(name)))
            .map(|u| v.required("username", u, MAX_USERNAME));
        let email = self
            .email
            .map(|e| v.required("email", e, MAX_EMAIL))
            .map(|e| v.email(e));
        let password = self.password.map(|p| v.password(p));
        v.finish()?;
        Ok(UserChanges {
            username,
            email,
            password,
            bio: self.bio,
            image: self.image,
        })
    }
}

#[derive(sqlx::FromRow)]
struct UserRow {
    id: i64,
    username: String,
    email: String,
    bio: Option<String>,
    image: Option<String>,
}

impl UserRow {
    fn into_body(self, state: &AppState) -> ApiResult<UserBody> {
        Ok(UserBody {
            user: User {
                token: state.auth.issue(self.id)?,
                email: self.email,
                username: self.username,
                bio: self.bio,
                image: self.image,
            },
        })
    }
}

const UNIQUE_FIELDS: &[(&str, &str)] = &[
    ("users_username_key", "username"),
    ("users_email_key", "email"),
];

#[tracing::instrument(level = "debug", skip_all)]
async fn register(
    State(state): State<AppState>,
    client: ClientAddress,
    ApiJson(body): ApiJson<Envelope<NewUser>>,
) -> ApiResult<(StatusCode, Extension<Registered>, axum::Json<UserBody>)> {
    let Registration {
        username,
        email,
        password,
    } = body.into_inner()?.checked()?;

    state.throttles.attempt_from(client)?;
    let hash = state.auth.hash_password(password).await?;
    // The user's row on every shard (stage 7: `users` is a reference table, `db::shards`), in one
    // global transaction: each shard's unique indexes see the name and the e-mail, so they stay
    // unique across shards, and no shard shows a user another lacks. Their bucket names their
    // home shard, whose id sequence gives the id. One database: one local transaction.
    let shards = &state.shards;
    let bucket = shards.new_user_bucket();
    let home = shards.shard_of_bucket(bucket);
    let everywhere = shards.every_shard();
    let mut tx = shards.begin(&everywhere)?.await?;
    let inserted = async {
        let id: i64 = sqlx::query_scalar("SELECT next_id_in($1)")
            .bind(i32::from(bucket))
            .fetch_one(tx.on(home)?)
            .await?;
        // Shard 0 first, then the others (shard order: see `Shards::every_shard`); every copy is
        // the same row, so shard 0's answers for all.
        let insert = || {
            sqlx::query(
                "INSERT INTO users (id, username, email, password_hash) VALUES ($1, $2, $3, $4)
                 RETURNING id, username, email, bio, image",
            )
            .bind(id)
            .bind(&username)
            .bind(&email)
            .bind(&hash)
        };
        let row = insert()
            .fetch_one(tx.on(0)?)
            .await
            .map_err(|e| conflict_on_unique(e, UNIQUE_FIELDS))?;
        let row = UserRow::from_row(&row)?;
        for &shard in everywhere.iter().skip(1) {
            insert()
                .execute(tx.on(shard)?)
                .await
                .map_err(|e| conflict_on_unique(e, UNIQUE_FIELDS))?;
        }
        ApiResult::Ok(row)
    }
    .await;
    let row = tx.settle(inserted).await?;
    // A cached "no such profile" for this name is now wrong.
    state.cache.invalidate(&[Key::profile(&row.username)]).await;
    // The new user had no token to name them by: their position starts at this write.
    let registered = Extension(Registered(row.id));
    Ok((
        StatusCode::CREATED,
        registered,
        axum::Json(row.into_body(&state)?),
    ))
}

#[tracing::instrument(level = "debug", skip_all)]
async fn login(
    State(state): State<AppState>,
    client: ClientAddress,
    ApiJson(body): ApiJson<Envelope<LoginUser>>,
) -> ApiResult<axum::Json<UserBody>> {
    let Credentials { email, password } = body.into_inner()?.checked()?;
    // Before any hash: a client or an account past its allowance costs a map lookup, no more.
    state.throttles.attempt_from(client)?;
    state.throttles.account_may_try(&email)?;

    // On a primary: someone who has just registered (or changed their password) must be able
    // to log in at once, and has no position yet to find a replica by. Stage 7: every shard holds
    // every user, so the shard the e-mail hashes to.
    let found =
        sqlx::query_as::<_, (i64, String)>("SELECT id, password_hash FROM users WHERE email = $1")
            .bind(&email)
            .fetch_optional(state.shards.for_name(&email).write()?)
            .await?;
    let invalid = ApiError::Unauthorized {
        field: "credentials",
        message: "invalid",
    };
    // An unknown e-mail counts against it as a wrong password does: guessing which accounts
    // exist is throttled like guessing their passwords.
    let Some((id, hash)) = found else {
        state.throttles.failed_login(&email);
        return Err(invalid);
    };
    // Longer than any password registration takes (counted in characters, as it counts them):
    // it matches no account, and is refused without hashing it.
    if password.chars().count() > MAX_PASSWORD
        || !state.auth.verify_password(password, hash).await?
    {
        state.throttles.failed_login(&email);
        return Err(invalid);
    }
    Ok(axum::Json(load(&state, id).await?.into_body(&state)?))
}

async fn load(state: &AppState, id: i64) -> ApiResult<UserRow> {
    // From the write pool: the current user must see their own latest update.
    sqlx::query_as("SELECT id, username, email, bio, image FROM users WHERE id = $1")
        .bind(id)
        .fetch_optional(state.shards.of(id).write()?)
        .await?
        // A valid token for a user that no longer exists.
        .ok_or(ApiError::Unauthorized {
            field: "token",
            message: "is invalid",
        })
}

/// A valid token whose user no longer exists (deleted by an operator: no API deletes users) is
/// refused as a forged one is. The writes that add a row learn it from the foreign key they
/// break (`error::foreign_key_error`); the ones that only remove rows (unfavorite, unfollow)
/// and the feed ask here first, one primary-key lookup on `pool`. Reads that merely take an
/// optional token do not ask: they serve such a token as a viewer who follows and favorites
/// nothing, since asking would add a database round trip to every logged-in read, cache hits
/// included.
pub(crate) async fn refuse_a_deleted_users_token(pool: &sqlx::PgPool, id: i64) -> ApiResult<()> {
    let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM users WHERE id = $1)")
        .bind(id)
        .fetch_one(pool)
        .await?;
    if exists {
        Ok(())
    } else {
        Err(ApiError::Unauthorized {
            field: "token",
            message: "is invalid",
        })
    }
}

#[tracing::instrument(level = "debug", skip_all)]
async fn current_user(
    State(state): State<AppState>,
    user: AuthUser,
) -> ApiResult<axum::Json<UserBody>> {
    Ok(axum::Json(load(&state, user.id).await?.into_body(&state)?))
}

#[tracing::instrument(level = "debug", skip_all)]
async fn update_user(
    State(state): State<AppState>,
    user: AuthUser,
    ApiJson(body): ApiJson<Envelope<UpdateUser>>,
) -> ApiResult<axum::Json<UserBody>> {
    let UserChanges {
        username,
        email,
        password,
        bio,
        image,
    } = body.into_inner()?.checked()?;

    let hash = match password {
        Some(p) => Some(state.auth.hash_password(p).await?),
        None => None,
    };
    let bio_given = bio.is_some();
    let image_given = image.is_some();
    let (bio, image) = (empty_as_null(bio.flatten()), empty_as_null(image.flatten()));
    // Every shard's copy of the user (stage 7: `users` is a reference table, `db::shards`), in
    // one global transaction, in shard order (`Shards::every_shard`); the author's articles from
    // their home shard. One database: one local transaction.
    let shards = &state.shards;
    let home = shards.shard_of(user.id);
    let everywhere = shards.every_shard();
    let mut tx = shards.begin(&everywhere)?.await?;
    let updated = async {
        // Shard 0 first, then the others (shard order: see `Shards::every_shard`); every copy is
        // the same row, so shard 0's answers for all.
        let update = || {
            sqlx::query(
                "WITH before AS (SELECT username FROM users WHERE id = $1)
                 UPDATE users SET
                    username = COALESCE($2, username),
                    email = COALESCE($3, email),
                    password_hash = COALESCE($4, password_hash),
                    bio = CASE WHEN $5 THEN $6 ELSE bio END,
                    image = CASE WHEN $7 THEN $8 ELSE image END,
                    updated_at = now()
                 WHERE id = $1
                 RETURNING id, username, email, bio, image,
                           (SELECT username FROM before) AS old_username",
            )
            .bind(user.id)
            .bind(&username)
            .bind(&email)
            .bind(&hash)
            .bind(bio_given)
            .bind(&bio)
            .bind(image_given)
            .bind(&image)
        };
        let row = update()
            .fetch_optional(tx.on(0)?)
            .await
            .map_err(|e| conflict_on_unique(e, UNIQUE_FIELDS))?
            .ok_or(ApiError::Unauthorized {
                field: "token",
                message: "is invalid",
            })?;
        for &shard in everywhere.iter().skip(1) {
            update()
                .execute(tx.on(shard)?)
                .await
                .map_err(|e| conflict_on_unique(e, UNIQUE_FIELDS))?;
        }
        // Every article of the author (each cached one carries the author's name, bio and
        // image), read in the same transaction: after the commit nothing may fail the answer to
        // a write that stands (a drill caught one answered "writes refused").
        let articles: Vec<i64> = if state.cache.enabled() {
            sqlx::query_scalar("SELECT id FROM articles WHERE author_id = $1")
                .bind(user.id)
                .fetch_all(tx.on(home)?)
                .await?
        } else {
            Vec::new()
        };
        ApiResult::Ok((row, articles))
    }
    .await;
    let (row, articles) = tx.settle(updated).await?;
    let old_username: String = row.try_get("old_username")?;
    let row = UserRow::from_row(&row)?;
    invalidate_profile(&state, &articles, &old_username, &row.username).await;
    Ok(axum::Json(row.into_body(&state)?))
}

/// After a profile update: the profile's entries under its old and new name, and the author's
/// `articles`. Proportional to the author's article count, which is fine for a rare write; an
/// author with very many articles would call for versioned keys instead (the author's version
/// inside each article key).
async fn invalidate_profile(
    state: &AppState,
    articles: &[i64],
    old_username: &str,
    username: &str,
) {
    let mut stale = vec![Key::profile(old_username), Key::profile(username)];
    stale.extend(articles.iter().copied().map(Key::article));
    for chunk in stale.chunks(500) {
        state.cache.invalidate(chunk).await;
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::Value;

    use super::*;
    use crate::{
        extract::properties::{body, field, is_a_realworld_422, json_body, object, text},
        model::MIN_PASSWORD,
    };

    /// Usernames around the bound, and anything else.
    fn username() -> impl Strategy<Value = String> {
        prop_oneof![3 => "[a-zA-Z0-9_.-]{1,66}", 1 => text(MAX_USERNAME)]
    }

    /// Well-formed addresses (some near the bound), and anything else.
    fn email() -> impl Strategy<Value = String> {
        prop_oneof![
            3 => "[a-zA-Z0-9.]{1,8}@[a-zA-Z]{1,8}\\.[a-z]{2,3}",
            1 => (240..=250_usize).prop_map(|n| format!("{}@x.org", "a".repeat(n))),
            1 => text(MAX_EMAIL),
        ]
    }

    /// Passwords either side of both bounds, and anything else.
    fn password() -> impl Strategy<Value = String> {
        prop_oneof![3 => "\\PC{6,12}", 1 => text(MAX_PASSWORD)]
    }

    /// The string the client sent as `{"user": {name: ...}}`, if it sent one.
    fn sent(bytes: &[u8], name: &str) -> Option<String> {
        let body: Value = serde_json::from_slice(bytes).ok()?;
        body["user"][name].as_str().map(str::to_owned)
    }

    /// The rules a username that got through obeys, the document's: 1 to 64 characters, none
    /// of them white space, a slash or a control character.
    fn a_valid_username(name: &str) -> bool {
        (1..=MAX_USERNAME).contains(&name.chars().count())
            && !name
                .chars()
                .any(|c| c.is_whitespace() || c == '/' || c.is_control())
    }

    /// An e-mail that got through: what was sent (at most 254 characters as sent), trimmed and
    /// lower-cased, shaped `local@domain.tld`.
    fn a_valid_email(email: &str, sent: Option<&str>) -> bool {
        sent.is_some_and(|sent| {
            sent.chars().count() <= MAX_EMAIL && email == sent.trim().to_lowercase()
        }) && email.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty() && domain.contains('.') && !domain.contains('@')
        })
    }

    /// A password that got through: exactly what was sent, 8 to 256 characters.
    fn a_valid_password(password: &str, sent: Option<&str>) -> bool {
        sent == Some(password) && (MIN_PASSWORD..=MAX_PASSWORD).contains(&password.chars().count())
    }

    /// Every field a refusal of a user body may name.
    const FIELDS: &[&str] = &["body", "user", "username", "email", "password"];

    proptest! {
        /// Any registration body (any bytes, any JSON, the envelope around anything, fields of
        /// any type or length): a registration whose every field keeps the documented rules and
        /// is what was sent, or a RealWorld 422; never a panic.
        #[test]
        fn any_registration_body_is_a_valid_registration_or_a_realworld_422(
            bytes in body("user", (field(username()), field(email()), field(password()))
                .prop_map(|(u, e, p)| object([("username", u), ("email", e), ("password", p)]))),
        ) {
            let checked = json_body::<Envelope<NewUser>>(bytes.clone())
                .and_then(Envelope::into_inner)
                .and_then(NewUser::checked);
            match checked {
                Ok(r) => {
                    prop_assert!(a_valid_username(&r.username), "{:?}", r.username);
                    prop_assert_eq!(Some(r.username.clone()), sent(&bytes, "username"));
                    let (email, password) = (sent(&bytes, "email"), sent(&bytes, "password"));
                    prop_assert!(a_valid_email(&r.email, email.as_deref()), "{:?}", r.email);
                    let password_kept = a_valid_password(&r.password, password.as_deref());
                    prop_assert!(password_kept, "{:?}", r.password);
                }
                Err(refused) => is_a_realworld_422(refused, FIELDS)?,
            }
        }

        /// Any login body: a non-blank e-mail (trimmed, lower-cased, at most 254 characters as
        /// sent) and a non-empty password exactly as typed, or a RealWorld 422.
        #[test]
        fn any_login_body_is_credentials_to_try_or_a_realworld_422(
            bytes in body("user", (field(email()), field(password()))
                .prop_map(|(e, p)| object([("email", e), ("password", p)]))),
        ) {
            let checked = json_body::<Envelope<LoginUser>>(bytes.clone())
                .and_then(Envelope::into_inner)
                .and_then(LoginUser::checked);
            match checked {
                Ok(c) => {
                    let email = sent(&bytes, "email").unwrap_or_default();
                    prop_assert!(email.chars().count() <= MAX_EMAIL);
                    prop_assert_eq!(&c.email, &email.trim().to_lowercase());
                    prop_assert!(!c.email.is_empty());
                    prop_assert!(!c.password.is_empty());
                    prop_assert_eq!(Some(c.password), sent(&bytes, "password"));
                }
                Err(refused) => is_a_realworld_422(refused, FIELDS)?,
            }
        }

        /// Any update body: each field left out is kept, each one sent keeps the rules a
        /// registration keeps (null is blank, so refused), `bio` and `image` are passed on as
        /// sent; or a RealWorld 422.
        #[test]
        fn any_user_update_body_is_a_valid_change_or_a_realworld_422(
            bytes in body("user", (
                field(username()),
                field(email()),
                field(password()),
                field(text(64)),
                field(text(64)),
            ).prop_map(|(u, e, p, b, i)| object([
                ("username", u), ("email", e), ("password", p), ("bio", b), ("image", i),
            ]))),
        ) {
            let checked = json_body::<Envelope<UpdateUser>>(bytes.clone())
                .and_then(Envelope::into_inner)
                .and_then(UpdateUser::checked);
            match checked {
                Ok(c) => {
                    let user: Value = serde_json::from_slice::<Value>(&bytes)
                        .map(|b| b["user"].clone())
                        .unwrap_or_default();
                    let given = |name: &str| user.get(name).is_some();
                    prop_assert_eq!(c.username.is_some(), given("username"));
                    prop_assert_eq!(c.email.is_some(), given("email"));
                    prop_assert_eq!(c.password.is_some(), given("password"));
                    if let Some(name) = &c.username {
                        prop_assert!(a_valid_username(name), "{:?}", name);
                        prop_assert_eq!(Some(name.clone()), sent(&bytes, "username"));
                    }
                    let (email, password) = (sent(&bytes, "email"), sent(&bytes, "password"));
                    if let Some(checked) = &c.email {
                        prop_assert!(a_valid_email(checked, email.as_deref()), "{:?}", checked);
                    }
                    if let Some(checked) = &c.password {
                        let kept = a_valid_password(checked, password.as_deref());
                        prop_assert!(kept, "{:?}", checked);
                    }
                    for (name, value) in [("bio", &c.bio), ("image", &c.image)] {
                        let expected = user.get(name).map(|v| v.as_str().map(str::to_owned));
                        prop_assert_eq!(value, &expected);
                    }
                }
                Err(refused) => is_a_realworld_422(refused, FIELDS)?,
            }
        }
    }
}
