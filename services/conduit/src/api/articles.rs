//! Articles, the feed and favorites: `GET`/`POST /api/articles`, `GET /api/articles/feed`,
//! `GET`/`PUT`/`DELETE /api/articles/{slug}`, `POST`/`DELETE /api/articles/{slug}/favorite`.
//!
//! Query budget: one statement reads an article *with* its author, tags and favorite count (kept
//! on the article row) and the viewer's `favorited`/`following` flags (two indexed lookups,
//! skipped for anonymous readers). A list page of any size is two statements: the page and its
//! count, where the global and per-tag counts are kept as data ([`ListCounts`]) and read by
//! primary key. No per-article queries (no N+1).
//!
//! From stage 3 the reads most clients make go through the cache instead: one article, and the
//! first [`LIST_HEAD`] entries of the global list and of each tag's list (see [`crate::cache`] and
//! [`super::shared`]). Every write here tells the cache what it changed, after it commits.

use axum::{
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{get, post},
    Json, Router,
};
use serde::{Deserialize, Serialize};
use sqlx::{postgres::PgRow, PgExecutor, PgPool, Row};

use super::{
    counts::ListCounts,
    scatter::{merge_newest, ListKey},
    shared::{self, SpannedShards, ViewerFlags},
};
use crate::{
    auth::{AuthUser, MaybeAuthUser},
    cache::{keys, CacheStatus, Key},
    db::{bucket_of, Reader},
    error::{ApiError, ApiResult},
    extract::{ApiJson, ApiPath, ApiQuery},
    model::{
        present_or_null, Article, ArticleBody, ArticlesBody, Profile, Timestamp, Validator,
        MAX_TAG_LEN, MAX_TITLE,
    },
    slug::{id_from_slug, slug_for},
    AppState,
};

/// Largest page a client may ask for. Pages are built in one query, but a page of 10,000 would
/// still be a 10,000-row response; 100 keeps every response small.
pub const MAX_PAGE: i64 = 100;
/// Page size when the client gives no `limit` (the spec's default).
pub const DEFAULT_PAGE: i64 = 20;
/// Largest `offset`: any offset up to it plus the largest page still fits in an `i64`, the type
/// every list computes `offset + limit` in (the cache's head check, the limit pushed down to each
/// shard, the feed's per-author `LIMIT` in SQL). A larger offset could only ever show an empty
/// page.
pub const MAX_OFFSET: i64 = i64::MAX - MAX_PAGE;
/// Newest ids kept in a cached list. Most readers look at the first pages; 100 covers the first
/// five pages of 20 (the workloads' deepest page is offset 80) and is still a small entry (about
/// a kilobyte). Pages past it go to the database.
pub const LIST_HEAD: i64 = 100;

/// Routes of this module.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/articles", get(list_articles).post(create_article))
        .route("/api/articles/feed", get(feed))
        .route(
            "/api/articles/{slug}",
            get(get_article).put(update_article).delete(delete_article),
        )
        .route(
            "/api/articles/{slug}/favorite",
            post(favorite).delete(unfavorite),
        )
}

/// Columns of an article as seen by the viewer bound to `$1`. Every subquery is keyed by the
/// article or its author, so all of it will live on the author's shard.
const ARTICLE_COLUMNS: &str = "
    a.id, a.slug, a.title, a.description, a.created_at, a.updated_at, a.tag_list,
    a.favorites_count, u.username, u.bio, u.image,
    EXISTS (SELECT 1 FROM favorites f WHERE f.article_id = a.id AND f.user_id = $1)
        AS favorited,
    EXISTS (SELECT 1 FROM follows fo WHERE fo.followee_id = a.author_id AND fo.follower_id = $1)
        AS following";

/// The same columns for an anonymous reader: nothing is favorited or followed, so the two
/// per-viewer lookups are skipped (`$1` is still bound, and unused, to keep one placeholder layout).
const ANONYMOUS_ARTICLE_COLUMNS: &str = "
    a.id, a.slug, a.title, a.description, a.created_at, a.updated_at, a.tag_list,
    a.favorites_count, u.username, u.bio, u.image,
    $1::bigint IS NULL AS favorited, $1::bigint IS NULL AS following";

/// The columns for `viewer` (0: anonymous).
fn article_columns(viewer: i64) -> &'static str {
    if viewer == 0 {
        ANONYMOUS_ARTICLE_COLUMNS
    } else {
        ARTICLE_COLUMNS
    }
}

/// A list page's rows as articles (lists carry no body).
fn list_page_from_rows(rows: &[PgRow]) -> Result<Vec<Article>, sqlx::Error> {
    rows.iter()
        .map(|row| article_from_row(row, false))
        .collect()
}

fn article_from_row(row: &PgRow, with_body: bool) -> Result<Article, sqlx::Error> {
    Ok(Article {
        slug: row.try_get("slug")?,
        title: row.try_get("title")?,
        description: row.try_get("description")?,
        body: if with_body {
            Some(row.try_get("body")?)
        } else {
            None
        },
        tag_list: row.try_get("tag_list")?,
        created_at: Timestamp(row.try_get("created_at")?),
        updated_at: Timestamp(row.try_get("updated_at")?),
        favorited: row.try_get("favorited")?,
        favorites_count: row.try_get("favorites_count")?,
        author: Profile {
            username: row.try_get("username")?,
            bio: row.try_get("bio")?,
            image: row.try_get("image")?,
            following: row.try_get("following")?,
        },
    })
}

/// Loads one article, with body, as `viewer` sees it.
async fn load_article<'e>(
    db: impl PgExecutor<'e>,
    id: i64,
    viewer: i64,
) -> ApiResult<Option<Article>> {
    let row = sqlx::query(&format!(
        "SELECT {}, a.body FROM articles a JOIN users u ON u.id = a.author_id WHERE a.id = $2",
        article_columns(viewer)
    ))
    .bind(viewer)
    .bind(id)
    .fetch_optional(db)
    .await?;
    Ok(row.map(|r| article_from_row(&r, true)).transpose()?)
}

/// The id in `slug`, or 404. Only slugs we issued parse, so anything else is not found. The id
/// also names the article's shard (stage 7): `state.shards.of(id)`.
pub(crate) fn article_id(slug: &str) -> ApiResult<i64> {
    id_from_slug(slug).ok_or(ApiError::NotFound("article"))
}

/// Loads the article a slug names: by primary key, then the whole slug must match (an old slug
/// from before a title change is not found).
async fn article_by_slug(pool: &PgPool, slug: &str, viewer: i64) -> ApiResult<Article> {
    match load_article(pool, article_id(slug)?, viewer).await? {
        Some(article) if article.slug == slug => Ok(article),
        _ => Err(ApiError::NotFound("article")),
    }
}

#[derive(Deserialize)]
struct ListQuery {
    tag: Option<String>,
    author: Option<String>,
    favorited: Option<String>,
    limit: Option<i64>,
    offset: Option<i64>,
}

