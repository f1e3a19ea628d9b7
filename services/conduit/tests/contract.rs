//! The app's OpenAPI document (`openapi.yml`, served at `GET /api/openapi.yml`) against the code.
//!
//! Fuzzers and clients read the document as the truth about the app, so it must not drift from
//! the code. These tests hold it there:
//! - it parses, and the app serves exactly the file;
//! - every documented path and method is routed, and no undocumented method is;
//! - every route the code declares (`.route("...")` in `src/api/*.rs`) is documented;
//! - every documented limit is the code's constant, and every character class is exactly the
//!   characters the Rust predicate it stands for matches;
//! - every operation lists the answers any route of its kind can give (500, 503, 413, ...);
//! - every string the document allows is one the code's validation accepts (property test);
//! - requests at the documented bounds succeed, end to end.
//!
//! Run: `cargo test -p conduit --test api -- contract::` (each app test starts its own PostgreSQL).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::{collections::BTreeSet, path::Path};

use common::TestApp;
use conduit::{
    api::{
        articles::{DEFAULT_PAGE, MAX_OFFSET, MAX_PAGE},
        comments::MAX_COMMENTS,
        tags::MAX_TAGS_LISTED,
    },
    edge::POLICIES,
    model::{
        Validator, MAX_COMMENT, MAX_EMAIL, MAX_PASSWORD, MAX_TAGS, MAX_TAG_LEN, MAX_TITLE,
        MAX_USERNAME, MIN_PASSWORD,
    },
    Settings,
};
use proptest::prelude::*;
use reqwest::StatusCode;
use serde_json::{json, Value};
use serde_yaml::Value as Yaml;

/// Routes the code declares that are not part of the contract, and why.
const NOT_IN_THE_CONTRACT: &[&str] = &[
    // Fault injection for `archlab drill`, compiled only with the `drills` feature.
    "/drills/two-phase-crash/{point}",
];

/// The RealWorld operations (upstream's `operationId`s), all of which the document keeps.
const REALWORLD_OPERATIONS: &[&str] = &[
    "Login",
    "CreateUser",
    "GetCurrentUser",
    "UpdateCurrentUser",
    "GetProfileByUsername",
    "FollowUserByUsername",
    "UnfollowUserByUsername",
    "GetArticlesFeed",
    "GetArticles",
    "CreateArticle",
    "GetArticle",
    "UpdateArticle",
    "DeleteArticle",
    "GetArticleComments",
    "CreateArticleComment",
    "DeleteArticleComment",
    "CreateArticleFavorite",
    "DeleteArticleFavorite",
    "GetTags",
];

/// The HTTP methods an OpenAPI path item can hold that the app could route.
const METHODS: &[&str] = &["get", "put", "post", "delete", "patch"];

fn document_path() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("openapi.yml")
}

fn document() -> Yaml {
    let text = std::fs::read_to_string(document_path()).expect("openapi.yml is readable");
    serde_yaml::from_str(&text).expect("openapi.yml is YAML")
}

/// `node`, or what its `$ref` (`#/components/...`) points at.
fn resolve<'a>(doc: &'a Yaml, node: &'a Yaml) -> &'a Yaml {
    let Some(reference) = node.get("$ref").and_then(Yaml::as_str) else {
        return node;
    };
    let pointer = reference
        .strip_prefix("#/")
        .unwrap_or_else(|| panic!("only local references: {reference}"));
    let target = pointer.split('/').fold(doc, |at, key| {
        at.get(key).unwrap_or_else(|| panic!("{reference} dangles"))
    });
    resolve(doc, target)
}

/// A keyword of a schema: its own, or one of its `allOf` members'.
fn keyword<'a>(doc: &'a Yaml, schema: &'a Yaml, name: &str) -> Option<&'a Yaml> {
    let schema = resolve(doc, schema);
    schema.get(name).or_else(|| {
        schema
            .get("allOf")
            .and_then(Yaml::as_sequence)
            .into_iter()
            .flatten()
            .find_map(|member| keyword(doc, member, name))
    })
}

fn number(doc: &Yaml, schema: &Yaml, name: &str) -> i64 {
    keyword(doc, schema, name)
        .and_then(Yaml::as_i64)
        .unwrap_or_else(|| panic!("no numeric {name} in {schema:?}"))
}

