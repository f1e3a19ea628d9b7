//! Media: `POST /api/media` (upload, authenticated) and `GET /media/{id}` (download).
//!
//! The bytes go through the `object_store` seam ([`crate::AppState::media`]): the local
//! filesystem in stage 1, an HTTP file server in stage 2, S3 in stage 7. The database row says
//! what the bytes are (type, size, hash), so a download never trusts a file name.
//!
//! Uploads are sniffed: the first bytes must be a PNG, JPEG, GIF or WebP signature, whatever
//! `Content-Type` the client claims. Ids are made by the database; no client input ever becomes a
//! path in the store.

use axum::{
    body::Body,
    extract::{FromRequest, Multipart, Request, State},
    http::{header, HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post},
    Json, Router,
};
use bytes::Bytes;
use object_store::{path::Path as StorePath, Attribute, ObjectStore, PutOptions, PutPayload};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::{
    auth::AuthUser,
    db::Reader,
    error::{ApiError, ApiResult},
    extract::ApiPath,
    AppState,
};

/// Routes of this module. The upload route carries its own body limit (set in `app::router`).
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/media", post(upload))
        .route("/media/{id}", get(download))
}

/// The image types accepted, recognised by their first bytes.
pub fn sniff_image_type(bytes: &[u8]) -> Option<&'static str> {
    if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some("image/png")
    } else if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Some("image/jpeg")
    } else if bytes.starts_with(b"GIF87a") || bytes.starts_with(b"GIF89a") {
        Some("image/gif")
    } else if bytes.len() >= 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
        Some("image/webp")
    } else {
        None
    }
}

/// The file name of media `id`: its id and the extension of its type, so a plain file server
/// (stage 2's nginx) can serve it with the right `Content-Type` from the name alone.
pub fn file_name(id: i64, content_type: &str) -> String {
    let ext = match content_type {
        "image/png" => "png",
        "image/jpeg" => "jpg",
        "image/gif" => "gif",
        "image/webp" => "webp",
        _ => "bin",
    };
    format!("{id}.{ext}")
}

/// Where the bytes of a media file live in the store (`media/<id>.<ext>`).
pub fn object_path(file_name: &str) -> StorePath {
    StorePath::from(format!("media/{file_name}"))
}

#[derive(Serialize)]
struct MediaBody {
    media: Media,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Media {
    id: String,
    url: String,
    content_type: String,
    size: i64,
}

/// Reads the upload from a `multipart/form-data` body, whose one part must be named `file` (any
/// other part, or a second one, is refused rather than skipped: a form that carries more than
/// the document describes is a client mistake worth saying), or, for any other content type,
/// the raw body.
async fn upload_bytes(request: Request, state: &AppState) -> ApiResult<Bytes> {
    let is_multipart = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("multipart/form-data"));
    if !is_multipart {
        return Bytes::from_request(request, state)
            .await
            .map_err(|e| body_error(e.status(), e.body_text()));
    }
    let mut multipart = Multipart::from_request(request, state)
        .await
        .map_err(|e| body_error(e.status(), e.body_text()))?;
    let mut file = None;
    while let Some(field) = multipart
        .next_field()
        .await
        .map_err(|e| body_error(e.status(), e.body_text()))?
    {
        if field.name() != Some("file") || file.is_some() {
            return Err(ApiError::invalid(
                "media",
                "the form must have one part, named file",
            ));
        }
        file = Some(
            field
                .bytes()
                .await
                .map_err(|e| body_error(e.status(), e.body_text()))?,
        );
    }
    file.ok_or_else(|| ApiError::invalid("media", "no file part in the form"))
}

/// 413 when the body limit tripped (the limit layer's status), 422 for any other unreadable body.
fn body_error(status: StatusCode, text: String) -> ApiError {
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::PayloadTooLarge
    } else {
        ApiError::invalid("media", text)
    }
}