/// The page the client asked for, checked.
fn page(limit: Option<i64>, offset: Option<i64>) -> ApiResult<(i64, i64)> {
    let mut v = Validator::default();
    let limit = limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        v.fail("limit", format!("must be between 1 and {MAX_PAGE}"));
    }
    let offset = offset.unwrap_or(0);
    if !(0..=MAX_OFFSET).contains(&offset) {
        v.fail("offset", format!("must be between 0 and {MAX_OFFSET}"));
    }
    v.finish()?;
    Ok((limit, offset))
}

/// A value bound to a list filter's placeholder.
#[derive(Clone, Copy)]
enum Bind<'a> {
    Text(&'a str),
    Ids(&'a [i64]),
}

/// Which articles a list shows. Every condition is a constant SQL fragment; only the values are
/// bound as parameters.
#[derive(Default, Clone, Copy)]
struct ListFilter<'a> {
    tag: Option<&'a str>,
    author: Option<&'a str>,
    favorited_by: Option<&'a str>,
    /// Stage 7, in place of `favorited_by`: the ids the reader favorited, read on their shard
    /// first (their favorites live there, the articles on their authors' shards).
    favorited_ids: Option<&'a [i64]>,
}

/// Where a list's ids come from: the rows walked, the article id among them, and the order that
/// walks them newest first.
struct Source {
    from: &'static str,
    id: &'static str,
    /// The article's creation time among the rows walked: the list's sort key with the id.
    created: &'static str,
    order: &'static str,
}

impl<'a> ListFilter<'a> {
    /// A tag's list starts from the tag's rows in `article_tags_recent_idx`, whose order is the
    /// list's order (joined to `articles a` only when another filter needs the article); every
    /// other list walks `articles a` (`articles_recent_idx`, or an author's
    /// `articles_author_recent_idx`).
    fn source(&self) -> Source {
        let tag_order = "t.created_at DESC, t.article_id DESC";
        let needs_article =
            self.author.is_some() || self.favorited_by.is_some() || self.favorited_ids.is_some();
        match self.tag {
            Some(_) if !needs_article => Source {
                from: "article_tags t",
                id: "t.article_id",
                created: "t.created_at",
                order: tag_order,
            },
            Some(_) => Source {
                from: "article_tags t JOIN articles a ON a.id = t.article_id",
                id: "t.article_id",
                created: "t.created_at",
                order: tag_order,
            },
            None => Source {
                from: "articles a",
                id: "a.id",
                created: "a.created_at",
                order: "a.created_at DESC, a.id DESC",
            },
        }
    }

    /// Whether the count is kept as data (the global list, a tag's list), not counted.
    fn count_is_kept(&self) -> bool {
        self.author.is_none() && self.favorited_by.is_none() && self.favorited_ids.is_none()
    }

    /// Like [`ListFilter::page_ids`], with each id's creation time: one shard's share of a page
    /// in stage 7, merged by `scatter::merge_newest`. Where the list's count is kept, each row
    /// carries it too (a third column, read once per statement), so a shard answers its share
    /// and its count in one round trip; a shard with no rows in the list is asked for the count.
    fn page_keys(&self, first: usize) -> (String, Vec<Bind<'a>>) {
        let (conditions, binds) = self.conditions(first);
        let Source {
            from,
            id,
            created,
            order,
        } = self.source();
        let n = first + binds.len();
        let count = match (self.count_is_kept(), self.tag) {
            (false, _) => String::new(),
            // The tag's value is the first placeholder (`conditions` binds it first).
            (true, Some(_)) => format!(", (SELECT articles FROM tag_counts WHERE tag = ${first})"),
            (true, None) => ", (SELECT articles FROM article_count)".to_owned(),
        };
        let sql = format!(
            "SELECT {id}, {created}{count} FROM {from} WHERE true {conditions} ORDER BY {order} \
             LIMIT ${n} OFFSET ${}",
            n + 1
        );
        (sql, binds)
    }

    /// The ids of one page, newest first, as a query with placeholders numbered from `first`
    /// (the filter's values, then the limit and the offset), and the filter's values in order.
    /// Where the source is an index in list order this reads index entries only, the skipped
    /// `offset` ones included; the articles themselves are read for the page's ids alone.
    fn page_ids(&self, first: usize) -> (String, Vec<Bind<'a>>) {
        let (conditions, binds) = self.conditions(first);
        let Source {
            from, id, order, ..
        } = self.source();
        let n = first + binds.len();
        let sql = format!(
            "SELECT {id} FROM {from} WHERE true {conditions} ORDER BY {order} LIMIT ${n} OFFSET ${}",
            n + 1
        );
        (sql, binds)
    }

    /// `AND ...` conditions with placeholders numbered from `first`, and their values in order.
    fn conditions(&self, first: usize) -> (String, Vec<Bind<'a>>) {
        let mut sql = String::new();
        let mut binds = Vec::new();
        let mut next = |sql: &mut String, fragment: &str, bind: Bind<'a>| {
            let n = first + binds.len();
            sql.push_str(&fragment.replace("$?", &format!("${n}")));
            binds.push(bind);
        };
        if let Some(tag) = self.tag {
            // `t` is the tag's rows (see `source`).
            next(&mut sql, " AND t.tag = $?", Bind::Text(tag));
        }
        if let Some(author) = self.author {
            let c = " AND a.author_id = (SELECT id FROM users WHERE username = $?)";
            next(&mut sql, c, Bind::Text(author));
        }
        if let Some(user) = self.favorited_by {
            // Crosses shards from stage 7, where `favorited_ids` takes its place: one user's
            // favorites point at many authors' articles.
            let c = " AND a.id IN (SELECT f.article_id FROM favorites f
                       WHERE f.user_id = (SELECT id FROM users WHERE username = $?))";
            next(&mut sql, c, Bind::Text(user));
        }
        if let Some(ids) = self.favorited_ids {
            next(&mut sql, " AND a.id = ANY($?)", Bind::Ids(ids));
        }
        (sql, binds)
    }
}

type PgQuery<'q> = sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>;

/// Binds a filter's values, in order, to its placeholders.
fn bind_all<'q>(mut query: PgQuery<'q>, binds: Vec<Bind<'q>>) -> PgQuery<'q> {
    for bind in binds {
        query = match bind {
            Bind::Text(text) => query.bind(text),
            Bind::Ids(ids) => query.bind(ids),
        };
    }
    query
}

/// Two statements: the page (newest first: its ids, then those articles) and the total count.
async fn list(
    pool: &PgPool,
    filter: ListFilter<'_>,
    viewer: i64,
    limit: i64,
    offset: i64,
) -> ApiResult<ArticlesBody> {
    let (ids, binds) = filter.page_ids(2);
    // The ids as an array (computed once, first), not `IN (subquery)`: with a generic plan the
    // planner guesses a `LIMIT $n` keeps a tenth of the rows, and for `IN` it then chose a hash
    // join over a scan of every article (22 ms on the seeded set, against 0.3 ms for this).
    // Same order as the ids: `article_tags.created_at` is a copy of `articles.created_at`.
    let page_sql = format!(
        "SELECT {} FROM articles a JOIN users u ON u.id = a.author_id
         WHERE a.id = ANY(ARRAY({ids}))
         ORDER BY a.created_at DESC, a.id DESC",
        article_columns(viewer),
    );
    let page = sqlx::query(&page_sql).bind(viewer);
    let rows = bind_all(page, binds)
        .bind(limit)
        .bind(offset)
        .fetch_all(pool)
        .await?;
    let articles = list_page_from_rows(&rows)?;

    Ok(ArticlesBody {
        articles,
        articles_count: count_articles(pool, &filter).await?,
    })
}

