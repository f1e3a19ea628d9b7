//! Tags: `GET /api/tags`, read from the tags' kept counts.

use axum::{extract::State, routing::get, Json, Router};
use serde::Serialize;

use super::scatter;
use crate::{
    cache::{CacheStatus, Key},
    db::Reader,
    error::ApiResult,
    AppState,
};

/// Most tags returned. The spec returns "the tags"; with user-made tags that set is unbounded, so
/// the answer is bounded: the most used first, then the most recently used (so a tag someone just
/// added shows up, which RealWorld clients check). The seeded data set has 40 tags.
pub const MAX_TAGS_LISTED: i64 = 1_000;

/// The tags most used first, ties broken by each tag's newest article, then by name; `$1` is
/// the limit. The same statement serves one shard's share in stage 7 (`scatter::tags`).
pub const TAGS_SQL: &str = "SELECT c.tag FROM tag_counts c WHERE c.articles > 0
     ORDER BY c.articles DESC,
         (SELECT t.created_at FROM article_tags t WHERE t.tag = c.tag
          ORDER BY t.created_at DESC, t.article_id DESC LIMIT 1) DESC,
         c.tag
     LIMIT $1";

/// Routes of this module.
pub fn router() -> Router<AppState> {
    Router::new().route("/api/tags", get(list_tags))
}

#[derive(Serialize)]
struct TagsBody {
    tags: Vec<String>,
}

#[tracing::instrument(level = "debug", skip_all)]
async fn list_tags(
    State(state): State<AppState>,
    reader: Reader,
) -> ApiResult<(CacheStatus, Json<TagsBody>)> {
    let shards = state.shards.clone();
    let (tags, status) = state
        .cache
        .get_or_load(&Key::tags(), &reader, |pool| async move {
            if shards.sharded() {
                return Ok(Some(scatter::tags(&shards, MAX_TAGS_LISTED).await?));
            }
            // From the kept counts (`tag_counts`, see `super::counts`): the most used first, ties
            // broken by each tag's newest article (one probe of `article_tags_recent_idx` per
            // tag), instead of a `GROUP BY` over every tag row.
            let tags: Vec<String> = sqlx::query_scalar(TAGS_SQL)
                .bind(MAX_TAGS_LISTED)
                .fetch_all(&pool)
                .await?;
            Ok(Some(tags))
        })
        .await?;
    let tags = tags.unwrap_or_default();
    Ok((status, Json(TagsBody { tags })))
}
