//! `GET /api/v1/blobs/{sha256}`: a blob never changes, so its hash is a strong ETag and it
//! may be cached forever; ranges let clients resume large downloads.
//!
//! Published blobs are served to anyone with the hash; an output only once a replica
//! reported it. With `--blob-redirect`, the server checks that much and sends the client to
//! a short-lived presigned URL of the object store, so the bytes bypass the server. Whatever the bytes, a browser is told not to guess a type for them and to
//! open them, if at all, as a sandboxed document of no origin, so that a blob can never run
//! as a page of this site.

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tokio_util::io::ReaderStream;
use wasmgrid_protocol::Sha256Hash;

use crate::http::AppState;
use crate::http::error::{ApiError, ApiResult};
use crate::http::extract::ApiPath;

const IMMUTABLE: &str = "public, max-age=31536000, immutable";

/// Downloads a module, an input or a reported output by its hash.
#[utoipa::path(
    get,
    path = "/api/v1/blobs/{sha256}",
    tag = "blobs",
    params(
        ("sha256" = wasmgrid_protocol::Sha256Hash, Path, description = "The SHA-256 of the blob."),
        ("Range" = Option<String>, Header, description = "One `bytes=` range; anything else is served whole."),
        ("If-Range" = Option<String>, Header, description = "The range applies only if this is the blob's ETag."),
        ("If-None-Match" = Option<String>, Header, description = "ETags the client has: 304 if one is the blob's."),
    ),
    responses(
        (status = 200, description = "The whole blob.", content_type = "application/octet-stream",
            body = crate::openapi::Binary,
            headers(
                ("ETag" = String, description = "The blob's hash in quotes: a strong validator."),
                ("Cache-Control" = String, description = "`public, max-age=31536000, immutable`: a blob never changes."),
                ("Accept-Ranges" = String, description = "`bytes`."),
            )),
        (status = 206, description = "The range asked for.", content_type = "application/octet-stream",
            body = crate::openapi::Binary,
            headers(
                ("ETag" = String, description = "The blob's hash in quotes: a strong validator."),
                ("Cache-Control" = String, description = "`public, max-age=31536000, immutable`: a blob never changes."),
                ("Content-Range" = String, description = "`bytes first-last/size`."),
            )),
        (status = 304, description = "The client's copy (If-None-Match) is the blob.",
            headers(("ETag" = String, description = "The blob's hash in quotes: a strong validator."),
                ("Cache-Control" = String, description = "`public, max-age=31536000, immutable`: a blob never changes."),)),
        (status = 307, description = "With `--blob-redirect`: a short-lived presigned URL of the object store \
            that serves the bytes, ranges and conditions.",
            headers(("Location" = String, description = "The presigned URL."))),
        (status = 400, description = "The hash is not 64 lowercase hexadecimal digits.", body = wasmgrid_protocol::api::ErrorBody),
        (status = 404, description = "No such blob, or an output no replica has reported.", body = wasmgrid_protocol::api::ErrorBody),
        (status = 410, description = "The blob was deleted under the project's retention.", body = wasmgrid_protocol::api::ErrorBody),
        (status = 416, description = "The range starts past the end.", body = wasmgrid_protocol::api::ErrorBody,
            headers(("Content-Range" = String, description = "`bytes */size`."))),
    ),
)]
pub(super) async fn get_blob(
    State(state): State<AppState>,
    ApiPath(hash): ApiPath<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let hash: Sha256Hash = hash.parse().map_err(|error| ApiError::bad_request(format!("{error}")))?;
    let etag = format!("\"{hash}\"");
    let not_found = || ApiError::not_found(format!("no blob {hash}"));

    let mut connection = state.pool.acquire().await?;
    if !super::is_public(&mut connection, hash).await? {
        let deleted: Option<bool> = sqlx::query_scalar("select deleted_at is not null from blob where sha256 = $1")
            .bind(hash.to_hex())
            .fetch_optional(&mut *connection)
            .await?;
        if deleted == Some(true) {
            return Err(ApiError::Gone(format!(
                "blob {hash} was deleted: the project keeps a batch's files only for a set time after it ends"
            )));
        }
        return Err(not_found());
    }
    drop(connection);
    // A client that has the blob already is answered here, below; anyone else is sent on.
    if let Some(valid_for) = state.blob_redirect.filter(|_| !if_none_match_hits(&headers, &etag))
        && let Some(url) = state.blobs.download_url(hash, valid_for).await.map_err(internal)?
    {
        return redirect_to(&url);
    }
    let total = state.blobs.size(hash).await.map_err(internal)?.ok_or_else(not_found)?;
    if if_none_match_hits(&headers, &etag) {
        return Ok(with_cache_headers(StatusCode::NOT_MODIFIED.into_response(), &etag));
    }
    let range = match headers.get(header::RANGE) {
        Some(range) if if_range_allows(&headers, &etag) => parse_range(range, total)?,
        _ => None,
    };
    let (start, len, status) = match range {
        Some((start, end)) => (start, end - start + 1, StatusCode::PARTIAL_CONTENT),
        None => (0, total, StatusCode::OK),
    };
    let reader = state.blobs.read(hash, start, Some(len)).await.map_err(internal)?.ok_or_else(not_found)?;
    let mut response = Response::new(Body::from_stream(ReaderStream::new(reader.body)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if status == StatusCode::PARTIAL_CONTENT {
        let content_range = format!("bytes {start}-{}/{total}", start + len - 1);
        headers.insert(
            header::CONTENT_RANGE,
            HeaderValue::from_str(&content_range).map_err(|e| ApiError::Internal(e.into()))?,
        );
    }
    Ok(with_cache_headers(response, &etag))
}

/// Sends the client to a presigned URL of the object store for the bytes. The redirect is
/// temporary and must not be cached: the URL expires, and ranges and conditions are asked of
/// the store again (a 307 keeps the method and the headers).
fn redirect_to(url: &url::Url) -> ApiResult<Response> {
    let location = HeaderValue::from_str(url.as_str()).map_err(|error| ApiError::Internal(error.into()))?;
    let mut response = StatusCode::TEMPORARY_REDIRECT.into_response();
    let headers = response.headers_mut();
    headers.insert(header::LOCATION, location);
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

fn internal(error: std::io::Error) -> ApiError {
    ApiError::Internal(error.into())
}

fn with_cache_headers(mut response: Response, etag: &str) -> Response {
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(etag) {
        headers.insert(header::ETAG, value);
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(IMMUTABLE));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static("sandbox; default-src 'none'"));
    response
}

fn if_none_match_hits(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get(header::IF_NONE_MATCH)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.split(',').map(str::trim).any(|tag| tag == etag || tag == "*"))
}

/// `If-Range` with another validator means "the copy I have is stale: send it all".
fn if_range_allows(headers: &HeaderMap, etag: &str) -> bool {
    match headers.get(header::IF_RANGE) {
        None => true,
        Some(value) => value.to_str().is_ok_and(|value| value.trim() == etag),
    }
}

/// Parses a single `bytes=` range into inclusive offsets. Several ranges, or a header that
/// is not a byte range, are ignored (served whole), as RFC 9110 allows; a range that starts
/// past the end is a 416.
fn parse_range(value: &HeaderValue, total: u64) -> ApiResult<Option<(u64, u64)>> {
    let Some(spec) = value.to_str().ok().and_then(|value| value.trim().strip_prefix("bytes=")) else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None);
    }
    let Some((first, last)) = spec.split_once('-') else { return Ok(None) };
    let (first, last) = (first.trim(), last.trim());
    let range = if first.is_empty() {
        // A suffix: the last N bytes.
        let Ok(suffix) = last.parse::<u64>() else { return Ok(None) };
        if suffix == 0 || total == 0 {
            return Err(ApiError::RangeNotSatisfiable(total));
        }
        (total.saturating_sub(suffix), total - 1)
    } else {
        let Ok(start) = first.parse::<u64>() else { return Ok(None) };
        let end = if last.is_empty() {
            total.saturating_sub(1)
        } else {
            let Ok(end) = last.parse::<u64>() else { return Ok(None) };
            if end < start {
                return Ok(None);
            }
            end.min(total.saturating_sub(1))
        };
        if start >= total {
            return Err(ApiError::RangeNotSatisfiable(total));
        }
        (start, end)
    };
    Ok(Some(range))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(spec: &str, total: u64) -> ApiResult<Option<(u64, u64)>> {
        parse_range(&HeaderValue::from_str(spec).unwrap(), total)
    }

    #[test]
    fn byte_ranges_parse_to_inclusive_offsets() {
        assert_eq!(range("bytes=0-9", 100).unwrap(), Some((0, 9)));
        assert_eq!(range("bytes=90-", 100).unwrap(), Some((90, 99)));
        assert_eq!(range("bytes=-10", 100).unwrap(), Some((90, 99)));
        assert_eq!(range("bytes=50-500", 100).unwrap(), Some((50, 99)));
        assert_eq!(range("bytes=-500", 100).unwrap(), Some((0, 99)));
    }

    #[test]
    fn ranges_past_the_end_are_unsatisfiable() {
        assert!(matches!(range("bytes=100-", 100), Err(ApiError::RangeNotSatisfiable(100))));
        assert!(matches!(range("bytes=-0", 100), Err(ApiError::RangeNotSatisfiable(100))));
    }

    #[test]
    fn unsupported_or_malformed_ranges_are_ignored() {
        assert_eq!(range("bytes=0-1,5-6", 100).unwrap(), None);
        assert_eq!(range("items=0-1", 100).unwrap(), None);
        assert_eq!(range("bytes=9-2", 100).unwrap(), None);
        assert_eq!(range("bytes=x-", 100).unwrap(), None);
    }
}
