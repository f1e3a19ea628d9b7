//! The app's own contract: `GET /api/openapi.yml` serves the OpenAPI document of this build
//! (`services/conduit/openapi.yml`, compiled in), so a client, a fuzzer or a person can ask a
//! running app what it accepts and answers.
//!
//! The document is checked against the code by `tests/contract.rs`: its paths against the routes
//! declared here in `api/`, its limits against the constants of [`crate::model`] and the
//! handlers. How long caches may keep it is a row of [`crate::edge::POLICIES`].

use axum::{http::header, response::IntoResponse, routing::get, Router};

use crate::AppState;

/// The OpenAPI 3.1 document, as written in the repository.
pub const DOCUMENT: &str = include_str!("../../openapi.yml");

/// The document's media type (RFC 9512).
pub const CONTENT_TYPE: &str = "application/yaml";

/// Routes of this module.
pub fn router() -> Router<AppState> {
    Router::new().route("/api/openapi.yml", get(document))
}

async fn document() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], DOCUMENT)
}
