//! Publishers' signing keys and module signatures (see [`wasmgrid_protocol::signing`]).
//!
//! The server only stores and forwards: it checks what publishers send so that a mistake is
//! caught when it is made, but the check that matters is the volunteer's client, which runs
//! only modules signed by a key its volunteer pinned. A server that is broken into can
//! change every table here and still make no signature.
//!
//! - `PUT /api/v1/publisher/key`: a publisher registers its key, or replaces it (with the
//!   old key's signature of the new one, or `unendorsed` when the old key is lost);
//!   `GET` the same: its name, which the proof of ownership covers, and its keys.
//! - `GET /api/v1/keys`: every publisher's keys, which clients pin when they attach.
//! - `DELETE /api/v1/hosts/me/refusals`: a host whose volunteer ran `wasmgrid trust` may be
//!   sent the app versions it refused again.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{delete, get, put};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use wasmgrid_protocol::API_PREFIX;
use wasmgrid_protocol::signing::{KeyRecord, ProjectKeys, PublicKey, PublisherKeys, RegisterKeyRequest, Signature};

use crate::http::AppState;
use crate::http::error::{ApiError, ApiResult};
use crate::http::extract::{ApiJson, PublisherAuth, VolunteerHost};
use crate::publishers::Publisher;

pub fn router() -> Router<AppState> {
    Router::new()
        .route(&format!("{API_PREFIX}/publisher/key"), put(register_key).get(own_keys))
        .route(&format!("{API_PREFIX}/keys"), get(project_keys))
        .route(&format!("{API_PREFIX}/hosts/me/refusals"), delete(clear_refusals))
}

/// A publisher's current key.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct CurrentKey {
    pub id: i64,
    pub public_key: String,
}

impl CurrentKey {
    fn parsed(&self) -> Result<PublicKey, ApiError> {
        self.public_key.parse().map_err(|error| ApiError::Internal(anyhow::anyhow!("stored key: {error}")))
    }
}

pub async fn current_key(connection: &mut PgConnection, publisher_id: i64) -> sqlx::Result<Option<CurrentKey>> {
    sqlx::query_as("select id, public_key from publisher_key where publisher_id = $1 and retired_at is null")
        .bind(publisher_id)
        .fetch_optional(connection)
        .await
}

/// A signature checked against the publisher's current key, to be stored with a version.
pub struct CheckedSignature {
    pub key_id: i64,
    pub signature: Signature,
}

/// Checks a module's signature as published: required when the publisher has a key or the
/// project requires signatures, and then by the current key.
pub async fn check_module_signature(
    connection: &mut PgConnection,
    publisher: &Publisher,
    module: &wasmgrid_protocol::Sha256Hash,
    signature: Option<&str>,
    require_signatures: bool,
) -> Result<Option<CheckedSignature>, ApiError> {
    let key = current_key(connection, publisher.id).await?;
    let (key, signature) = match (key, signature) {
        (None, None) if require_signatures => {
            return Err(ApiError::bad_request(
                "this project runs signed modules only: make a key with `wasmgrid key generate`, register it with \
                 `wasmgrid key register`, and publish with --signing-key",
            ));
        }
        (None, None) => return Ok(None),
        (None, Some(_)) => {
            return Err(ApiError::bad_request(
                "the module is signed, but you have no key registered here: register it with `wasmgrid key register`",
            ));
        }
        (Some(key), None) => {
            return Err(ApiError::bad_request(format!(
                "you sign your modules (key {}): publish with --signing-key, since volunteers refuse unsigned \
                 modules of yours",
                key.public_key
            )));
        }
        (Some(key), Some(signature)) => (key, signature),
    };
    let signature: Signature = signature.parse().map_err(|error| ApiError::bad_request(format!("{error}")))?;
    key.parsed()?.verify_module(module, &signature).map_err(|_| {
        ApiError::bad_request(format!(
            "the module's signature does not verify under your current key {}: sign with that key",
            key.public_key
        ))
    })?;
    Ok(Some(CheckedSignature { key_id: key.id, signature }))
}

