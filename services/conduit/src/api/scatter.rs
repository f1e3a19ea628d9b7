//! Stage 7: reads that span shards, as scatter-gather.
//!
//! A list newest first (the global list, a tag's, the feed, a reader's favorites) asks every shard
//! for its own newest `offset + limit` keys (the limit pushed down, each shard walking the same
//! index it walks alone) and merges them: the page is then exactly the page one database holding
//! all the rows would give, because any row of the page is among the first `offset + limit` of
//! its own shard. Keys are (creation time, id), newest first, ties broken by the larger id, as
//! every list's `ORDER BY created_at DESC, id DESC` does.
//!
//! The price, which grows with the shard count and the page's depth: every shard reads
//! `offset + limit` index entries where one database skips `offset` and reads `limit`, and the
//! slowest shard sets the response time. Counts are the kept counters of each shard, summed.

use std::{cmp::Reverse, collections::BinaryHeap};

use futures::future::try_join_all;
use time::OffsetDateTime;

use crate::{db::Shards, error::ApiResult};

/// One row's place in a list: its creation time and id.
pub type ListKey = (OffsetDateTime, i64);

/// The ids of the page at `offset`, `limit` long, of the merge of `lists`, each newest first:
/// a k-way merge that takes the newest head among the lists until the page is full.
pub fn merge_newest(lists: Vec<Vec<ListKey>>, offset: usize, limit: usize) -> Vec<i64> {
    let mut heads: Vec<std::vec::IntoIter<ListKey>> =
        lists.into_iter().map(Vec::into_iter).collect();
    // A max-heap on (time, id): the newest head first; `Reverse` of the list's index breaks
    // nothing (keys are unique ids) but keeps the heap's element ordered totally.
    let mut heap: BinaryHeap<(ListKey, Reverse<usize>)> = BinaryHeap::new();
    for (n, list) in heads.iter_mut().enumerate() {
        if let Some(key) = list.next() {
            heap.push((key, Reverse(n)));
        }
    }
    let mut page = Vec::with_capacity(limit);
    let mut skipped = 0;
    while let Some(((_, id), Reverse(n))) = heap.pop() {
        if skipped < offset {
            skipped += 1;
        } else {
            page.push(id);
            if page.len() == limit {
                break;
            }
        }
        if let Some(key) = heads[n].next() {
            heap.push((key, Reverse(n)));
        }
    }
    page
}

/// The tags most used across all shards, as `GET /api/tags` orders them on one database: count
/// (summed over the shards) first, then the newest article's time, then the name. Every shard
/// gives all its tags in use with their counts: the sum needs every shard's count of a tag, not
/// just its top ones. Fine for the few hundred tags a site like this has; a site with millions
/// would keep a global count (a counter table of its own, updated by 2PC or asynchronously).
pub async fn tags(shards: &Shards, limit: i64) -> ApiResult<Vec<String>> {
    let per_shard = try_join_all(shards.all().map(|(_, db)| async move {
        let rows: Vec<(String, i64, Option<OffsetDateTime>)> = sqlx::query_as(
            "SELECT c.tag, c.articles,
                    (SELECT t.created_at FROM article_tags t WHERE t.tag = c.tag
                     ORDER BY t.created_at DESC, t.article_id DESC LIMIT 1)
             FROM tag_counts c WHERE c.articles > 0",
        )
        .fetch_all(db.write()?)
        .await?;
        ApiResult::Ok(rows)
    }))
    .await?;
    let mut totals: std::collections::HashMap<String, (i64, Option<OffsetDateTime>)> =
        std::collections::HashMap::new();
    for (tag, count, newest) in per_shard.into_iter().flatten() {
        let total = totals.entry(tag).or_insert((0, None));
        total.0 += count;
        total.1 = total.1.max(newest);
    }
    let mut tags: Vec<(String, (i64, Option<OffsetDateTime>))> = totals.into_iter().collect();
    tags.sort_by(|(a, (a_count, a_newest)), (b, (b_count, b_newest))| {
        b_count
            .cmp(a_count)
            .then(b_newest.cmp(a_newest))
            .then(a.cmp(b))
    });
    Ok(tags
        .into_iter()
        .take(usize::try_from(limit).unwrap_or(0))
        .map(|(tag, _)| tag)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(second: i64, id: i64) -> ListKey {
        (OffsetDateTime::from_unix_timestamp(second).unwrap(), id)
    }

    #[test]
    fn the_merged_page_is_the_page_of_all_rows_sorted_newest_first() {
        // Three shards' lists, each newest first; equal times broken by the larger id.
        let lists = vec![
            vec![at(9, 90), at(5, 50), at(1, 10)],
            vec![at(8, 80), at(5, 51), at(2, 20)],
            vec![],
            vec![at(7, 70)],
        ];
        let mut all: Vec<ListKey> = lists.iter().flatten().copied().collect();
        all.sort_by(|a, b| b.cmp(a));
        let ids: Vec<i64> = all.iter().map(|(_, id)| *id).collect();
        for offset in 0..=ids.len() {
            for limit in 1..=3 {
                let expected: Vec<i64> = ids.iter().skip(offset).take(limit).copied().collect();
                assert_eq!(
                    merge_newest(lists.clone(), offset, limit),
                    expected,
                    "offset {offset}, limit {limit}"
                );
            }
        }
        assert_eq!(merge_newest(lists, 0, 3), [90, 80, 70]);
    }
}
