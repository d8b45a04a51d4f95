//! Volunteer accounts and their hosts: creation, registration and authentication.
//!
//! Account keys and host tokens are [`secrets`](crate::secrets): shown once, stored hashed.
//! Both are free to make, so each address may make only so many within a window (see
//! [`RegistrationLimits`]), and a new host starts with a small quota.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use sqlx::PgConnection;
use wasmgrid_protocol::API_PREFIX;
use wasmgrid_protocol::api::{CreateAccountRequest, CreateAccountResponse, RegisterHostRequest, RegisterHostResponse};

use crate::config::RegistrationLimits;
use crate::http::AppState;
use crate::http::error::{ApiError, ApiResult};
use crate::http::extract::{ApiJson, VolunteerAccount};
use crate::http::visitor::ClientAddress;
use crate::rate_limit::{self, address_bucket};
use crate::secrets::{new_secret, secret_hash};
use crate::text;

/// Longest name accepted for an account or a host.
const MAX_NAME_CHARS: usize = 100;
/// Longest OS, architecture or client version string accepted.
const MAX_LABEL_CHARS: usize = 100;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Account {
    pub id: i64,
    pub name: String,
    /// Why the operator banned it (`wasmgrid-server account ban`), if it is banned.
    #[sqlx(default)]
    pub banned: Option<String>,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Host {
    pub id: i64,
    pub account_id: i64,
    pub cores: i32,
    pub memory_bytes: i64,
    pub kind: HostKind,
    /// Why the operator banned it or its account, if either is banned.
    #[sqlx(default)]
    pub banned: Option<String>,
    /// Whether the ban is its account's.
    #[sqlx(default)]
    pub account_banned: bool,
}

/// What a host runs work units in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::Type)]
#[sqlx(type_name = "text", rename_all = "snake_case")]
pub enum HostKind {
    /// The `wasmgrid` client.
    Native,
    /// A tab of the contribute page (see `web::contribute`): it stops when the tab closes.
    Browser,
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route(&format!("{API_PREFIX}/accounts"), post(create_account_handler))
        .route(&format!("{API_PREFIX}/hosts"), post(register_host_handler))
}

/// Creates a volunteer account.
#[utoipa::path(
    post,
    path = "/api/v1/accounts",
    tag = "volunteers",
    request_body = CreateAccountRequest,
    responses(
        (status = 201, description = "The account, with its key: shown this once.", body = CreateAccountResponse),
        (status = 429, description = "Too many accounts were created from this address lately.", body = wasmgrid_protocol::api::ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait."))),
    ),
)]
async fn create_account_handler(
    State(state): State<AppState>,
    ClientAddress(address): ClientAddress,
    ApiJson(request): ApiJson<CreateAccountRequest>,
) -> ApiResult<(StatusCode, Json<CreateAccountResponse>)> {
    let name = text::label("name", &request.name, MAX_NAME_CHARS)?;
    let mut connection = state.pool.acquire().await?;
    if !may_create_account(&mut connection, &state.registration, address).await? {
        return Err(ApiError::TooManyRequests(format!(
            "too many accounts created from your address; try again in {}",
            rate_limit::WINDOW
        )));
    }
    let created = create_account(&mut connection, &name).await?;
    Ok((StatusCode::CREATED, Json(created)))
}

/// Counts an account about to be created from `address` (over the API, by signing up on the
/// web site, or by a browser tab computing anonymously), or says that address has made its
/// share. A refused attempt is not counted. Call it outside any transaction (see
/// [`may_register_host`]).
pub async fn may_create_account(
    connection: &mut PgConnection,
    limits: &RegistrationLimits,
    address: std::net::IpAddr,
) -> sqlx::Result<bool> {
    let key = [(format!("signup {}", address_bucket(address)), limits.accounts_per_address)];
    Ok(rate_limit::record_attempt(connection, &key).await?.is_some())
}

/// Registers a volunteer's machine under the account whose key is the secret.
#[utoipa::path(
    post,
    path = "/api/v1/hosts",
    tag = "volunteers",
    request_body = RegisterHostRequest,
    security(("account_key" = [])),
    responses(
        (status = 201, description = "The host, with its token: shown this once.", body = RegisterHostResponse),
        (status = 429, description = "Too many hosts were registered from this address lately.", body = wasmgrid_protocol::api::ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait."))),
    ),
)]
async fn register_host_handler(
    State(state): State<AppState>,
    ClientAddress(address): ClientAddress,
    VolunteerAccount(account): VolunteerAccount,
    ApiJson(request): ApiJson<RegisterHostRequest>,
) -> ApiResult<(StatusCode, Json<RegisterHostResponse>)> {
    let request = checked_host(request)?;
    let mut connection = state.pool.acquire().await?;
    if !may_register_host(&mut connection, &state.registration, address).await? {
        return Err(too_many_hosts());
    }
    let registered = insert_host(&mut connection, &state, &account, &request, HostKind::Native).await?;
    Ok((StatusCode::CREATED, Json(registered)))
}

