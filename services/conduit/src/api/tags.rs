//! Tags: `GET /api/tags`.

use axum::{extract::State, routing::get, Json, Router};
use serde::Serialize;

use crate::{error::ApiResult, AppState};

/// Most tags returned, most used first. The spec returns "the tags"; with user-made tags that set
/// is unbounded, so the answer is the most popular ones, as a tag cloud would show.
pub const MAX_TAGS_LISTED: i64 = 500;

/// Routes of this module.
pub fn router() -> Router<AppState> {
    Router::new().route("/api/tags", get(list_tags))
}

#[derive(Serialize)]
struct TagsBody {
    tags: Vec<String>,
}

#[tracing::instrument(skip_all)]
async fn list_tags(State(state): State<AppState>) -> ApiResult<Json<TagsBody>> {
    // Crosses shards from stage 7 (every shard has tags): a scatter-gather and a merge there.
    let tags = sqlx::query_scalar(
        "SELECT tag FROM article_tags GROUP BY tag ORDER BY count(*) DESC, tag LIMIT $1",
    )
    .bind(MAX_TAGS_LISTED)
    .fetch_all(state.db.read())
    .await?;
    Ok(Json(TagsBody { tags }))
}
