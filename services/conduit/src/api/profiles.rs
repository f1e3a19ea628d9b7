//! Profiles and following: `GET /api/profiles/{username}`,
//! `POST`/`DELETE /api/profiles/{username}/follow`.

use axum::{
    extract::State,
    response::{IntoResponse, Response},
    routing::get,
    routing::post,
    Json, Router,
};

use super::shared::{self, ViewerFlags};
use sqlx::PgPool;

use crate::{
    auth::{AuthUser, MaybeAuthUser},
    cache::Key,
    db::Reader,
    error::{ApiError, ApiResult},
    extract::ApiPath,
    model::{Profile, ProfileBody},
    AppState,
};

/// Routes of this module.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/profiles/{username}", get(get_profile))
        .route(
            "/api/profiles/{username}/follow",
            post(follow).delete(unfollow),
        )
}

/// One query: the user and whether the viewer follows them. Stage 7: on the viewer's shard,
/// which holds their follows and, as every shard, every user.
async fn profile(pool: &PgPool, username: &str, viewer: i64) -> ApiResult<Profile> {
    sqlx::query_as(
        "SELECT u.username, u.bio, u.image,
                EXISTS (SELECT 1 FROM follows f WHERE f.followee_id = u.id AND f.follower_id = $2)
                    AS following
         FROM users u WHERE u.username = $1",
    )
    .bind(username)
    .bind(viewer)
    .fetch_optional(pool)
    .await?
    .ok_or(ApiError::NotFound("profile"))
}

/// The id of the user named `username`, asked of the follower's (`viewer`'s) shard, where the
/// follow is written: every shard holds every user (stage 7), so a follow reads and writes one.
async fn user_id(state: &AppState, username: &str, viewer: i64) -> ApiResult<i64> {
    shared::user_id_by_name(state.shards.of(viewer).write()?, username)
        .await?
        .ok_or(ApiError::NotFound("profile"))
}

/// `username`'s profile as `viewer` sees it now, on the primary of the viewer's shard, where the
/// follow or unfollow it answers was written (and which holds every user, stage 7): one
/// statement on one database, in every stage.
async fn current_profile(state: &AppState, username: &str, viewer: i64) -> ApiResult<Profile> {
    profile(state.shards.of(viewer).write()?, username, viewer).await
}

#[tracing::instrument(level = "debug", skip_all)]
async fn get_profile(
    State(state): State<AppState>,
    reader: Reader,
    viewer: MaybeAuthUser,
    ApiPath(username): ApiPath<String>,
) -> ApiResult<Response> {
    let viewer = viewer.viewer_id();
    if !state.cache.enabled() && !state.shards.sharded() {
        let profile = profile(reader.pool().await?, &username, viewer).await?;
        return Ok(Json(ProfileBody { profile }).into_response());
    }
    // Stage 3 on: name, bio and image from the cache; `following` for this viewer (stage 7:
    // the profile from the user's shard, the flag from the viewer's).
    let shards = state.shards.clone();
    let (found, status) = state
        .cache
        .get_or_load(&Key::profile(&username), &reader, |pool| async move {
            shared::load_profile(&pool, &shards, &username).await
        })
        .await?;
    let Some(shared) = found else {
        return Ok((status, ApiError::NotFound("profile")).into_response());
    };
    let following = ViewerFlags::follows(&reader, viewer, shared.id).await?;
    let profile = shared.view(following);
    Ok((status, Json(ProfileBody { profile })).into_response())
}

#[tracing::instrument(level = "debug", skip_all)]
async fn follow(
    State(state): State<AppState>,
    user: AuthUser,
    ApiPath(username): ApiPath<String>,
) -> ApiResult<Json<ProfileBody>> {
    let followee = user_id(&state, &username, user.id).await?;
    if followee == user.id {
        return Err(ApiError::invalid("profile", "can't follow yourself"));
    }
    // Following twice is not an error: the result is the same state.
    sqlx::query(
        "INSERT INTO follows (followee_id, follower_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
    )
    .bind(followee)
    .bind(user.id)
    // On the follower's shard (stage 7), where their feed and flags look.
    .execute(state.shards.of(user.id).write()?)
    .await?;
    // The answer to a write shows that write: read where it was written.
    let profile = current_profile(&state, &username, user.id).await?;
    Ok(Json(ProfileBody { profile }))
}

#[tracing::instrument(level = "debug", skip_all)]
async fn unfollow(
    State(state): State<AppState>,
    user: AuthUser,
    ApiPath(username): ApiPath<String>,
) -> ApiResult<Json<ProfileBody>> {
    // Deleting no row cannot break a foreign key: a deleted user's token is caught here.
    super::users::refuse_a_deleted_users_token(state.shards.of(user.id).write()?, user.id).await?;
    let followee = user_id(&state, &username, user.id).await?;
    sqlx::query("DELETE FROM follows WHERE followee_id = $1 AND follower_id = $2")
        .bind(followee)
        .bind(user.id)
        .execute(state.shards.of(user.id).write()?)
        .await?;
    // The answer to a write shows that write: read where it was written.
    let profile = current_profile(&state, &username, user.id).await?;
    Ok(Json(ProfileBody { profile }))
}
