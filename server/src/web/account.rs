//! Signing up, logging in and out, and what a signed-in volunteer can change: their name,
//! their account key (a new one, shown once), and their team.
//!
//! Passwords are hashed with Argon2id on the blocking pool (it is slow on purpose). A failed
//! log-in says the same whether or not the account exists, takes as long either way, and
//! attempts are limited per name from one address, per name from everywhere, and per
//! address.

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use askama::Template;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect};
use axum::routing::{get, post};
use axum::{Form, Router};
use rand::RngCore;
use serde::Deserialize;

use super::format::credit;
use super::session::{self, SignedIn, check_form, csrf_token};
use super::{Link, PageError, PageResult, server_url};
use crate::accounts::{self, Account};
use crate::http::AppState;
use crate::http::error::ApiError;
use crate::http::extract::ApiPath;
use crate::http::visitor::ClientAddress;
use crate::rate_limit::{address_bucket, record_attempt};
use crate::secrets::{new_secret, secret_hash};
use crate::text;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/signup", get(signup_form).post(signup))
        .route("/login", get(login_form).post(login))
        .route("/logout", post(logout))
        .route("/account", get(account))
        .route("/account/name", post(rename))
        .route("/account/key", post(new_key))
        .route("/account/password", post(change_password))
        .route("/account/team/leave", post(leave_team))
        .route("/teams", post(found_team))
        .route("/teams/{id}/join", post(join_team))
}

const MIN_PASSWORD_CHARS: usize = 10;
const MAX_PASSWORD_BYTES: usize = 256;
const MAX_EMAIL_BYTES: usize = 254;
const MAX_DESCRIPTION_CHARS: usize = 2000;
/// Failed log-ins allowed within [`crate::rate_limit::WINDOW`]: per account (or per text typed, when
/// it names none) from one address, which is what someone who forgot their password meets;
/// per account from all addresses, high enough that locking someone else out takes many
/// addresses, low enough that guessing from many is slow; and per address, whatever the
/// account. An address is an IPv4 address or an IPv6 /64 ([`address_bucket`]).
const ATTEMPTS_PER_LOGIN_AND_ADDRESS: i64 = 5;
const ATTEMPTS_PER_LOGIN: i64 = 50;
const ATTEMPTS_PER_ADDRESS: i64 = 30;
/// Longer than any name (100 characters) or email can be.
const MAX_LOGIN_BYTES: usize = 400;
/// What a failed log-in says, whether or not the account exists.
const LOGIN_FAILED: &str = "wrong name, email or password";

/// A page with the browser's CSRF cookie set if it had none.
fn with_csrf_cookie(template: impl Template, set: Option<axum::http::HeaderValue>, status: StatusCode) -> PageResult {
    let html = template.render().map_err(|error| ApiError::Internal(error.into()))?;
    let mut response = (status, Html(html)).into_response();
    if let Some(set) = set {
        response.headers_mut().append(header::SET_COOKIE, set);
    }
    Ok(response)
}

/// A name people sign in with: a label without `@`, which would make it look like someone's
/// email address at the log-in form.
fn check_name(name: &str) -> Result<String, ApiError> {
    let name = text::label("name", name, 100)?;
    if name.contains('@') {
        return Err(ApiError::bad_request("a name must not contain '@'"));
    }
    Ok(name)
}

#[derive(Template)]
#[template(path = "signup.html")]
struct SignupPage {
    csrf: String,
    name: String,
    email: String,
    error: String,
}

async fn signup_form(headers: HeaderMap) -> PageResult {
    let (csrf, set) = csrf_token(&headers);
    with_csrf_cookie(
        SignupPage { csrf, name: String::new(), email: String::new(), error: String::new() },
        set,
        StatusCode::OK,
    )
}

#[derive(Deserialize)]
struct SignupForm {
    csrf: String,
    name: String,
    #[serde(default)]
    email: String,
    password: String,
}

/// Argon2id with its recommended settings, a salt from the system's random source.
fn hash_password(password: &str) -> anyhow::Result<String> {
    let mut salt = [0u8; 16];
    rand::rng().fill_bytes(&mut salt);
    let salt = SaltString::encode_b64(&salt).map_err(|error| anyhow::anyhow!("{error}"))?;
    Ok(Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map_err(|error| anyhow::anyhow!("{error}"))?
        .to_string())
}

fn password_matches(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|hash| Argon2::default().verify_password(password.as_bytes(), &hash).is_ok())
}

