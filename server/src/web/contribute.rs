//! `/contribute`: volunteering from a browser tab, without installing anything.
//!
//! The page's scripts (`web/static/contribute/`, compiled into the binary like the
//! stylesheet) make the tab a host of its own, fetch work through the same scheduler API as
//! the native client, run each replica in a Web Worker on the module instrumented by the same
//! pass (`instrument.wasm`), and upload and report the result, so that quorum, trust and
//! credit apply unchanged.
//!
//! This is the only page that may run scripts. Its Content-Security-Policy allows scripts and
//! workers from this site alone, and compiling WebAssembly (`wasm-unsafe-eval`); a worker's
//! own policy lets it reach nothing at all over the network. The page is cross-origin
//! isolated, which lets a worker sleep without spinning (a module's `poll_oneoff`).
//!
//! A tab registers its host with `POST /contribute/hosts`, a same-site request carrying the
//! page's CSRF token: under the signed-in account, or else under the browser's anonymous
//! account (made with its first host, its key kept by the browser for its other tabs).

use std::sync::LazyLock;

use askama::Template;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use rand::RngCore;
use serde::Serialize;
use sha2::{Digest, Sha256};
use wasmgrid_protocol::api::RegisterHostRequest;

use super::session::{self, check_form, csrf_token};
use super::{PageResult, page};
use crate::accounts::{self, Account, HostKind};
use crate::http::AppState;
use crate::http::error::{ApiError, ApiResult};
use crate::http::extract::{ApiJson, ApiPath, bearer, refuse_if_banned};
use crate::http::visitor::ClientAddress;
use crate::rate_limit;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/contribute", get(contribute_page))
        .route("/contribute/hosts", post(register_browser_host))
        .route("/static/contribute/{file}", get(asset))
}

/// The contribute page may run this site's scripts and workers and compile WebAssembly; it
/// may connect only to this site; nothing else is relaxed from the site-wide policy.
const PAGE_POLICY: &str = "default-src 'none'; script-src 'self' 'wasm-unsafe-eval'; worker-src 'self'; \
     connect-src 'self'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; \
     base-uri 'none'";
/// A worker (whose policy is its script's response's) may load this site's scripts and
/// compile WebAssembly, and reach nothing: what a module runs in gets its bytes by message.
const WORKER_POLICY: &str = "default-src 'none'; script-src 'self' 'wasm-unsafe-eval'";

/// The header a tab sends its CSRF token in.
pub const CSRF_HEADER: &str = "x-csrf-token";

#[derive(Template)]
#[template(path = "contribute.html")]
struct ContributePage {
    csrf: String,
    /// The signed-in volunteer, whose account the tab's host joins.
    account: Option<Account>,
}

async fn contribute_page(State(state): State<AppState>, headers: HeaderMap) -> PageResult {
    let mut connection = state.pool.acquire().await?;
    let account = session::signed_in(&mut connection, &headers).await?;
    let (csrf, set_csrf) = csrf_token(&headers);
    let mut response = page(ContributePage { csrf, account })?;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(PAGE_POLICY));
    isolate(headers);
    if let Some(set) = set_csrf {
        headers.append(header::SET_COOKIE, set);
    }
    Ok(response)
}

/// Cross-origin isolation: the page and its workers may then use `SharedArrayBuffer`.
fn isolate(headers: &mut HeaderMap) {
    headers.insert("cross-origin-opener-policy", HeaderValue::from_static("same-origin"));
    headers.insert("cross-origin-embedder-policy", HeaderValue::from_static("require-corp"));
    headers.insert("cross-origin-resource-policy", HeaderValue::from_static("same-origin"));
}

/// The header in which a tab says whose host it registers: the signed-in account's id, as
/// the page was shown, or `anonymous`.
pub const ACCOUNT_HEADER: &str = "x-wasmgrid-account";

/// A tab's new host; with the key of the anonymous account it made, if it made one, which the
/// browser keeps to register its other tabs' hosts under the same account.
#[derive(Debug, Serialize)]
struct BrowserHost {
    host_id: i64,
    account_id: i64,
    host_token: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    account_key: Option<String>,
}

