//! The shared part of what readers see, as the cache stores it (stage 3), and the per-viewer part
//! that is added on every request.
//!
//! An article as a reader sees it is *shared* fields (title, body, tags, favorite count, author's
//! name, bio and image), the same for everyone, plus two *per-viewer* flags: has this viewer
//! favorited it, does this viewer follow its author. Caching whole responses would serve one
//! user's flags to another; so the cache holds [`SharedArticle`] and [`SharedProfile`], and
//! [`ViewerFlags`] looks up the flags for the one viewer (one indexed query, skipped for
//! anonymous readers).

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};
use sqlx::{postgres::PgRow, PgPool, Row};
use time::OffsetDateTime;

use crate::{
    cache::{CacheStatus, Key},
    db::{Reader, Shards},
    error::ApiResult,
    model::{Article, Profile, Timestamp},
    AppState,
};

/// An article minus the viewer's flags: what `conduit:v1:article:{id}` holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SharedArticle {
    /// Primary key.
    pub id: i64,
    /// The author's user id (for the viewer's `following` flag).
    pub author_id: i64,
    /// Current slug (a request with an old slug is not found).
    pub slug: String,
    /// Title.
    pub title: String,
    /// Description.
    pub description: String,
    /// Body (left out of list responses).
    pub body: String,
    /// Tags in the author's order.
    pub tag_list: Vec<String>,
    /// Creation time.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// Last update.
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
    /// Favorites, all users.
    pub favorites_count: i64,
    /// The author's public fields.
    pub author: SharedProfile,
}

/// A profile minus the viewer's `following` flag: what `conduit:v1:profile:{username}` holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SharedProfile {
    /// The user's id.
    pub id: i64,
    /// Username.
    pub username: String,
    /// Bio, if any.
    pub bio: Option<String>,
    /// Image URL, if any.
    pub image: Option<String>,
}

impl SharedProfile {
    /// The profile as `viewer_follows` says the viewer sees it.
    pub fn view(self, following: bool) -> Profile {
        Profile {
            username: self.username,
            bio: self.bio,
            image: self.image,
            following,
        }
    }
}

impl SharedArticle {
    /// The article as `flags`' viewer sees it, with or without its body.
    pub fn view(self, flags: &ViewerFlags, with_body: bool) -> Article {
        Article {
            favorited: flags.favorited.contains(&self.id),
            body: with_body.then_some(self.body),
            slug: self.slug,
            title: self.title,
            description: self.description,
            tag_list: self.tag_list,
            created_at: Timestamp(self.created_at),
            updated_at: Timestamp(self.updated_at),
            favorites_count: self.favorites_count,
            author: self.author.view(flags.following.contains(&self.author_id)),
        }
    }
}

fn shared_from_row(row: &PgRow) -> Result<SharedArticle, sqlx::Error> {
    Ok(SharedArticle {
        id: row.try_get("id")?,
        author_id: row.try_get("author_id")?,
        slug: row.try_get("slug")?,
        title: row.try_get("title")?,
        description: row.try_get("description")?,
        body: row.try_get("body")?,
        tag_list: row.try_get("tag_list")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        favorites_count: row.try_get("favorites_count")?,
        author: SharedProfile {
            id: row.try_get("author_id")?,
            username: row.try_get("username")?,
            bio: row.try_get("bio")?,
            image: row.try_get("image")?,
        },
    })
}

/// Loads the shared part of the articles with these ids (one statement; missing ids are absent).
pub async fn load_articles(pool: &PgPool, ids: &[i64]) -> ApiResult<Vec<SharedArticle>> {
    let rows = sqlx::query(
        "SELECT a.id, a.author_id, a.slug, a.title, a.description, a.body, a.tag_list,
                a.created_at, a.updated_at, a.favorites_count, u.username, u.bio, u.image
         FROM articles a JOIN users u ON u.id = a.author_id WHERE a.id = ANY($1)",
    )
    .bind(ids)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .iter()
        .map(shared_from_row)
        .collect::<Result<Vec<_>, _>>()?)
}

/// Loads one profile's shared part by username: from `pool` on one database; sharded (stage
/// 7), from the primary of the shard the name hashes to, since every shard holds every user.
pub async fn load_profile(
    pool: &PgPool,
    shards: &Shards,
    username: &str,
) -> ApiResult<Option<SharedProfile>> {
    let pool = if shards.sharded() {
        shards.for_name(username).write()?
    } else {
        pool
    };
    let row: Option<(i64, String, Option<String>, Option<String>)> =
        sqlx::query_as("SELECT id, username, bio, image FROM users WHERE username = $1")
            .bind(username)
            .fetch_optional(pool)
            .await?;
    Ok(row.map(|(id, username, bio, image)| SharedProfile {
        id,
        username,
        bio,
        image,
    }))
}

/// The id of the user named `username`, from the user directory on `pool`: a view over `users`,
/// which every shard holds whole (stage 7).
pub async fn user_id_by_name(pool: &PgPool, username: &str) -> ApiResult<Option<i64>> {
    Ok(
        sqlx::query_scalar("SELECT user_id FROM user_directory WHERE username = $1")
            .bind(username)
            .fetch_optional(pool)
            .await?,
    )
}

