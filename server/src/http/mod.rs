//! The HTTP surface: shared state, the router that merges every feature's routes, and the
//! layers around them (body limits, timeouts, request ids, metrics, tracing).
//! [`connections`] serves them, over [`tls`] when the server has a certificate of its own.

pub mod connections;
pub mod error;
pub mod extract;
pub mod request_id;
pub mod tls;
pub mod visitor;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use sqlx::PgPool;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;
use wasmgrid_protocol::api::Health;

use crate::availability::{self, Availability};
use crate::blobs::BlobStore;
use crate::config::{RegistrationLimits, SchedulerConfig};
use error::{ApiError, FailedDependency};

/// Everything a handler may need; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub blobs: Arc<dyn BlobStore>,
    /// Downloads answer with a presigned URL of the blob store valid this long, if set.
    pub blob_redirect: Option<Duration>,
    pub scheduler: Arc<SchedulerConfig>,
    pub registration: Arc<RegistrationLimits>,
    /// Checks published modules and runs apps' validator modules.
    pub sandbox: Arc<wasmgrid_sandbox::Sandbox>,
    /// The statistics that count whole tables, counted at most every few seconds.
    pub stats: Arc<crate::stats::StatsCache>,
    /// Turns to run a scheduler request's transaction (see [`crate::work_fetch`]).
    pub scheduler_turns: Arc<tokio::sync::Semaphore>,
    /// Turns to hash a password (see `web::account`).
    pub password_hashing: Arc<tokio::sync::Semaphore>,
    /// Today's statistics exports.
    pub exports: Arc<crate::stats::export::Exports>,
    pub started_at: Instant,
    /// How the site is reached: its public URL and the proxies in front of it.
    pub site: Arc<visitor::SiteConfig>,
    /// Whether the database and the blob store are usable, and since when not.
    pub availability: Arc<Availability>,
    /// What the metrics listener exports.
    pub metrics: Arc<crate::metrics::Metrics>,
}

/// JSON request bodies are small; uploads have their own, per-work-unit limit.
pub const JSON_BODY_LIMIT: usize = 1024 * 1024;
/// A request that takes longer than this is cut off, so a stalled client cannot hold a
/// connection (or a graceful shutdown) forever.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(300);

/// Every route, before the layers: the API's (each in the OpenAPI document, see
/// [`crate::openapi`]) and the web site's pages.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(health))
        .merge(crate::accounts::router())
        .merge(crate::work_fetch::router())
        .merge(crate::blobs::router())
        .merge(crate::publishing::http::router())
        .merge(crate::signing::router())
        .merge(crate::stats::router())
        .merge(crate::openapi::router())
        .merge(crate::web::router())
}

pub fn router(state: AppState) -> Router {
    routes()
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(state.clone(), visitor::resolve))
        .layer(axum::middleware::from_fn(refuse_nul_in_url))
        .layer(axum::middleware::from_fn_with_state(state.clone(), advise_retry))
        .layer(DefaultBodyLimit::max(JSON_BODY_LIMIT))
        .layer(TimeoutLayer::with_status_code(StatusCode::REQUEST_TIMEOUT, REQUEST_TIMEOUT))
        .layer(axum::middleware::from_fn_with_state(state.clone(), crate::metrics::count_requests))
        .layer(TraceLayer::new_for_http().on_failure(log_failure))
        .layer(axum::middleware::from_fn(request_id::with_request_id))
        .with_state(state)
}

/// Path segments and query values reach queries as text, which cannot hold NUL; one in
/// the URL is refused before any handler sees it.
async fn refuse_nul_in_url(request: axum::extract::Request, next: axum::middleware::Next) -> axum::response::Response {
    let uri = request.uri();
    let encoded_nul = |text: &str| text.as_bytes().windows(3).any(|w| w[0] == b'%' && w[1] == b'0' && w[2] == b'0');
    if encoded_nul(uri.path()) || uri.query().is_some_and(encoded_nul) {
        return ApiError::bad_request("the URL must not contain NUL characters (%00)").into_response();
    }
    next.run(request).await
}

