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
/// the raw body. Needs nothing of the app's state, so its tests drive it without one.
async fn upload_bytes<S: Send + Sync>(request: Request, state: &S) -> ApiResult<Bytes> {
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
    use crate::extract::properties::is_a_realworld_422;

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

    /// Every signature [`sniff_image_type`] knows but WebP's (which has a size inside it),
    /// with its type.
    const SIGNATURES: &[(&[u8], &str)] = &[
        (b"\x89PNG\r\n\x1a\n", "image/png"),
        (&[0xFF, 0xD8, 0xFF], "image/jpeg"),
        (b"GIF87a", "image/gif"),
        (b"GIF89a", "image/gif"),
    ];

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
                    Some("image/webp") => {
                        starts(b"RIFF") && candidate.get(8..12) == Some(&b"WEBP"[..])
                    }
                    Some(given) => SIGNATURES
                        .iter()
                        .any(|(signature, kind)| *kind == given && starts(signature)),
                    None => true,
                };
                proptest::prop_assert!(expected, "{candidate:?}");
            }
            // Markup (SVG, HTML, XML: anything starting with `<`) never gets an image type.
            let svg_or_html = format!("<{text}");
            proptest::prop_assert_eq!(sniff_image_type(svg_or_html.as_bytes()), None);
        }

        /// And the other way: whatever follows a signature, the file gets that signature's
        /// type (the sniff reads the start only, so a real image is never refused for its
        /// content).
        #[test]
        fn any_bytes_after_a_signature_get_its_type(
            (signature, expected) in proptest::sample::select(SIGNATURES),
            rest in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..24),
            webp_size in proptest::prelude::any::<[u8; 4]>(),
        ) {
            let file = [signature, &rest].concat();
            proptest::prop_assert_eq!(sniff_image_type(&file), Some(expected));
            let webp = [&b"RIFF"[..], &webp_size, b"WEBP", &rest].concat();
            proptest::prop_assert_eq!(sniff_image_type(&webp), Some("image/webp"));
        }
    }

    /// One part of a hand-made form: its field name and its bytes.
    type Part = (String, Vec<u8>);

    /// A `multipart/form-data` body with `boundary` around `parts`.
    fn form(boundary: &str, parts: &[Part]) -> Vec<u8> {
        let mut body = Vec::new();
        for (name, bytes) in parts {
            body.extend_from_slice(
                format!(
                    "--{boundary}\r\ncontent-disposition: form-data; name=\"{name}\"; \
                     filename=\"x.png\"\r\ncontent-type: image/png\r\n\r\n"
                )
                .as_bytes(),
            );
            body.extend_from_slice(bytes);
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
        body
    }

    /// A part: usually named `file`, else any name (quotes and semicolons included); any bytes.
    fn part() -> impl proptest::strategy::Strategy<Value = Part> {
        (
            proptest::prop_oneof![
                3 => proptest::strategy::Just("file".to_owned()),
                1 => "[a-z\"; ]{0,6}",
            ],
            proptest::collection::vec(proptest::prelude::any::<u8>(), 0..40),
        )
    }

    /// `body` sent with `content_type` through [`upload_bytes`], without an app.
    fn upload(content_type: &str, body: Vec<u8>) -> ApiResult<Bytes> {
        let request = Request::post("/api/media")
            .header(header::CONTENT_TYPE, content_type)
            .body(Body::from(body))
            .expect("a request");
        futures::executor::block_on(upload_bytes(request, &()))
    }

    proptest::proptest! {
        /// Any form (any part names and bytes, a boundary the header may not name, a body cut
        /// anywhere) or any bytes at all as a form: the upload is the one part named `file` of
        /// a whole form, byte for byte, or a RealWorld 422 naming `media`; never a panic. A
        /// form with another part, or a second `file`, is refused, not half read.
        #[test]
        fn any_form_gives_its_one_file_part_or_a_realworld_422(
            boundary in "[a-zA-Z0-9'()+_,./:=?-]{1,40}",
            same_boundary in proptest::bool::weighted(0.8),
            quoted in proptest::prelude::any::<bool>(),
            parts in proptest::prop_oneof![
                2 => proptest::collection::vec(part(), 1..=1),
                1 => proptest::collection::vec(part(), 0..=3),
            ],
            cut in proptest::prelude::any::<proptest::sample::Index>(),
            whole in proptest::bool::weighted(0.7),
            noise in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64),
        ) {
            let header_boundary =
                if same_boundary { boundary.clone() } else { format!("{boundary}x") };
            // A boundary with `=`, `/`, `:` and the like must be quoted in the header (RFC 2045);
            // sent bare, the form is refused, which is the client's mistake.
            let token = |c: char| c.is_ascii_alphanumeric() || "'+_.-".contains(c);
            let quoted = quoted || header_boundary.chars().all(token);
            let content_type = if quoted {
                format!("multipart/form-data; boundary=\"{header_boundary}\"")
            } else {
                format!("multipart/form-data; boundary={header_boundary}")
            };
            let full = form(&boundary, &parts);
            let keep = if whole { full.len() } else { cut.index(full.len() + 1) };
            let one_file = same_boundary && quoted && parts.len() == 1 && parts[0].0 == "file";
            match upload(&content_type, full[..keep].to_vec()) {
                Ok(bytes) => {
                    // Only the closing line's final CRLF may be missing from a form taken.
                    proptest::prop_assert!(
                        one_file && keep + 2 >= full.len(),
                        "{parts:?} cut at {keep}"
                    );
                    proptest::prop_assert_eq!(&bytes[..], &parts[0].1[..]);
                }
                Err(refused) => {
                    proptest::prop_assert!(!(one_file && keep == full.len()), "{refused:?}");
                    is_a_realworld_422(refused, &["media"])?;
                }
            }
            if let Err(refused) = upload(&content_type, noise) {
                is_a_realworld_422(refused, &["media"])?;
            }
        }

        /// Any body sent as something other than a form is the upload, byte for byte.
        #[test]
        fn any_body_not_sent_as_a_form_is_the_upload_as_sent(
            content_type in "image/png|application/octet-stream|text/html|multipart/mixed",
            body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64),
        ) {
            let taken = upload(&content_type, body.clone()).map(|b| b.to_vec());
            proptest::prop_assert_eq!(taken.ok(), Some(body));
        }
    }
}
