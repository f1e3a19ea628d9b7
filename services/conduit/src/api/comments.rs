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
    api::articles::{article_id, existing_article},
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

/// A comment with its author as viewer `$1` sees them. In stage 7 the comment's shard (its
/// article's) holds its author too, as every shard holds every user; whom the viewer follows it
/// knows only when it is the viewer's shard (see `list_comments`).
const COMMENT_COLUMNS: &str = "
    c.id, c.author_id, c.body, c.created_at, c.updated_at, u.username, u.bio, u.image,
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
    // On the article's shard (stage 7), with the comments and (as on every shard) their authors.
    let reader = reader.for_id(article_id(&slug)?);
    let pool = reader.pool().await?;
    let article = existing_article(pool, &slug).await?;
    let viewer = viewer.viewer_id();
    // Whom the viewer follows is on the viewer's shard: asked in the same statement when that is
    // this one (always, on one database), else of the viewer's shard in a second.
    let shards = reader.shards();
    let follows_here = viewer == 0 || shards.shard_of(viewer) == shards.shard_of(article);
    // The newest MAX_COMMENTS, shown oldest first: a long thread drops its oldest comments from
    // the page, never the one just written.
    let rows = sqlx::query(&format!(
        "SELECT * FROM (
            SELECT {COMMENT_COLUMNS}, c.created_at AS sort_at FROM comments c
            JOIN users u ON u.id = c.author_id
            WHERE c.article_id = $2 ORDER BY c.created_at DESC, c.id DESC LIMIT $3
         ) newest ORDER BY sort_at, id"
    ))
    .bind(if follows_here { viewer } else { 0 })
    .bind(article)
    .bind(MAX_COMMENTS)
    .fetch_all(pool)
    .await?;
    let mut comments: Vec<Comment> = rows
        .iter()
        .map(comment_from_row)
        .collect::<Result<_, _>>()?;
    if !follows_here {
        let authors: Vec<i64> = rows
            .iter()
            .map(|row| row.try_get("author_id"))
            .collect::<Result<_, _>>()?;
        let mut distinct = authors.clone();
        distinct.sort_unstable();
        distinct.dedup();
        let followed: Vec<i64> = sqlx::query_scalar(
            "SELECT followee_id FROM follows WHERE follower_id = $1 AND followee_id = ANY($2)",
        )
        .bind(viewer)
        .bind(&distinct)
        .fetch_all(reader.for_id(viewer).pool().await?)
        .await?;
        for (comment, author) in comments.iter_mut().zip(&authors) {
            comment.author.following = followed.contains(author);
        }
    }
    Ok(Json(CommentsBody { comments }))
}

#[derive(Deserialize)]
struct Envelope {
    #[serde(default, deserialize_with = "crate::model::object_or_null")]
    comment: Option<NewComment>,
}

#[derive(Deserialize)]
struct NewComment {
    body: Option<String>,
}

impl NewComment {
    /// The comment's text, trimmed, or a 422 when it is blank or too long.
    fn checked(self) -> ApiResult<String> {
        let mut v = Validator::default();
        let body = v.required("body", self.body, MAX_COMMENT);
        v.finish()?;
        Ok(body)
    }
}

#[tracing::instrument(level = "debug", skip_all)]
async fn add_comment(
    State(state): State<AppState>,
    user: AuthUser,
    ApiPath(slug): ApiPath<String>,
    ApiJson(envelope): ApiJson<Envelope>,
) -> ApiResult<(StatusCode, Json<CommentBody>)> {
    let body = envelope
        .comment
        .ok_or_else(|| ApiError::invalid("comment", "can't be blank"))?
        .checked()?;

    // On the primary of the article's shard: the write that follows must find the article as
    // this check did. The comment lives with the article, and its author (as every user, stage
    // 7) on every shard.
    let db = state.shards.of(article_id(&slug)?);
    let article = existing_article(db.write()?, &slug).await?;
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
    .fetch_optional(db.write()?)
    .await?
    // No row: the join found no author, so the token's user no longer exists.
    .ok_or(ApiError::Unauthorized {
        field: "token",
        message: "is invalid",
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
    // On the primary of the article's shard: the write that follows must find the article as
    // this check did.
    let db = state.shards.of(article_id(&slug)?);
    let article = existing_article(db.write()?, &slug).await?;
    // An id that is not a number names no comment.
    let id: i64 = id.parse().map_err(|_| ApiError::NotFound("comment"))?;
    let author: Option<i64> =
        sqlx::query_scalar("SELECT author_id FROM comments WHERE id = $1 AND article_id = $2")
            .bind(id)
            .bind(article)
            .fetch_optional(db.write()?)
            .await?;
    match author {
        None => Err(ApiError::NotFound("comment")),
        Some(author) if author != user.id => Err(ApiError::Forbidden("comment")),
        Some(_) => {
            let deleted = sqlx::query("DELETE FROM comments WHERE id = $1 AND author_id = $2")
                .bind(id)
                .bind(user.id)
                .execute(db.write()?)
                .await?
                .rows_affected();
            // Two deletions of one comment at once both pass the check above; only the one whose
            // DELETE removed the row deleted it, and the other is told it is gone.
            if deleted == 0 {
                return Err(ApiError::NotFound("comment"));
            }
            state.cache.invalidate(&[Key::comments(article)]).await;
            Ok(StatusCode::NO_CONTENT)
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::Value;

    use super::*;
    use crate::extract::properties::{body, field, is_a_realworld_422, json_body, object, text};

    proptest! {
        /// Any comment body (any bytes, any JSON, a `body` of any type or length): the text
        /// sent, trimmed, not blank, at most 16 KiB characters as sent; or a RealWorld 422;
        /// never a panic.
        #[test]
        fn any_comment_body_is_its_trimmed_text_or_a_realworld_422(
            bytes in body(
                "comment",
                field(prop_oneof![3 => "[ ]{0,2}\\PC{0,20}", 1 => text(MAX_COMMENT)])
                    .prop_map(|b| object([("body", b)])),
            ),
        ) {
            let checked = json_body::<Envelope>(bytes.clone()).and_then(|envelope| {
                envelope
                    .comment
                    .ok_or_else(|| ApiError::invalid("comment", "can't be blank"))?
                    .checked()
            });
            match checked {
                Ok(text) => {
                    let sent = serde_json::from_slice::<Value>(&bytes).unwrap_or_default();
                    let sent = sent["comment"]["body"].as_str().unwrap_or_default();
                    prop_assert!(sent.chars().count() <= MAX_COMMENT);
                    prop_assert!(!text.is_empty());
                    prop_assert_eq!(text.as_str(), sent.trim());
                }
                Err(refused) => is_a_realworld_422(refused, &["body", "comment"])?,
            }
        }
    }
}