#[tracing::instrument(level = "debug", skip_all)]
async fn upload(
    State(state): State<AppState>,
    user: AuthUser,
    request: Request,
) -> ApiResult<(StatusCode, Json<MediaBody>)> {
    let bytes = upload_bytes(request, &state).await?;
    if bytes.is_empty() {
        return Err(ApiError::invalid("media", "can't be blank"));
    }
    if bytes.len() > state.settings.media.max_bytes {
        return Err(ApiError::PayloadTooLarge);
    }
    let content_type = sniff_image_type(&bytes).ok_or(ApiError::UnsupportedMediaType)?;
    let sha256 = hex(&Sha256::digest(&bytes));
    let size = bytes.len() as i64;

    // The owner's bucket, so the row lives on the owner's shard (stage 7).
    let owner_db = state.shards.of(user.id);
    let (id,): (i64,) = sqlx::query_as("SELECT next_id_in($1)")
        .bind(i32::from(crate::db::bucket_of(user.id)))
        .fetch_one(owner_db.write()?)
        .await?;
    // Bytes first, row second: a row never points at missing bytes. If the insert fails, the
    // object is orphaned; a real system would sweep objects that have no row.
    state
        .media
        .put_opts(
            &object_path(&file_name(id, content_type)),
            PutPayload::from_bytes(bytes),
            put_options(&state.settings.media, content_type),
        )
        .await?;
    sqlx::query(
        "INSERT INTO media (id, owner_id, content_type, size_bytes, sha256)
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(id)
    .bind(user.id)
    .bind(content_type)
    .bind(size)
    .bind(&sha256)
    .execute(owner_db.write()?)
    .await?;
    let media = Media {
        url: format!(
            "{}/media/{}",
            state.settings.media.public_base_url,
            file_name(id, content_type)
        ),
        id: id.to_string(),
        content_type: content_type.to_owned(),
        size,
    };
    Ok((StatusCode::CREATED, Json(MediaBody { media })))
}

#[tracing::instrument(level = "debug", skip_all)]
async fn download(
    State(state): State<AppState>,
    reader: Reader,
    ApiPath(name): ApiPath<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    // `/media/<id>.<ext>` as upload URLs give it, or a bare `/media/<id>`.
    let id: i64 = name
        .split_once('.')
        .map_or(name.as_str(), |(id, _)| id)
        .parse()
        .map_err(|_| ApiError::NotFound("media"))?;
    let row: Option<(String, i64, String)> =
        sqlx::query_as("SELECT content_type, size_bytes, sha256 FROM media WHERE id = $1")
            .bind(id)
            .fetch_optional(reader.for_id(id).pool().await?)
            .await?;
    let (content_type, size, sha256) = row.ok_or(ApiError::NotFound("media"))?;
    let etag = format!("\"{sha256}\"");
    let cache_headers = [
        (header::ETAG, etag.clone()),
        // The bytes of an id never change, so caches may keep them for a year without asking.
        (header::CACHE_CONTROL, crate::edge::IMMUTABLE.to_owned()),
    ];
    let not_modified = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|tag| tag.trim() == etag || tag.trim() == "*")
        });
    if not_modified {
        return Ok((StatusCode::NOT_MODIFIED, cache_headers).into_response());
    }
    let object = state
        .media
        .get(&object_path(&file_name(id, &content_type)))
        .await?;
    let body = Body::from_stream(object.into_stream());
    let mut response = (cache_headers, body).into_response();
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(&content_type).map_err(anyhow::Error::new)?,
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(size));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    Ok(response)
}

/// Lower-case hex of `bytes` (the stored SHA-256 of an upload, also its ETag).
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Builds the media store the settings name: the local disk (stage 1), a WebDAV file server
/// over HTTP (stage 2: nginx on the file host) or an S3 object store cluster (stage 7: Garage).
/// This is the one switch between them. `first_node`: where an app host starts in a cluster of
/// nodes (each host its own, so they spread; see [`crate::object_cluster`]).
pub fn store(
    settings: &crate::settings::MediaSettings,
    first_node: usize,
) -> anyhow::Result<std::sync::Arc<dyn ObjectStore>> {
    use anyhow::Context;
    match settings.store {
        crate::settings::MediaStoreKind::Local => local_store(&settings.root),
        crate::settings::MediaStoreKind::Http => {
            let store = object_store::http::HttpBuilder::new()
                .with_url(settings.url.clone())
                // Loopback lab hosts speak plain HTTP; a real deployment would use TLS.
                .with_client_options(file_server_client(settings)?)
                .build()
                .with_context(|| format!("opening the file server at {:?}", settings.url))?;
            Ok(std::sync::Arc::new(store))
        }
        crate::settings::MediaStoreKind::S3 => {
            crate::object_cluster::s3_cluster(&settings.s3, first_node)
        }
    }
}