/// How long a request waits for a turn to hash a password before the server says it is
/// busy.
const HASHING_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Runs Argon2 off the async threads, a few at a time: each hash takes about 19 MiB and a
/// core for a while, and a flood of log-ins must not take the server's memory with it.
async fn hashing<T: Send + 'static>(
    state: &AppState,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    let permit = tokio::time::timeout(HASHING_WAIT, state.password_hashing.clone().acquire_owned())
        .await
        .map_err(|_| ApiError::Unavailable)?
        .map_err(|error| ApiError::Internal(error.into()))?;
    let result = tokio::task::spawn_blocking(work).await.map_err(|error| ApiError::Internal(error.into()));
    drop(permit);
    result
}

async fn signup(
    State(state): State<AppState>,
    ClientAddress(address): ClientAddress,
    headers: HeaderMap,
    Form(form): Form<SignupForm>,
) -> PageResult {
    check_form(&state, &headers, &form.csrf)?;
    let (csrf, _) = csrf_token(&headers);
    {
        let mut connection = state.pool.acquire().await?;
        if !accounts::may_create_account(&mut connection, &state.registration, address).await? {
            let page = SignupPage {
                csrf,
                name: form.name,
                email: form.email,
                error: "too many sign-ups from your address: wait a quarter of an hour and try again".into(),
            };
            return with_csrf_cookie(page, None, StatusCode::TOO_MANY_REQUESTS);
        }
    }
    let email = form.email.trim().to_owned();
    let problem = match check_name(&form.name) {
        Err(error) => Some(error.to_string()),
        Ok(_) if form.password.chars().count() < MIN_PASSWORD_CHARS => {
            Some(format!("the password needs at least {MIN_PASSWORD_CHARS} characters"))
        }
        Ok(_) if form.password.len() > MAX_PASSWORD_BYTES => Some("the password is too long".into()),
        Ok(_)
            if !email.is_empty()
                && (email.len() > MAX_EMAIL_BYTES
                    || !email.contains('@')
                    || email.chars().any(|c| c.is_whitespace() || c.is_control())) =>
        {
            Some("that does not look like an email address".into())
        }
        Ok(_) => None,
    };
    let retry = |error: String| {
        with_csrf_cookie(
            SignupPage { csrf: csrf.clone(), name: form.name.clone(), email: email.clone(), error },
            None,
            StatusCode::UNPROCESSABLE_ENTITY,
        )
    };
    if let Some(problem) = problem {
        return retry(problem);
    }
    let name = form.name.trim().to_owned();
    let password = form.password.clone();
    let password_hash = hashing(&state, move || hash_password(&password)).await?.map_err(ApiError::Internal)?;

    let mut transaction = state.pool.begin().await?;
    let created = accounts::create_account(&mut transaction, &name).await?;
    let stored = sqlx::query("update account set email = nullif($2, ''), password_hash = $3 where id = $1")
        .bind(created.account_id)
        .bind(&email)
        .bind(&password_hash)
        .execute(&mut *transaction)
        .await;
    match stored {
        Err(error) if crate::database::is_unique_violation(&error, "account_login_name") => {
            return retry("that name is taken: choose another".into());
        }
        Err(error) if crate::database::is_unique_violation(&error, "account_email") => {
            return retry("that email belongs to an account already: log in instead".into());
        }
        other => other?,
    };
    let cookie = session::start(&mut transaction, created.account_id, &headers).await?;
    transaction.commit().await?;
    tracing::info!(account.id = created.account_id, "account signed up");
    let account = Account { id: created.account_id, name, banned: None };
    let mut response = account_page(&state, &headers, &account, Some(created.account_key), "Welcome!").await?;
    response.headers_mut().append(header::SET_COOKIE, cookie);
    Ok(response)
}

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage {
    csrf: String,
    login: String,
    error: String,
}

async fn login_form(headers: HeaderMap) -> PageResult {
    let (csrf, set) = csrf_token(&headers);
    with_csrf_cookie(LoginPage { csrf, login: String::new(), error: String::new() }, set, StatusCode::OK)
}

#[derive(Deserialize)]
struct LoginForm {
    csrf: String,
    login: String,
    password: String,
}

/// A hash to verify against when no account matches, so that a failed log-in takes as long
/// whether or not the account exists.
fn decoy_hash() -> &'static str {
    static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DECOY.get_or_init(|| hash_password("not anybody's password").expect("hashing a constant works"))
}

