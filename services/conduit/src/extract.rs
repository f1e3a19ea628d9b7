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

#[cfg(test)]
mod tests {
    use axum::{
        body::Body,
        http::{header::CONTENT_TYPE, Request},
        response::IntoResponse,
        routing::{get, post},
        Router,
    };
    use proptest::prelude::*;
    use serde::Deserialize;
    use tower::ServiceExt;

    use super::*;

    /// The shape of the list routes' query (`api/articles.rs`: `ListQuery`).
    #[derive(Deserialize)]
    #[allow(dead_code)]
    struct Query {
        tag: Option<String>,
        limit: Option<i64>,
        offset: Option<i64>,
    }

    /// The shape of a request envelope (`{"article": {...}}`, `api/articles.rs`).
    #[derive(Deserialize)]
    #[allow(dead_code)]
    struct Body_ {
        #[serde(default, deserialize_with = "crate::model::object_or_null")]
        article: Option<Inner>,
    }

    #[derive(Deserialize)]
    #[allow(dead_code)]
    struct Inner {
        title: Option<String>,
        #[serde(rename = "tagList")]
        tag_list: Option<Vec<String>>,
    }

    fn router() -> Router {
        Router::new()
            .route("/q", get(|ApiQuery(_): ApiQuery<Query>| async { "ok" }))
            .route(
                "/j",
                post(|ApiJson(_): ApiJson<Body_>| async { "ok".into_response() }),
            )
            .layer(axum::extract::DefaultBodyLimit::max(4096))
    }

    /// Sends `request` to [`router`]: the status, and the body if it is JSON.
    fn answer(request: Request<Body>) -> (StatusCode, Option<serde_json::Value>) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime");
        runtime.block_on(async {
            let response = router().oneshot(request).await.expect("an answer");
            let status = response.status();
            let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
                .await
                .expect("a body");
            (status, serde_json::from_slice(&bytes).ok())
        })
    }

    /// A refusal is a 4xx with the RealWorld error body: `{"errors": {field: [messages]}}`.
    fn is_realworld_refusal(status: StatusCode, body: Option<&serde_json::Value>) -> bool {
        status.is_client_error()
            && body
                .and_then(|b| b["errors"].as_object())
                .is_some_and(|errors| !errors.is_empty() && errors.values().all(|v| v.is_array()))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        /// Any query string (percent-escapes, repeated names, huge numbers, bytes that are not
        /// UTF-8 once decoded): parsed, or a 422 naming `query`; never a 5xx.
        #[test]
        fn any_query_string_is_parsed_or_refused_with_a_realworld_422(
            query in "[a-z=&%0-9+.;-]{0,40}|limit=-?[0-9]{1,25}&offset=[0-9a-f%]{0,25}",
        ) {
            let request = Request::get(format!("/q?{query}")).body(Body::empty()).expect("a request");
            let (status, body) = answer(request);
            prop_assert!(
                status == StatusCode::OK
                    || (status == StatusCode::UNPROCESSABLE_ENTITY
                        && is_realworld_refusal(status, body.as_ref())),
                "{query}: {status} {body:?}"
            );
        }

        /// Any bytes as a JSON body, with or without the JSON content type: taken, or refused
        /// with a 4xx RealWorld error body (422, or 413 past the limit); never a 5xx.
        #[test]
        fn any_body_is_taken_or_refused_with_a_realworld_error(
            bytes in prop_oneof![
                prop::collection::vec(any::<u8>(), 0..64),
                "[\\[\\]{}\":,a-z0-9 nultrefs.-]{0,60}".prop_map(String::into_bytes),
                Just(b"{\"article\": []}".to_vec()),
                Just(b"[{\"article\": {}}]".to_vec()),
                Just(vec![b'['; 5000]),
            ],
            json_type in any::<bool>(),
        ) {
            let mut request = Request::post("/j");
            if json_type {
                request = request.header(CONTENT_TYPE, "application/json");
            }
            let (status, body) = answer(request.body(Body::from(bytes.clone())).expect("a request"));
            prop_assert!(
                status == StatusCode::OK || is_realworld_refusal(status, body.as_ref()),
                "{:?}: {status} {body:?}", String::from_utf8_lossy(&bytes)
            );
        }
    }

    #[test]
    fn an_array_where_an_object_belongs_is_refused() {
        for bytes in [&b"[{\"article\": {}}]"[..], b"{\"article\": [\"t\"]}"] {
            let request = Request::post("/j")
                .header(CONTENT_TYPE, "application/json")
                .body(Body::from(bytes))
                .expect("a request");
            let (status, body) = answer(request);
            assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body:?}");
            assert!(is_realworld_refusal(status, body.as_ref()));
        }
        let request = Request::post("/j")
            .header(CONTENT_TYPE, "application/json")
            .body(Body::from(&b"{\"article\": {\"title\": \"t\"}}"[..]))
            .expect("a request");
        assert_eq!(answer(request).0, StatusCode::OK);
    }
}