fn text<'a>(doc: &'a Yaml, schema: &'a Yaml, name: &str) -> &'a str {
    keyword(doc, schema, name)
        .and_then(Yaml::as_str)
        .unwrap_or_else(|| panic!("no {name} in {schema:?}"))
}

fn component<'a>(doc: &'a Yaml, kind: &str, name: &str) -> &'a Yaml {
    doc["components"][kind]
        .get(name)
        .unwrap_or_else(|| panic!("no components.{kind}.{name}"))
}

fn as_i64(n: usize) -> i64 {
    i64::try_from(n).unwrap()
}

/// Every operation: its path, its method (lower case) and the operation object.
fn operations(doc: &Yaml) -> Vec<(String, String, &Yaml)> {
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_mapping().expect("paths") {
        let path = path.as_str().unwrap().to_owned();
        for method in METHODS {
            if let Some(operation) = item.get(*method) {
                out.push((path.clone(), (*method).to_owned(), operation));
            }
        }
    }
    out
}

fn statuses(operation: &Yaml) -> BTreeSet<String> {
    operation["responses"]
        .as_mapping()
        .expect("responses")
        .keys()
        .map(|k| k.as_str().expect("status codes are quoted").to_owned())
        .collect()
}

/// The characters `belongs` holds, as the inside of a regular-expression class:
/// `\uXXXX` for a single character, `\uXXXX-\uXXXX` for a run, in code point order. Every
/// class the document uses is written this way, so it can be compared with the predicate.
fn class_of(belongs: impl Fn(char) -> bool) -> String {
    let mut class = String::new();
    let mut run: Option<(u32, u32)> = None;
    let close = |class: &mut String, (first, last): (u32, u32)| {
        class.push_str(&format!("\\u{first:04x}"));
        if last > first {
            class.push_str(&format!("-\\u{last:04x}"));
        }
    };
    for c in (0..=0xFFFF_u32).filter_map(char::from_u32) {
        let n = u32::from(c);
        match (belongs(c), run) {
            (true, Some((first, last))) if last + 1 == n => run = Some((first, n)),
            (true, Some(done)) => {
                close(&mut class, done);
                run = Some((n, n));
            }
            (true, None) => run = Some((n, n)),
            (false, _) => {}
        }
    }
    if let Some(done) = run {
        close(&mut class, done);
    }
    assert!(
        !(0x1_0000..=0x10_FFFF_u32)
            .filter_map(char::from_u32)
            .any(&belongs),
        "the class covers the Basic Multilingual Plane only"
    );
    class
}

/// What the app trims and refuses as blank: Rust's `char::is_whitespace`.
fn whitespace() -> String {
    class_of(char::is_whitespace)
}

