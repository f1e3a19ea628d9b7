//! Tags: `GET /api/tags`.

use axum::{extract::State, routing::get, Json, Router};
use serde::Serialize;

use crate::{
    cache::{CacheStatus, Key},
    error::ApiResult,
    AppState,
};

/// Most tags returned. The spec returns "the tags"; with user-made tags that set is unbounded, so
/// the answer is bounded: the most used first, then the most recently used (so a tag someone just
/// added shows up, which RealWorld clients check). The seeded data set has 40 tags.
pub const MAX_TAGS_LISTED: i64 = 1_000;

/// Routes of this module.
pub fn router() -> Router<AppState> {
    Router::new().route("/api/tags", get(list_tags))
}

#[derive(Serialize)]
struct TagsBody {
    tags: Vec<String>,
}

#[tracing::instrument(level = "debug", skip_all)]
async fn list_tags(State(state): State<AppState>) -> ApiResult<(CacheStatus, Json<TagsBody>)> {
    let (tags, status) = state
        .cache
        .get_or_load(&Key::tags(), || async {
            // Crosses shards from stage 7 (every shard has tags): a scatter-gather and a merge.
            let tags: Vec<String> = sqlx::query_scalar(
                "SELECT tag FROM article_tags GROUP BY tag
                 ORDER BY count(*) DESC, max(article_id) DESC LIMIT $1",
            )
            .bind(MAX_TAGS_LISTED)
            .fetch_all(state.db.read())
            .await?;
            Ok(Some(tags))
        })
        .await?;
    let tags = tags.unwrap_or_default();
    Ok((status, Json(TagsBody { tags })))
}
