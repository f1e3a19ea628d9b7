//! What is cached, under which key, and which writes delete it.
//!
//! | key                        | holds (JSON)                                   | deleted by |
//! |----------------------------|------------------------------------------------|------------|
//! | `conduit:v1:article:{id}`  | the article with its author, minus the viewer's flags | update, delete, favorite, unfavorite, the author's profile update |
//! | `conduit:v1:list:all`      | count and ids of the newest 100 articles       | create, delete |
//! | `conduit:v1:list:tag:{t}`  | the same among articles tagged `t`             | create, delete, tag change involving `t` |
//! | `conduit:v1:profile:{u}`   | id, username, bio, image                       | registration of `u`, profile update |
//! | `conduit:v1:tags`          | the tag list                                   | create with a tag it lacks, delete, tag change |
//! | (`comments:{id}`)          | nothing here: an article's comments are not cached by the app, but the edge caches them (stage 6) | comment create, delete |
//! | (`listed:{id}`)            | nothing here: the edge's list pages showing article `id` (stage 6) | update, delete |
//! | (`list:author:{u}`)        | nothing here: the edge's lists of `u`'s articles (stage 6)      | create, delete by `u` |
//!
//! The same keys, without the prefix, are the *surrogate keys* of the edge (stage 6): a response
//! the edge may share names the keys of what it shows (`Surrogate-Key: article:7 profile:jake`),
//! and [`Cache::invalidate`](super::Cache::invalidate) purges a write's keys at every edge as it
//! deletes them here. One list of "what a write changes" serves both caches.
//!
//! Lists hold *ids*, not articles: a favorite then deletes one article's entry, not every page
//! that shows it. The edge stores whole pages, so it gets the same effect another way: a list
//! page names its articles as `listed:{id}`, which an update or a delete purges and a favorite
//! does not. A list page's favorite counts may so lag by up to its `max-age` (a few seconds, see
//! [`crate::edge`]); the article's own page never does. An entry that says "not found" (`null`) lives a few seconds only.
//! The `v1` is the format of the values: a change of shape gets a new prefix, so a new app
//! version never reads entries an old one wrote.

/// A cache key and the kind of entry it holds (the `kind` label of the cache metrics).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key {
    /// `article`, `list`, `profile`, `tags`, or for the edge only `comments` and `listed`.
    pub kind: &'static str,
    /// The Redis key.
    pub name: String,
    /// Whether the app's own cache holds entries under this key, or only the edge does.
    in_app_cache: bool,
}

const PREFIX: &str = "conduit:v1:";

impl Key {
    fn new(kind: &'static str, rest: std::fmt::Arguments<'_>) -> Self {
        Self {
            kind,
            name: format!("{PREFIX}{rest}"),
            in_app_cache: true,
        }
    }

    fn edge_only(kind: &'static str, rest: std::fmt::Arguments<'_>) -> Self {
        Self {
            in_app_cache: false,
            ..Self::new(kind, rest)
        }
    }

    /// One article's shared part.
    pub fn article(id: i64) -> Self {
        Self::new("article", format_args!("article:{id}"))
    }

    /// The newest ids of the global list (`None`) or of one tag's list.
    pub fn list(tag: Option<&str>) -> Self {
        match tag {
            None => Self::new("list", format_args!("list:all")),
            Some(tag) => Self::new("list", format_args!("list:tag:{tag}")),
        }
    }

    /// A profile's shared part, by username (how clients ask for it).
    pub fn profile(username: &str) -> Self {
        Self::new("profile", format_args!("profile:{username}"))
    }

    /// The tag list.
    pub fn tags() -> Self {
        Self::new("tags", format_args!("tags"))
    }

    /// An article's comments: only the edge caches them.
    pub fn comments(article_id: i64) -> Self {
        Self::edge_only("comments", format_args!("comments:{article_id}"))
    }

    /// Every list page at the edge that shows the article: what it shows of it (title,
    /// description, tags, author) changed, or it is gone. Only the edge keeps list pages.
    pub fn listed(article_id: i64) -> Self {
        Self::edge_only("listed", format_args!("listed:{article_id}"))
    }

    /// The edge's lists of one author's articles (`?author=`): they change only when that
    /// author writes or deletes an article, so they are not refreshed with every new article.
    /// The app does not cache them (they read a replica).
    pub fn author_list(username: &str) -> Self {
        Self::edge_only("list", format_args!("list:author:{username}"))
    }

    /// Whether the app's own cache holds entries under this key (comments, list pages and
    /// author lists are only cached at the edge).
    pub fn in_app_cache(&self) -> bool {
        self.in_app_cache
    }

    /// The key as the edge knows it: the name without the format prefix (`article:7`).
    pub fn surrogate(&self) -> &str {
        self.name.strip_prefix(PREFIX).unwrap_or(&self.name)
    }
}

/// Keys a new or deleted article by `author` with `tags` makes stale; the tag list only if
/// `tag_list_too`.
pub fn for_article_set_change(
    id: i64,
    author: &str,
    tags: &[String],
    tag_list_too: bool,
) -> Vec<Key> {
    let mut keys = vec![
        Key::article(id),
        Key::listed(id),
        Key::list(None),
        Key::author_list(author),
    ];
    if tag_list_too {
        keys.push(Key::tags());
    }
    keys.extend(tags.iter().map(|t| Key::list(Some(t))));
    keys
}
