//! Workloads are data: a TOML file of operation weights (`loadtest/workloads/*.toml`), turned here
//! into requests against a data set read from the target at start-up.
//!
//! Operations: reads of a popular article (Zipf over the newest-first article list), lists
//! (global, by tag, by author), the feed, profiles, tags, comments, media downloads; writes of
//! articles, comments, favorites, follows and media uploads; and `url`, a plain GET of the target
//! URL's path. Every write the server acknowledges becomes an [`Ack`]: read back at once by its
//! writer (read-your-writes) and again after the run (nothing acknowledged may be lost).

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use anyhow::{bail, Context};
use rand::{rngs::SmallRng, Rng};
use rand_distr::{Distribution, Zipf};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::client::{Connection, Request, Response};

/// The built-in workloads: name and file.
pub const BUILT_IN: &[(&str, &str)] = &[
    ("read-heavy", include_str!("../workloads/read-heavy.toml")),
    ("write-heavy", include_str!("../workloads/write-heavy.toml")),
    ("media", include_str!("../workloads/media.toml")),
    ("url", include_str!("../workloads/url.toml")),
    (
        "read-articles",
        include_str!("../workloads/read-articles.toml"),
    ),
    ("logins", include_str!("../workloads/logins.toml")),
];

/// Users the harness logs in as (the first N seeded users). Enough that writes spread over many
/// authors and followers; each login costs the server one argon2 check (~20 ms).
pub const DEFAULT_USERS: usize = 32;
/// Articles read from the target's list to pick from (its newest ones): the whole default data set.
const MAX_ARTICLES: usize = 20_000;

/// A workload file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadFile {
    /// One line saying what it models.
    pub description: String,
    /// Skew of article and media popularity (1.0: the classic Zipf).
    pub zipf_exponent: f64,
    /// Relative weight of each operation.
    pub weights: BTreeMap<OpKind, u32>,
}

impl WorkloadFile {
    /// A built-in workload by name, or a file by path.
    pub fn load(name_or_path: &str) -> anyhow::Result<(String, WorkloadFile)> {
        let (name, text) = match BUILT_IN.iter().find(|(n, _)| *n == name_or_path) {
            Some((n, t)) => ((*n).to_owned(), (*t).to_owned()),
            None => (
                name_or_path.to_owned(),
                std::fs::read_to_string(name_or_path).with_context(|| {
                    let known: Vec<&str> = BUILT_IN.iter().map(|(n, _)| *n).collect();
                    format!(
                        "no workload {name_or_path:?} (built in: {}; or a .toml path)",
                        known.join(", ")
                    )
                })?,
            ),
        };
        let file: WorkloadFile =
            toml::from_str(&text).with_context(|| format!("parsing workload {name}"))?;
        if file.weights.values().all(|w| *w == 0) {
            bail!("workload {name} has no operation with a weight");
        }
        Ok((name, file))
    }
}

/// The operations a workload can weigh.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, serde::Serialize,
)]
#[serde(rename_all = "snake_case")]
#[allow(missing_docs)]
pub enum OpKind {
    ReadArticle,
    ListArticles,
    ListByTag,
    ListByAuthor,
    Feed,
    Profile,
    Tags,
    Comments,
    FetchMedia,
    CreateArticle,
    CreateComment,
    Favorite,
    Follow,
    UploadMedia,
    /// A seeded user logs in: one password check (argon2) on the app, what a login flood costs.
    Login,
    Url,
}

impl OpKind {
    /// The name used in workload files and reports.
    pub fn name(self) -> &'static str {
        match self {
            OpKind::ReadArticle => "read_article",
            OpKind::ListArticles => "list_articles",
            OpKind::ListByTag => "list_by_tag",
            OpKind::ListByAuthor => "list_by_author",
            OpKind::Feed => "feed",
            OpKind::Profile => "profile",
            OpKind::Tags => "tags",
            OpKind::Comments => "comments",
            OpKind::FetchMedia => "fetch_media",
            OpKind::CreateArticle => "create_article",
            OpKind::CreateComment => "create_comment",
            OpKind::Favorite => "favorite",
            OpKind::Follow => "follow",
            OpKind::UploadMedia => "upload_media",
            OpKind::Login => "login",
            OpKind::Url => "url",
        }
    }
}

