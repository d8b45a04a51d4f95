//! Who is looking at a page, and proof that a form came from this site.
//!
//! - Sessions: a signed-in browser holds a random secret in the `wasmgrid_session` cookie
//!   (`HttpOnly`, `SameSite=Lax`, `Secure` when the site is reached over HTTPS); the
//!   database keeps its SHA-256 and an expiry.
//! - Cross-site request forgery: every form carries the value of the `wasmgrid_csrf`
//!   cookie (double submit) and every form post must match it; a cross-site page can
//!   neither read the cookie nor set it. Posts that name another origin are refused too.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Redirect, Response};
use sqlx::PgConnection;

use crate::accounts::Account;
use crate::http::AppState;
use crate::http::error::ApiError;
use crate::secrets::{new_secret, secret_hash};

pub const SESSION_COOKIE: &str = "wasmgrid_session";
pub const CSRF_COOKIE: &str = "wasmgrid_csrf";
/// How long a sign-in lasts.
pub const SESSION_DAYS: i64 = 30;

/// The value of cookie `name` in a request.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find_map(|(key, value)| (key == name).then_some(value))
}

/// Whether the site was reached over HTTPS, in which case cookies are `Secure`: its public
/// URL is `https`, or a trusted proxy says so (`http::visitor` removes the header from
/// anyone else).
pub fn is_https(headers: &HeaderMap) -> bool {
    headers.get("x-forwarded-proto").and_then(|value| value.to_str().ok()) == Some("https")
}

fn set_cookie(name: &str, value: &str, max_age_seconds: i64, same_site: &str, https: bool) -> HeaderValue {
    let secure = if https { "; Secure" } else { "" };
    let cookie = format!("{name}={value}; Path=/; Max-Age={max_age_seconds}; HttpOnly; SameSite={same_site}{secure}");
    HeaderValue::from_str(&cookie).expect("cookie values are hex")
}

/// Whether `token` looks like one this site made (so a cookie set by anything else is
/// replaced rather than echoed into pages).
fn is_csrf_token(token: &str) -> bool {
    token.strip_prefix("csrf_").is_some_and(|hex| hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The CSRF token of this browser, and the `Set-Cookie` that gives it one if it has none.
pub fn csrf_token(headers: &HeaderMap) -> (String, Option<HeaderValue>) {
    match cookie(headers, CSRF_COOKIE).filter(|token| is_csrf_token(token)) {
        Some(token) => (token.to_owned(), None),
        None => {
            let token = new_secret("csrf");
            let set = set_cookie(CSRF_COOKIE, &token, 365 * 86_400, "Strict", is_https(headers));
            (token, Some(set))
        }
    }
}

/// Checks a form post: its token matches the browser's cookie, and it does not come from
/// another origin.
pub fn check_form(state: &AppState, headers: &HeaderMap, submitted_token: &str) -> Result<(), ApiError> {
    let cookie_token = cookie(headers, CSRF_COOKIE).unwrap_or_default();
    let tokens_match = !cookie_token.is_empty()
        && cookie_token.len() == submitted_token.len()
        && cookie_token.bytes().zip(submitted_token.bytes()).fold(0u8, |diff, (a, b)| diff | (a ^ b)) == 0;
    if !tokens_match {
        return Err(ApiError::Forbidden(
            "this form has expired or did not come from this site: reload the page and try again".into(),
        ));
    }
    // Browsers send `Origin` with every form post; a request without one is not from a
    // browser that another site could have steered.
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or_default();
        let host = headers.get(header::HOST).and_then(|host| host.to_str().ok());
        let same = match host {
            // With a public URL, `http::visitor` made `Host` and `X-Forwarded-Proto` say
            // exactly where the site is, scheme included.
            Some(_) if state.site.public_url.is_some() => origin == super::server_url(headers),
            // Without one, the scheme is what the proxy in front says, which it may not,
            // if it is not configured as trusted: only the host must match.
            Some(host) => origin.strip_prefix("https://").or_else(|| origin.strip_prefix("http://")) == Some(host),
            None => false,
        };
        if !same {
            return Err(ApiError::Forbidden("a form from another site was refused".into()));
        }
    }
    Ok(())
}

/// Starts a session for `account_id`; returns the `Set-Cookie` that carries it.
pub async fn start(connection: &mut PgConnection, account_id: i64, headers: &HeaderMap) -> sqlx::Result<HeaderValue> {
    let secret = new_secret("wgs");
    sqlx::query(
        "insert into web_session (secret_hash, account_id, expires_at)
         values ($1, $2, now() + make_interval(days => $3))",
    )
    .bind(secret_hash(&secret))
    .bind(account_id)
    .bind(SESSION_DAYS as i32)
    .execute(&mut *connection)
    .await?;
    // Expired sessions of anyone go as new ones come.
    sqlx::query("delete from web_session where expires_at < now()").execute(connection).await?;
    Ok(set_cookie(SESSION_COOKIE, &secret, SESSION_DAYS * 86_400, "Lax", is_https(headers)))
}

/// Ends the browser's session; returns the `Set-Cookie` that clears it.
pub async fn end(connection: &mut PgConnection, headers: &HeaderMap) -> sqlx::Result<HeaderValue> {
    if let Some(secret) = cookie(headers, SESSION_COOKIE) {
        sqlx::query("delete from web_session where secret_hash = $1")
            .bind(secret_hash(secret))
            .execute(connection)
            .await?;
    }
    Ok(set_cookie(SESSION_COOKIE, "", 0, "Lax", is_https(headers)))
}

/// Ends every session of `account_id`, in every browser.
pub async fn end_all(connection: &mut PgConnection, account_id: i64) -> sqlx::Result<()> {
    sqlx::query("delete from web_session where account_id = $1").bind(account_id).execute(connection).await?;
    Ok(())
}

/// The signed-in account of a request, if any.
pub async fn signed_in(connection: &mut PgConnection, headers: &HeaderMap) -> sqlx::Result<Option<Account>> {
    let Some(secret) = cookie(headers, SESSION_COOKIE) else { return Ok(None) };
    sqlx::query_as(
        "select a.id, a.name, case when a.banned_at is not null then coalesce(a.ban_reason, '') end as banned
         from web_session s join account a on a.id = s.account_id
         where s.secret_hash = $1 and s.expires_at > now()",
    )
    .bind(secret_hash(secret))
    .fetch_optional(connection)
    .await
}

/// A signed-in account; a request without one is sent to the sign-in page.
pub struct SignedIn(pub Account);

impl FromRequestParts<AppState> for SignedIn {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let account = async {
            let mut connection = state.pool.acquire().await?;
            signed_in(&mut connection, &parts.headers).await
        }
        .await
        .map_err(|error| ApiError::from(error).into_response())?;
        account.map(Self).ok_or_else(|| Redirect::to("/login").into_response())
    }
}