async fn login(
    State(state): State<AppState>,
    ClientAddress(address): ClientAddress,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> PageResult {
    check_form(&state, &headers, &form.csrf)?;
    let (csrf, _) = csrf_token(&headers);
    let login = form.login.trim().to_owned();
    if login.len() > MAX_LOGIN_BYTES {
        // Longer than any name or email: no account, and no key worth recording.
        let page = LoginPage { csrf, login: String::new(), error: LOGIN_FAILED.into() };
        return with_csrf_cookie(page, None, StatusCode::UNAUTHORIZED);
    }
    if login.chars().any(char::is_control) {
        // No name or email holds one (and PostgreSQL could not even look for a NUL).
        let error = "the name or email must not contain control characters".into();
        return with_csrf_cookie(
            LoginPage { csrf, login: String::new(), error },
            None,
            StatusCode::UNPROCESSABLE_ENTITY,
        );
    }
    let address = address_bucket(address);
    let (attempt, found) = {
        let mut connection = state.pool.acquire().await?;
        // `lower` on both sides: the database's, not Rust's, decides what matches.
        let found: Option<(i64, String)> = sqlx::query_as(
            "select id, password_hash from account
             where password_hash is not null and (lower(name) = lower($1) or lower(email) = lower($1))
             order by (lower(name) = lower($1)) desc limit 1",
        )
        .bind(&login)
        .fetch_optional(&mut *connection)
        .await?;
        // Limited per account, however it was named (name, email, another spelling the
        // database folds alike); per text typed when no account matches.
        let target = match &found {
            Some((id, _)) => format!("account {id}"),
            None => format!("text {}", login.to_lowercase()),
        };
        let limits = [
            (format!("login {target} from {address}"), ATTEMPTS_PER_LOGIN_AND_ADDRESS),
            (format!("login {target}"), ATTEMPTS_PER_LOGIN),
            (format!("address {address}"), ATTEMPTS_PER_ADDRESS),
        ];
        // Recorded before the password is checked, so that guesses sent in parallel count.
        let Some(attempt) = record_attempt(&mut connection, &limits).await? else {
            let page = LoginPage {
                csrf,
                login: form.login,
                error: "too many failed attempts: wait a quarter of an hour and try again".into(),
            };
            return with_csrf_cookie(page, None, StatusCode::TOO_MANY_REQUESTS);
        };
        (attempt, found)
    };
    // No database connection is held while hashing.
    let password = form.password.clone();
    let hash = found.as_ref().map(|(_, hash)| hash.clone());
    let matches =
        hashing(&state, move || password_matches(&password, hash.as_deref().unwrap_or_else(|| decoy_hash()))).await?;
    let mut connection = state.pool.acquire().await?;
    match found {
        Some((id, _)) if matches => {
            attempt.forget(&mut connection).await?;
            // A fresh session, never one the browser had before.
            let ended = session::end(&mut connection, &headers).await?;
            let cookie = session::start(&mut connection, id, &headers).await?;
            let mut response = Redirect::to("/account").into_response();
            response.headers_mut().append(header::SET_COOKIE, ended);
            response.headers_mut().append(header::SET_COOKIE, cookie);
            Ok(response)
        }
        _ => {
            let page = LoginPage { csrf, login: form.login, error: LOGIN_FAILED.into() };
            with_csrf_cookie(page, None, StatusCode::UNAUTHORIZED)
        }
    }
}

#[derive(Deserialize)]
struct CsrfOnly {
    csrf: String,
}

async fn logout(State(state): State<AppState>, headers: HeaderMap, Form(form): Form<CsrfOnly>) -> PageResult {
    check_form(&state, &headers, &form.csrf)?;
    let mut connection = state.pool.acquire().await?;
    let cookie = session::end(&mut connection, &headers).await?;
    let mut response = Redirect::to("/").into_response();
    response.headers_mut().append(header::SET_COOKIE, cookie);
    Ok(response)
}

#[derive(Template)]
#[template(path = "account.html")]
struct AccountPage {
    csrf: String,
    name: String,
    notice: String,
    account_key: Option<String>,
    server_url: String,
    total_credit: String,
    recent_average_credit: String,
    team: Option<Link>,
    public_page: String,
}

async fn account_page(
    state: &AppState,
    headers: &HeaderMap,
    account: &Account,
    account_key: Option<String>,
    notice: &str,
) -> PageResult {
    let mut connection = state.pool.acquire().await?;
    let user = crate::stats::user_summary(&mut connection, account.id).await?;
    let (csrf, set) = csrf_token(headers);
    let page = AccountPage {
        csrf,
        name: user.name,
        notice: notice.to_owned(),
        account_key,
        server_url: server_url(headers),
        total_credit: credit(user.total_credit),
        recent_average_credit: credit(user.recent_average_credit),
        team: user.team.map(|team| Link { link: format!("/teams/{}", team.id), name: team.name }),
        public_page: format!("/users/{}", account.id),
    };
    let mut response = with_csrf_cookie(page, set, StatusCode::OK)?;
    // The account key must not linger in caches.
    response.headers_mut().insert(header::CACHE_CONTROL, axum::http::HeaderValue::from_static("no-store"));
    Ok(response)
}

/// `/account?done=...`: what a form that redirected here did. The forms that change
/// something redirect (so reloading the page does not post them again), except those that
/// show a new account key, which is shown only in their answer.
#[derive(Deserialize)]
struct AccountQuery {
    done: Option<String>,
}

fn done_notice(done: Option<&str>) -> &'static str {
    match done {
        Some("renamed") => "your name is changed",
        Some("left-team") => "you left your team",
        Some("password") => {
            "your password is changed, and every other browser is logged out (machines attached \
             with your account key go on working)"
        }
        _ => "",
    }
}