/// One operation to perform.
pub struct Op {
    /// What it is.
    pub kind: OpKind,
    /// The request.
    pub request: Request,
    /// Index of the acting user (for writes), into the data set's users.
    pub user: Option<usize>,
    /// The article or profile the operation is about.
    pub subject: Option<String>,
}

/// What to expect of a check request's answer.
#[derive(Debug, Clone)]
pub enum Expect {
    /// 200.
    Found,
    /// 200 with this text in the body.
    Contains(String),
}

impl Expect {
    /// Whether `response` shows the write.
    pub fn holds(&self, response: &Response) -> bool {
        response.status == 200
            && match self {
                Expect::Found => true,
                Expect::Contains(text) => response
                    .body
                    .windows(text.len())
                    .any(|w| w == text.as_bytes()),
            }
    }
}

/// A request and what its answer must show.
#[derive(Debug, Clone)]
pub struct Check {
    /// The read.
    pub request: Request,
    /// What it must show.
    pub expect: Expect,
}

/// A write the server acknowledged.
#[derive(Debug, Clone)]
pub struct Ack {
    /// How it is reported if lost (`article how-to-...-1x2b`, `comment 1234`, ...).
    pub id: String,
    /// Read by the writer right after the write (read-your-writes).
    pub read_back: Option<Check>,
    /// Read after the run (lost writes).
    pub verify: Option<Check>,
}

/// Generates operations and recognises acknowledged writes.
pub trait Workload: Send + Sync {
    /// The next operation.
    fn next(&self, rng: &mut SmallRng) -> Op;
    /// If `response` acknowledges a write, what to check later.
    fn acknowledge(&self, op: &Op, response: &Response) -> Option<Ack>;
}

/// What the harness knows of the target's data, read through the API before the run.
#[derive(Debug, Default, Clone)]
pub struct DataSet {
    /// Article slugs, newest first.
    pub slugs: Vec<String>,
    /// Authors of those articles (usernames), without duplicates.
    pub authors: Vec<String>,
    /// Tags, most used first.
    pub tags: Vec<String>,
    /// Media URLs found on profiles: paths on the app, or absolute URLs on a file host.
    pub media: Vec<String>,
    /// Logged-in users: (username, token); user `i` (from 0) is `user<i+1>@<email_domain>`.
    pub users: Vec<(String, String)>,
    /// The seeded users' e-mail domain and password, for the `login` operation.
    pub credentials: (String, String),
}

async fn get_json(conn: &mut Connection, request: &Request) -> anyhow::Result<Value> {
    let response = conn.send(request).await.context("setup request")?;
    if response.status != 200 {
        bail!(
            "{} {} answered {}",
            request.method,
            request.path,
            response.status
        );
    }
    serde_json::from_slice(&response.body).context("setup response is not JSON")
}

/// Logins in flight at once while the harness logs its users in: each costs the app a password
/// hash (tens of milliseconds of a small host's budget), so a thousand one after another would
/// take a minute; eight at once keep both app hosts of a cluster busy without queueing hashes
/// behind each other's timeouts.
const LOGINS_AT_ONCE: usize = 8;

/// How many times one seeded user's login is tried while the app answers busy (503) or
/// throttled (429), pausing [`LOGIN_FIRST_PAUSE`] doubling to [`LOGIN_MAX_PAUSE`] between tries:
/// about 30 s in all. A small host checking other clients' passwords refuses at once when its
/// queue of hashes is full (`auth.max_waiting_hashes`) or times the request out behind it; on a
/// busy machine the first logins of a run met exactly that, and the run stopped with "needs the
/// seeded users" though every user existed.
const LOGIN_TRIES: u32 = 20;
/// The first pause between two tries of one login.
const LOGIN_FIRST_PAUSE: Duration = Duration::from_millis(100);
/// The longest pause between two tries of one login.
const LOGIN_MAX_PAUSE: Duration = Duration::from_secs(2);