/// The shared parts of `ids`, in order, from the cache where possible and from the database
/// (one statement for all the misses) otherwise; ids that no longer exist are left out.
pub async fn articles_by_id(
    state: &AppState,
    reader: &Reader,
    ids: &[i64],
) -> ApiResult<(Vec<SharedArticle>, CacheStatus)> {
    let keys: Vec<Key> = ids.iter().map(|id| Key::article(*id)).collect();
    let found = state.cache.get_many::<SharedArticle>(&keys, reader).await;
    let missing: Vec<i64> = ids
        .iter()
        .zip(&found.entries)
        .filter(|(_, entry)| entry.is_none())
        .map(|(id, _)| *id)
        .collect();
    let mut loaded: HashMap<i64, SharedArticle> = HashMap::new();
    if !missing.is_empty() {
        let fill = state.cache.fill_for_misses(reader, &found).await?;
        let rows = if state.shards.sharded() {
            // Stage 7: each shard's articles from that shard's primary (`Reader::for_cache_fill`
            // says why: the entries are kept for everyone, without a stamp).
            let fill_reader = reader.for_cache_fill();
            let mut rows = Vec::with_capacity(missing.len());
            for (shard, ids) in by_shard(&state.shards, &missing) {
                rows.extend(load_articles(fill_reader.on(shard).pool().await?, &ids).await?);
            }
            rows
        } else {
            fill.read(load_articles(fill.pool(), &missing)).await?
        };
        loaded = rows.into_iter().map(|a| (a.id, a)).collect();
        let entries: Vec<(Key, Option<SharedArticle>)> = missing
            .iter()
            .map(|id| (Key::article(*id), loaded.get(id).cloned()))
            .collect();
        state.cache.put_many(reader, &fill, &entries).await;
    }
    let status = found.status;
    let articles = ids
        .iter()
        .zip(found.entries)
        .filter_map(|(id, entry)| match entry {
            Some(found) => found,
            None => loaded.remove(id),
        })
        .collect();
    Ok((articles, status))
}

/// What one viewer has favorited and whom they follow, among the articles and authors of one
/// response.
#[derive(Debug, Default)]
pub struct ViewerFlags {
    favorited: HashSet<i64>,
    following: HashSet<i64>,
}

impl ViewerFlags {
    /// One statement for the whole response (two index lookups per article at most); nothing
    /// for an anonymous viewer (`viewer == 0`). Both the viewer's favorites and their follows
    /// live on the viewer's shard (stage 7), so it is one shard's question there too.
    pub async fn load(reader: &Reader, viewer: i64, articles: &[SharedArticle]) -> ApiResult<Self> {
        if viewer == 0 || articles.is_empty() {
            return Ok(Self::default());
        }
        Self::load_from(reader.for_id(viewer).pool().await?, viewer, articles).await
    }

    /// [`ViewerFlags::load`] on a given pool: the viewer's shard's primary, for the answer to a
    /// write, which must show it.
    pub async fn load_from(
        pool: &PgPool,
        viewer: i64,
        articles: &[SharedArticle],
    ) -> ApiResult<Self> {
        if viewer == 0 || articles.is_empty() {
            return Ok(Self::default());
        }
        let ids: Vec<i64> = articles.iter().map(|a| a.id).collect();
        let authors: Vec<i64> = articles.iter().map(|a| a.author_id).collect();
        let (favorited, following): (Vec<i64>, Vec<i64>) = sqlx::query_as(
            "SELECT
                ARRAY(SELECT article_id FROM favorites WHERE user_id = $1 AND article_id = ANY($2)),
                ARRAY(SELECT followee_id FROM follows WHERE follower_id = $1 AND followee_id = ANY($3))",
        )
        .bind(viewer)
        .bind(&ids)
        .bind(&authors)
        .fetch_one(pool)
        .await?;
        Ok(Self {
            favorited: favorited.into_iter().collect(),
            following: following.into_iter().collect(),
        })
    }

    /// Whether `viewer` follows `user` (for a profile); false for anonymous viewers.
    pub async fn follows(reader: &Reader, viewer: i64, user: i64) -> ApiResult<bool> {
        if viewer == 0 {
            return Ok(false);
        }
        Self::follows_on(reader.for_id(viewer).pool().await?, viewer, user).await
    }

    /// [`ViewerFlags::follows`] on a given pool (the viewer's shard's).
    pub async fn follows_on(pool: &PgPool, viewer: i64, user: i64) -> ApiResult<bool> {
        if viewer == 0 {
            return Ok(false);
        }
        Ok(sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM follows WHERE followee_id = $2 AND follower_id = $1)",
        )
        .bind(viewer)
        .bind(user)
        .fetch_one(pool)
        .await?)
    }
}

/// `ids` grouped by the shard that holds each, in shard order.
pub fn by_shard(shards: &Shards, ids: &[i64]) -> Vec<(u8, Vec<i64>)> {
    let mut groups: std::collections::BTreeMap<u8, Vec<i64>> = std::collections::BTreeMap::new();
    for id in ids {
        groups.entry(shards.shard_of(*id)).or_default().push(*id);
    }
    groups.into_iter().collect()
}

/// The `x-shards` header of a write's answer on a sharded stage: how many shards its transaction
/// spanned (1: a local transaction; 2 or more: two-phase commit), so the harness can show the
/// price of crossing shards per operation. Absent on one database.
#[derive(Debug, Clone, Copy)]
pub struct SpannedShards(Option<usize>);

impl SpannedShards {
    /// `n` shards spanned, said only when the stage has more than one.
    pub fn of(shards: &crate::db::Shards, n: usize) -> Self {
        Self(shards.sharded().then_some(n))
    }
}

impl axum::response::IntoResponseParts for SpannedShards {
    type Error = std::convert::Infallible;

    fn into_response_parts(
        self,
        mut res: axum::response::ResponseParts,
    ) -> Result<axum::response::ResponseParts, Self::Error> {
        if let Some(n) = self.0 {
            res.headers_mut().insert(
                axum::http::HeaderName::from_static("x-shards"),
                axum::http::HeaderValue::from(n),
            );
        }
        Ok(res)
    }
}
