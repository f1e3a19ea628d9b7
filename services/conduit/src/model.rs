//! The JSON shapes of the RealWorld API and the rules for normalising input.
//!
//! Request bodies are parsed into structs whose fields are all `Option`, then checked here, so a
//! missing field is a field-keyed 422 (`{"errors": {"title": ["can't be blank"]}}`) rather than a
//! serde message about the whole body.

use serde::{Serialize, Serializer};
use time::{
    format_description::BorrowedFormatItem, macros::format_description, OffsetDateTime, UtcOffset,
};

use crate::error::{ApiError, FieldErrors};

/// Longest username. Usernames appear in URLs (`/profiles/{username}`) and in every article's
/// author block; 64 characters is generous for a handle and keeps both bounded.
pub const MAX_USERNAME: usize = 64;
/// Longest e-mail address (RFC 5321's limit on a forward path).
pub const MAX_EMAIL: usize = 254;
/// Shortest password: NIST SP 800-63B's minimum of 8 characters, which the RealWorld suite checks.
pub const MIN_PASSWORD: usize = 8;
/// Longest password. NIST asks that at least 64 be allowed; argon2 takes any length, but hashing
/// megabytes would be a cheap way to burn our CPU, so 256 is the bound.
pub const MAX_PASSWORD: usize = 256;
/// Longest article title and description.
pub const MAX_TITLE: usize = 256;
/// Tags per article, and characters per tag: enough for real use, bounded for the tag index.
pub const MAX_TAGS: usize = 32;
/// See [`MAX_TAGS`].
pub const MAX_TAG_LEN: usize = 64;
/// Longest comment body.
pub const MAX_COMMENT: usize = 16 * 1024;

/// A timestamp as RealWorld clients expect it: RFC 3339 in UTC with milliseconds,
/// `2016-02-18T03:22:56.637Z`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timestamp(pub OffsetDateTime);

/// Always three fractional digits, so every timestamp has the same shape and a value read back
/// later is the same string as the one first returned (the database keeps microseconds; we show
/// milliseconds, truncated, every time).
const TIMESTAMP_FORMAT: &[BorrowedFormatItem<'_>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.0.to_offset(UtcOffset::UTC).format(TIMESTAMP_FORMAT) {
            Ok(text) => serializer.serialize_str(&text),
            Err(e) => Err(serde::ser::Error::custom(e)),
        }
    }
}

/// `{"user": ...}`: the logged-in user, with a token.
#[derive(Debug, Serialize)]
pub struct UserBody {
    /// The user.
    pub user: User,
}

/// The logged-in user.
#[derive(Debug, Serialize)]
pub struct User {
    /// E-mail address (stored lower-cased).
    pub email: String,
    /// A fresh JWT.
    pub token: String,
    /// Unique handle.
    pub username: String,
    /// Free text, or null.
    pub bio: Option<String>,
    /// Image URL, or null.
    pub image: Option<String>,
}

/// `{"profile": ...}`.
#[derive(Debug, Serialize)]
pub struct ProfileBody {
    /// The profile.
    pub profile: Profile,
}

/// A user as others see them.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Profile {
    /// Unique handle.
    pub username: String,
    /// Free text, or null.
    pub bio: Option<String>,
    /// Image URL, or null.
    pub image: Option<String>,
    /// Whether the viewer follows this user (false for anonymous viewers).
    pub following: bool,
}

/// `{"article": ...}`.
#[derive(Debug, Serialize)]
pub struct ArticleBody {
    /// The article.
    pub article: Article,
}

/// An article. `body` is `None` in lists, which the 2.0 spec returns without bodies.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Article {
    /// URL identifier, ending in the article's id.
    pub slug: String,
    /// Title.
    pub title: String,
    /// Short description.
    pub description: String,
    /// Markdown body; omitted in lists.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// Tags in the order the author gave them.
    pub tag_list: Vec<String>,
    /// Creation time.
    pub created_at: Timestamp,
    /// Last update time.
    pub updated_at: Timestamp,
    /// Whether the viewer favorited it.
    pub favorited: bool,
    /// How many users favorited it.
    pub favorites_count: i64,
    /// The author as the viewer sees them.
    pub author: Profile,
}

/// `{"articles": [...], "articlesCount": n}`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ArticlesBody {
    /// One page.
    pub articles: Vec<Article>,
    /// How many match the filter in all pages.
    pub articles_count: i64,
}

/// `{"comment": ...}`.
#[derive(Debug, Serialize)]
pub struct CommentBody {
    /// The comment.
    pub comment: Comment,
}

/// `{"comments": [...]}`.
#[derive(Debug, Serialize)]
pub struct CommentsBody {
    /// All comments of an article, oldest first.
    pub comments: Vec<Comment>,
}

/// A comment.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Comment {
    /// Id (an integer below 2^53).
    pub id: i64,
    /// Creation time.
    pub created_at: Timestamp,
    /// Last update time.
    pub updated_at: Timestamp,
    /// Text.
    pub body: String,
    /// The author as the viewer sees them.
    pub author: Profile,
}