/// What a host says of itself, checked: labels within their lengths, cores and memory in range.
pub fn checked_host(request: RegisterHostRequest) -> ApiResult<RegisterHostRequest> {
    let request = RegisterHostRequest {
        name: text::label("name", &request.name, MAX_NAME_CHARS)?,
        os: text::label("os", &request.os, MAX_LABEL_CHARS)?,
        arch: text::label("arch", &request.arch, MAX_LABEL_CHARS)?,
        client_version: text::label("client_version", &request.client_version, MAX_LABEL_CHARS)?,
        ..request
    };
    if request.cores == 0 || request.cores > 65_536 {
        return Err(ApiError::bad_request("cores must be between 1 and 65536"));
    }
    if i64::try_from(request.memory_bytes).is_err() {
        return Err(ApiError::bad_request("memory_bytes is out of range"));
    }
    Ok(request)
}

/// Counts a host about to be registered from `address`, or says that address has registered
/// its share. Call it on a connection of its own, outside any transaction: an attempt must
/// be visible to every other request at once, or requests sent together would all pass.
pub async fn may_register_host(
    connection: &mut PgConnection,
    limits: &RegistrationLimits,
    address: std::net::IpAddr,
) -> sqlx::Result<bool> {
    let key = [(format!("host {}", address_bucket(address)), limits.hosts_per_address)];
    Ok(rate_limit::record_attempt(connection, &key).await?.is_some())
}

pub fn too_many_hosts() -> ApiError {
    ApiError::TooManyRequests(format!(
        "too many hosts registered from your address; try again in {}",
        rate_limit::WINDOW
    ))
}

/// Registers a host of `kind` for `account` (its request checked by [`checked_host`] and its
/// address by [`may_register_host`]) and returns its token, the only time the token exists in
/// clear.
pub async fn insert_host(
    connection: &mut PgConnection,
    state: &AppState,
    account: &Account,
    request: &RegisterHostRequest,
    kind: HostKind,
) -> ApiResult<RegisterHostResponse> {
    let scheduler = &state.scheduler;
    let daily_quota =
        i32::try_from(scheduler.initial_daily_quota_per_core.min(scheduler.daily_quota_per_core)).unwrap_or(i32::MAX);
    let token = new_secret("wgh");
    let host_id: i64 = sqlx::query_scalar(
        "insert into host (account_id, token_hash, name, os, arch, cores, memory_bytes, client_version, daily_quota, kind)
         values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
         returning id",
    )
    .bind(account.id)
    .bind(secret_hash(&token))
    .bind(&request.name)
    .bind(&request.os)
    .bind(&request.arch)
    .bind(request.cores as i32)
    .bind(request.memory_bytes as i64)
    .bind(&request.client_version)
    .bind(daily_quota)
    .bind(kind)
    .fetch_one(&mut *connection)
    .await?;
    tracing::info!(host.id = host_id, account.id = account.id, ?kind, "host registered");
    Ok(RegisterHostResponse { host_id, account_id: account.id, host_token: token })
}

/// Creates an account and returns its key, the only time the key exists in clear.
pub async fn create_account(connection: &mut PgConnection, name: &str) -> sqlx::Result<CreateAccountResponse> {
    let key = new_secret("wga");
    let account_id: i64 = sqlx::query_scalar("insert into account (name, key_hash) values ($1, $2) returning id")
        .bind(name)
        .bind(secret_hash(&key))
        .fetch_one(connection)
        .await?;
    tracing::info!(account.id = account_id, "account created");
    Ok(CreateAccountResponse { account_id, account_key: key })
}

pub async fn account_by_key(connection: &mut PgConnection, key: &str) -> sqlx::Result<Option<Account>> {
    sqlx::query_as(
        "select id, name, case when banned_at is not null then coalesce(ban_reason, '') end as banned
         from account where key_hash = $1",
    )
    .bind(secret_hash(key))
    .fetch_optional(connection)
    .await
}

pub async fn host_by_token(connection: &mut PgConnection, token: &str) -> sqlx::Result<Option<Host>> {
    sqlx::query_as(
        "select h.id, h.account_id, h.cores, h.memory_bytes, h.kind,
                case when h.banned_at is not null then coalesce(h.ban_reason, '')
                     when a.banned_at is not null then coalesce(a.ban_reason, '') end as banned,
                h.banned_at is null and a.banned_at is not null as account_banned
         from host h join account a on a.id = h.account_id
         where h.token_hash = $1",
    )
    .bind(secret_hash(token))
    .fetch_optional(connection)
    .await
}