/// What a store is told about an object besides its bytes. The file host and the local disk
/// take none (nginx types a file by its name); an S3 store keeps these and its web endpoint sends
/// them back, so clients reading media from it get the same headers as from the app.
pub fn put_options(settings: &crate::settings::MediaSettings, content_type: &str) -> PutOptions {
    let mut options = PutOptions::default();
    if settings.store == crate::settings::MediaStoreKind::S3 {
        options
            .attributes
            .insert(Attribute::ContentType, content_type.to_owned().into());
        options
            .attributes
            .insert(Attribute::CacheControl, crate::edge::IMMUTABLE.into());
    }
    options
}

/// HTTP client options for the file server: plain HTTP on loopback (a real deployment would use
/// TLS), and the write key on every request.
fn file_server_client(
    settings: &crate::settings::MediaSettings,
) -> anyhow::Result<object_store::ClientOptions> {
    let mut options = object_store::ClientOptions::new().with_allow_http(true);
    let key = settings.write_key.expose();
    if !key.is_empty() {
        let mut headers = axum::http::HeaderMap::new();
        headers.insert(
            "x-file-write-key",
            HeaderValue::from_str(key)
                .map_err(|_| anyhow::anyhow!("media.write_key is not a valid header value"))?,
        );
        options = options.with_default_headers(headers);
    }
    Ok(options)
}

/// The stage-1 store: files on this host's disk under `root`.
pub fn local_store(root: &std::path::Path) -> anyhow::Result<std::sync::Arc<dyn ObjectStore>> {
    use anyhow::Context;
    std::fs::create_dir_all(root)
        .with_context(|| format!("creating the media folder {}", root.display()))?;
    let store = object_store::local::LocalFileSystem::new_with_prefix(root)
        .with_context(|| format!("opening the media folder {}", root.display()))?;
    Ok(std::sync::Arc::new(store))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniffing_trusts_bytes_not_names() {
        assert_eq!(
            sniff_image_type(b"\x89PNG\r\n\x1a\nrest"),
            Some("image/png")
        );
        assert_eq!(
            sniff_image_type(&[0xFF, 0xD8, 0xFF, 0xE0]),
            Some("image/jpeg")
        );
        assert_eq!(sniff_image_type(b"GIF89a..."), Some("image/gif"));
        assert_eq!(
            sniff_image_type(b"RIFF\0\0\0\0WEBPVP8 "),
            Some("image/webp")
        );
        assert_eq!(sniff_image_type(b"<svg xmlns="), None);
        assert_eq!(sniff_image_type(b"<html>"), None);
        assert_eq!(sniff_image_type(b""), None);
    }

    proptest::proptest! {
        /// Any bytes: no panic (a short file included), and a type only when the file starts
        /// with that type's signature, so text, SVG, HTML or script is never stored as an image
        /// whatever it is called and whatever header came with it.
        #[test]
        fn a_type_is_given_only_to_bytes_that_start_with_its_signature(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..24),
            text in "[ -~]{0,40}",
        ) {
            for candidate in [bytes.as_slice(), text.as_bytes()] {
                let starts = |sig: &[u8]| candidate.starts_with(sig);
                let expected = match sniff_image_type(candidate) {
                    Some("image/png") => starts(b"\x89PNG\r\n\x1a\n"),
                    Some("image/jpeg") => starts(&[0xFF, 0xD8, 0xFF]),
                    Some("image/gif") => starts(b"GIF87a") || starts(b"GIF89a"),
                    Some("image/webp") => {
                        starts(b"RIFF") && candidate.get(8..12) == Some(&b"WEBP"[..])
                    }
                    Some(_) => false,
                    None => true,
                };
                proptest::prop_assert!(expected, "{candidate:?}");
            }
            // Markup (SVG, HTML, XML: anything starting with `<`) never gets an image type.
            let svg_or_html = format!("<{text}");
            proptest::prop_assert_eq!(sniff_image_type(svg_or_html.as_bytes()), None);
        }
    }
}