/// How many articles match `filter`: the kept count for the global list and a tag's list; any
/// other filter (author, `favorited=`, or a tag together with one of them) matches few articles
/// and is counted from its index.
async fn count_articles(pool: &PgPool, filter: &ListFilter<'_>) -> ApiResult<i64> {
    let kept = filter.count_is_kept();
    match filter.tag {
        None if kept => return ListCounts::all(pool).await,
        Some(tag) if kept => return ListCounts::tag(pool, tag).await,
        _ => {}
    }
    let (conditions, binds) = filter.conditions(1);
    let count_sql = format!(
        "SELECT count(*) FROM {} WHERE true {conditions}",
        filter.source().from
    );
    Ok(bind_all(sqlx::query(&count_sql), binds)
        .fetch_one(pool)
        .await?
        .try_get(0)?)
}

#[tracing::instrument(level = "debug", skip_all)]
async fn list_articles(
    State(state): State<AppState>,
    reader: Reader,
    viewer: MaybeAuthUser,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> ApiResult<(CacheStatus, Json<ArticlesBody>)> {
    let (limit, offset) = page(q.limit, q.offset)?;
    let filter = ListFilter {
        tag: q.tag.as_deref(),
        author: q.author.as_deref(),
        favorited_by: q.favorited.as_deref(),
        favorited_ids: None,
    };
    let viewer = viewer.viewer_id();
    let cached = filter.author.is_none()
        && filter.favorited_by.is_none()
        && filter.tag.is_none_or(|t| t.chars().count() <= MAX_TAG_LEN)
        && offset + limit <= LIST_HEAD;
    if state.cache.enabled() && cached {
        let (body, status) =
            cached_list(&state, &reader, filter.tag, viewer, limit, offset).await?;
        return Ok((status, Json(body)));
    }
    if state.shards.sharded() {
        let (ids, count) = sharded_list_ids(&reader, filter, limit, offset).await?;
        let (body, _) = page_of(&state, &reader, viewer, &ids, count).await?;
        return Ok((state.cache.bypass(), Json(body)));
    }
    let body = list(reader.pool().await?, filter, viewer, limit, offset).await?;
    Ok((state.cache.bypass(), Json(body)))
}

/// Stage 7: the ids of one page of `filter`'s list and its count, from every shard that may
/// hold its rows, merged (see [`scatter`]): an author's list from the author's shard alone, a
/// reader's favorites from the shards holding them, any other list from all.
async fn sharded_list_ids(
    reader: &Reader,
    filter: ListFilter<'_>,
    limit: i64,
    offset: i64,
) -> ApiResult<(Vec<i64>, i64)> {
    let shards = reader.shards();
    let mut filter = filter;
    let mut targets = shards.every_shard();
    // Names are asked of the shard each hashes to: every shard holds every user.
    if let Some(author) = filter.author {
        let asked = reader.on(shards.shard_for_name(author));
        match shared::user_id_by_name(asked.pool().await?, author).await? {
            // The filter's own subquery finds the author on their shard.
            Some(id) => targets = vec![shards.shard_of(id)],
            None => return Ok((Vec::new(), 0)),
        }
    }
    let favorites: Vec<i64>;
    if let Some(user) = filter.favorited_by {
        let asked = reader.on(shards.shard_for_name(user));
        let Some(id) = shared::user_id_by_name(asked.pool().await?, user).await? else {
            return Ok((Vec::new(), 0));
        };
        // Bounded by `MAX_FAVORITES_LISTED`: see there.
        favorites = sqlx::query_scalar(
            "SELECT article_id FROM favorites WHERE user_id = $1 ORDER BY article_id DESC LIMIT $2",
        )
        .bind(id)
        .bind(MAX_FAVORITES_LISTED)
        .fetch_all(reader.for_id(id).pool().await?)
        .await?;
        targets = shared::by_shard(shards, &favorites)
            .into_iter()
            .map(|(shard, _)| shard)
            .collect();
        filter.favorited_by = None;
        filter.favorited_ids = Some(&favorites);
    }
    let (sql, binds) = filter.page_keys(1);
    let per_shard = futures::future::try_join_all(targets.into_iter().map(|shard| {
        let reader = reader.on(shard);
        let (sql, binds) = (&sql, binds.clone());
        async move {
            let pool = reader.pool().await?;
            let rows = bind_all(sqlx::query(sql), binds)
                .bind(offset + limit)
                .bind(0_i64)
                .fetch_all(pool)
                .await?;
            let keys: Vec<ListKey> = rows
                .iter()
                .map(|row| Ok((row.try_get(1)?, row.try_get(0)?)))
                .collect::<Result<_, sqlx::Error>>()?;
            let count = match rows.first() {
                // The kept count, carried by every row (see `page_keys`).
                Some(row) if filter.count_is_kept() => {
                    row.try_get::<Option<i64>, _>(2)?.unwrap_or(0)
                }
                _ => count_articles(pool, &filter).await?,
            };
            ApiResult::Ok((keys, count))
        }
    }))
    .await?;
    let count = per_shard.iter().map(|(_, count)| count).sum();
    let lists = per_shard.into_iter().map(|(keys, _)| keys).collect();
    // Both are at most MAX_PAGE.
    let ids = merge_newest(lists, offset as usize, limit as usize);
    Ok((ids, count))
}

/// Stage 7: favorites of one reader considered by `favorited=`: their newest this many by
/// article id (ids grow with time, so roughly the newest articles). A reader's favorites live on
/// their shard and the articles on their authors', so the list first reads the favorites, then
/// asks the shards holding them; a reader with more favorites sees a list (and a count) of these
/// only. On one database the filter is a join and has no such bound.
pub const MAX_FAVORITES_LISTED: i64 = 10_000;

/// The page of articles with these ids, in this order, as `viewer` sees them: the shared parts
/// (from the cache where it holds them) and the viewer's flags.
async fn page_of(
    state: &AppState,
    reader: &Reader,
    viewer: i64,
    ids: &[i64],
    count: i64,
) -> ApiResult<(ArticlesBody, CacheStatus)> {
    let (articles, status) = shared::articles_by_id(state, reader, ids).await?;
    let flags = ViewerFlags::load(reader, viewer, &articles).await?;
    let articles = articles
        .into_iter()
        .map(|a| a.view(&flags, false))
        .collect();
    Ok((
        ArticlesBody {
            articles,
            articles_count: count,
        },
        status,
    ))
}

/// The newest ids of a list and its total count: what `conduit:v1:list:…` holds.
#[derive(Serialize, Deserialize)]
struct ListHead {
    count: i64,
    ids: Vec<i64>,
}

/// A page within the first [`LIST_HEAD`] entries of the global or one tag's list: the list's ids
/// and count from the cache, the articles from the cache (by id), the viewer's flags from the
/// database.
async fn cached_list(
    state: &AppState,
    reader: &Reader,
    tag: Option<&str>,
    viewer: i64,
    limit: i64,
    offset: i64,
) -> ApiResult<(ArticlesBody, CacheStatus)> {
    let (head, head_status) = state
        .cache
        .get_or_load(&Key::list(tag), reader, |pool| async move {
            let filter = ListFilter {
                tag,
                ..ListFilter::default()
            };
            if reader.shards().sharded() {
                // From the primaries: the head is kept for everyone (`Reader::for_cache_fill`).
                let fill_reader = reader.for_cache_fill();
                let (ids, count) = sharded_list_ids(&fill_reader, filter, LIST_HEAD, 0).await?;
                return Ok(Some(ListHead { count, ids }));
            }
            let (ids_sql, binds) = filter.page_ids(1);
            let ids: Vec<i64> = bind_all(sqlx::query(&ids_sql), binds)
                .bind(LIST_HEAD)
                .bind(0_i64)
                .fetch_all(&pool)
                .await?
                .iter()
                .map(|row| row.try_get(0))
                .collect::<Result<_, _>>()?;
            let count = count_articles(&pool, &filter).await?;
            Ok(Some(ListHead { count, ids }))
        })
        .await?;
    let head = head.unwrap_or(ListHead {
        count: 0,
        ids: Vec::new(),
    });
    let page: Vec<i64> = head
        .ids
        .iter()
        .skip(offset as usize)
        .take(limit as usize)
        .copied()
        .collect();
    let (body, articles_status) = page_of(state, reader, viewer, &page, head.count).await?;
    Ok((body, head_status.and(articles_status)))
}

#[derive(Deserialize)]
struct PageQuery {
    limit: Option<i64>,
    offset: Option<i64>,
}

#[tracing::instrument(level = "debug", skip_all)]
async fn feed(
    State(state): State<AppState>,
    reader: Reader,
    user: AuthUser,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> ApiResult<(CacheStatus, Json<ArticlesBody>)> {
    let (limit, offset) = page(q.limit, q.offset)?;
    // A deleted user's token would get an empty feed, as if they followed no one.
    super::users::refuse_a_deleted_users_token(reader.for_id(user.id).pool().await?, user.id)
        .await?;
    // Every reader's feed is different: not cached.
    if state.shards.sharded() {
        let (ids, count) = sharded_feed_ids(&reader, user.id, limit, offset).await?;
        let (body, _) = page_of(&state, &reader, user.id, &ids, count).await?;
        return Ok((state.cache.bypass(), Json(body)));
    }
    let body = feed_page(reader.pool().await?, user.id, limit, offset).await?;
    Ok((state.cache.bypass(), Json(body)))
}

/// Stage 7: the feed's page of ids and its count. The reader's follows are on their shard; each
/// shard holding followed authors gives its newest `offset + limit` of theirs (the same
/// per-author walk as [`feed_page`]), and the pages are merged.
async fn sharded_feed_ids(
    reader: &Reader,
    follower: i64,
    limit: i64,
    offset: i64,
) -> ApiResult<(Vec<i64>, i64)> {
    let followees: Vec<i64> =
        sqlx::query_scalar("SELECT followee_id FROM follows WHERE follower_id = $1")
            .bind(follower)
            .fetch_all(reader.for_id(follower).pool().await?)
            .await?;
    let groups = shared::by_shard(reader.shards(), &followees);
    let per_shard = futures::future::try_join_all(groups.into_iter().map(|(shard, authors)| {
        let reader = reader.on(shard);
        async move {
            let pool = reader.pool().await?;
            let keys: Vec<ListKey> = sqlx::query_as(
                "SELECT r.id, r.created_at FROM UNNEST($1::bigint[]) AS f(author)
                 CROSS JOIN LATERAL (
                     SELECT p.id, p.created_at FROM articles p WHERE p.author_id = f.author
                     ORDER BY p.created_at DESC, p.id DESC LIMIT $2
                 ) r
                 ORDER BY r.created_at DESC, r.id DESC LIMIT $2",
            )
            .bind(&authors)
            .bind(offset + limit)
            .fetch_all(pool)
            .await?
            .into_iter()
            .map(|(id, created): (i64, time::OffsetDateTime)| (created, id))
            .collect();
            let count: i64 =
                sqlx::query_scalar("SELECT count(*) FROM articles WHERE author_id = ANY($1)")
                    .bind(&authors)
                    .fetch_one(pool)
                    .await?;
            ApiResult::Ok((keys, count))
        }
    }))
    .await?;
    let count = per_shard.iter().map(|(_, count)| count).sum();
    let lists = per_shard.into_iter().map(|(keys, _)| keys).collect();
    // Both are at most MAX_PAGE.
    Ok((merge_newest(lists, offset as usize, limit as usize), count))
}

/// Articles by the authors `follower` follows, newest first: two statements, both served by
/// indexes (`follows_follower_followee_idx`, then `articles_author_recent_idx` per author).
///
/// The page takes at most `offset + limit` ids from each followed author's newest (index only,
/// no article rows read), keeps the page's ids among them, and only then reads those articles:
/// its cost follows the page, not how much the followed authors wrote. The count is counted from
/// the same two indexes (a few hundred index entries for the seeded users; see
/// [`super::counts`] for why it is not kept).
///
/// Crosses shards from stage 7: the followed authors live on many shards, so each shard answers
/// for the authors it holds and the app merges the pages and sums the counts.
async fn feed_page(
    pool: &PgPool,
    follower: i64,
    limit: i64,
    offset: i64,
) -> ApiResult<ArticlesBody> {
    let page_sql = format!(
        "SELECT {ARTICLE_COLUMNS} FROM articles a JOIN users u ON u.id = a.author_id
         WHERE a.id = ANY(ARRAY(
             SELECT r.id FROM follows f
             CROSS JOIN LATERAL (
                 SELECT p.id, p.created_at FROM articles p WHERE p.author_id = f.followee_id
                 ORDER BY p.created_at DESC, p.id DESC LIMIT $2 + $3
             ) r
             WHERE f.follower_id = $1
             ORDER BY r.created_at DESC, r.id DESC LIMIT $2 OFFSET $3
         ))
         ORDER BY a.created_at DESC, a.id DESC"
    );
    let rows = sqlx::query(&page_sql)
        .bind(follower)
        .bind(limit)
        .bind(offset)
        .fetch_all(pool)
        .await?;
    let articles = list_page_from_rows(&rows)?;
    let articles_count: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM follows f JOIN articles a ON a.author_id = f.followee_id
         WHERE f.follower_id = $1",
    )
    .bind(follower)
    .fetch_one(pool)
    .await?;
    Ok(ArticlesBody {
        articles,
        articles_count,
    })
}

#[tracing::instrument(level = "debug", skip_all)]
async fn get_article(
    State(state): State<AppState>,
    reader: Reader,
    viewer: MaybeAuthUser,
    ApiPath(slug): ApiPath<String>,
) -> ApiResult<Response> {
    let viewer = viewer.viewer_id();
    if !state.cache.enabled() && !state.shards.sharded() {
        // Stages 1 and 2: one statement, the viewer's flags included.
        let article = article_by_slug(reader.pool().await?, &slug, viewer).await?;
        return Ok(Json(ArticleBody { article }).into_response());
    }
    // Stage 3 on: the shared part from the cache, the viewer's flags from the database (stage
    // 7: the article from its author's shard, the flags from the viewer's).
    let id = article_id(&slug)?;
    let (found, status) = state
        .cache
        .get_or_load(&Key::article(id), &reader.for_id(id), |pool| async move {
            Ok(shared::load_articles(&pool, &[id]).await?.pop())
        })
        .await?;
    let Some(shared) = found.filter(|a| a.slug == slug) else {
        return Ok((status, ApiError::NotFound("article")).into_response());
    };
    let flags = ViewerFlags::load(&reader, viewer, std::slice::from_ref(&shared)).await?;
    let article = shared.view(&flags, true);
    Ok((status, Json(ArticleBody { article })).into_response())
}

#[derive(Deserialize)]
#[serde(bound(deserialize = "T: Deserialize<'de>"))]
struct Envelope<T> {
    #[serde(default, deserialize_with = "crate::model::object_or_null")]
    article: Option<T>,
}

impl<T> Envelope<T> {
    fn into_inner(self) -> ApiResult<T> {
        self.article
            .ok_or_else(|| ApiError::invalid("article", "can't be blank"))
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct NewArticle {
    title: Option<String>,
    description: Option<String>,
    body: Option<String>,
    tag_list: Option<Vec<String>>,
}

/// `tagList` absent keeps the tags; `tagList: null` is refused (422); a list replaces them.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct UpdateArticle {
    title: Option<String>,
    description: Option<String>,
    body: Option<String>,
    #[serde(default, deserialize_with = "present_or_null")]
    tag_list: Option<Option<Vec<String>>>,
}

/// A new article that passed every rule: what `create_article` stores.
#[derive(Debug)]
struct ArticleDraft {
    title: String,
    description: String,
    body: String,
    tags: Vec<String>,
}

impl NewArticle {
    /// The article asked for, or a 422 naming every field that is wrong.
    fn checked(self) -> ApiResult<ArticleDraft> {
        let mut v = Validator::default();
        let title = v.required("title", self.title, MAX_TITLE);
        let description = v.required("description", self.description, MAX_TITLE);
        // The body is bounded by the JSON body limit.
        let body = v.required("body", self.body, usize::MAX);
        let tags = v.tags(self.tag_list.unwrap_or_default());
        v.finish()?;
        Ok(ArticleDraft {
            title,
            description,
            body,
            tags,
        })
    }
}

/// A change to an article that passed every rule: `None` keeps a field.
#[derive(Debug)]
struct ArticleChanges {
    title: Option<String>,
    description: Option<String>,
    body: Option<String>,
    tags: Option<Vec<String>>,
}

impl UpdateArticle {
    /// The change asked for, or a 422 naming every field that is wrong.
    fn checked(self) -> ApiResult<ArticleChanges> {
        let mut v = Validator::default();
        let title = v.optional("title", self.title, MAX_TITLE);
        let description = v.optional("description", self.description, MAX_TITLE);
        let body = v.optional("body", self.body, usize::MAX);
        let tags = match self.tag_list {
            None => None,
            Some(None) => {
                v.fail("tagList", "can't be null");
                None
            }
            Some(Some(tags)) => Some(v.tags(tags)),
        };
        v.finish()?;
        Ok(ArticleChanges {
            title,
            description,
            body,
            tags,
        })
    }
}

/// Replaces an article's tags, `old` (`[]` for a new article) with `tags`: the `article_tags` rows
/// (order kept in `position`, the article's creation time copied for the newest-first index), the
/// copy in `articles.tag_list`, and the tags' counts, in the caller's transaction.
async fn write_tags(
    tx: &mut sqlx::PgConnection,
    article: i64,
    old: &[String],
    tags: &[String],
) -> ApiResult<()> {
    sqlx::query("UPDATE articles SET tag_list = $2 WHERE id = $1")
        .bind(article)
        .bind(tags)
        .execute(&mut *tx)
        .await?;
    sqlx::query("DELETE FROM article_tags WHERE article_id = $1")
        .bind(article)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "INSERT INTO article_tags (article_id, position, tag, created_at)
         SELECT a.id, t.position - 1, t.tag, a.created_at
         FROM articles a, UNNEST($2::text[]) WITH ORDINALITY AS t(tag, position)
         WHERE a.id = $1",
    )
    .bind(article)
    .bind(tags)
    .execute(&mut *tx)
    .await?;
    ListCounts::retag(tx, old, tags).await
}

#[tracing::instrument(level = "debug", skip_all)]
async fn create_article(
    State(state): State<AppState>,
    user: AuthUser,
    ApiJson(body): ApiJson<Envelope<NewArticle>>,
) -> ApiResult<(StatusCode, Json<ArticleBody>)> {
    let ArticleDraft {
        title,
        description,
        body,
        tags,
    } = body.into_inner()?.checked()?;

    // On the author's shard, with the author's bucket in its id (stage 7).
    let mut tx = state.shards.of(user.id).write()?.begin().await?;
    // The id first: the slug ends with it.
    let (id,): (i64,) = sqlx::query_as("SELECT next_id_in($1)")
        .bind(i32::from(bucket_of(user.id)))
        .fetch_one(&mut *tx)
        .await?;
    sqlx::query(
        "INSERT INTO articles (id, slug, author_id, title, description, body)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(id)
    .bind(slug_for(&title, id))
    .bind(user.id)
    .bind(&title)
    .bind(&description)
    .bind(&body)
    .execute(&mut *tx)
    .await?;
    ListCounts::articles_changed(&mut tx, 1).await?;
    write_tags(&mut tx, id, &[], &tags).await?;
    let article = load_article(&mut *tx, id, user.id).await?;
    tx.commit().await?;
    let article =
        article.ok_or_else(|| anyhow::anyhow!("article {id} vanished in its own transaction"))?;
    let tag_list_too = brings_new_tag(&state, &tags).await;
    state
        .cache
        .invalidate(&keys::for_article_set_change(
            id,
            &article.author.username,
            &tags,
            tag_list_too,
        ))
        .await;
    Ok((StatusCode::CREATED, Json(ArticleBody { article })))
}

/// Whether a new article with `tags` makes the cached tag list stale: only if it brings a tag the
/// list lacks. The list is ordered most used first, and that order is left to lag (until the
/// entry expires) rather than reload the list at each new article. No tag is ever missing from it.
async fn brings_new_tag(state: &AppState, tags: &[String]) -> bool {
    if tags.is_empty() {
        return false;
    }
    match state.cache.peek::<Vec<String>>(&Key::tags()).await {
        Some(Some(listed)) => tags.iter().any(|t| !listed.contains(t)),
        // Not cached (nothing to delete) or the cache is not answering (delete to be safe).
        _ => true,
    }
}

/// The id and current tags of the article `slug` names, locked for this transaction, or 404;
/// 403 unless `user` wrote it.
async fn owned_article(
    tx: &mut sqlx::PgConnection,
    slug: &str,
    user: AuthUser,
) -> ApiResult<Owned> {
    let id = article_id(slug)?;
    let found: Option<(i64, Vec<String>, String)> = sqlx::query_as(
        "SELECT a.author_id, a.tag_list, u.username
         FROM articles a JOIN users u ON u.id = a.author_id
         WHERE a.id = $1 AND a.slug = $2 FOR UPDATE OF a",
    )
    .bind(id)
    .bind(slug)
    .fetch_optional(&mut *tx)
    .await?;
    match found {
        None => Err(ApiError::NotFound("article")),
        Some((author, _, _)) if author != user.id => Err(ApiError::Forbidden("article")),
        Some((_, tags, author)) => Ok(Owned { id, tags, author }),
    }
}

/// The caller's own article, locked for a change: its id, its tags and its author's username
/// (what the caches need to know what the change makes stale).
struct Owned {
    id: i64,
    tags: Vec<String>,
    author: String,
}

#[tracing::instrument(level = "debug", skip_all)]
async fn update_article(
    State(state): State<AppState>,
    user: AuthUser,
    ApiPath(slug): ApiPath<String>,
    ApiJson(body): ApiJson<Envelope<UpdateArticle>>,
) -> ApiResult<Json<ArticleBody>> {
    let ArticleChanges {
        title,
        description,
        body,
        tags,
    } = body.into_inner()?.checked()?;

    let mut tx = state.shards.of(article_id(&slug)?).write()?.begin().await?;
    let Owned {
        id, tags: old_tags, ..
    } = owned_article(&mut tx, &slug, user).await?;
    sqlx::query(
        "UPDATE articles SET
            title = COALESCE($2, title),
            slug = COALESCE($3, slug),
            description = COALESCE($4, description),
            body = COALESCE($5, body),
            updated_at = now()
         WHERE id = $1",
    )
    .bind(id)
    .bind(title.as_deref())
    .bind(title.as_deref().map(|t| slug_for(t, id)))
    .bind(description)
    .bind(body)
    .execute(&mut *tx)
    .await?;
    if let Some(tags) = &tags {
        write_tags(&mut tx, id, &old_tags, tags).await?;
    }
    let article = load_article(&mut *tx, id, user.id).await?;
    tx.commit().await?;
    // The article's entry and, at the edge, the list pages showing it; with new tags also the
    // lists of every tag it left or joined, and the tag list. Title and body changes leave the
    // app's lists alone: they hold ids.
    let mut stale = vec![Key::article(id), Key::listed(id)];
    if let Some(tags) = tags.filter(|t| *t != old_tags) {
        stale.push(Key::tags());
        stale.extend(old_tags.iter().chain(&tags).map(|t| Key::list(Some(t))));
    }
    state.cache.invalidate(&stale).await;
    let article = article.ok_or(ApiError::NotFound("article"))?;
    Ok(Json(ArticleBody { article }))
}

#[tracing::instrument(level = "debug", skip_all)]
async fn delete_article(
    State(state): State<AppState>,
    user: AuthUser,
    ApiPath(slug): ApiPath<String>,
) -> ApiResult<StatusCode> {
    // The article, its tags and counts on its shard; its favorites wherever its readers live:
    // on every shard in stage 7, one global transaction (the article's shard decides).
    let shards = &state.shards;
    let home = shards.shard_of(article_id(&slug)?);
    let participants: Vec<u8> = std::iter::once(home).chain(shards.every_shard()).collect();
    let mut tx = shards.begin(&participants)?.await?;
    let deleted = async {
        let owned = owned_article(tx.on(home)?, &slug, user).await?;
        // Its tag rows and comments go with it (`ON DELETE CASCADE`); the counts are ours to
        // change, and so are its favorites (their foreign key went with sharding, migration 0004).
        let on_home = tx.on(home)?;
        sqlx::query("DELETE FROM articles WHERE id = $1")
            .bind(owned.id)
            .execute(&mut *on_home)
            .await?;
        ListCounts::articles_changed(on_home, -1).await?;
        ListCounts::retag(on_home, &owned.tags, &[]).await?;
        for (shard, _) in shards.all() {
            sqlx::query("DELETE FROM favorites WHERE article_id = $1")
                .bind(owned.id)
                .execute(tx.on(shard)?)
                .await?;
        }
        ApiResult::Ok(owned)
    }
    .await;
    let Owned { id, tags, author } = tx.settle(deleted).await?;
    // A deleted article may take a tag's last use with it.
    state
        .cache
        .invalidate(&keys::for_article_set_change(id, &author, &tags, true))
        .await;
    Ok(StatusCode::NO_CONTENT)
}

/// The id of the article `slug` names, or 404 (for favorites and comments).
pub(crate) async fn existing_article(pool: &PgPool, slug: &str) -> ApiResult<i64> {
    let id = article_id(slug)?;
    let found: Option<i64> =
        sqlx::query_scalar("SELECT id FROM articles WHERE id = $1 AND slug = $2")
            .bind(id)
            .bind(slug)
            .fetch_optional(pool)
            .await?;
    found.ok_or(ApiError::NotFound("article"))
}

/// The article `slug` names as `viewer` sees it now, on the primaries: the answer to a favorite
/// or an unfavorite, which must show it. One statement on one database; in stage 7 the article
/// from its shard and the flags from the viewer's.
async fn current_article(state: &AppState, slug: &str, viewer: i64) -> ApiResult<Article> {
    let shards = &state.shards;
    if !shards.sharded() {
        return article_by_slug(state.db.write()?, slug, viewer).await;
    }
    let id = article_id(slug)?;
    let found = shared::load_articles(shards.of(id).write()?, &[id])
        .await?
        .pop();
    let Some(article) = found.filter(|a| a.slug == slug) else {
        return Err(ApiError::NotFound("article"));
    };
    let flags = ViewerFlags::load_from(
        shards.of(viewer).write()?,
        viewer,
        std::slice::from_ref(&article),
    )
    .await?;
    Ok(article.view(&flags, true))
}

/// A favorite added or removed: the reader's row (on the reader's shard) and the article's count
/// (on the author's) change together. On one shard, one statement; across shards, a global
/// transaction (the article's shard decides), so a count never disagrees with its rows.
async fn change_favorite(
    state: &AppState,
    slug: &str,
    reader: i64,
    add: bool,
) -> ApiResult<(i64, SpannedShards)> {
    let shards = &state.shards;
    let id = article_id(slug)?;
    let (home, readers) = (shards.shard_of(id), shards.shard_of(reader));
    // On the primary: the write that follows must find the article as this check did.
    existing_article(shards.shard(home).write()?, slug).await?;
    if home == readers {
        // One statement: the row and, only if it changed (favoriting twice is not an error and
        // counts once), the count. The article's row is locked first, so an article deleted
        // meanwhile gets no favorite (no foreign key says so since migration 0004). Locked in
        // the mode the count's UPDATE needs anyway (NO KEY UPDATE), not FOR SHARE: two readers
        // favoriting at once would each hold a share lock and wait for the other's to update
        // the count, a deadlock PostgreSQL breaks by failing one (a 500, found by
        // tests/access_and_races.rs).
        let sql = if add {
            "WITH article AS (SELECT id FROM articles WHERE id = $1 FOR NO KEY UPDATE),
             changed AS (
                INSERT INTO favorites (article_id, user_id) SELECT id, $2 FROM article
                ON CONFLICT DO NOTHING RETURNING article_id
             )
             UPDATE articles SET favorites_count = favorites_count + 1
             WHERE id IN (SELECT article_id FROM changed)"
        } else {
            "WITH changed AS (
                DELETE FROM favorites WHERE article_id = $1 AND user_id = $2 RETURNING article_id
             )
             UPDATE articles SET favorites_count = favorites_count - 1
             WHERE id IN (SELECT article_id FROM changed)"
        };
        sqlx::query(sql)
            .bind(id)
            .bind(reader)
            .execute(shards.shard(home).write()?)
            .await?;
        return Ok((id, SpannedShards::of(shards, 1)));
    }
    let mut tx = shards.begin(&[home, readers])?.await?;
    let changed = async {
        let sql = if add {
            "INSERT INTO favorites (article_id, user_id) VALUES ($1, $2) ON CONFLICT DO NOTHING"
        } else {
            "DELETE FROM favorites WHERE article_id = $1 AND user_id = $2"
        };
        let rows = sqlx::query(sql)
            .bind(id)
            .bind(reader)
            .execute(tx.on(readers)?)
            .await?
            .rows_affected();
        if rows == 1 {
            let delta: i64 = if add { 1 } else { -1 };
            let counted = sqlx::query(
                "UPDATE articles SET favorites_count = favorites_count + $2 WHERE id = $1",
            )
            .bind(id)
            .bind(delta)
            .execute(tx.on(home)?)
            .await?
            .rows_affected();
            if counted == 0 {
                // Deleted since the check above: the row goes back with the transaction.
                return Err(ApiError::NotFound("article"));
            }
        }
        ApiResult::Ok(id)
    }
    .await;
    let id = tx.settle(changed).await?;
    Ok((id, SpannedShards::of(shards, 2)))
}

#[tracing::instrument(level = "debug", skip_all)]
async fn favorite(
    State(state): State<AppState>,
    user: AuthUser,
    ApiPath(slug): ApiPath<String>,
) -> ApiResult<(SpannedShards, Json<ArticleBody>)> {
    let (id, spanned) = change_favorite(&state, &slug, user.id, true).await?;
    // The favorite count changed.
    state.cache.invalidate(&[Key::article(id)]).await;
    // The answer to a write shows that write: read where it was written.
    let article = current_article(&state, &slug, user.id)
        .await
        .map_err(ApiError::after_commit)?;
    Ok((spanned, Json(ArticleBody { article })))
}

#[tracing::instrument(level = "debug", skip_all)]
async fn unfavorite(
    State(state): State<AppState>,
    user: AuthUser,
    ApiPath(slug): ApiPath<String>,
) -> ApiResult<(SpannedShards, Json<ArticleBody>)> {
    // Deleting no row cannot break a foreign key: a deleted user's token is caught here.
    super::users::refuse_a_deleted_users_token(state.shards.of(user.id).write()?, user.id).await?;
    let (id, spanned) = change_favorite(&state, &slug, user.id, false).await?;
    state.cache.invalidate(&[Key::article(id)]).await;
    // The answer to a write shows that write: read where it was written.
    let article = current_article(&state, &slug, user.id)
        .await
        .map_err(ApiError::after_commit)?;
    Ok((spanned, Json(ArticleBody { article })))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::Value;

    use super::*;
    use crate::{
        extract::properties::{self, body, field, is_a_realworld_422, json_body, object, text},
        model::MAX_TAGS,
    };

    /// A query parameter's value: numbers either side of every bound and of `i64`, signs,
    /// blanks, words, and arbitrary bytes percent-encoded.
    fn value() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<i64>().prop_map(|n| n.to_string()),
            (-2..=MAX_PAGE + 2).prop_map(|n| n.to_string()),
            (MAX_OFFSET - 2..=i64::MAX).prop_map(|n| n.to_string()),
            any::<i128>().prop_map(|n| n.to_string()),
            "[+-]?[0-9]{0,22}",
            "[a-zA-Z0-9%+.~_-]{0,12}",
            prop::collection::vec(any::<u8>(), 0..8)
                .prop_map(|bytes| bytes.iter().map(|b| format!("%{b:02X}")).collect()),
        ]
    }

    /// A query string: parameters the list routes read (or others), with or without `=`, in
    /// any number, repeated or not; or any characters a URI's query may hold.
    fn query_string() -> impl Strategy<Value = String> {
        let name = prop_oneof![
            prop::sample::select(&["limit", "offset", "tag", "author", "favorited"][..])
                .prop_map(str::to_owned),
            "[a-z%0-9]{0,6}",
        ];
        prop_oneof![
            4 => prop::collection::vec((name, proptest::option::of(value())), 0..5).prop_map(
                |params| {
                    params
                        .into_iter()
                        .map(|(name, value)| match value {
                            Some(value) => format!("{name}={value}"),
                            None => name,
                        })
                        .collect::<Vec<_>>()
                        .join("&")
                }
            ),
            1 => "[a-zA-Z0-9=&%+.;_~!$'()*,/:@?-]{0,40}",
        ]
    }

    /// What a query asks for, read the way `application/x-www-form-urlencoded` is read: the
    /// decoded values of each parameter the list routes know, in order.
    fn asked(query: &str, name: &str) -> Vec<String> {
        serde_urlencoded::from_str::<Vec<(String, String)>>(query)
            .unwrap_or_default()
            .into_iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v)
            .collect()
    }

    /// The page the rule serves for a query: each page parameter at most once, an integer,
    /// within its bounds; `None` when the query must be refused.
    fn expected_page(query: &str) -> Option<(i64, i64)> {
        let one = |name: &str, default: i64, bounds: std::ops::RangeInclusive<i64>| match asked(
            query, name,
        )
        .as_slice()
        {
            [] => Some(default),
            [value] => value.parse::<i64>().ok().filter(|n| bounds.contains(n)),
            _ => None,
        };
        Some((
            one("limit", DEFAULT_PAGE, 1..=MAX_PAGE)?,
            one("offset", 0, 0..=MAX_OFFSET)?,
        ))
    }

    /// Every field a refusal of a list query may name.
    const QUERY_FIELDS: &[&str] = &["query", "limit", "offset"];

    proptest! {
        /// Any query string on the article list: the page the rule gives (limit 1 to 100,
        /// default 20; offset 0 to `MAX_OFFSET`, default 0; `offset + limit` never overflows)
        /// and the filters as sent, or a RealWorld 422 naming `query`, `limit` or `offset`;
        /// never a panic.
        #[test]
        fn any_list_query_is_the_page_asked_for_or_a_realworld_422(query in query_string()) {
            let served = properties::query::<ListQuery>(&query)
                .and_then(|q| page(q.limit, q.offset).map(|page| (q, page)));
            let repeated_filter = ["tag", "author", "favorited"]
                .iter()
                .any(|name| asked(&query, name).len() > 1);
            match served {
                Ok((q, (limit, offset))) => {
                    prop_assert!((1..=MAX_PAGE).contains(&limit));
                    prop_assert!((0..=MAX_OFFSET).contains(&offset));
                    prop_assert!(offset.checked_add(limit).is_some());
                    prop_assert_eq!(Some((limit, offset)), expected_page(&query));
                    prop_assert!(!repeated_filter);
                    let filters =
                        [("tag", &q.tag), ("author", &q.author), ("favorited", &q.favorited)];
                    for (name, given) in filters {
                        prop_assert_eq!(given.clone(), asked(&query, name).into_iter().next());
                    }
                }
                Err(refused) => {
                    prop_assert!(expected_page(&query).is_none() || repeated_filter, "{}", query);
                    is_a_realworld_422(refused, QUERY_FIELDS)?;
                }
            }
        }

        /// The same for the feed's query, which reads only the page.
        #[test]
        fn any_feed_query_is_the_page_asked_for_or_a_realworld_422(query in query_string()) {
            let served =
                properties::query::<PageQuery>(&query).and_then(|q| page(q.limit, q.offset));
            match served {
                Ok(page) => prop_assert_eq!(Some(page), expected_page(&query)),
                Err(refused) => {
                    prop_assert!(expected_page(&query).is_none(), "{}", query);
                    is_a_realworld_422(refused, QUERY_FIELDS)?;
                }
            }
        }
    }

    /// Tags as a client sends them: few and often repeated, or one past the bound.
    fn tags() -> impl Strategy<Value = Vec<String>> {
        let tag = prop_oneof![3 => "[a-c ]{1,3}", 1 => text(MAX_TAG_LEN)];
        prop_oneof![
            4 => prop::collection::vec(tag, 0..5),
            1 => prop::collection::vec("[a-z]{1,3}", MAX_TAGS - 1..=MAX_TAGS + 1),
        ]
    }

    /// Article text: short, or around the title's bound.
    fn article_text() -> impl Strategy<Value = String> {
        prop_oneof![3 => "[ ]{0,2}\\PC{1,20}", 1 => text(MAX_TITLE)]
    }

    /// The article's fields as sent (`{"article": {...}}`), if the body is JSON.
    fn sent(bytes: &[u8]) -> Value {
        serde_json::from_slice::<Value>(bytes)
            .map(|b| b["article"].clone())
            .unwrap_or_default()
    }

    /// A text field that got through: what was sent, trimmed, not blank; at most `max`
    /// characters as sent.
    fn kept(value: &str, sent: &Value, max: usize) -> bool {
        sent.as_str().is_some_and(|sent| {
            sent.chars().count() <= max && !value.is_empty() && value == sent.trim()
        })
    }

    /// Tags that got through: each one sent trimmed, not blank, at most 64 characters as sent;
    /// at most 32 sent; duplicates dropped, the first of each kept in order.
    fn kept_tags(tags: &[String], sent: &Value) -> bool {
        let Some(sent) = sent.as_array() else {
            return tags.is_empty() && sent.is_null();
        };
        let mut expected: Vec<String> = Vec::new();
        for tag in sent {
            let Some(tag) = tag.as_str() else {
                return false;
            };
            if tag.trim().is_empty() || tag.chars().count() > MAX_TAG_LEN {
                return false;
            }
            if !expected.iter().any(|t| t == tag.trim()) {
                expected.push(tag.trim().to_owned());
            }
        }
        sent.len() <= MAX_TAGS && tags == expected
    }

    /// An article body (`{"article": {...}}`) as a client may send one, new or as an update.
    fn article_body() -> impl Strategy<Value = Vec<u8>> {
        let fields = (
            field(article_text()),
            field(article_text()),
            field(article_text()),
            field(tags()),
        );
        body(
            "article",
            fields.prop_map(|(t, d, b, g)| {
                object([
                    ("title", t),
                    ("description", d),
                    ("body", b),
                    ("tagList", g),
                ])
            }),
        )
    }

    /// Every field a refusal of an article body may name.
    const FIELDS: &[&str] = &["body", "article", "title", "description", "tagList"];

    proptest! {
        /// Any body for a new article (any bytes, any JSON, fields of any type or length): an
        /// article whose every field is what was sent, trimmed, within its bounds, or a
        /// RealWorld 422; never a panic.
        #[test]
        fn any_new_article_body_is_a_valid_article_or_a_realworld_422(
            bytes in article_body(),
        ) {
            let checked = json_body::<Envelope<NewArticle>>(bytes.clone())
                .and_then(Envelope::into_inner)
                .and_then(NewArticle::checked);
            match checked {
                Ok(a) => {
                    let sent = sent(&bytes);
                    prop_assert!(kept(&a.title, &sent["title"], MAX_TITLE), "{:?}", a);
                    prop_assert!(kept(&a.description, &sent["description"], MAX_TITLE), "{:?}", a);
                    prop_assert!(kept(&a.body, &sent["body"], usize::MAX), "{:?}", a);
                    prop_assert!(kept_tags(&a.tags, &sent["tagList"]), "{:?}", a);
                }
                Err(refused) => is_a_realworld_422(refused, FIELDS)?,
            }
        }

        /// Any body for an article update: each field left out (or a text field sent as null)
        /// is kept, each one sent obeys the rules of a new article (`tagList: null` is
        /// refused), or a RealWorld 422.
        #[test]
        fn any_article_update_body_is_a_valid_change_or_a_realworld_422(
            bytes in article_body(),
        ) {
            let checked = json_body::<Envelope<UpdateArticle>>(bytes.clone())
                .and_then(Envelope::into_inner)
                .and_then(UpdateArticle::checked);
            match checked {
                Ok(c) => {
                    let sent = sent(&bytes);
                    // `null` keeps a text field as leaving it out does (the document says so).
                    let given = |name: &str| sent.get(name).is_some_and(|v| !v.is_null());
                    prop_assert_eq!(c.title.is_some(), given("title"));
                    prop_assert_eq!(c.description.is_some(), given("description"));
                    prop_assert_eq!(c.body.is_some(), given("body"));
                    prop_assert_eq!(c.tags.is_some(), given("tagList"));
                    for (value, name, max) in [
                        (&c.title, "title", MAX_TITLE),
                        (&c.description, "description", MAX_TITLE),
                        (&c.body, "body", usize::MAX),
                    ] {
                        if let Some(value) = value {
                            prop_assert!(kept(value, &sent[name], max), "{:?}", c);
                        }
                    }
                    if let Some(tags) = &c.tags {
                        prop_assert!(sent["tagList"].is_array());
                        prop_assert!(kept_tags(tags, &sent["tagList"]), "{:?}", c);
                    }
                }
                Err(refused) => is_a_realworld_422(refused, FIELDS)?,
            }
        }
    }
}
