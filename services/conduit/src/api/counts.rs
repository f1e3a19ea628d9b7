//! List counts kept as data: how many articles the global list and each tag's list hold, so a
//! page's `articlesCount` is one primary-key read instead of a count of every match.
//!
//! The tables are `article_count` and `tag_counts` (migration 0002). Every write that changes
//! which articles a list holds (create, delete, a change of tags) changes the counts in the same
//! transaction, through this type only. The author and `favorited=` filters, and the feed, are
//! still counted per request: they match a few dozen to a few hundred articles, which an index
//! counts in a fraction of a millisecond, and keeping a count per user would put a write on
//! every follow and favorite.
//!
//! Lock order, so two writers never deadlock: the global count first, then the tags' counts in
//! tag order, in one statement. Stage 7 (sharding by author): each shard counts its own
//! articles; a list's count is the sum of the shards' counts.

use std::collections::BTreeMap;

use sqlx::{PgConnection, PgExecutor};

use crate::error::ApiResult;

/// The counts of the global list and of each tag's list.
pub struct ListCounts;

impl ListCounts {
    /// Articles in the global list.
    pub async fn all<'e>(db: impl PgExecutor<'e>) -> ApiResult<i64> {
        let count: Option<i64> = sqlx::query_scalar("SELECT articles FROM article_count")
            .fetch_optional(db)
            .await?;
        Ok(count.unwrap_or(0))
    }

    /// Articles tagged `tag` (0 for a tag nobody used).
    pub async fn tag<'e>(db: impl PgExecutor<'e>, tag: &str) -> ApiResult<i64> {
        let count: Option<i64> =
            sqlx::query_scalar("SELECT articles FROM tag_counts WHERE tag = $1")
                .bind(tag)
                .fetch_optional(db)
                .await?;
        Ok(count.unwrap_or(0))
    }

    /// `delta` articles were created (+) or deleted (-). Call before [`Self::retag`] in the
    /// same transaction (the lock order).
    pub async fn articles_changed(tx: &mut PgConnection, delta: i64) -> ApiResult<()> {
        // The one row exists from the migration on (`recount_lists()`).
        sqlx::query("UPDATE article_count SET articles = articles + $1")
            .bind(delta)
            .execute(tx)
            .await?;
        Ok(())
    }

    /// One article's tags went from `old` to `new` (`[]` for a new or deleted article): every
    /// tag it left counts one less, every tag it joined one more, in one statement.
    pub async fn retag(tx: &mut PgConnection, old: &[String], new: &[String]) -> ApiResult<()> {
        let deltas = tag_deltas(old, new);
        if deltas.is_empty() {
            return Ok(());
        }
        let (tags, deltas): (Vec<&str>, Vec<i64>) = deltas.into_iter().unzip();
        // Rows in tag order (the input is sorted, and `WITH ORDINALITY` keeps it through the
        // insert), so writers lock them in the same order.
        sqlx::query(
            "INSERT INTO tag_counts (tag, articles)
             SELECT d.tag, d.delta
             FROM UNNEST($1::text[], $2::bigint[]) WITH ORDINALITY AS d(tag, delta, n)
             ORDER BY d.n
             ON CONFLICT (tag) DO UPDATE SET articles = tag_counts.articles + excluded.articles",
        )
        .bind(&tags)
        .bind(&deltas)
        .execute(tx)
        .await?;
        Ok(())
    }
}

/// +1 for each tag in `new` only, -1 for each tag in `old` only, sorted by tag; tags in both are
/// left out (their counts do not change).
fn tag_deltas<'a>(old: &'a [String], new: &'a [String]) -> BTreeMap<&'a str, i64> {
    let mut deltas = BTreeMap::new();
    for tag in old {
        *deltas.entry(tag.as_str()).or_insert(0) -= 1;
    }
    for tag in new {
        *deltas.entry(tag.as_str()).or_insert(0) += 1;
    }
    deltas.retain(|_, delta| *delta != 0);
    deltas
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(list: &[&str]) -> Vec<String> {
        list.iter().map(|t| t.to_string()).collect()
    }

    #[test]
    fn deltas_count_only_the_tags_that_changed_in_tag_order() {
        let (old, new) = (tags(&["sql", "rust", "go"]), tags(&["rust", "zig", "ada"]));
        let deltas: Vec<(&str, i64)> = tag_deltas(&old, &new).into_iter().collect();
        assert_eq!(
            deltas,
            vec![("ada", 1), ("go", -1), ("sql", -1), ("zig", 1)]
        );
    }

    #[test]
    fn new_and_deleted_articles_count_every_tag() {
        assert_eq!(tag_deltas(&[], &tags(&["b", "a"])).len(), 2);
        assert!(tag_deltas(&tags(&["a"]), &[]).values().all(|d| *d == -1));
        assert!(tag_deltas(&tags(&["a"]), &tags(&["a"])).is_empty());
    }
}
