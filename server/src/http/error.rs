//! One error type for every handler, one JSON error shape for every response.
//!
//! Client mistakes become a 4xx that says what was wrong. Database and unexpected errors
//! become a 500 with a generic body and are logged once, here.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use wasmgrid_protocol::api::{ErrorBody, ErrorDetail};

use crate::availability;
use crate::work_unit::WorkUnitError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("missing or invalid credentials")]
    Unauthorized,
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// It existed, and was deleted for good (a batch's files after their retention).
    #[error("{0}")]
    Gone(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    RangeNotSatisfiable(u64),
    /// Well-formed, but refused: a module that cannot be a work unit.
    #[error("{0}")]
    Unprocessable(String),
    /// A rate limit was reached: try again later.
    #[error("{0}")]
    TooManyRequests(String),
    /// The blob store is full: try again later.
    #[error("the server has no room for this upload now; retry later")]
    InsufficientStorage,
    /// The database is known to be unreachable (see [`crate::availability`]).
    #[error("the server's database is unavailable; retry later")]
    DatabaseDown,
    /// The server is too busy for this request now (a wait for a turn ran out): try again
    /// shortly.
    #[error("the server is busy; retry later")]
    Unavailable,
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl ApiError {
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::BadRequest(message.into())
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::NotFound(message.into())
    }

    /// The status this error answers with.
    pub fn status(&self) -> StatusCode {
        self.status_and_code().0
    }

    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            Self::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            Self::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            Self::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            Self::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            Self::Gone(_) => (StatusCode::GONE, "gone"),
            Self::PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            Self::RangeNotSatisfiable(_) => (StatusCode::RANGE_NOT_SATISFIABLE, "range_not_satisfiable"),
            Self::Unprocessable(_) => (StatusCode::UNPROCESSABLE_ENTITY, "unprocessable"),
            Self::TooManyRequests(_) => (StatusCode::TOO_MANY_REQUESTS, "too_many_requests"),
            Self::Unavailable | Self::DatabaseDown => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            Self::InsufficientStorage => (StatusCode::INSUFFICIENT_STORAGE, "insufficient_storage"),
            Self::Database(error) if is_data_exception(error) => (StatusCode::BAD_REQUEST, "bad_request"),
            _ if self.database_unreachable().is_some() => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            Self::Database(_) | Self::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }

    /// The database error behind this one, if it says the database cannot be reached (or
    /// is overloaded): wherever it came from, that is a 503, not a 500.
    fn database_unreachable(&self) -> Option<&sqlx::Error> {
        let database = match self {
            Self::Database(error) => Some(error),
            Self::Internal(error) => error.chain().find_map(|cause| cause.downcast_ref::<sqlx::Error>()),
            _ => None,
        };
        database.filter(|error| availability::is_unreachable(error))
    }
}

/// A dependency that failed a request, left in the response for the layer that advises
/// `Retry-After` from how long it has been failing (see [`crate::availability`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailedDependency {
    /// The database could not be reached.
    Database,
    /// Nothing failed, but the server is busy (no database connection free, no turn to
    /// hash a password): no outage, a short wait.
    Busy,
    /// The blob store's disk is full.
    BlobStore,
}

/// Seconds a rate-limited client is asked to wait: the limits' window.
const RETRY_AFTER_RATE_LIMITED: &str = "900";

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let mut failed = None;
        let message = match &self {
            Self::Database(error) if is_data_exception(error) => {
                tracing::warn!(error = %error, "a value in a request could not be stored; answering 400");
                "the request holds a value the server cannot store".to_owned()
            }
            _ if let Some(error) = self.database_unreachable() => {
                // Logged once per outage by the layer that reads `failed`, not per request.
                failed = Some(match error {
                    sqlx::Error::PoolTimedOut => FailedDependency::Busy,
                    _ => FailedDependency::Database,
                });
                tracing::debug!(%error, "database unavailable; answering 503");
                "the server's database is unavailable; retry later".to_owned()
            }
            Self::Database(error) => {
                tracing::error!(error = %error, "database error");
                "internal server error".to_owned()
            }
            Self::Internal(error) => {
                tracing::error!(error = format!("{error:#}"), "internal error");
                "internal server error".to_owned()
            }
            Self::InsufficientStorage => {
                failed = Some(FailedDependency::BlobStore);
                self.to_string()
            }
            Self::Unavailable => {
                failed = Some(FailedDependency::Busy);
                self.to_string()
            }
            Self::DatabaseDown => {
                failed = Some(FailedDependency::Database);
                self.to_string()
            }
            other => other.to_string(),
        };
        let body = ErrorBody { error: ErrorDetail { code: code.to_owned(), message } };
        let mut response = (status, Json(body)).into_response();
        if let Some(failed) = failed {
            // A default the retry layer replaces with advice that matches the outage.
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            response.extensions_mut().insert(failed);
        }
        match &self {
            Self::TooManyRequests(_) => {
                response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER_RATE_LIMITED));
            }
            Self::RangeNotSatisfiable(size) => {
                if let Ok(value) = HeaderValue::from_str(&format!("bytes */{size}")) {
                    response.headers_mut().insert(header::CONTENT_RANGE, value);
                }
            }
            _ => {}
        }
        response
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

/// A work unit's life refuses what a host cannot do: these are the answers it gets.
impl From<WorkUnitError> for ApiError {
    fn from(error: WorkUnitError) -> Self {
        match error {
            WorkUnitError::UnknownReplica(_) => Self::NotFound(error.to_string()),
            WorkUnitError::NotYours(_) => Self::Forbidden(error.to_string()),
            WorkUnitError::NotUploaded { .. } | WorkUnitError::ReportedTwice(_) => Self::BadRequest(error.to_string()),
            WorkUnitError::Database(error) => Self::Database(error),
            WorkUnitError::Internal(error) => Self::Internal(error),
        }
    }
}

/// PostgreSQL's class 22, "data exception": a value it cannot take (a NUL in text, a number
/// out of range). Every field is checked at the edge; this is the backstop for one that
/// slipped through, which is still the request's fault and no reason for a 500.
fn is_data_exception(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(db) if db.code().is_some_and(|code| code.starts_with("22")))
}
