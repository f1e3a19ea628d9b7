-- The Conduit schema: users, follows, articles, tags, favorites, comments, media.
--
-- Chosen so that sharding by author (stage 7) needs no rewrite:
-- * Ids are 64-bit and carry the number of the shard that created them in their low 8 bits
--   (`next_id()` below). They stay below 2^53 so JavaScript clients read them exactly.
-- * Everything an article page needs lives beside the article: its tags, favorites and the
--   follows *of its author* (keyed by followee first), so reading an article joins only rows that
--   will live on the author's shard. Queries that cross authors (feed, `favorited=` filter,
--   comment authors) say so where they are written, in src/api/.

-- Which shard this database is. Stage 1 has one database: shard 0. The lab sets it per shard later.
CREATE TABLE shard_identity (
    only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    shard_id integer NOT NULL DEFAULT 0 CHECK (shard_id BETWEEN 0 AND 255)
);
INSERT INTO shard_identity DEFAULT VALUES;

-- 45 bits of per-shard sequence, 8 bits of shard number: unique without coordination between
-- shards, ordered within a shard, and exact in a JSON number (53 bits). A sequence never hands
-- out the same value twice, even across crashes, so ids never collide.
CREATE SEQUENCE id_sequence MAXVALUE 35184372088831;
CREATE FUNCTION next_id() RETURNS bigint LANGUAGE sql VOLATILE AS $$
    SELECT (nextval('id_sequence') << 8) | (SELECT shard_id FROM shard_identity)
$$;

CREATE TABLE users (
    id            bigint PRIMARY KEY DEFAULT next_id(),
    username      text NOT NULL,
    email         text NOT NULL,
    password_hash text NOT NULL,
    bio           text,
    image         text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT users_username_key UNIQUE (username),
    CONSTRAINT users_email_key UNIQUE (email)
);

-- Keyed by followee first: "does the viewer follow this author?" is answered on the author's shard.
CREATE TABLE follows (
    followee_id bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    follower_id bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (followee_id, follower_id),
    CHECK (followee_id <> follower_id)
);
CREATE INDEX follows_follower_idx ON follows (follower_id);

-- `tag_list` and `favorites_count` are copies kept in step by the same transaction that changes
-- `article_tags` or `favorites`: reading an article (the hottest query) is then one primary-key
-- lookup plus its author, with no aggregate. The price: every favorite also updates the article
-- row, so favorites of one article serialise on its row lock.
CREATE TABLE articles (
    id              bigint PRIMARY KEY,
    slug            text NOT NULL UNIQUE,
    author_id       bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    title           text NOT NULL,
    description     text NOT NULL,
    body            text NOT NULL,
    tag_list        text[] NOT NULL DEFAULT '{}',
    favorites_count bigint NOT NULL DEFAULT 0 CHECK (favorites_count >= 0),
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX articles_recent_idx ON articles (created_at DESC, id DESC);
CREATE INDEX articles_author_recent_idx ON articles (author_id, created_at DESC, id DESC);

-- One row per (article, tag): what `?tag=` filters and `GET /api/tags` counts use.
-- `position` keeps the client's order of tags.
CREATE TABLE article_tags (
    article_id bigint NOT NULL REFERENCES articles (id) ON DELETE CASCADE,
    position   smallint NOT NULL,
    tag        text NOT NULL,
    PRIMARY KEY (article_id, position),
    UNIQUE (article_id, tag)
);
CREATE INDEX article_tags_tag_idx ON article_tags (tag, article_id);

CREATE TABLE favorites (
    article_id bigint NOT NULL REFERENCES articles (id) ON DELETE CASCADE,
    user_id    bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (article_id, user_id)
);
CREATE INDEX favorites_user_idx ON favorites (user_id, article_id);

CREATE TABLE comments (
    id         bigint PRIMARY KEY DEFAULT next_id(),
    article_id bigint NOT NULL REFERENCES articles (id) ON DELETE CASCADE,
    author_id  bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    body       text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX comments_article_idx ON comments (article_id, created_at, id);

-- Uploaded media: the bytes live in the object store under `media/<id>`; this row says what they are.
CREATE TABLE media (
    id           bigint PRIMARY KEY,
    owner_id     bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    content_type text NOT NULL,
    size_bytes   bigint NOT NULL,
    sha256       text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now()
);
