//! Request extractors that turn every malformed input into a RealWorld error body.
//!
//! axum's own `Json`, `Query` and `Path` reject bad input with plain-text 400/415/422 responses.
//! These wrappers keep axum's parsing but answer with [`ApiError`]: 422 for anything the client
//! got wrong in the content, 413 for a body over the limit.

use axum::{
    extract::{
        rejection::{JsonRejection, PathRejection, QueryRejection},
        FromRequest, FromRequestParts, Request,
    },
    http::{request::Parts, StatusCode},
};
use serde::de::DeserializeOwned;

use crate::{error::ApiError, model::Object};

/// A JSON body, `Content-Type: application/json`, whose top level is an object ([`Object`]).
pub struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match axum::Json::<Object<T>>::from_request(req, state).await {
            Ok(axum::Json(Object(value))) => Ok(ApiJson(value)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

fn json_rejection(rejection: JsonRejection) -> ApiError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        // The limit is set per route with `DefaultBodyLimit` (see `app::router`).
        return ApiError::PayloadTooLarge;
    }
    let message = match &rejection {
        JsonRejection::MissingJsonContentType(_) => {
            "expected a JSON body with Content-Type: application/json".to_owned()
        }
        JsonRejection::JsonSyntaxError(_) => "is not valid JSON".to_owned(),
        // serde's message names the field and the expected type, e.g.
        // "user.email: invalid type: integer `1`, expected a string at line 1 column 20".
        JsonRejection::JsonDataError(e) => e.body_text().replace(
            "Failed to deserialize the JSON body into the target type: ",
            "",
        ),
        other => other.body_text(),
    };
    ApiError::invalid("body", message)
}

/// Query parameters.
pub struct ApiQuery<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| ApiQuery(q.0))
            .map_err(|rejection: QueryRejection| {
                ApiError::invalid(
                    "query",
                    rejection
                        .body_text()
                        .replace("Failed to deserialize query string: ", ""),
                )
            })
    }
}

/// Path parameters.
pub struct ApiPath<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiPath<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| ApiPath(p.0))
            .map_err(|rejection: PathRejection| ApiError::invalid("path", rejection.body_text()))
    }
}

/// What the property tests of request parsing share (`api::users`, `api::articles`,
/// `api::comments`): the real extractors driven without a router or a database, the RealWorld
/// refusal they must give, and strategies for what a client may send.
#[cfg(test)]
pub(crate) mod properties {
    use axum::{
        body::Body,
        extract::{FromRequest, FromRequestParts},
        http::{header::CONTENT_TYPE, Request, StatusCode},
        response::IntoResponse,
    };
    use proptest::{prelude::*, test_runner::TestCaseError};
    use serde::de::DeserializeOwned;
    use serde_json::Value;

    use super::{ApiJson, ApiQuery};
    use crate::error::ApiError;

    /// `bytes` sent as a JSON body (`Content-Type: application/json`), through [`ApiJson`].
    pub fn json_body<T: DeserializeOwned>(bytes: Vec<u8>) -> Result<T, ApiError> {
        body_sent_as(bytes, Some("application/json"))
    }

    /// `bytes` sent as a body with `content_type` (none if `None`), through [`ApiJson`].
    pub fn body_sent_as<T: DeserializeOwned>(
        bytes: Vec<u8>,
        content_type: Option<&str>,
    ) -> Result<T, ApiError> {
        let mut request = Request::post("/");
        if let Some(content_type) = content_type {
            request = request.header(CONTENT_TYPE, content_type);
        }
        let request = request.body(Body::from(bytes)).expect("a request");
        futures::executor::block_on(ApiJson::<T>::from_request(request, &())).map(|body| body.0)
    }

    /// `query` as a request's query string, through [`ApiQuery`].
    pub fn query<T: DeserializeOwned>(query: &str) -> Result<T, ApiError> {
        let request = Request::get(format!("/?{query}"))
            .body(())
            .expect("the query is made of characters a URI may hold");
        let (mut parts, ()) = request.into_parts();
        futures::executor::block_on(ApiQuery::<T>::from_request_parts(&mut parts, &()))
            .map(|query| query.0)
    }