/// Logs in seeded users `user1` to `user<users>`, [`LOGINS_AT_ONCE`] at a time; returns them in
/// order, up to the first that could not log in (the data set has fewer users).
async fn log_in(
    target: SocketAddr,
    users: usize,
    email_domain: &str,
    password: &str,
) -> anyhow::Result<Vec<(String, String)>> {
    let mut tasks = tokio::task::JoinSet::new();
    for first in 1..=LOGINS_AT_ONCE.min(users) {
        let (email_domain, password) = (email_domain.to_owned(), password.to_owned());
        tasks.spawn(async move {
            let mut conn = Connection::connect(target, Duration::from_secs(5)).await?;
            let mut logged_in = Vec::new();
            for i in (first..=users).step_by(LOGINS_AT_ONCE) {
                let body = json!({"user": {"email": format!("user{i}@{email_domain}"), "password": password}});
                let request = Request::json("POST", "/api/users/login", &body);
                let mut pause = LOGIN_FIRST_PAUSE;
                let mut tries = 1;
                let response = loop {
                    let response = conn.send(&request).await?;
                    // Busy (503: the host's password hashing is full, or the request timed out
                    // behind it) or throttled (429): the user exists, the host is loaded; again.
                    if matches!(response.status, 429 | 503) && tries < LOGIN_TRIES {
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(LOGIN_MAX_PAUSE);
                        tries += 1;
                        // A fresh connection: a server may close one it answered 503 on.
                        conn = Connection::connect(target, Duration::from_secs(5)).await?;
                        continue;
                    }
                    break response;
                };
                // Any other answer (401, 422: no such user) ends this task's users.
                if response.status != 200 {
                    break;
                }
                let v: Value = serde_json::from_slice(&response.body)?;
                if let (Some(name), Some(token)) =
                    (v["user"]["username"].as_str(), v["user"]["token"].as_str())
                {
                    logged_in.push((i, name.to_owned(), token.to_owned()));
                }
            }
            anyhow::Ok(logged_in)
        });
    }
    let mut all = Vec::with_capacity(users);
    while let Some(done) = tasks.join_next().await {
        all.extend(done.context("a login task failed")??);
    }
    all.sort_by_key(|(i, _, _)| *i);
    // Up to the first gap: user N+1 exists only if user N does.
    Ok(all
        .into_iter()
        .zip(1..)
        .take_while(|((i, _, _), expected)| i == expected)
        .map(|((_, name, token), _)| (name, token))
        .collect())
}

impl DataSet {
    /// Reads slugs, authors, tags and media through the API and logs in `users` seeded users
    /// (e-mail `user<N>@<email_domain>`, `password`).
    pub async fn load(
        target: SocketAddr,
        users: usize,
        email_domain: &str,
        password: &str,
    ) -> anyhow::Result<DataSet> {
        let mut conn = Connection::connect(target, Duration::from_secs(5)).await?;
        let mut data = DataSet::default();
        let tags = get_json(&mut conn, &Request::get("/api/tags")).await?;
        data.tags = tags["tags"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| t.as_str().map(str::to_owned))
            .collect();
        let mut seen_authors = std::collections::HashSet::new();
        let mut seen_media = std::collections::HashSet::new();
        while data.slugs.len() < MAX_ARTICLES {
            let page = get_json(
                &mut conn,
                &Request::get(format!(
                    "/api/articles?limit=100&offset={}",
                    data.slugs.len()
                )),
            )
            .await?;
            let articles = page["articles"].as_array().cloned().unwrap_or_default();
            if articles.is_empty() {
                break;
            }
            for a in &articles {
                if let Some(slug) = a["slug"].as_str() {
                    data.slugs.push(slug.to_owned());
                }
                if let Some(author) = a["author"]["username"].as_str() {
                    if seen_authors.insert(author.to_owned()) {
                        data.authors.push(author.to_owned());
                    }
                }
                if let Some(image) = a["author"]["image"].as_str() {
                    // A path on the app (stage 1) or a URL on the file host (stage 2).
                    if image.contains("/media/") && seen_media.insert(image.to_owned()) {
                        data.media.push(image.to_owned());
                    }
                }
            }
        }
        data.users = log_in(target, users, email_domain, password).await?;
        data.credentials = (email_domain.to_owned(), password.to_owned());
        Ok(data)
    }
}

/// The Conduit mix of a workload file over a data set.
pub struct ConduitWorkload {
    kinds: Vec<OpKind>,
    cumulative: Vec<u32>,
    data: DataSet,
    article_zipf: Option<Zipf<f64>>,
    media_zipf: Option<Zipf<f64>>,
    url_path: String,
    counter: AtomicU64,
    run_id: u64,
}

