-- Counts kept as data, an index for newest-first by tag, and a covering index for the feed: what
-- the list pages cost on every request until now (`articlesCount` counted every match; a tag's
-- page sorted all its articles; the feed read every article of every followed author).
--
-- Kept by the app (src/api/counts.rs), in the transaction that creates or deletes an article or
-- changes its tags. There is no API that deletes a user, so the `ON DELETE CASCADE` from users
-- never removes articles behind the counts' back; a real system that deletes users would adjust
-- the counts in that transaction too (or run `recount_lists()` below afterwards).
--
-- Stage 7 (sharding by author): every shard keeps counts of its own articles, and a list's count
-- is the sum over the shards, read in the same scatter-gather that merges the list's pages.

-- How many articles there are: the global list's `articlesCount`. One row, so every article
-- create and delete waits for the one before it to commit: at the read-heavy mix's write rate
-- (a few creates a second) that is nothing; a real system with thousands of creates a second
-- would stripe it over N rows and sum them when read.
CREATE TABLE article_count (
    only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    articles bigint NOT NULL CHECK (articles >= 0)
);

-- How many articles carry each tag: a tag's list `articlesCount`, and the order of `GET /api/tags`
-- (most used first). A tag whose last article goes keeps its row at 0, and is not listed.
-- No `CHECK (articles >= 0)`: the counts are changed with one upsert of +1/-1 deltas (so the rows
-- are locked in tag order and two writers cannot deadlock), and PostgreSQL checks the proposed
-- row of an `INSERT ... ON CONFLICT` before it turns into an update, so a -1 would be refused.
CREATE TABLE tag_counts (
    tag      text PRIMARY KEY,
    articles bigint NOT NULL
);
CREATE INDEX tag_counts_most_used_idx ON tag_counts (articles DESC) WHERE articles > 0;

-- Rewrites both counts from the rows they count: the backfill below, and the seeder after its
-- bulk insert. Not for a live database with writes in flight: a write between the count and the
-- update would be lost (a real system would recount in batches while the app keeps the deltas).
CREATE FUNCTION recount_lists() RETURNS void LANGUAGE sql AS $$
    INSERT INTO article_count (articles) SELECT count(*) FROM articles
    ON CONFLICT (only_row) DO UPDATE SET articles = excluded.articles;
    UPDATE tag_counts SET articles = 0;
    INSERT INTO tag_counts (tag, articles) SELECT tag, count(*) FROM article_tags GROUP BY tag
    ON CONFLICT (tag) DO UPDATE SET articles = excluded.articles;
$$;

-- A copy of the article's creation time on each of its tag rows, so one index serves a tag's list
-- newest first (the page is the first rows of `article_tags_recent_idx`, not a sort of every
-- article with the tag). `articles.created_at` never changes, so the copy never goes stale.
-- It replaces `article_tags_tag_idx`: everything that looked a tag up now uses the new index.
ALTER TABLE article_tags ADD COLUMN created_at timestamptz;
UPDATE article_tags t SET created_at = a.created_at FROM articles a WHERE a.id = t.article_id;
ALTER TABLE article_tags ALTER COLUMN created_at SET NOT NULL;
CREATE INDEX article_tags_recent_idx ON article_tags (tag, created_at DESC, article_id DESC);
DROP INDEX article_tags_tag_idx;

-- The feed and the viewer's `following` flags look follows up by follower: with the followee in
-- the index too, both are answered from the index alone (no heap visit per follow).
CREATE INDEX follows_follower_followee_idx ON follows (follower_id, followee_id);
DROP INDEX follows_follower_idx;

SELECT recount_lists();