async fn account(
    State(state): State<AppState>,
    headers: HeaderMap,
    SignedIn(account): SignedIn,
    Query(query): Query<AccountQuery>,
) -> PageResult {
    account_page(&state, &headers, &account, None, done_notice(query.done.as_deref())).await
}

#[derive(Deserialize)]
struct RenameForm {
    csrf: String,
    name: String,
}

async fn rename(
    State(state): State<AppState>,
    headers: HeaderMap,
    SignedIn(account): SignedIn,
    Form(form): Form<RenameForm>,
) -> PageResult {
    check_form(&state, &headers, &form.csrf)?;
    let name = check_name(&form.name)?;
    let renamed = sqlx::query("update account set name = $2 where id = $1")
        .bind(account.id)
        .bind(&name)
        .execute(&state.pool)
        .await;
    match renamed {
        Err(error) if crate::database::is_unique_violation(&error, "account_login_name") => {
            account_page(&state, &headers, &account, None, "that name is taken: choose another").await
        }
        other => {
            other?;
            Ok(Redirect::to("/account?done=renamed").into_response())
        }
    }
}

/// A new account key replaces the old one (which stops attaching machines; those attached
/// keep their own host tokens), and is shown once.
async fn new_key(
    State(state): State<AppState>,
    headers: HeaderMap,
    SignedIn(account): SignedIn,
    Form(form): Form<CsrfOnly>,
) -> PageResult {
    check_form(&state, &headers, &form.csrf)?;
    let key = new_secret("wga");
    sqlx::query("update account set key_hash = $2 where id = $1")
        .bind(account.id)
        .bind(secret_hash(&key))
        .execute(&state.pool)
        .await?;
    account_page(&state, &headers, &account, Some(key), "a new account key").await
}

/// A page answered with `status` instead of 200.
fn with_status(page: PageResult, status: StatusCode) -> PageResult {
    let mut response = page?;
    *response.status_mut() = status;
    Ok(response)
}

#[derive(Deserialize)]
struct PasswordForm {
    csrf: String,
    current: String,
    new: String,
}