/// Registers the publisher's signing key, or replaces its current one.
#[utoipa::path(
    put,
    path = "/api/v1/publisher/key",
    tag = "signing",
    request_body = RegisterKeyRequest,
    security(("publisher_token" = [])),
    responses(
        (status = 201, description = "The publisher's keys, the new one last.", body = PublisherKeys),
        (status = 400, description = "The proof of ownership or the endorsement does not verify, or an \
            endorsement is missing.", body = wasmgrid_protocol::api::ErrorBody),
        (status = 409, description = "The key is the current one already, or was registered before.", body = wasmgrid_protocol::api::ErrorBody),
    ),
)]
async fn register_key(
    State(state): State<AppState>,
    PublisherAuth(publisher): PublisherAuth,
    ApiJson(request): ApiJson<RegisterKeyRequest>,
) -> ApiResult<(StatusCode, Json<PublisherKeys>)> {
    request.public_key.verify_ownership(&publisher.name, &request.ownership).map_err(|_| {
        ApiError::bad_request("the proof of ownership does not verify: sign it with the key you register")
    })?;
    let mut transaction = state.pool.begin().await?;
    // One change at a time per publisher.
    sqlx::query("select id from publisher where id = $1 for update")
        .bind(publisher.id)
        .execute(&mut *transaction)
        .await?;
    let current = current_key(&mut transaction, publisher.id).await?;
    let endorsement = match &current {
        Some(current) if current.public_key == request.public_key.to_string() => {
            return Err(ApiError::Conflict("this key is your current key already".into()));
        }
        Some(current) => match (&request.endorsement, request.unendorsed) {
            (Some(endorsement), _) => {
                current.parsed()?.verify_key_change(&request.public_key, endorsement).map_err(|_| {
                    ApiError::bad_request(format!(
                        "the endorsement does not verify: sign the new key with your current key {}",
                        current.public_key
                    ))
                })?;
                Some(endorsement.to_string())
            }
            (None, true) => None,
            (None, false) => {
                return Err(ApiError::Conflict(format!(
                    "you have a key ({}): replace it with its signature of the new one (--old-key), or, if it is \
                     lost, with --unendorsed, after which every volunteer must run `wasmgrid trust` before running \
                     your modules again",
                    current.public_key
                )));
            }
        },
        None => None,
    };
    if let Some(current) = &current {
        sqlx::query("update publisher_key set retired_at = now() where id = $1")
            .bind(current.id)
            .execute(&mut *transaction)
            .await?;
    }
    let inserted = sqlx::query(
        "insert into publisher_key (publisher_id, public_key, endorsement) values ($1, $2, $3)
         on conflict (public_key) do nothing",
    )
    .bind(publisher.id)
    .bind(request.public_key.to_string())
    .bind(endorsement)
    .execute(&mut *transaction)
    .await?;
    if inserted.rows_affected() == 0 {
        // A key once used, by anyone, stays retired: going back to it would undo a change.
        return Err(ApiError::Conflict("this key was registered before; make a new one".into()));
    }
    let keys = publisher_keys(&mut transaction, Some(publisher.id))
        .await?
        .pop()
        .unwrap_or(PublisherKeys { publisher: publisher.name.clone(), keys: Vec::new() });
    transaction.commit().await?;
    tracing::info!(publisher.id = publisher.id, key = %request.public_key, "publisher key registered");
    Ok((StatusCode::CREATED, Json(keys)))
}

