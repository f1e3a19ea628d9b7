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
//!
//! The same keys, without the prefix, are the *surrogate keys* of the edge (stage 6): a response
//! the edge may share names the keys of what it shows (`Surrogate-Key: article:7 profile:jake`),
//! and [`Cache::invalidate`](super::Cache::invalidate) purges a write's keys at every edge as it
//! deletes them here. One list of "what a write changes" serves both caches.
//!
//! Lists hold *ids*, not articles: a favorite then deletes one article's entry, not every page
//! that shows it. An entry that says "not found" (`null`) lives a few seconds only.
//! The `v1` is the format of the values: a change of shape gets a new prefix, so a new app
//! version never reads entries an old one wrote.

/// A cache key and the kind of entry it holds (the `kind` label of the cache metrics).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key {
    /// `article`, `list`, `profile` or `tags`.
    pub kind: &'static str,
    /// The Redis key.
    pub name: String,
}

const PREFIX: &str = "conduit:v1:";

impl Key {
    fn new(kind: &'static str, rest: std::fmt::Arguments<'_>) -> Self {
        Self {
            kind,
            name: format!("{PREFIX}{rest}"),
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
        Self::new("comments", format_args!("comments:{article_id}"))
    }

    /// Whether the app's own cache holds entries under this key (comments are only cached at the
    /// edge).
    pub fn in_app_cache(&self) -> bool {
        self.kind != "comments"
    }

    /// The key as the edge knows it: the name without the format prefix (`article:7`).
    pub fn surrogate(&self) -> &str {
        self.name.strip_prefix(PREFIX).unwrap_or(&self.name)
    }
}

/// Keys a new or deleted article with `tags` makes stale; the tag list only if `tag_list_too`.
pub fn for_article_set_change(id: i64, tags: &[String], tag_list_too: bool) -> Vec<Key> {
    let mut keys = vec![Key::article(id), Key::list(None)];
    if tag_list_too {
        keys.push(Key::tags());
    }
    keys.extend(tags.iter().map(|t| Key::list(Some(t))));
    keys
}