impl ConduitWorkload {
    /// Builds the mix. Operations that the data set cannot serve (no articles, no logged-in users)
    /// are an error, not silently skipped.
    pub fn new(
        file: &WorkloadFile,
        data: DataSet,
        url_path: &str,
        run_id: u64,
    ) -> anyhow::Result<Self> {
        let mut kinds = Vec::new();
        let mut cumulative = Vec::new();
        let mut total = 0;
        for (kind, weight) in &file.weights {
            if *weight == 0 {
                continue;
            }
            let needs_articles = matches!(
                kind,
                OpKind::ReadArticle | OpKind::Comments | OpKind::CreateComment | OpKind::Favorite
            );
            let needs_users = matches!(
                kind,
                OpKind::Feed
                    | OpKind::CreateArticle
                    | OpKind::CreateComment
                    | OpKind::Favorite
                    | OpKind::Follow
                    | OpKind::UploadMedia
                    | OpKind::Login
            );
            if needs_articles && data.slugs.is_empty() {
                bail!("operation {kind:?} needs articles: seed the target first (`archlab seed`)");
            }
            if needs_users && data.users.is_empty() {
                bail!("operation {kind:?} needs the seeded users: seed the target first (`archlab seed`)");
            }
            if *kind == OpKind::FetchMedia && data.media.is_empty() {
                bail!("operation fetch_media needs seeded media (users' images): seed the target first");
            }
            total += weight;
            kinds.push(*kind);
            cumulative.push(total);
        }
        let zipf = |n: usize| {
            (n > 0)
                .then(|| Zipf::new(n as u64, file.zipf_exponent.max(0.0001)).ok())
                .flatten()
        };
        Ok(Self {
            kinds,
            cumulative,
            article_zipf: zipf(data.slugs.len()),
            media_zipf: zipf(data.media.len()),
            data,
            url_path: url_path.to_owned(),
            counter: AtomicU64::new(0),
            run_id,
        })
    }

    fn pick_kind(&self, rng: &mut SmallRng) -> OpKind {
        let total = self.cumulative.last().copied().unwrap_or(1);
        let x = rng.gen_range(0..total);
        let i = self.cumulative.partition_point(|c| *c <= x);
        self.kinds[i.min(self.kinds.len() - 1)]
    }

    fn popular_slug(&self, rng: &mut SmallRng) -> &str {
        let i = self
            .article_zipf
            .as_ref()
            .map_or(0, |z| z.sample(rng) as usize - 1);
        &self.data.slugs[i.min(self.data.slugs.len() - 1)]
    }

    fn any<'a>(list: &'a [String], rng: &mut SmallRng) -> &'a str {
        if list.is_empty() {
            ""
        } else {
            &list[rng.gen_range(0..list.len())]
        }
    }

    fn user(&self, rng: &mut SmallRng) -> usize {
        rng.gen_range(0..self.data.users.len().max(1))
    }

    fn token(&self, user: usize) -> Option<&str> {
        self.data.users.get(user).map(|(_, t)| t.as_str())
    }
}

/// A small valid PNG (a grey square) for uploads.
pub fn tiny_png() -> Vec<u8> {
    // 1x1 RGBA, fixed bytes: the sniffing only needs a real signature, the size keeps uploads cheap.
    vec![
        0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A, 0x00, 0x00, 0x00, 0x0D, 0x49, 0x48, 0x44,
        0x52, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, 0x08, 0x06, 0x00, 0x00, 0x00, 0x1F,
        0x15, 0xC4, 0x89, 0x00, 0x00, 0x00, 0x0A, 0x49, 0x44, 0x41, 0x54, 0x78, 0x9C, 0x63, 0x00,
        0x01, 0x00, 0x00, 0x05, 0x00, 0x01, 0x0D, 0x0A, 0x2D, 0xB4, 0x00, 0x00, 0x00, 0x00, 0x49,
        0x45, 0x4E, 0x44, 0xAE, 0x42, 0x60, 0x82,
    ]
}