#[tokio::test]
async fn the_document_parses_and_the_app_serves_exactly_it() {
    let file = std::fs::read_to_string(document_path()).unwrap();
    let doc = document();
    assert_eq!(doc["openapi"].as_str(), Some("3.1.0"));
    assert_eq!(
        doc["info"]["version"].as_str(),
        Some(env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(conduit::api::contract::DOCUMENT, file);

    let app = TestApp::start().await;
    let response = app
        .client
        .get(app.url("/api/openapi.yml"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let header = |name: &str| response.headers()[name].to_str().unwrap().to_owned();
    assert_eq!(header("content-type"), conduit::api::contract::CONTENT_TYPE);
    let policy = POLICIES
        .iter()
        .find(|p| p.route == "/api/openapi.yml")
        .expect("the document is shareable");
    assert_eq!(header("cache-control"), policy.cache_control);
    let documented = text(
        &doc,
        &doc["paths"]["/api/openapi.yml"]["get"]["responses"]["200"]["headers"]["Cache-Control"],
        "description",
    );
    assert!(documented.contains(policy.cache_control), "{documented}");
    assert_eq!(response.text().await.unwrap(), file);
}

#[tokio::test]
async fn every_documented_operation_is_routed_and_no_other_method_is() {
    let doc = document();
    let app = TestApp::start().await;
    let token = app.register("jake").await;
    let slug = app.article(&token, "Routed", &["t"]).await;
    let (status, body) = app
        .post(
            &format!("/api/articles/{slug}/comments"),
            Some(&token),
            json!({"comment": {"body": "c"}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let comment = body["comment"]["id"].to_string();

    for (path, item) in doc["paths"].as_mapping().unwrap() {
        let template = path.as_str().unwrap();
        // Plausible values: the names and ids of real things, so a routed request is answered
        // by its handler, whatever it says.
        let id = if template.starts_with("/media/") {
            "1.png"
        } else {
            &comment
        };
        let path = template
            .replace("{username}", "jake")
            .replace("{slug}", &slug)
            .replace("{id}", id);
        for method in METHODS {
            let mut request = app
                .client
                .request(method.to_uppercase().parse().unwrap(), app.url(&path))
                .header("Authorization", format!("Token {token}"));
            if matches!(*method, "put" | "post" | "patch") {
                request = request.json(&json!({}));
            }
            let response = request.send().await.unwrap();
            let status = response.status();
            let body: Value = response.json().await.unwrap_or(Value::Null);
            let fallback = (status == StatusCode::NOT_FOUND && body["errors"]["route"].is_array())
                || status == StatusCode::METHOD_NOT_ALLOWED;
            if item.get(*method).is_some() {
                assert!(
                    !fallback,
                    "{method} {template} is documented, not routed: {status} {body}"
                );
            } else {
                assert_eq!(
                    status,
                    StatusCode::METHOD_NOT_ALLOWED,
                    "{method} {template} is routed, not documented: {body}"
                );
                assert!(body["errors"]["method"].is_array(), "{body}");
            }
        }
    }
}

/// The path of every `.route("...")` call in `src/api/*.rs` (the literal may start on the next
/// line): every path the app serves.
fn declared_routes() -> BTreeSet<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/api");
    let mut routes = BTreeSet::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let file = entry.unwrap().path();
        if file.extension().is_none_or(|ext| ext != "rs") {
            continue;
        }
        let source = std::fs::read_to_string(&file).unwrap();
        for (at, call) in source.match_indices(".route(") {
            let rest = source[at + call.len()..].trim_start();
            let literal = rest.strip_prefix('"').unwrap_or_else(|| {
                panic!("{}: a route whose path is not a literal", file.display())
            });
            let end = literal.find('"').unwrap();
            routes.insert(literal[..end].to_owned());
        }
    }
    routes
}

#[test]
fn every_route_the_code_declares_is_documented() {
    let doc = document();
    let mut declared = declared_routes();
    assert!(
        declared.contains("/api/articles/{slug}"),
        "the scan finds routes: {declared:?}"
    );
    for route in NOT_IN_THE_CONTRACT {
        assert!(declared.remove(*route), "{route} is no longer declared");
    }
    let documented: BTreeSet<String> = doc["paths"]
        .as_mapping()
        .unwrap()
        .keys()
        .map(|k| k.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        declared, documented,
        "left: routes in src/api, right: paths in openapi.yml"
    );
}

#[test]
fn every_realworld_operation_is_kept_and_every_operation_id_is_unique() {
    let doc = document();
    let ids: Vec<&str> = operations(&doc)
        .iter()
        .map(|(path, method, op)| {
            op["operationId"]
                .as_str()
                .unwrap_or_else(|| panic!("{method} {path} has no operationId"))
        })
        .collect();
    let unique: BTreeSet<&str> = ids.iter().copied().collect();
    assert_eq!(unique.len(), ids.len(), "{ids:?}");
    for id in REALWORLD_OPERATIONS {
        assert!(unique.contains(id), "{id} is missing");
    }
}

#[test]
fn the_documented_limits_are_the_codes() {
    let doc = document();
    let schema = |name: &str| component(&doc, "schemas", name);

    let username = schema("Username");
    assert_eq!(number(&doc, username, "minLength"), 1);
    assert_eq!(number(&doc, username, "maxLength"), as_i64(MAX_USERNAME));
    assert_eq!(
        number(&doc, schema("Email"), "maxLength"),
        as_i64(MAX_EMAIL)
    );
    let password = schema("Password");
    assert_eq!(number(&doc, password, "minLength"), as_i64(MIN_PASSWORD));
    assert_eq!(number(&doc, password, "maxLength"), as_i64(MAX_PASSWORD));
    let login = &schema("LoginUser")["properties"];
    assert_eq!(
        number(&doc, &login["email"], "maxLength"),
        as_i64(MAX_EMAIL)
    );
    assert_eq!(number(&doc, &login["password"], "minLength"), 1);
    assert_eq!(
        number(&doc, &login["password"], "maxLength"),
        as_i64(MAX_PASSWORD)
    );
    assert_eq!(
        number(&doc, schema("Title"), "maxLength"),
        as_i64(MAX_TITLE)
    );
    assert_eq!(
        number(&doc, schema("Description"), "maxLength"),
        as_i64(MAX_TITLE)
    );
    assert!(keyword(&doc, schema("ArticleBody"), "maxLength").is_none());
    assert_eq!(
        number(&doc, schema("Tag"), "maxLength"),
        as_i64(MAX_TAG_LEN)
    );
    assert_eq!(
        number(&doc, schema("TagList"), "maxItems"),
        as_i64(MAX_TAGS)
    );
    assert_eq!(
        number(&doc, schema("CommentBody"), "maxLength"),
        as_i64(MAX_COMMENT)
    );

    let limit = &component(&doc, "parameters", "limitParam")["schema"];
    assert_eq!(number(&doc, limit, "minimum"), 1);
    assert_eq!(number(&doc, limit, "maximum"), MAX_PAGE);
    assert_eq!(number(&doc, limit, "default"), DEFAULT_PAGE);
    let offset = &component(&doc, "parameters", "offsetParam")["schema"];
    assert_eq!(number(&doc, offset, "minimum"), 0);
    assert_eq!(number(&doc, offset, "maximum"), MAX_OFFSET);

    let listed = |response: &str, list: &str| {
        let schema = &component(&doc, "responses", response)["content"]["application/json"]
            ["schema"]["properties"][list];
        number(&doc, schema, "maxItems")
    };
    assert_eq!(listed("MultipleArticlesResponse", "articles"), MAX_PAGE);
    assert_eq!(listed("MultipleCommentsResponse", "comments"), MAX_COMMENTS);
    assert_eq!(listed("TagsResponse", "tags"), MAX_TAGS_LISTED);

    let defaults = Settings::default();
    let bounds = &component(&doc, "responses", "PayloadTooLarge")["x-body-limits"];
    assert_eq!(
        bounds["json-bytes"].as_u64(),
        Some(defaults.server.max_json_body_bytes as u64)
    );
    assert_eq!(
        bounds["media-bytes"].as_u64(),
        Some(defaults.media.max_bytes as u64)
    );
}

#[test]
fn the_documented_character_classes_are_the_codes() {
    let doc = document();
    let pattern = |name: &str| text(&doc, component(&doc, "schemas", name), "pattern").to_owned();
    let ws = whitespace();
    let no_nul = "[^\\u0000]*";
    assert_eq!(pattern("StoredText"), format!("^{no_nul}$"));
    assert_eq!(pattern("NullableStoredText"), format!("^{no_nul}$"));
    assert_eq!(
        pattern("NonBlankText"),
        format!("^{no_nul}[^\\u0000{ws}]{no_nul}$")
    );
    assert_eq!(pattern("Password"), format!("[^{ws}]"));
    // `Validator::username`: no white space, control character or slash.
    let refused = class_of(|c| c.is_whitespace() || c.is_control() || c == '/');
    assert_eq!(pattern("Username"), format!("^[^{refused}]+$"));
    // `Validator::email`: `local@domain`, one `@`, a dot inside the domain, no white space;
    // and no NUL, which PostgreSQL refuses. White space around it is trimmed off first.
    let part = format!("[^@\\u0000{ws}]");
    let edge = format!("[^@.\\u0000{ws}]");
    assert_eq!(
        pattern("Email"),
        format!("^[{ws}]*{part}+@{edge}{part}*\\.{part}*{edge}[{ws}]*$")
    );
}

#[test]
fn every_operation_lists_the_answers_its_kind_of_route_can_give() {
    let doc = document();
    for (path, method, operation) in operations(&doc) {
        let listed = statuses(operation);
        let lists = |status: &str, why: &str| {
            assert!(
                listed.contains(status),
                "{method} {path} does not list {status} ({why})"
            );
        };
        lists("500", "a fault of the app");
        lists(
            "503",
            "overload and the request time bound apply to every route",
        );
        if operation.get("requestBody").is_some() {
            lists("413", "every body has a bound");
            lists("422", "a body may be unreadable");
        }
        if operation["parameters"].as_sequence().is_some_and(|params| {
            params
                .iter()
                .any(|p| resolve(&doc, p)["in"].as_str() == Some("path"))
        }) {
            lists("422", "a path parameter may not be UTF-8");
        }
        let security = operation["security"].as_sequence();
        if security.is_some_and(|s| s.iter().any(|r| r.get("Token").is_some())) {
            lists("401", "a token that is sent is checked");
        }
        if method == "get" && POLICIES.iter().any(|p| p.route == path) {
            lists("304", "shareable reads are revalidated");
        }
    }
}

/// Strings matching `pattern`, as the document means it: anchored at both ends if it is, else
/// anywhere in the string.
fn matching(pattern: &str) -> impl Strategy<Value = String> {
    let whole = match pattern.strip_prefix('^').and_then(|p| p.strip_suffix('$')) {
        Some(anchored) => anchored.to_owned(),
        None => format!("(?s:.*){pattern}(?s:.*)"),
    };
    proptest::string::string_regex(&whole).expect("the pattern is a regular expression")
}

/// Strings the document's schema `name` allows: its pattern, its length bounds.
fn allowed(name: &str) -> impl Strategy<Value = String> {
    let doc = document();
    let schema = component(&doc, "schemas", name);
    let min = keyword(&doc, schema, "minLength")
        .and_then(Yaml::as_u64)
        .unwrap_or(0);
    let max = keyword(&doc, schema, "maxLength")
        .and_then(Yaml::as_u64)
        .unwrap_or(u64::MAX);
    let pattern = text(&doc, schema, "pattern").to_owned();
    matching(&pattern).prop_filter("within the documented length", move |s| {
        (min..=max).contains(&(s.chars().count() as u64))
    })
}

fn accepted(check: impl FnOnce(&mut Validator)) -> bool {
    let mut v = Validator::default();
    check(&mut v);
    v.finish().is_ok()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn every_string_the_document_allows_is_one_the_code_accepts(
        username in allowed("Username"),
        email in allowed("Email"),
        password in allowed("Password"),
        title in allowed("Title"),
        tag in allowed("Tag"),
        comment in allowed("CommentBody"),
    ) {
        // Each as the handlers check it (`api/users.rs`, `api/articles.rs`, `api/comments.rs`).
        let username_accepted = accepted(|v| {
            let name = v.username(username.clone());
            v.required("username", Some(name), MAX_USERNAME);
        });
        prop_assert!(username_accepted, "username {:?}", username);
        let email_accepted = accepted(|v| {
            let address = v.required("email", Some(email.clone()), MAX_EMAIL);
            v.email(address);
        });
        prop_assert!(email_accepted, "email {:?}", email);
        let password_accepted = accepted(|v| {
            v.password(Some(password.clone()));
        });
        prop_assert!(password_accepted, "password {:?}", password);
        let title_accepted = accepted(|v| {
            v.required("title", Some(title.clone()), MAX_TITLE);
        });
        prop_assert!(title_accepted, "title {:?}", title);
        let tag_accepted = accepted(|v| {
            v.tags(vec![tag.clone()]);
        });
        prop_assert!(tag_accepted, "tag {:?}", tag);
        let comment_accepted = accepted(|v| {
            v.required("body", Some(comment.clone()), MAX_COMMENT);
        });
        prop_assert!(comment_accepted, "comment {:?}", comment);
    }
}

#[tokio::test]
async fn requests_at_the_documented_bounds_succeed() {
    let app = TestApp::start().await;

    // The longest username, e-mail address and password, in characters that take more than one
    // byte each: the bounds count characters.
    let username = "ü".repeat(MAX_USERNAME);
    let domain = "@example.com";
    let email = format!("{}{domain}", "a".repeat(MAX_EMAIL - domain.len()));
    let password = "ß".repeat(MAX_PASSWORD);
    let user = json!({"user": {"username": username, "email": email, "password": password}});
    let (status, body) = app.post("/api/users", None, user.clone()).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = app.post("/api/users/login", None, user).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "log in with the longest password: {body}"
    );
    let token = body["user"]["token"].as_str().unwrap().to_owned();

    // The longest title and description, the most tags, each as long as a tag may be.
    let tags: Vec<String> = (0..MAX_TAGS)
        .map(|n| format!("{n:02}{}", "t".repeat(MAX_TAG_LEN - 2)))
        .collect();
    let article = json!({"article": {
        "title": "é".repeat(MAX_TITLE),
        "description": "d".repeat(MAX_TITLE),
        "body": "b",
        "tagList": tags,
    }});
    let (status, body) = app.post("/api/articles", Some(&token), article).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(
        body["article"]["tagList"].as_array().unwrap().len(),
        MAX_TAGS
    );
    let slug = body["article"]["slug"].as_str().unwrap().to_owned();

    // The longest comment.
    let comment = json!({"comment": {"body": "c".repeat(MAX_COMMENT)}});
    let (status, body) = app
        .post(
            &format!("/api/articles/{slug}/comments"),
            Some(&token),
            comment,
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");

    // The largest page, from the first and from the last offset, in the list and the feed,
    // anonymous and logged in.
    for list in ["/api/articles", "/api/articles/feed"] {
        for offset in [0, MAX_OFFSET] {
            let (status, body) = app
                .get(
                    &format!("{list}?limit={MAX_PAGE}&offset={offset}"),
                    Some(&token),
                )
                .await;
            assert_eq!(status, StatusCode::OK, "{list} at offset {offset}: {body}");
        }
    }
    let (status, body) = app
        .get(
            &format!("/api/articles?limit={MAX_PAGE}&offset={MAX_OFFSET}"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn one_past_a_documented_bound_is_refused_with_the_field_named() {
    let app = TestApp::start().await;
    let token = app.register("jake").await;
    let slug = app.article(&token, "Bounded", &[]).await;

    let user = |username: String, email: String, password: String| json!({"user": {"username": username, "email": email, "password": password}});
    let domain = "@example.com";
    let refused_users = [
        (
            "username",
            user(
                "u".repeat(MAX_USERNAME + 1),
                "a@example.com".into(),
                "password".into(),
            ),
        ),
        (
            "email",
            user(
                "u".into(),
                format!("{}{domain}", "a".repeat(MAX_EMAIL + 1 - domain.len())),
                "password".into(),
            ),
        ),
        (
            "password",
            user(
                "u".into(),
                "a@example.com".into(),
                "p".repeat(MIN_PASSWORD - 1),
            ),
        ),
        (
            "password",
            user(
                "u".into(),
                "a@example.com".into(),
                "p".repeat(MAX_PASSWORD + 1),
            ),
        ),
    ];
    for (field, body) in refused_users {
        let (status, answer) = app.post("/api/users", None, body).await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{field}: {answer}"
        );
        common::assert_error(&answer, field);
    }

    let article = |title: String, tags: Vec<String>| json!({"article": {"title": title, "description": "d", "body": "b", "tagList": tags}});
    let tags = |n: usize, len: usize| (0..n).map(|i| format!("{i:0len$}")).collect::<Vec<_>>();
    let refused_articles = [
        ("title", article("t".repeat(MAX_TITLE + 1), vec![])),
        ("tagList", article("t".into(), tags(MAX_TAGS + 1, 2))),
        ("tagList", article("t".into(), tags(1, MAX_TAG_LEN + 1))),
    ];
    for (field, body) in refused_articles {
        let (status, answer) = app.post("/api/articles", Some(&token), body).await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{field}: {answer}"
        );
        common::assert_error(&answer, field);
    }

    let comment = json!({"comment": {"body": "c".repeat(MAX_COMMENT + 1)}});
    let (status, answer) = app
        .post(
            &format!("/api/articles/{slug}/comments"),
            Some(&token),
            comment,
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    common::assert_error(&answer, "body");

    let pages = [
        ("limit", "limit=0".to_owned()),
        ("limit", format!("limit={}", MAX_PAGE + 1)),
        ("offset", "offset=-1".to_owned()),
        ("offset", format!("offset={}", MAX_OFFSET + 1)),
    ];
    for list in ["/api/articles", "/api/articles/feed"] {
        for (field, query) in &pages {
            let (status, answer) = app.get(&format!("{list}?{query}"), Some(&token)).await;
            assert_eq!(
                status,
                StatusCode::UNPROCESSABLE_ENTITY,
                "{list}?{query}: {answer}"
            );
            common::assert_error(&answer, field);
        }
    }
}