/// A new password, given the current one (a session left open on a shared computer must not
/// be enough to take the account). Other sessions end: changing a password is what someone
/// does who fears another has it. Wrong current passwords count as failed log-ins.
async fn change_password(
    State(state): State<AppState>,
    ClientAddress(address): ClientAddress,
    headers: HeaderMap,
    SignedIn(account): SignedIn,
    Form(form): Form<PasswordForm>,
) -> PageResult {
    check_form(&state, &headers, &form.csrf)?;
    if form.new.chars().count() < MIN_PASSWORD_CHARS || form.new.len() > MAX_PASSWORD_BYTES {
        let problem = format!("the new password needs {MIN_PASSWORD_CHARS} to {MAX_PASSWORD_BYTES} characters");
        return with_status(
            account_page(&state, &headers, &account, None, &problem).await,
            StatusCode::UNPROCESSABLE_ENTITY,
        );
    }
    let limits = [
        (format!("password account {}", account.id), ATTEMPTS_PER_LOGIN_AND_ADDRESS),
        (format!("address {}", address_bucket(address)), ATTEMPTS_PER_ADDRESS),
    ];
    let (attempt, stored_hash) = {
        let mut connection = state.pool.acquire().await?;
        let Some(attempt) = record_attempt(&mut connection, &limits).await? else {
            let notice = "too many wrong passwords: wait a quarter of an hour and try again";
            return with_status(
                account_page(&state, &headers, &account, None, notice).await,
                StatusCode::TOO_MANY_REQUESTS,
            );
        };
        let stored_hash: Option<String> = sqlx::query_scalar("select password_hash from account where id = $1")
            .bind(account.id)
            .fetch_one(&mut *connection)
            .await?;
        (attempt, stored_hash)
    };
    let (current, new) = (form.current.clone(), form.new.clone());
    let new_hash = hashing(&state, move || {
        let matches = password_matches(&current, stored_hash.as_deref().unwrap_or_else(|| decoy_hash()));
        matches.then(|| hash_password(&new)).transpose()
    })
    .await?
    .map_err(ApiError::Internal)?;
    let Some(new_hash) = new_hash else {
        let notice = "the current password is wrong";
        return with_status(account_page(&state, &headers, &account, None, notice).await, StatusCode::UNAUTHORIZED);
    };
    let mut transaction = state.pool.begin().await?;
    sqlx::query("update account set password_hash = $2 where id = $1")
        .bind(account.id)
        .bind(&new_hash)
        .execute(&mut *transaction)
        .await?;
    // Every session ends, this browser's too, which gets a fresh one.
    session::end_all(&mut transaction, account.id).await?;
    let cookie = session::start(&mut transaction, account.id, &headers).await?;
    attempt.forget(&mut transaction).await?;
    transaction.commit().await?;
    tracing::info!(account.id, "password changed");
    let mut response = Redirect::to("/account?done=password").into_response();
    response.headers_mut().append(header::SET_COOKIE, cookie);
    Ok(response)
}

#[derive(Deserialize)]
struct TeamForm {
    csrf: String,
    name: String,
    #[serde(default)]
    description: String,
}

async fn found_team(
    State(state): State<AppState>,
    headers: HeaderMap,
    SignedIn(account): SignedIn,
    Form(form): Form<TeamForm>,
) -> PageResult {
    check_form(&state, &headers, &form.csrf)?;
    let name = text::label("the team name", &form.name, 100)?;
    let description = text::paragraph("the description", &form.description, MAX_DESCRIPTION_CHARS)?;
    let mut transaction = state.pool.begin().await?;
    let created: Result<i64, sqlx::Error> =
        sqlx::query_scalar("insert into team (name, description) values ($1, $2) returning id")
            .bind(&name)
            .bind(&description)
            .fetch_one(&mut *transaction)
            .await;
    let team_id = match created {
        Err(error) if crate::database::is_unique_violation(&error, "team_name_unique") => {
            return account_page(&state, &headers, &account, None, "a team of that name exists: join it from its page")
                .await;
        }
        other => other?,
    };
    sqlx::query("update account set team_id = $2 where id = $1")
        .bind(account.id)
        .bind(team_id)
        .execute(&mut *transaction)
        .await?;
    transaction.commit().await?;
    Ok(Redirect::to(&format!("/teams/{team_id}")).into_response())
}

async fn join_team(
    State(state): State<AppState>,
    headers: HeaderMap,
    SignedIn(account): SignedIn,
    ApiPath(team_id): ApiPath<i64>,
    Form(form): Form<CsrfOnly>,
) -> PageResult {
    check_form(&state, &headers, &form.csrf)?;
    let joined =
        sqlx::query("update account set team_id = $2 where id = $1 and exists (select 1 from team where id = $2)")
            .bind(account.id)
            .bind(team_id)
            .execute(&state.pool)
            .await?;
    if joined.rows_affected() == 0 {
        return Err(PageError::from(ApiError::not_found(format!("no team {team_id}"))));
    }
    Ok(Redirect::to(&format!("/teams/{team_id}")).into_response())
}

async fn leave_team(
    State(state): State<AppState>,
    headers: HeaderMap,
    SignedIn(account): SignedIn,
    Form(form): Form<CsrfOnly>,
) -> PageResult {
    check_form(&state, &headers, &form.csrf)?;
    sqlx::query("update account set team_id = null where id = $1").bind(account.id).execute(&state.pool).await?;
    Ok(Redirect::to("/account?done=left-team").into_response())
}