impl Workload for ConduitWorkload {
    fn next(&self, rng: &mut SmallRng) -> Op {
        let kind = self.pick_kind(rng);
        let mut user = None;
        let mut subject = None;
        let request = match kind {
            OpKind::Url => Request::get(self.url_path.clone()),
            OpKind::ReadArticle => {
                let slug = self.popular_slug(rng).to_owned();
                // A third of readers are logged in, so the per-viewer path is exercised too.
                let token = if rng.gen_bool(0.33) {
                    self.token(self.user(rng))
                } else {
                    None
                };
                Request::get(format!("/api/articles/{slug}")).with_token(token)
            }
            OpKind::ListArticles => {
                let page = if rng.gen_bool(0.8) {
                    0
                } else {
                    rng.gen_range(1..5) * 20
                };
                Request::get(format!("/api/articles?limit=20&offset={page}"))
            }
            OpKind::ListByTag => Request::get(format!(
                "/api/articles?tag={}&limit=20",
                Self::any(&self.data.tags, rng)
            )),
            OpKind::ListByAuthor => Request::get(format!(
                "/api/articles?author={}&limit=20",
                Self::any(&self.data.authors, rng)
            )),
            OpKind::Feed => {
                Request::get("/api/articles/feed?limit=20").with_token(self.token(self.user(rng)))
            }
            OpKind::Profile => Request::get(format!(
                "/api/profiles/{}",
                Self::any(&self.data.authors, rng)
            )),
            OpKind::Tags => Request::get("/api/tags"),
            OpKind::Login => {
                let (domain, password) = &self.data.credentials;
                let body = json!({"user": {
                    "email": format!("user{}@{domain}", self.user(rng) + 1),
                    "password": password,
                }});
                Request::json("POST", "/api/users/login", &body)
            }
            OpKind::Comments => {
                Request::get(format!("/api/articles/{}/comments", self.popular_slug(rng)))
            }
            OpKind::FetchMedia => {
                let i = self
                    .media_zipf
                    .as_ref()
                    .map_or(0, |z| z.sample(rng) as usize - 1);
                Request::get_url(&self.data.media[i.min(self.data.media.len() - 1)])
            }
            OpKind::CreateArticle => {
                let u = self.user(rng);
                user = Some(u);
                let n = self.counter.fetch_add(1, Ordering::Relaxed);
                // One of the stage's tags; none if it listed none (a blank tag is refused). A
                // stage lists none before its seed, and an edge may keep that page: the data set
                // read through it then has articles and no tags.
                let tags: Vec<&str> = (!self.data.tags.is_empty())
                    .then(|| Self::any(&self.data.tags, rng))
                    .into_iter()
                    .collect();
                let body = json!({"article": {
                    "title": format!("Load test {} article {n}", self.run_id),
                    "description": "written by the archlab harness",
                    "body": "A body long enough to look like a short post. ".repeat(20),
                    "tagList": tags,
                }});
                Request::json("POST", "/api/articles", &body).with_token(self.token(u))
            }
            OpKind::CreateComment => {
                let u = self.user(rng);
                user = Some(u);
                // On any article, not a popular one: the API returns an article's comments all
                // at once, so comments written with the reads' Zipf skew piled up on the few
                // most read articles (by the Zipf weights, a sweep's ~4,000 comments make about
                // 70 rows per comment read), and each later sweep step measured a heavier data
                // set than the one before. Spread evenly, a sweep adds under one per article.
                let slug = Self::any(&self.data.slugs, rng).to_owned();
                let body =
                    json!({"comment": {"body": format!("Comment from run {}", self.run_id)}});
                let request =
                    Request::json("POST", format!("/api/articles/{slug}/comments"), &body)
                        .with_token(self.token(u));
                subject = Some(slug);
                request
            }
            OpKind::Favorite => {
                let u = self.user(rng);
                user = Some(u);
                let slug = self.popular_slug(rng).to_owned();
                let request =
                    Request::json("POST", format!("/api/articles/{slug}/favorite"), &json!({}))
                        .with_token(self.token(u));
                subject = Some(slug);
                request
            }
            OpKind::Follow => {
                let u = self.user(rng);
                user = Some(u);
                let me = self
                    .data
                    .users
                    .get(u)
                    .map(|(n, _)| n.as_str())
                    .unwrap_or("");
                let mut target = Self::any(&self.data.authors, rng).to_owned();
                if target == me || target.is_empty() {
                    target = self
                        .data
                        .users
                        .get((u + 1) % self.data.users.len().max(1))
                        .map(|(n, _)| n.clone())
                        .unwrap_or_default();
                }
                let request =
                    Request::json("POST", format!("/api/profiles/{target}/follow"), &json!({}))
                        .with_token(self.token(u));
                subject = Some(target);
                request
            }
            OpKind::UploadMedia => {
                let u = self.user(rng);
                user = Some(u);
                Request {
                    method: "POST",
                    path: "/api/media".into(),
                    token: self.token(u).map(str::to_owned),
                    body: Some(("image/png".into(), tiny_png())),
                    authority: None,
                }
            }
        };
        Op {
            kind,
            request,
            user,
            subject,
        }
    }

