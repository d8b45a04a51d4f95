//! The HTTP surface: shared state, the router that merges every feature's routes, and the
//! layers around them (body limits, timeouts, tracing).

pub mod error;
pub mod extract;
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

use crate::blobs::BlobStore;
use crate::config::{RegistrationLimits, SchedulerConfig};
use error::ApiError;

/// Everything a handler may need; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub blobs: Arc<dyn BlobStore>,
    pub scheduler: Arc<SchedulerConfig>,
    pub registration: Arc<RegistrationLimits>,
    /// Checks published modules and runs apps' validator modules.
    pub sandbox: Arc<wasmgrid_sandbox::Sandbox>,
    /// The statistics that count whole tables, counted at most every few seconds.
    pub stats: Arc<crate::stats::StatsCache>,
    /// Turns to hash a password (see `web::account`).
    pub password_hashing: Arc<tokio::sync::Semaphore>,
    /// Today's statistics exports.
    pub exports: Arc<crate::stats::export::Exports>,
    pub started_at: Instant,
    /// How the site is reached: its public URL and the proxies in front of it.
    pub site: Arc<visitor::SiteConfig>,
}

/// JSON request bodies are small; uploads have their own, per-work-unit limit.
pub const JSON_BODY_LIMIT: usize = 1024 * 1024;
/// A request that takes longer than this is cut off, so a stalled client cannot hold a
/// connection (or a graceful shutdown) forever.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(300);

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(health))
        .merge(crate::accounts::router())
        .merge(crate::work_fetch::router())
        .merge(crate::blobs::router())
        .merge(crate::publishing::http::router())
        .merge(crate::stats::router())
        .merge(crate::web::router())
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(state.clone(), visitor::resolve))
        .layer(axum::middleware::from_fn(refuse_nul_in_url))
        .layer(DefaultBodyLimit::max(JSON_BODY_LIMIT))
        .layer(TimeoutLayer::with_status_code(StatusCode::REQUEST_TIMEOUT, REQUEST_TIMEOUT))
        .layer(TraceLayer::new_for_http())
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

async fn not_found() -> ApiError {
    ApiError::not_found("no such route")
}

/// Liveness and readiness: 200 when the database answers, 503 otherwise.
async fn health(State(state): State<AppState>) -> impl IntoResponse {
    let version = env!("CARGO_PKG_VERSION").to_owned();
    match sqlx::query("select 1").execute(&state.pool).await {
        Ok(_) => (StatusCode::OK, axum::Json(Health { status: "ok".into(), version })),
        Err(error) => {
            tracing::warn!(%error, "health check: database unreachable");
            (StatusCode::SERVICE_UNAVAILABLE, axum::Json(Health { status: "unavailable".into(), version }))
        }
    }
}
