//! Comments: `GET`/`POST /api/articles/{slug}/comments`,
//! `DELETE /api/articles/{slug}/comments/{id}`.

use axum::{
    extract::State,
    http::StatusCode,
    routing::{delete, get},
    Json, Router,
};
use serde::Deserialize;
use sqlx::{postgres::PgRow, Row};

use crate::{
    api::articles::existing_article,
    auth::{AuthUser, MaybeAuthUser},
    cache::keys::Key,
    db::Reader,
    error::{ApiError, ApiResult},
    extract::{ApiJson, ApiPath},
    model::{Comment, CommentBody, CommentsBody, Profile, Timestamp, Validator, MAX_COMMENT},
    AppState,
};

/// Most comments returned for one article (its newest ones). The spec has no paging for
/// comments; this bound keeps a runaway thread from turning into a multi-megabyte response.
pub const MAX_COMMENTS: i64 = 500;

/// Routes of this module.
pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/api/articles/{slug}/comments",
            get(list_comments).post(add_comment),
        )
        .route("/api/articles/{slug}/comments/{id}", delete(delete_comment))
}

/// A comment with its author as viewer `$1` sees them. The author join crosses shards from
/// stage 7 (commenters are not the article's author); there it becomes a second lookup.
const COMMENT_COLUMNS: &str = "
    c.id, c.body, c.created_at, c.updated_at, u.username, u.bio, u.image,
    EXISTS (SELECT 1 FROM follows fo WHERE fo.followee_id = c.author_id AND fo.follower_id = $1)
        AS following";

fn comment_from_row(row: &PgRow) -> Result<Comment, sqlx::Error> {
    Ok(Comment {
        id: row.try_get("id")?,
        body: row.try_get("body")?,
        created_at: Timestamp(row.try_get("created_at")?),
        updated_at: Timestamp(row.try_get("updated_at")?),
        author: Profile {
            username: row.try_get("username")?,
            bio: row.try_get("bio")?,
            image: row.try_get("image")?,
            following: row.try_get("following")?,
        },
    })
}

#[tracing::instrument(level = "debug", skip_all)]
async fn list_comments(
    reader: Reader,
    viewer: MaybeAuthUser,
    ApiPath(slug): ApiPath<String>,
) -> ApiResult<Json<CommentsBody>> {
    let pool = reader.pool().await?;
    let article = existing_article(pool, &slug).await?;
    // The newest MAX_COMMENTS, shown oldest first: a long thread drops its oldest comments from
    // the page, never the one just written.
    let rows = sqlx::query(&format!(
        "SELECT * FROM (
            SELECT {COMMENT_COLUMNS}, c.created_at AS sort_at FROM comments c
            JOIN users u ON u.id = c.author_id
            WHERE c.article_id = $2 ORDER BY c.created_at DESC, c.id DESC LIMIT $3
         ) newest ORDER BY sort_at, id"
    ))
    .bind(viewer.viewer_id())
    .bind(article)
    .bind(MAX_COMMENTS)
    .fetch_all(pool)
    .await?;
    let comments = rows
        .iter()
        .map(comment_from_row)
        .collect::<Result<_, _>>()?;
    Ok(Json(CommentsBody { comments }))
}

#[derive(Deserialize)]
struct Envelope {
    comment: Option<NewComment>,
}

#[derive(Deserialize)]
struct NewComment {
    body: Option<String>,
}

#[tracing::instrument(level = "debug", skip_all)]
async fn add_comment(
    State(state): State<AppState>,
    user: AuthUser,
    ApiPath(slug): ApiPath<String>,
    ApiJson(envelope): ApiJson<Envelope>,
) -> ApiResult<(StatusCode, Json<CommentBody>)> {
    let new = envelope
        .comment
        .ok_or_else(|| ApiError::invalid("comment", "can't be blank"))?;
    let mut v = Validator::default();
    let body = v.required("body", new.body, MAX_COMMENT);
    v.finish()?;

    // On the primary: the write that follows must find the article as this check did.
    let article = existing_article(state.db.write(), &slug).await?;
    let row = sqlx::query(&format!(
        "WITH c AS (
            INSERT INTO comments (article_id, author_id, body) VALUES ($2, $1, $3)
            RETURNING id, author_id, body, created_at, updated_at
         )
         SELECT {COMMENT_COLUMNS} FROM c JOIN users u ON u.id = c.author_id"
    ))
    .bind(user.id)
    .bind(article)
    .bind(&body)
    .fetch_one(state.db.write())
    .await
    .map_err(|e| match &e {
        // The article was deleted between the two statements.
        sqlx::Error::Database(db) if db.is_foreign_key_violation() => ApiError::NotFound("article"),
        _ => e.into(),
    })?;
    let comment = comment_from_row(&row)?;
    // Only the edge caches comments (stage 6): this purges them there.
    state.cache.invalidate(&[Key::comments(article)]).await;
    Ok((StatusCode::CREATED, Json(CommentBody { comment })))
}

#[tracing::instrument(level = "debug", skip_all)]
async fn delete_comment(
    State(state): State<AppState>,
    user: AuthUser,
    ApiPath((slug, id)): ApiPath<(String, String)>,
) -> ApiResult<StatusCode> {
    // On the primary: the write that follows must find the article as this check did.
    let article = existing_article(state.db.write(), &slug).await?;
    // An id that is not a number names no comment.
    let id: i64 = id.parse().map_err(|_| ApiError::NotFound("comment"))?;
    let author: Option<i64> =
        sqlx::query_scalar("SELECT author_id FROM comments WHERE id = $1 AND article_id = $2")
            .bind(id)
            .bind(article)
            .fetch_optional(state.db.write())
            .await?;
    match author {
        None => Err(ApiError::NotFound("comment")),
        Some(author) if author != user.id => Err(ApiError::Forbidden("comment")),
        Some(_) => {
            sqlx::query("DELETE FROM comments WHERE id = $1 AND author_id = $2")
                .bind(id)
                .bind(user.id)
                .execute(state.db.write())
                .await?;
            state.cache.invalidate(&[Key::comments(article)]).await;
            Ok(StatusCode::NO_CONTENT)
        }
    }
}
