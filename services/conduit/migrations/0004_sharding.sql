-- Ready for sharding by author (stage 7; src/db/shards.rs). Every stage runs this; until stage 7
-- nothing changes but the three foreign keys below.

-- An id in a given bucket: an author's article, comment or medium carries the author's bucket,
-- so it lives on the author's shard. `next_id()` (bucket = this shard's number) stays for ids
-- that belong to no author: users are given their bucket by the app, and the ids of two-phase
-- transactions name the shard that decides them.
CREATE FUNCTION next_id_in(bucket integer) RETURNS bigint LANGUAGE sql VOLATILE AS $$
    SELECT (nextval('id_sequence') << 8) | bucket
$$;

-- Username and email to user id: where both are unique across the whole system. On one database
-- that is `users` itself, so the directory is a view over it; a sharded layout replaces the view
-- on shard 0 with a table of its own, written with every registration and rename
-- (`Shards::prepare`).
CREATE VIEW user_directory AS SELECT id AS user_id, username, email FROM users;

-- References that cross shards once the data is split by author: a reader's favorite names an
-- article on its author's shard, a follow names a followee, a comment its author, on theirs.
-- PostgreSQL checks foreign keys within one database only, so these go, on every stage, and the
-- app does what `ON DELETE CASCADE` did: deleting an article deletes its favorites (one
-- statement here, every shard's in one global transaction in stage 7). No API deletes a user,
-- so the other two never cascaded.
ALTER TABLE favorites DROP CONSTRAINT favorites_article_id_fkey;
ALTER TABLE follows DROP CONSTRAINT follows_followee_id_fkey;
ALTER TABLE comments DROP CONSTRAINT comments_author_id_fkey;
