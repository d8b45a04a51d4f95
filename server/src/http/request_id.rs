//! A request id on every request: taken from the `X-Request-Id` a proxy or client sent when
//! it is a sensible token, made up otherwise, put on every log line written while the request
//! is handled (as a span), and sent back in the response, so that a volunteer's or a proxy's
//! report of a failure can be found in the server's log.

use axum::http::{HeaderName, HeaderValue};
use axum::response::Response;
use tracing::Instrument;

pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Longest request id taken from a request.
const MAX_ID_LEN: usize = 64;

/// The id of the request being handled, for handlers that want it.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

pub async fn with_request_id(mut request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let id = request.headers().get(&X_REQUEST_ID).and_then(acceptable).unwrap_or_else(new_id);
    request.extensions_mut().insert(RequestId(id.clone()));
    let span = tracing::info_span!("request", id = %id, method = %request.method(), path = %request.uri().path());
    let mut response = next.run(request).instrument(span).await;
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(X_REQUEST_ID, value);
    }
    response
}

/// An id from outside, if it is short and made of letters, digits, `-`, `_` and `.` only:
/// anything else could garble the log or grow it.
fn acceptable(value: &HeaderValue) -> Option<String> {
    let text = value.to_str().ok()?;
    let fine = !text.is_empty()
        && text.len() <= MAX_ID_LEN
        && text.bytes().all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.'));
    fine.then(|| text.to_owned())
}

/// 16 random hex digits: unique enough to find one request in a day's log.
fn new_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_from_outside_are_kept_only_when_they_are_plain_tokens() {
        let header = |text: &str| HeaderValue::from_str(text).unwrap();
        assert_eq!(acceptable(&header("abc-123_X.y")).as_deref(), Some("abc-123_X.y"));
        assert_eq!(acceptable(&header("")), None);
        assert_eq!(acceptable(&header("has space")), None);
        assert_eq!(acceptable(&header("quote\"d")), None);
        assert_eq!(acceptable(&header(&"a".repeat(65))), None);
        assert_eq!(new_id().len(), 16);
    }
}