/// Registers the tab's host: under the signed-in account; or, for a tab that is not signed in,
/// under the anonymous account whose key it sends, or a new anonymous account.
async fn register_browser_host(
    State(state): State<AppState>,
    ClientAddress(address): ClientAddress,
    headers: HeaderMap,
    ApiJson(request): ApiJson<RegisterHostRequest>,
) -> ApiResult<(StatusCode, Json<BrowserHost>)> {
    let token = headers.get(CSRF_HEADER).and_then(|value| value.to_str().ok()).unwrap_or_default();
    check_form(&state, &headers, token)?;
    let request = accounts::checked_host(request)?;
    let expected = headers.get(ACCOUNT_HEADER).and_then(|value| value.to_str().ok()).unwrap_or_default();
    let mut connection = state.pool.acquire().await?;
    let signed_in = session::signed_in(&mut connection, &headers).await?;
    // The account the page showed, and no other: a session that ended or began since the
    // page loaded must not send the tab's credit elsewhere than the page says.
    let existing = match (expected, signed_in) {
        ("anonymous", None) => match bearer(&headers) {
            Some(key) => Some(accounts::account_by_key(&mut connection, key).await?.ok_or(ApiError::Unauthorized)?),
            None => None,
        },
        (id, Some(account)) if id == account.id.to_string() => Some(account),
        _ => {
            return Err(ApiError::Conflict(
                "you signed in or out since this page was loaded: reload it to compute for the right account".into(),
            ));
        }
    };
    if let Some(account) = &existing {
        refuse_if_banned("account", account.banned.as_deref())?;
    }
    // Attempts are counted on their own connection, before the transaction, so that requests
    // sent together see each other's.
    if !accounts::may_register_host(&mut connection, &state.registration, address).await? {
        return Err(accounts::too_many_hosts());
    }
    if existing.is_none() && !accounts::may_create_account(&mut connection, &state.registration, address).await? {
        return Err(ApiError::TooManyRequests(format!(
            "too many accounts created from your address; try again in {}",
            rate_limit::WINDOW
        )));
    }
    drop(connection);
    let mut transaction = state.pool.begin().await?;
    let (account, account_key) = match existing {
        Some(account) => (account, None),
        None => {
            let name = anonymous_name();
            let created = accounts::create_account(&mut transaction, &name).await?;
            (Account { id: created.account_id, name, banned: None }, Some(created.account_key))
        }
    };
    let registered = accounts::insert_host(&mut transaction, &state, &account, &request, HostKind::Browser).await?;
    transaction.commit().await?;
    let host = BrowserHost {
        host_id: registered.host_id,
        account_id: registered.account_id,
        host_token: registered.host_token,
        account_key,
    };
    Ok((StatusCode::CREATED, Json(host)))
}

/// A name for a volunteer who did not sign up: told apart from others on the leaderboards.
fn anonymous_name() -> String {
    let mut tag = [0u8; 3];
    rand::rng().fill_bytes(&mut tag);
    format!("Anonymous browser volunteer {}", hex::encode(tag))
}

/// A file of the page's scripts.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    bytes: &'static [u8],
    /// A strong validator: the file's SHA-256, so a changed file is fetched again.
    etag: LazyLock<String>,
}

macro_rules! asset {
    ($name:literal, $content_type:literal) => {
        Asset {
            name: $name,
            content_type: $content_type,
            bytes: include_bytes!(concat!("../../../web/static/contribute/", $name)),
            etag: LazyLock::new(|| {
                format!(
                    "\"{}\"",
                    hex::encode(Sha256::digest(include_bytes!(concat!("../../../web/static/contribute/", $name))))
                )
            }),
        }
    };
}

static ASSETS: [Asset; 8] = [
    asset!("page.js", "text/javascript; charset=utf-8"),
    asset!("task-worker.js", "text/javascript; charset=utf-8"),
    asset!("runtime.js", "text/javascript; charset=utf-8"),
    asset!("wasi.js", "text/javascript; charset=utf-8"),
    asset!("tar.js", "text/javascript; charset=utf-8"),
    asset!("sha256.js", "text/javascript; charset=utf-8"),
    asset!("instrument.js", "text/javascript; charset=utf-8"),
    asset!("instrument.wasm", "application/wasm"),
];

async fn asset(ApiPath(file): ApiPath<String>, headers: HeaderMap) -> ApiResult<Response> {
    let asset =
        ASSETS.iter().find(|asset| asset.name == file).ok_or_else(|| ApiError::not_found(format!("no file {file}")))?;
    let etag = asset.etag.as_str();
    let unchanged = headers.get(header::IF_NONE_MATCH).and_then(|value| value.to_str().ok()) == Some(etag);
    let mut response = if unchanged { StatusCode::NOT_MODIFIED.into_response() } else { asset.bytes.into_response() };
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(asset.content_type));
    // Revalidated on every load (cheaply, by ETag), so a new server's scripts are used at once.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(header::ETAG, HeaderValue::from_str(etag).map_err(|error| ApiError::Internal(error.into()))?);
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(WORKER_POLICY));
    isolate(headers);
    Ok(response)
}