/// The publisher's name (which the proof of ownership covers) and keys.
#[utoipa::path(
    get,
    path = "/api/v1/publisher/key",
    tag = "signing",
    security(("publisher_token" = [])),
    responses((status = 200, description = "The publisher's keys, oldest first.", body = PublisherKeys)),
)]
async fn own_keys(
    State(state): State<AppState>,
    PublisherAuth(publisher): PublisherAuth,
) -> ApiResult<Json<PublisherKeys>> {
    let mut connection = state.pool.acquire().await?;
    let keys = publisher_keys(&mut connection, Some(publisher.id)).await?.pop();
    Ok(Json(keys.unwrap_or(PublisherKeys { publisher: publisher.name, keys: Vec::new() })))
}

/// Every publisher's keys, which a volunteer's client pins when it attaches.
#[utoipa::path(
    get,
    path = "/api/v1/keys",
    tag = "signing",
    responses((status = 200, description = "Every publisher's keys, and whether signatures are required.",
        body = ProjectKeys)),
)]
async fn project_keys(State(state): State<AppState>) -> ApiResult<Json<ProjectKeys>> {
    let mut connection = state.pool.acquire().await?;
    let publishers = publisher_keys(&mut connection, None).await?;
    Ok(Json(ProjectKeys { require_signatures: state.scheduler.require_signatures, publishers }))
}

#[derive(sqlx::FromRow)]
struct KeyRow {
    publisher: String,
    public_key: String,
    endorsement: Option<String>,
    created_at: DateTime<Utc>,
}

/// The keys of one publisher, or of all, each publisher's oldest first.
async fn publisher_keys(
    connection: &mut PgConnection,
    publisher_id: Option<i64>,
) -> Result<Vec<PublisherKeys>, ApiError> {
    let rows: Vec<KeyRow> = sqlx::query_as(
        "select p.name as publisher, k.public_key, k.endorsement, k.created_at
         from publisher_key k join publisher p on p.id = k.publisher_id
         where $1::bigint is null or p.id = $1
         order by p.name, k.id",
    )
    .bind(publisher_id)
    .fetch_all(connection)
    .await?;
    let stored = |error| ApiError::Internal(anyhow::anyhow!("stored key: {error}"));
    let mut publishers: Vec<PublisherKeys> = Vec::new();
    for row in rows {
        let record = KeyRecord {
            public_key: row.public_key.parse().map_err(stored)?,
            endorsement: row.endorsement.as_deref().map(str::parse).transpose().map_err(stored)?,
            created_at: row.created_at,
        };
        match publishers.last_mut() {
            Some(last) if last.publisher == row.publisher => last.keys.push(record),
            _ => publishers.push(PublisherKeys { publisher: row.publisher, keys: vec![record] }),
        }
    }
    Ok(publishers)
}

/// Records that `host` refused to run an app version, and why.
pub async fn record_refusal(
    connection: &mut PgConnection,
    host_id: i64,
    replica_id: i64,
    reason: &str,
) -> sqlx::Result<()> {
    sqlx::query(
        "insert into module_refusal (host_id, app_version_id, reason)
         select $1, w.app_version_id, $3 from replica r join work_unit w on w.id = r.work_unit_id where r.id = $2
         on conflict (host_id, app_version_id) do update set reason = excluded.reason, refused_at = now()",
    )
    .bind(host_id)
    .bind(replica_id)
    .bind(reason)
    .execute(connection)
    .await?;
    Ok(())
}

/// The host's volunteer trusts new keys: the app versions it refused may be sent to it again.
#[utoipa::path(
    delete,
    path = "/api/v1/hosts/me/refusals",
    tag = "signing",
    security(("host_token" = [])),
    responses((status = 204, description = "The host's refusals are forgotten.")),
)]
async fn clear_refusals(State(state): State<AppState>, VolunteerHost(host): VolunteerHost) -> ApiResult<StatusCode> {
    let cleared = sqlx::query("delete from module_refusal where host_id = $1")
        .bind(host.id)
        .execute(&state.pool)
        .await?
        .rows_affected();
    tracing::info!(host.id = host.id, cleared, "a host's refusals cleared");
    Ok(StatusCode::NO_CONTENT)
}
