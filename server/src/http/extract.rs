//! Extractors that turn a request into trusted values, or into an [`ApiError`].
//!
//! Authentication is an extractor, so a handler that needs a host cannot forget to check
//! its token.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRef, FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use super::AppState;
use super::error::ApiError;
use crate::accounts::{self, Account, Host};
use crate::publishers::{self, Publisher};

/// `Json<T>` whose rejections use the API's error shape.
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !has_json_content_type(request.headers()) {
            return Err(ApiError::BadRequest("expected a JSON body (Content-Type: application/json)".into()));
        }
        let body = bytes::Bytes::from_request(request, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge("the request body is too large".into())
            } else {
                ApiError::BadRequest(format!("could not read the body: {}", rejection.body_text()))
            }
        })?;
        match axum::Json::<T>::from_bytes(&body) {
            Ok(axum::Json(value)) => Ok(Self(value)),
            Err(rejection @ JsonRejection::JsonDataError(_)) => {
                integral_floats_read_as_integers(&body).ok_or_else(|| json_rejection(rejection)).map(Self)
            }
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

fn has_json_content_type(headers: &axum::http::HeaderMap) -> bool {
    let Some(value) = headers.get(axum::http::header::CONTENT_TYPE).and_then(|value| value.to_str().ok()) else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// JSON has one kind of number: `3.0` is the number `3` (and JSON Schema's `integer` takes
/// it), but serde will not read a float into an integer field. A body that did not fit its
/// type is read again with every float that is a whole number written as an integer.
fn integral_floats_read_as_integers<T: DeserializeOwned>(body: &[u8]) -> Option<T> {
    fn rewrite(value: &mut serde_json::Value) -> bool {
        match value {
            serde_json::Value::Number(number) if number.is_f64() => {
                let float = number.as_f64().unwrap_or(f64::NAN);
                // Past 2^53 a float no longer holds every integer, and serde_json reads an
                // integer too large for 64 bits as one: such a number is not rewritten.
                const EXACT: f64 = (1u64 << 53) as f64;
                let integer =
                    (float.fract() == 0.0 && float.abs() <= EXACT).then(|| serde_json::Number::from(float as i64));
                integer.map(|integer| *number = integer).is_some()
            }
            serde_json::Value::Array(items) => items.iter_mut().fold(false, |changed, item| rewrite(item) | changed),
            serde_json::Value::Object(fields) => {
                fields.values_mut().fold(false, |changed, field| rewrite(field) | changed)
            }
            _ => false,
        }
    }
    let mut value: serde_json::Value = serde_json::from_slice(body).ok()?;
    if !rewrite(&mut value) {
        return None;
    }
    serde_json::from_value(value).ok()
}

fn json_rejection(rejection: JsonRejection) -> ApiError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        return ApiError::PayloadTooLarge("the request body is too large".into());
    }
    ApiError::BadRequest(format!("invalid JSON body: {}", rejection.body_text()))
}

/// `Path<T>` whose rejections use the API's error shape.
pub struct ApiPath<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiPath<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(value)) => Ok(Self(value)),
            Err(rejection) => Err(path_rejection(rejection)),
        }
    }
}

fn path_rejection(rejection: PathRejection) -> ApiError {
    ApiError::BadRequest(format!("invalid path: {}", rejection.body_text()))
}

/// `Query<T>` whose rejections use the API's error shape.
pub struct ApiQuery<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(value)) => Ok(Self(value)),
            Err(rejection) => Err(query_rejection(rejection)),
        }
    }
}

fn query_rejection(rejection: QueryRejection) -> ApiError {
    ApiError::BadRequest(format!("invalid query string: {}", rejection.body_text()))
}

/// The bearer secret of a request, if it has one.
pub fn bearer(headers: &axum::http::HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let token = value.strip_prefix("Bearer ")?.trim();
    (!token.is_empty()).then_some(token)
}

/// A 403 for a host or account the operator banned (`wasmgrid-server host ban`), saying why.
pub fn refuse_if_banned(what: &str, reason: Option<&str>) -> Result<(), ApiError> {
    match reason {
        None => Ok(()),
        Some("") => Err(ApiError::Forbidden(format!("this {what} is banned from the project"))),
        Some(reason) => Err(ApiError::Forbidden(format!("this {what} is banned from the project: {reason}"))),
    }
}

/// A volunteer machine, authenticated by its host token.
pub struct VolunteerHost(pub Host);

impl<S> FromRequestParts<S> for VolunteerHost
where
    AppState: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let state = AppState::from_ref(state);
        let token = bearer(&parts.headers).ok_or(ApiError::Unauthorized)?;
        let mut connection = state.pool.acquire().await?;
        let host = accounts::host_by_token(&mut connection, token).await?.ok_or(ApiError::Unauthorized)?;
        refuse_if_banned(if host.account_banned { "host's account" } else { "host" }, host.banned.as_deref())?;
        Ok(Self(host))
    }
}

/// A volunteer account, authenticated by its account key.
pub struct VolunteerAccount(pub Account);

impl<S> FromRequestParts<S> for VolunteerAccount
where
    AppState: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let state = AppState::from_ref(state);
        let key = bearer(&parts.headers).ok_or(ApiError::Unauthorized)?;
        let mut connection = state.pool.acquire().await?;
        let account = accounts::account_by_key(&mut connection, key).await?.ok_or(ApiError::Unauthorized)?;
        refuse_if_banned("account", account.banned.as_deref())?;
        Ok(Self(account))
    }
}

/// A publisher, authenticated by a publisher token. Volunteer keys and host tokens are not
/// publisher tokens, so they get a 401 here.
pub struct PublisherAuth(pub Publisher);

impl<S> FromRequestParts<S> for PublisherAuth
where
    AppState: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let state = AppState::from_ref(state);
        let token = bearer(&parts.headers).ok_or(ApiError::Unauthorized)?;
        let mut connection = state.pool.acquire().await?;
        match publishers::publisher_by_token(&mut connection, token).await? {
            Some(publisher) => Ok(Self(publisher)),
            // Secrets say what they are, so a volunteer who pastes the wrong one is told.
            None if token.starts_with("wga_") || token.starts_with("wgh_") => Err(ApiError::Forbidden(
                "a volunteer's account key or host token cannot publish; the project's operator gives publisher \
                 tokens (wasmgrid-server token create --scope publish)"
                    .into(),
            )),
            None => Err(ApiError::Unauthorized),
        }
    }
}