    /// Passes when `error` is answered as a client reads a refusal: 422 with the RealWorld
    /// body, `{"errors": {field: [message, ...]}}`, every field one of `fields`.
    pub fn is_a_realworld_422(error: ApiError, fields: &[&str]) -> Result<(), TestCaseError> {
        let response = error.into_response();
        prop_assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
        let bytes =
            futures::executor::block_on(axum::body::to_bytes(response.into_body(), 1 << 20))
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let body: Value =
            serde_json::from_slice(&bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let errors = body["errors"].as_object();
        prop_assert!(errors.is_some_and(|e| !e.is_empty()), "{}", body);
        for (field, messages) in errors.into_iter().flatten() {
            prop_assert!(fields.contains(&field.as_str()), "{} in {}", field, body);
            let messages = messages.as_array();
            prop_assert!(
                messages.is_some_and(|m| !m.is_empty()
                    && m.iter().all(|m| m.as_str().is_some_and(|s| !s.is_empty()))),
                "{}",
                body
            );
        }
        Ok(())
    }

    /// Any JSON value, nested a few levels.
    pub fn any_json() -> BoxedStrategy<Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_filter_map("finite", |f| {
                serde_json::Number::from_f64(f).map(Value::Number)
            }),
            "\\PC{0,12}".prop_map(Value::from),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
                prop::collection::btree_map("\\PC{0,6}", inner, 0..4)
                    .prop_map(|fields| Value::Object(fields.into_iter().collect())),
            ]
        })
        .boxed()
    }

    /// Text a client may put in a field: blank, padded, control characters and NUL, non-ASCII,
    /// and lengths either side of `max` characters.
    pub fn text(max: usize) -> BoxedStrategy<String> {
        prop_oneof![
            "\\PC{0,12}",
            "[ \t\n]{0,3}[a-zA-Z0-9 ._@/-]{0,12}[ \t\n]{0,3}",
            "[\\x00-\\x1f]{1,3}",
            (max.saturating_sub(2)..=max.saturating_add(2), any::<char>())
                .prop_map(|(n, c)| c.to_string().repeat(n)),
        ]
        .boxed()
    }

    /// A field's value: usually one from `value` (a string, a list of them), else null or any
    /// JSON at all; `None` leaves the field out.
    pub fn field<T: Into<Value>>(
        value: impl Strategy<Value = T>,
    ) -> impl Strategy<Value = Option<Value>> {
        prop_oneof![
            12 => value.prop_map(|v| Some(v.into())),
            1 => Just(None),
            1 => Just(Some(Value::Null)),
            1 => any_json().prop_map(Some),
        ]
    }

    /// A JSON object of the fields given (`None` ones left out).
    pub fn object<const N: usize>(fields: [(&str, Option<Value>); N]) -> Value {
        Value::Object(
            fields
                .into_iter()
                .filter_map(|(name, value)| value.map(|v| (name.to_owned(), v)))
                .collect(),
        )
    }

    /// A request body for the envelope `name` (`{"user": {...}}`): mostly the envelope around
    /// `content`, else the envelope around any JSON, any JSON as the whole body, or any bytes.
    pub fn body(
        name: &'static str,
        content: impl Strategy<Value = Value>,
    ) -> impl Strategy<Value = Vec<u8>> {
        let envelope = move |content: Value| serde_json::json!({ name: content }).to_string();
        prop_oneof![
            12 => content.prop_map(move |c| envelope(c).into_bytes()),
            1 => any_json().prop_map(move |c| envelope(c).into_bytes()),
            1 => any_json().prop_map(|v| v.to_string().into_bytes()),
            1 => prop::collection::vec(any::<u8>(), 0..64),
        ]
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::properties::{body_sent_as, is_a_realworld_422};

    proptest! {
        /// Any bytes under any `Content-Type` (or none): a JSON object taken, or a RealWorld 422
        /// naming `body`; never a panic. What each request type then makes of a body is its own
        /// property (`api::users`, `api::articles`, `api::comments`).
        #[test]
        fn any_bytes_under_any_content_type_are_an_object_or_a_realworld_422(
            bytes in prop_oneof![
                prop::collection::vec(any::<u8>(), 0..64),
                "[\\[\\]{}\":,a-z0-9 .-]{0,40}".prop_map(String::into_bytes),
            ],
            content_type in prop::option::of(prop_oneof![
                Just("application/json".to_owned()),
                "[a-z/+;= -]{0,30}",
            ]),
        ) {
            match body_sent_as::<serde_json::Map<String, serde_json::Value>>(
                bytes,
                content_type.as_deref(),
            ) {
                Ok(_) => {}
                Err(refused) => is_a_realworld_422(refused, &["body"])?,
            }
        }
    }
}