/// While the database is down, refuses at once what needs it (all but `/healthz` and the
/// stylesheet), rather than letting each request wait out the pool's timeout; and gives
/// every 503 and 507 a `Retry-After` that matches how long its cause has lasted.
async fn advise_retry(
    State(state): State<AppState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let path = request.uri().path();
    let needs_database = path != "/healthz" && !path.starts_with("/static/");
    let is_upload = request.method() == axum::http::Method::PUT;
    let mut response = if needs_database && state.availability.database.is_down() {
        ApiError::DatabaseDown.into_response()
    } else {
        next.run(request).await
    };
    let advice = match response.extensions().get::<FailedDependency>().copied() {
        Some(FailedDependency::Database) => {
            state.availability.database.failed(&"a request could not reach it");
            state.availability.database.retry_after()
        }
        Some(FailedDependency::BlobStore) => {
            state.metrics.blob_store_error(crate::metrics::BlobOperation::NoRoom);
            state.availability.blob_store.failed(&"no space left for an upload");
            state.availability.blob_store.retry_after()
        }
        Some(FailedDependency::Busy) => {
            state.metrics.database_busy.inc();
            state.availability.note_busy();
            availability::MIN_RETRY_AFTER
        }
        None => {
            if is_upload && response.status().is_success() {
                state.availability.blob_store.recovered();
            }
            return response;
        }
    };
    response.headers_mut().insert(axum::http::header::RETRY_AFTER, advice.as_secs().max(1).into());
    response
}

/// Logs a failed response, except the 503s and 507s of an outage: [`crate::availability`]
/// logs an outage once, where a line per refused request would flood the log.
fn log_failure(failure: tower_http::classify::ServerErrorsFailureClass, latency: Duration, _span: &tracing::Span) {
    use tower_http::classify::ServerErrorsFailureClass;
    if let ServerErrorsFailureClass::StatusCode(StatusCode::SERVICE_UNAVAILABLE | StatusCode::INSUFFICIENT_STORAGE) =
        failure
    {
        return;
    }
    tracing::error!(classification = %failure, latency_ms = latency.as_millis() as u64, "response failed");
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such route")
}

/// Liveness and readiness, at once and without a database query: 200 while the database's
/// probe answers (see [`crate::availability`]) and the blob store has room, 503 otherwise.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "server",
    responses(
        (status = 200, description = "The database's probe answers and the blob store has room.", body = Health),
        (status = 503, description = "The database cannot be reached, or the blob store is full; the body says \
            which.", body = Health, headers(("Retry-After" = u64, description = "Seconds to wait."))),
    ),
)]
async fn health(State(state): State<AppState>) -> axum::response::Response {
    let version = env!("CARGO_PKG_VERSION").to_owned();
    let database_up = !state.availability.database.is_down();
    // The disk's own figures decide where the store can tell, so that the state clears
    // by itself once room returns (no upload need succeed first); otherwise the last
    // upload's failure does.
    let blob_store_ok = match state.blobs.space().ok().flatten() {
        Some(space) if !space.is_full() => {
            state.availability.blob_store.recovered();
            true
        }
        Some(_) => false,
        None => !state.availability.blob_store.is_down(),
    };
    let word = |ok: bool, bad: &str| if ok { "ok".to_owned() } else { bad.to_owned() };
    let health = Health {
        status: word(database_up && blob_store_ok, "unavailable"),
        version,
        database: word(database_up, "unavailable"),
        blob_store: word(blob_store_ok, "full"),
    };
    if database_up && blob_store_ok {
        return (StatusCode::OK, axum::Json(health)).into_response();
    }
    let outage = if database_up { &state.availability.blob_store } else { &state.availability.database };
    let retry_after = outage.retry_after().as_secs().max(1);
    (StatusCode::SERVICE_UNAVAILABLE, [(axum::http::header::RETRY_AFTER, retry_after.to_string())], axum::Json(health))
        .into_response()
}