/// Collects per-field problems so a client learns about all of them in one response.
#[derive(Default)]
pub struct Validator {
    errors: FieldErrors,
}

impl Validator {
    /// Records a problem with `field`.
    pub fn fail(&mut self, field: &str, message: impl Into<String>) {
        self.errors
            .entry(field.to_owned())
            .or_default()
            .push(message.into());
    }

    /// A required string: present, at most `max` characters as sent, not blank after
    /// trimming. Returns the trimmed value.
    pub fn required(&mut self, field: &str, value: Option<String>, max: usize) -> String {
        match value.map(|v| self.bounded_then_trimmed(field, v, max)) {
            Some(v) if !v.is_empty() => v,
            _ => {
                self.fail(field, "can't be blank");
                String::new()
            }
        }
    }

    /// An optional string that, when given, must not be blank (an update of `title`, say).
    pub fn optional(&mut self, field: &str, value: Option<String>, max: usize) -> Option<String> {
        value.map(|v| {
            let v = self.bounded_then_trimmed(field, v, max);
            if v.is_empty() {
                self.fail(field, "can't be blank");
            }
            v
        })
    }

    /// The length bound counts characters as sent, white space around the value included, so
    /// the rule a client reads in the OpenAPI document (`maxLength`, which counts every
    /// character of the string) is exactly the rule applied; then the value is trimmed.
    fn bounded_then_trimmed(&mut self, field: &str, value: String, max: usize) -> String {
        if value.chars().count() > max {
            self.fail(field, format!("is too long (maximum is {max} characters)"));
        }
        value.trim().to_owned()
    }

    /// A new password: present, not trimmed (it is compared exactly as typed), 8 to 256
    /// characters.
    pub fn password(&mut self, value: Option<String>) -> String {
        let value = value.unwrap_or_default();
        let n = value.chars().count();
        if value.trim().is_empty() {
            self.fail("password", "can't be blank");
        } else if n < MIN_PASSWORD {
            self.fail(
                "password",
                format!("is too short (minimum is {MIN_PASSWORD} characters)"),
            );
        } else if n > MAX_PASSWORD {
            self.fail(
                "password",
                format!("is too long (maximum is {MAX_PASSWORD} characters)"),
            );
        }
        value
    }

    /// An e-mail address: the shape `local@domain.tld`, lower-cased.
    pub fn email(&mut self, value: String) -> String {
        let value = value.to_lowercase();
        let well_formed = value.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty()
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
                && !domain.contains('@')
        }) && !value.chars().any(char::is_whitespace);
        if !value.is_empty() && !well_formed {
            self.fail("email", "is invalid");
        }
        value
    }

    /// A username: no whitespace or slashes, since it is a URL path segment.
    pub fn username(&mut self, value: String) -> String {
        if value
            .chars()
            .any(|c| c.is_whitespace() || c == '/' || c.is_control())
        {
            self.fail("username", "may not contain spaces or slashes");
        }
        value
    }

    /// A tag list: trimmed, blank entries refused, duplicates dropped, order kept, bounded.
    pub fn tags(&mut self, tags: Vec<String>) -> Vec<String> {
        if tags.len() > MAX_TAGS {
            self.fail(
                "tagList",
                format!("has too many tags (maximum is {MAX_TAGS})"),
            );
        }
        let mut out: Vec<String> = Vec::with_capacity(tags.len());
        for tag in tags {
            let too_long = tag.chars().count() > MAX_TAG_LEN;
            let tag = tag.trim().to_owned();
            if tag.is_empty() {
                self.fail("tagList", "can't contain blank tags");
            } else if too_long {
                self.fail(
                    "tagList",
                    format!("has a tag over {MAX_TAG_LEN} characters"),
                );
            } else if !out.contains(&tag) {
                out.push(tag);
            }
        }
        out
    }

    /// 422 with every problem found, or Ok.
    pub fn finish(self) -> Result<(), ApiError> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(ApiError::Unprocessable(self.errors))
        }
    }
}

/// For `#[serde(default, deserialize_with = "present_or_null")]` on an `Option<Option<T>>`:
/// an absent field stays `None` (keep the value), a present one becomes `Some(None)` for `null`
/// or `Some(Some(v))`. Updates need the difference: `"bio": null` clears, no `bio` keeps.
pub fn present_or_null<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de>,
{
    <Option<T> as serde::Deserialize>::deserialize(d).map(Some)
}

/// A `T` that was sent as a JSON object, never as an array. serde's derived structs take an
/// array too, field by field in declaration order, so without this `{"user": ["a@b.org"]}`
/// changed an e-mail and `[{"user": {}}]` was an empty update: neither is in the contract.
/// Every request body is one ([`crate::extract::ApiJson`]), and so is every envelope's content
/// ([`object_or_null`]).
pub struct Object<T>(pub T);

impl<'de, T: serde::Deserialize<'de>> serde::Deserialize<'de> for Object<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ObjectOnly<T>(std::marker::PhantomData<T>);

        impl<'de, T: serde::Deserialize<'de>> serde::de::Visitor<'de> for ObjectOnly<T> {
            type Value = T;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                T::deserialize(serde::de::value::MapAccessDeserializer::new(map))
            }
        }

        d.deserialize_map(ObjectOnly(std::marker::PhantomData))
            .map(Object)
    }
}