    fn acknowledge(&self, op: &Op, response: &Response) -> Option<Ack> {
        let token = op.user.and_then(|u| self.token(u));
        let writer = op
            .user
            .and_then(|u| self.data.users.get(u))
            .map(|(n, _)| n.as_str())
            .unwrap_or_default();
        let body = || serde_json::from_slice::<Value>(&response.body).ok();
        // Every acknowledged write becomes one read and what it must show. The writer reads it
        // back at once, and again in the verify phase after the run, both with its token: a
        // lost write is one its writer can no longer see. (An anonymous reader may be served by
        // a replica up to its lag bound behind, stage 5 on: that is staleness, not loss.)
        let ack = |id: String, read: Request, expect: Expect| {
            let verify = read.clone().with_token(token);
            Some(Ack {
                id,
                read_back: Some(Check {
                    request: read.with_token(token),
                    expect: expect.clone(),
                }),
                verify: Some(Check {
                    request: verify,
                    expect,
                }),
            })
        };
        match op.kind {
            OpKind::CreateArticle => {
                let slug = body()?["article"]["slug"].as_str()?.to_owned();
                let read = Request::get(format!("/api/articles/{slug}"));
                ack(format!("article {slug}"), read, Expect::Found)
            }
            OpKind::CreateComment => {
                let id = body()?["comment"]["id"].as_i64()?;
                let slug = op.subject.as_deref()?;
                let read = Request::get(format!("/api/articles/{slug}/comments"));
                ack(
                    format!("comment {id} on {slug}"),
                    read,
                    Expect::Contains(format!("\"id\":{id},")),
                )
            }
            OpKind::Favorite => {
                let slug = op.subject.as_deref()?;
                let read = Request::get(format!("/api/articles/{slug}"));
                ack(
                    format!("favorite {writer} -> {slug}"),
                    read,
                    Expect::Contains("\"favorited\":true".into()),
                )
            }
            OpKind::Follow => {
                let target = op.subject.as_deref()?;
                let read = Request::get(format!("/api/profiles/{target}"));
                ack(
                    format!("follow {writer} -> {target}"),
                    read,
                    Expect::Contains("\"following\":true".into()),
                )
            }
            OpKind::UploadMedia => {
                let url = body()?["media"]["url"].as_str()?.to_owned();
                ack(
                    format!("media {url}"),
                    Request::get_url(&url),
                    Expect::Found,
                )
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{
        atomic::{AtomicU32, Ordering},
        Arc,
    };

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// A stand-in for the app's login route: `user1` exists but the first `busy` tries are
    /// answered 503 (its host hashing other passwords); every other user does not exist (401).
    async fn login_server(busy: u32) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let busy = Arc::new(AtomicU32::new(busy));
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let busy = busy.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 16 * 1024];
                    // One small request per read: the client writes each in one piece.
                    while let Ok(n @ 1..) = socket.read(&mut buf).await {
                        let request = String::from_utf8_lossy(&buf[..n]).into_owned();
                        let (status, body) = if !request.contains("user1@") {
                            (401, "{}")
                        } else if busy
                            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |b| b.checked_sub(1))
                            .is_ok()
                        {
                            (503, "{}")
                        } else {
                            (200, r#"{"user":{"username":"user1","token":"t1"}}"#)
                        };
                        let reply = format!(
                            "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n\
                             Content-Length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        if socket.write_all(reply.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn a_busy_login_is_tried_again_not_taken_for_a_missing_user() {
        let addr = login_server(3).await;
        let users = log_in(addr, 3, "seed.test", "pw").await.unwrap();
        assert_eq!(users, vec![("user1".to_owned(), "t1".to_owned())]);
    }
}