/// For `#[serde(default, deserialize_with = "object_or_null")]` on the `Option<T>` a request's
/// envelope holds (`{"user": {...}}`): an [`Object`], or `null` (then `None`, answered "can't
/// be blank").
pub fn object_or_null<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de>,
{
    <Option<Object<T>> as serde::Deserialize>::deserialize(d).map(|o| o.map(|Object(t)| t))
}

/// Nullable profile fields: an empty string is stored as null.
pub fn empty_as_null(value: Option<String>) -> Option<String> {
    value.filter(|v| !v.trim().is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_have_milliseconds_and_a_z() -> Result<(), Box<dyn std::error::Error>> {
        let t = OffsetDateTime::from_unix_timestamp_nanos(1_455_765_776_637_123_456)?;
        let json = serde_json::to_string(&Timestamp(t))?;
        assert_eq!(json, "\"2016-02-18T03:22:56.637Z\"");
        let whole = OffsetDateTime::from_unix_timestamp(1_455_765_776)?;
        assert_eq!(
            serde_json::to_string(&Timestamp(whole))?,
            "\"2016-02-18T03:22:56.000Z\""
        );
        Ok(())
    }

    #[test]
    fn validation_reports_every_field() {
        let mut v = Validator::default();
        v.required("title", None, 10);
        v.required("body", Some("   ".into()), 10);
        v.required("description", Some("x".repeat(11)), 10);
        let Err(ApiError::Unprocessable(errors)) = v.finish() else {
            panic!("expected 422")
        };
        assert_eq!(errors["title"], vec!["can't be blank"]);
        assert_eq!(errors["body"], vec!["can't be blank"]);
        assert!(errors["description"][0].contains("too long"));
    }

    #[test]
    fn lengths_count_characters_as_sent_white_space_around_included() {
        let mut v = Validator::default();
        assert_eq!(v.required("title", Some(" abc ".into()), 5), "abc");
        assert_eq!(
            v.tags(vec![format!(" {} ", "t".repeat(MAX_TAG_LEN - 2))])
                .len(),
            1
        );
        assert!(v.finish().is_ok());
        let mut v = Validator::default();
        v.required("title", Some("  abcd ".into()), 5);
        v.optional("body", Some(format!(" {}", "b".repeat(5))), 5);
        v.tags(vec![format!(" {}", "t".repeat(MAX_TAG_LEN))]);
        let Err(ApiError::Unprocessable(errors)) = v.finish() else {
            panic!("expected 422")
        };
        assert!(errors["title"][0].contains("too long"));
        assert!(errors["body"][0].contains("too long"));
        assert!(errors["tagList"][0].contains("over"));
    }

    #[test]
    fn a_body_and_its_envelope_take_objects_never_arrays() {
        #[derive(serde::Deserialize, Debug)]
        struct Update {
            #[serde(default)]
            email: Option<String>,
        }
        #[derive(serde::Deserialize, Debug)]
        struct Envelope {
            #[serde(default, deserialize_with = "object_or_null")]
            user: Option<Update>,
        }
        let parse = |json: &str| serde_json::from_str::<Envelope>(json);
        let given =
            parse(r#"{"user": {"email": "a@b.org"}}"#).map(|e| e.user.and_then(|u| u.email));
        assert_eq!(given.ok().flatten().as_deref(), Some("a@b.org"));
        assert!(parse(r#"{"user": null}"#).is_ok_and(|e| e.user.is_none()));
        assert!(parse("{}").is_ok_and(|e| e.user.is_none()));
        for refused in [
            r#"{"user": []}"#,
            r#"{"user": ["a@b.org"]}"#,
            r#"{"user": "x"}"#,
        ] {
            assert!(parse(refused).is_err(), "{refused} should be refused");
        }
        let whole = |json: &str| serde_json::from_str::<Object<Envelope>>(json).map(|o| o.0);
        assert!(whole(r#"{"user": {}}"#).is_ok_and(|e| e.user.is_some()));
        for refused in [r#"[{"user": {}}]"#, "[]", "null", "1"] {
            assert!(whole(refused).is_err(), "{refused} should be refused");
        }
    }

    #[test]
    fn emails_are_lowercased_and_checked() {
        let mut v = Validator::default();
        assert_eq!(v.email("Jake@Example.COM".into()), "jake@example.com");
        assert!(v.finish().is_ok());
        for bad in [
            "jake",
            "jake@",
            "@x.org",
            "jake@localhost",
            "a b@c.org",
            "a@b@c.org",
        ] {
            let mut v = Validator::default();
            v.email(bad.into());
            assert!(v.finish().is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn tags_are_trimmed_deduplicated_and_ordered() {
        let mut v = Validator::default();
        let tags = v.tags(vec!["b".into(), " a ".into(), "b".into()]);
        assert_eq!(tags, vec!["b", "a"]);
        assert!(v.finish().is_ok());
    }
}
