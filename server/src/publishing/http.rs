//! The publishing API (see `wasmgrid_protocol::publish` for every route and body). Every
//! handler takes a [`PublisherAuth`] and looks things up through it.

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::Deserialize;
use sqlx::PgConnection;
use wasmgrid_protocol::publish::{
    AddWorkUnitsRequest, AppInfo, AppVersionInfo, BatchCreated, BatchStatus, CreateAppRequest, CreateBatchRequest,
    FileStored, MAX_INPUT_BYTES, MAX_MISSING_QUERY, MAX_MODULE_BYTES, MAX_RESULTS_PAGE, MAX_WORK_UNITS_PER_CHUNK,
    MissingFilesRequest, MissingFilesResponse, ResultsPage, SubmitPolicy, ValidatorSpec, WorkUnitsAdded,
};
use wasmgrid_protocol::signing::MODULE_SIGNATURE_HEADER;
use wasmgrid_protocol::{API_PREFIX, Sha256Hash};

use super::batches::{self, BatchRow};
use super::{ReplicationPolicy, WorkUnitSpec};
use crate::blobs::{self, Spooled, SpooledContent};
use crate::http::AppState;
use crate::http::error::{ApiError, ApiResult};
use crate::http::extract::{ApiJson, ApiPath, ApiQuery, PublisherAuth};
use crate::text;
use crate::work_unit;

/// Longest app description.
const MAX_DESCRIPTION_CHARS: usize = 4000;
/// Most batches `GET /batches` lists.
const LISTED_BATCHES: i64 = 100;

pub fn router() -> Router<AppState> {
    Router::new()
        .route(&format!("{API_PREFIX}/apps"), post(create_app).get(list_apps))
        .route(&format!("{API_PREFIX}/apps/{{name}}"), get(get_app))
        .route(&format!("{API_PREFIX}/apps/{{name}}/versions"), post(publish_version))
        .route(&format!("{API_PREFIX}/files/missing"), post(missing_files))
        .route(&format!("{API_PREFIX}/files/{{sha256}}"), put(put_file))
        .route(&format!("{API_PREFIX}/batches"), post(create_batch).get(list_batches))
        .route(&format!("{API_PREFIX}/batches/{{id}}"), get(batch_status).delete(delete_batch))
        .route(&format!("{API_PREFIX}/batches/{{id}}/work-units"), post(add_work_units))
        .route(&format!("{API_PREFIX}/batches/{{id}}/close"), post(close_batch))
        .route(&format!("{API_PREFIX}/batches/{{id}}/results"), get(batch_results))
        .route(&format!("{API_PREFIX}/batches/{{id}}/cancel"), post(cancel_batch))
}

#[derive(sqlx::FromRow)]
struct AppRow {
    id: i64,
    name: String,
    description: String,
    validator_module_sha256: Option<String>,
    distinct_networks: bool,
    adaptive_replication: bool,
    created_at: chrono::DateTime<chrono::Utc>,
    version: Option<i32>,
    module_sha256: Option<String>,
    module_bytes: Option<i64>,
}

const APP_COLUMNS: &str =
    "a.id, a.name, a.description, a.validator_module_sha256, a.distinct_networks, a.adaptive_replication, a.created_at,
     v.version, v.module_sha256, b.bytes as module_bytes
     from app a
     left join lateral (select version, module_sha256 from app_version
                        where app_id = a.id order by version desc limit 1) v on true
     left join blob b on b.sha256 = v.module_sha256";

fn parse_hash(text: &str) -> ApiResult<Sha256Hash> {
    text.parse().map_err(|_| ApiError::Internal(anyhow::anyhow!("stored hash {text:?} is malformed")))
}

impl AppRow {
    fn into_info(self) -> ApiResult<AppInfo> {
        let validator = match self.validator_module_sha256 {
            Some(hash) => ValidatorSpec::Wasm { module_sha256: parse_hash(&hash)? },
            None => ValidatorSpec::Bitwise,
        };
        let latest_version = match (self.version, self.module_sha256) {
            (Some(version), Some(hash)) => Some(AppVersionInfo {
                version,
                module_sha256: parse_hash(&hash)?,
                module_bytes: self.module_bytes.unwrap_or(0) as u64,
            }),
            _ => None,
        };
        Ok(AppInfo {
            id: self.id,
            name: self.name,
            description: self.description,
            validator,
            distinct_networks: self.distinct_networks,
            adaptive_replication: self.adaptive_replication,
            latest_version,
            created_at: self.created_at,
        })
    }
}

/// The publisher's app called `name`; someone else's app of that name is not found.
async fn find_app(connection: &mut PgConnection, publisher_id: i64, name: &str) -> ApiResult<AppRow> {
    sqlx::query_as(&format!("select {APP_COLUMNS} where a.publisher_id = $1 and a.name = $2"))
        .bind(publisher_id)
        .bind(name)
        .fetch_optional(connection)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("you have no app named {name:?}")))
}

/// Creates an app: how its work units are validated and replicated.
#[utoipa::path(
    post,
    path = "/api/v1/apps",
    tag = "publishing",
    request_body = CreateAppRequest,
    security(("publisher_token" = [])),
    responses(
        (status = 201, description = "The app, without a version yet.", body = AppInfo),
        (status = 400, description = "A refused name or description, or a validator module not uploaded.",
            body = wasmgrid_protocol::api::ErrorBody),
        (status = 409, description = "The publisher has an app of that name already.", body = wasmgrid_protocol::api::ErrorBody),
        (status = 413, description = "The validator module is larger than a module may be.", body = wasmgrid_protocol::api::ErrorBody),
        (status = 422, description = "The validator module cannot run in the sandbox; the message says why.",
            body = wasmgrid_protocol::api::ErrorBody),
    ),
)]
async fn create_app(
    State(state): State<AppState>,
    PublisherAuth(publisher): PublisherAuth,
    ApiJson(request): ApiJson<CreateAppRequest>,
) -> ApiResult<(StatusCode, Json<AppInfo>)> {
    super::check_app_name(&request.name)?;
    let description = text::paragraph("the description", &request.description, MAX_DESCRIPTION_CHARS)?;
    if let ValidatorSpec::Wasm { module_sha256 } = &request.validator {
        let mut connection = state.pool.acquire().await?;
        if !super::files_unknown_to(&mut connection, publisher.id, &[module_sha256.to_hex()]).await?.is_empty() {
            return Err(ApiError::bad_request(format!(
                "upload the validator module {module_sha256} first (PUT /files/...)"
            )));
        }
        drop(connection);
        let size = state.blobs.size(*module_sha256).await.map_err(|error| ApiError::Internal(error.into()))?;
        if size.is_some_and(|bytes| bytes > MAX_MODULE_BYTES) {
            return Err(ApiError::PayloadTooLarge(format!(
                "the validator module is larger than the limit of {MAX_MODULE_BYTES} bytes"
            )));
        }
        let module = blobs::read_all(state.blobs.as_ref(), *module_sha256, MAX_MODULE_BYTES)
            .await
            .map_err(ApiError::Internal)?
            .ok_or_else(|| {
                ApiError::bad_request(format!("upload the validator module {module_sha256} first (PUT /files/...)"))
            })?;
        check_module(&state, module).await.map_err(|rejection| match rejection {
            ApiError::Unprocessable(reason) => ApiError::Unprocessable(format!("the validator module is {reason}")),
            other => other,
        })?;
    }
    let mut transaction = state.pool.begin().await?;
    let app_id =
        super::create_app(&mut transaction, publisher.id, &request.name, &description, &request.validator).await?;
    let replication = super::AppReplication {
        distinct_networks: request.distinct_networks,
        adaptive_replication: request.adaptive_replication,
    };
    super::set_replication(&mut transaction, app_id, replication).await?;
    let app = find_app(&mut transaction, publisher.id, &request.name).await?.into_info()?;
    transaction.commit().await?;
    tracing::info!(app.id = app.id, publisher.id = publisher.id, "app created");
    Ok((StatusCode::CREATED, Json(app)))
}

/// The publisher's apps, by name.
#[utoipa::path(
    get,
    path = "/api/v1/apps",
    tag = "publishing",
    security(("publisher_token" = [])),
    responses((status = 200, description = "The publisher's apps.", body = Vec<AppInfo>)),
)]
async fn list_apps(
    State(state): State<AppState>,
    PublisherAuth(publisher): PublisherAuth,
) -> ApiResult<Json<Vec<AppInfo>>> {
    let rows: Vec<AppRow> = sqlx::query_as(&format!("select {APP_COLUMNS} where a.publisher_id = $1 order by a.name"))
        .bind(publisher.id)
        .fetch_all(&state.pool)
        .await?;
    Ok(Json(rows.into_iter().map(AppRow::into_info).collect::<ApiResult<_>>()?))
}

/// One of the publisher's apps.
#[utoipa::path(
    get,
    path = "/api/v1/apps/{name}",
    tag = "publishing",
    params(("name" = String, Path, description = "The app's name.")),
    security(("publisher_token" = [])),
    responses(
        (status = 200, description = "The app and its newest version.", body = AppInfo),
        (status = 404, description = "The publisher has no app of that name.", body = wasmgrid_protocol::api::ErrorBody),
    ),
)]
async fn get_app(
    State(state): State<AppState>,
    PublisherAuth(publisher): PublisherAuth,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<Json<AppInfo>> {
    let mut connection = state.pool.acquire().await?;
    Ok(Json(find_app(&mut connection, publisher.id, &name).await?.into_info()?))
}

/// Refuses a module that cannot be a work unit, with the sandbox's reason. Compiling it is
/// CPU-bound, so it runs off the async threads.
async fn check_module(state: &AppState, module: Vec<u8>) -> ApiResult<()> {
    let sandbox = state.sandbox.clone();
    tokio::task::spawn_blocking(move || sandbox.check_command_module(&module))
        .await
        .map_err(|error| ApiError::Internal(error.into()))?
        .map_err(|rejection| ApiError::Unprocessable(format!("not a usable work unit module: {rejection}")))
}

/// Reads a request body of at most `limit` bytes into a spooled blob, refusing a larger
/// declared length before reading anything.
async fn spool_body(state: &AppState, headers: &HeaderMap, body: Body, limit: u64, what: &str) -> ApiResult<Spooled> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit) {
        return Err(ApiError::PayloadTooLarge(format!("{what} is larger than the limit of {limit} bytes")));
    }
    blobs::spool(state.blobs.as_ref(), body, limit).await.map_err(|error| match error {
        ApiError::PayloadTooLarge(_) => {
            ApiError::PayloadTooLarge(format!("{what} is larger than the limit of {limit} bytes"))
        }
        other => other,
    })
}

/// Publishes a new version of an app: the module is the body.
#[utoipa::path(
    post,
    path = "/api/v1/apps/{name}/versions",
    tag = "publishing",
    params(
        ("name" = String, Path, description = "The app's name."),
        ("Wasmgrid-Module-Signature" = Option<wasmgrid_protocol::signing::Signature>, Header,
            description = "The publisher's signature of the module, when it has a key."),
    ),
    request_body(content = crate::openapi::Binary, content_type = "application/octet-stream",
        description = "The WebAssembly module, at most 64 MiB."),
    security(("publisher_token" = [])),
    responses(
        (status = 201, description = "The new version.", body = AppVersionInfo),
        (status = 400, description = "The signature is malformed, missing where the project or the publisher's \
            key requires one, or does not verify.", body = wasmgrid_protocol::api::ErrorBody),
        (status = 404, description = "The publisher has no app of that name.", body = wasmgrid_protocol::api::ErrorBody),
        (status = 413, description = "The module is larger than 64 MiB.", body = wasmgrid_protocol::api::ErrorBody),
        (status = 422, description = "The module cannot be a work unit; the message says why.", body = wasmgrid_protocol::api::ErrorBody),
        (status = 507, description = "The blob store has no room now: retry after `Retry-After`.", body = wasmgrid_protocol::api::ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait."))),
    ),
)]
async fn publish_version(
    State(state): State<AppState>,
    PublisherAuth(publisher): PublisherAuth,
    ApiPath(name): ApiPath<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<(StatusCode, Json<AppVersionInfo>)> {
    let app = {
        let mut connection = state.pool.acquire().await?;
        find_app(&mut connection, publisher.id, &name).await?
    };
    let spooled = spool_body(&state, &headers, body, MAX_MODULE_BYTES, "the module").await?;
    let module = match &spooled.content {
        SpooledContent::Memory(bytes) => bytes.to_vec(),
        SpooledContent::File(path) => tokio::fs::read(path).await.map_err(|error| ApiError::Internal(error.into()))?,
    };
    let module_hash = spooled.hash;
    check_module(&state, module).await?;
    let module_bytes = spooled.bytes;
    let signature = headers
        .get(MODULE_SIGNATURE_HEADER)
        .map(|value| value.to_str().map_err(|_| ApiError::bad_request("the module signature is not text")))
        .transpose()?;
    let mut transaction = state.pool.begin().await?;
    let signature = crate::signing::check_module_signature(
        &mut transaction,
        &publisher,
        &module_hash,
        signature,
        state.scheduler.require_signatures,
    )
    .await?;
    let module_sha256 = blobs::store_spooled(&mut transaction, state.blobs.as_ref(), spooled).await?;
    let version = super::add_signed_app_version(&mut transaction, app.id, module_sha256, signature.as_ref()).await?;
    transaction.commit().await?;
    tracing::info!(app.id = app.id, version, bytes = module_bytes, "app version published");
    let version = AppVersionInfo { version, module_sha256, module_bytes };
    Ok((StatusCode::CREATED, Json(version)))
}

/// Which of the files a publisher asks about it must upload: all but those it stored itself
/// and the public modules. So a publisher learns nothing about another's files, not even
/// whether the server has them.
/// Which of these files the publisher must upload.
#[utoipa::path(
    post,
    path = "/api/v1/files/missing",
    tag = "publishing",
    request_body = MissingFilesRequest,
    security(("publisher_token" = [])),
    responses(
        (status = 200, description = "The hashes to upload: all but the publisher's own files and public \
            modules.", body = MissingFilesResponse),
        (status = 400, description = "Too many hashes in one request.", body = wasmgrid_protocol::api::ErrorBody),
    ),
)]
async fn missing_files(
    State(state): State<AppState>,
    PublisherAuth(publisher): PublisherAuth,
    ApiJson(request): ApiJson<MissingFilesRequest>,
) -> ApiResult<Json<MissingFilesResponse>> {
    if request.sha256.len() > MAX_MISSING_QUERY {
        return Err(ApiError::bad_request(format!("ask about at most {MAX_MISSING_QUERY} files at once")));
    }
    let hashes: Vec<String> = request.sha256.iter().map(Sha256Hash::to_hex).collect();
    let mut connection = state.pool.acquire().await?;
    let unknown = super::files_unknown_to(&mut connection, publisher.id, &hashes).await?;
    let known: Vec<String> = hashes.iter().filter(|hash| !unknown.contains(hash)).cloned().collect();
    crate::blobs::retention::promise(&mut connection, &known).await?;
    let missing = request.sha256.into_iter().filter(|hash| unknown.contains(&hash.to_hex())).collect();
    Ok(Json(MissingFilesResponse { missing }))
}

/// Uploads an input file or a validator module, named by the SHA-256 of its bytes.
#[utoipa::path(
    put,
    path = "/api/v1/files/{sha256}",
    tag = "publishing",
    params(("sha256" = wasmgrid_protocol::Sha256Hash, Path, description = "The SHA-256 of the body.")),
    request_body(content = crate::openapi::Binary, content_type = "application/octet-stream",
        description = "The file, at most 1 GiB."),
    security(("publisher_token" = [])),
    responses(
        (status = 200, description = "The file is stored.", body = FileStored),
        (status = 400, description = "The hash is malformed, or the body does not hash to it.", body = wasmgrid_protocol::api::ErrorBody),
        (status = 413, description = "The file is larger than 1 GiB.", body = wasmgrid_protocol::api::ErrorBody),
        (status = 507, description = "The blob store has no room now: retry after `Retry-After`.", body = wasmgrid_protocol::api::ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait."))),
    ),
)]
async fn put_file(
    State(state): State<AppState>,
    PublisherAuth(publisher): PublisherAuth,
    ApiPath(claimed): ApiPath<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<FileStored>> {
    let claimed: Sha256Hash = claimed.parse().map_err(|error| ApiError::bad_request(format!("{error}")))?;
    let spooled = spool_body(&state, &headers, body, MAX_INPUT_BYTES, "the file").await?;
    if spooled.hash != claimed {
        return Err(ApiError::bad_request(format!("the uploaded bytes hash to {}, not {claimed}", spooled.hash)));
    }
    let bytes = spooled.bytes;
    let mut transaction = state.pool.begin().await?;
    blobs::store_spooled(&mut transaction, state.blobs.as_ref(), spooled).await?;
    super::record_publisher_file(&mut transaction, publisher.id, claimed).await?;
    transaction.commit().await?;
    Ok(Json(FileStored { sha256: claimed, bytes }))
}

/// Opens a batch of one of the publisher's apps, on its newest version.
#[utoipa::path(
    post,
    path = "/api/v1/batches",
    tag = "publishing",
    request_body = CreateBatchRequest,
    security(("publisher_token" = [])),
    responses(
        (status = 201, description = "The batch.", body = BatchCreated),
        (status = 400, description = "A refused name.", body = wasmgrid_protocol::api::ErrorBody),
        (status = 404, description = "The publisher has no app of that name.", body = wasmgrid_protocol::api::ErrorBody),
        (status = 409, description = "The app has no version yet.", body = wasmgrid_protocol::api::ErrorBody),
    ),
)]
async fn create_batch(
    State(state): State<AppState>,
    PublisherAuth(publisher): PublisherAuth,
    ApiJson(request): ApiJson<CreateBatchRequest>,
) -> ApiResult<(StatusCode, Json<BatchCreated>)> {
    let name =
        if request.name.trim().is_empty() { String::new() } else { text::label("the batch name", &request.name, 200)? };
    super::check_app_name(&request.app)?;
    let mut connection = state.pool.acquire().await?;
    let app = find_app(&mut connection, publisher.id, &request.app).await?;
    let batch_id = super::open_batch(&mut connection, app.id, &name, request.public).await?;
    tracing::info!(batch.id = batch_id, app.id = app.id, "batch opened");
    Ok((StatusCode::CREATED, Json(BatchCreated { batch_id })))
}

async fn owned_batch(state: &AppState, publisher_id: i64, batch_id: i64) -> ApiResult<BatchRow> {
    let mut connection = state.pool.acquire().await?;
    batches::find_owned(&mut connection, publisher_id, batch_id).await
}

fn replication_policy(policy: &SubmitPolicy) -> ReplicationPolicy {
    ReplicationPolicy {
        min_quorum: policy.quorum,
        target_replicas: policy.replicas,
        max_error_replicas: policy.max_errors,
        max_total_replicas: policy.max_total,
        delay_bound: std::time::Duration::from_secs(policy.deadline_seconds),
    }
}

/// Adds a chunk of work units to an open batch; work units it has already are left as they are.
#[utoipa::path(
    post,
    path = "/api/v1/batches/{id}/work-units",
    tag = "publishing",
    params(("id" = i64, Path, description = "The batch's id.")),
    request_body = AddWorkUnitsRequest,
    security(("publisher_token" = [])),
    responses(
        (status = 200, description = "How many work units were created, and how many the batch had already.",
            body = WorkUnitsAdded),
        (status = 400, description = "Too many work units, a refused name, argument or policy, a name twice, \
            or an input not uploaded.", body = wasmgrid_protocol::api::ErrorBody),
        (status = 404, description = "The publisher has no such batch.", body = wasmgrid_protocol::api::ErrorBody),
        (status = 409, description = "The batch is closed or cancelled, or an input was deleted under the \
            project's retention.", body = wasmgrid_protocol::api::ErrorBody),
    ),
)]
async fn add_work_units(
    State(state): State<AppState>,
    PublisherAuth(publisher): PublisherAuth,
    ApiPath(batch_id): ApiPath<i64>,
    ApiJson(request): ApiJson<AddWorkUnitsRequest>,
) -> ApiResult<Json<WorkUnitsAdded>> {
    if request.work_units.len() > MAX_WORK_UNITS_PER_CHUNK {
        return Err(ApiError::bad_request(format!("send at most {MAX_WORK_UNITS_PER_CHUNK} work units per request")));
    }
    let inputs: std::collections::BTreeSet<String> = request
        .work_units
        .iter()
        .flat_map(|submission| submission.stdin.iter().chain(submission.files.values()))
        .map(Sha256Hash::to_hex)
        .collect();
    let inputs: Vec<String> = inputs.into_iter().collect();
    {
        let mut connection = state.pool.acquire().await?;
        if let Some(unknown) = super::files_unknown_to(&mut connection, publisher.id, &inputs).await?.first() {
            return Err(ApiError::bad_request(format!("input {unknown} was not uploaded (PUT /files/{unknown})")));
        }
    }
    let policy = replication_policy(&request.policy);
    let specs: Vec<WorkUnitSpec> = request
        .work_units
        .into_iter()
        .map(|submission| WorkUnitSpec {
            name: submission.name,
            args: submission.args,
            stdin: submission.stdin,
            files: submission.files.into_iter().collect(),
            policy,
            limits: request.policy.limits,
        })
        .collect();
    let mut transaction = state.pool.begin().await?;
    // Closing or cancelling takes this lock too, so no chunk slips in after either.
    sqlx::query("select id from batch where id = $1 for no key update")
        .bind(batch_id)
        .execute(&mut *transaction)
        .await?;
    let batch = batches::find_owned(&mut transaction, publisher.id, batch_id).await?;
    if batch.cancelled_at.is_some() {
        return Err(ApiError::Conflict(format!("batch {batch_id} was cancelled")));
    }
    if batch.closed_at.is_some() {
        return Err(ApiError::Conflict(format!("batch {batch_id} is closed: submit a new batch")));
    }
    let added = super::add_work_units(&mut transaction, batch.id, &specs).await?;
    transaction.commit().await?;
    Ok(Json(WorkUnitsAdded { created: added.created, existing: added.existing }))
}

/// Ends the submission of a batch.
#[utoipa::path(
    post,
    path = "/api/v1/batches/{id}/close",
    tag = "publishing",
    params(("id" = i64, Path, description = "The batch's id.")),
    security(("publisher_token" = [])),
    responses(
        (status = 200, description = "The batch's status.", body = BatchStatus),
        (status = 404, description = "The publisher has no such batch.", body = wasmgrid_protocol::api::ErrorBody),
        (status = 409, description = "The batch was cancelled.", body = wasmgrid_protocol::api::ErrorBody),
    ),
)]
async fn close_batch(
    State(state): State<AppState>,
    PublisherAuth(publisher): PublisherAuth,
    ApiPath(batch_id): ApiPath<i64>,
) -> ApiResult<Json<BatchStatus>> {
    let mut transaction = state.pool.begin().await?;
    let batch = batches::find_owned(&mut transaction, publisher.id, batch_id).await?;
    if batch.cancelled_at.is_some() {
        return Err(ApiError::Conflict(format!("batch {batch_id} was cancelled")));
    }
    sqlx::query("update batch set closed_at = coalesce(closed_at, now()) where id = $1")
        .bind(batch.id)
        .execute(&mut *transaction)
        .await?;
    let batch = batches::find_owned(&mut transaction, publisher.id, batch_id).await?;
    let status = batches::status(&mut transaction, &batch).await?;
    transaction.commit().await?;
    if status.work_units.total() >= super::ANALYZE_AFTER_WORK_UNITS as u64 {
        let mut connection = state.pool.acquire().await?;
        super::refresh_queue_statistics(&mut connection).await?;
    }
    Ok(Json(status))
}

/// The publisher's newest 100 batches.
#[utoipa::path(
    get,
    path = "/api/v1/batches",
    tag = "publishing",
    security(("publisher_token" = [])),
    responses((status = 200, description = "The batches' status, newest first.", body = Vec<BatchStatus>)),
)]
async fn list_batches(
    State(state): State<AppState>,
    PublisherAuth(publisher): PublisherAuth,
) -> ApiResult<Json<Vec<BatchStatus>>> {
    let mut connection = state.pool.acquire().await?;
    let rows = batches::list_owned(&mut connection, publisher.id, LISTED_BATCHES).await?;
    let mut statuses = Vec::with_capacity(rows.len());
    for batch in &rows {
        statuses.push(batches::status(&mut connection, batch).await?);
    }
    Ok(Json(statuses))
}

/// A batch's progress.
#[utoipa::path(
    get,
    path = "/api/v1/batches/{id}",
    tag = "publishing",
    params(("id" = i64, Path, description = "The batch's id.")),
    security(("publisher_token" = [])),
    responses(
        (status = 200, description = "The batch's status.", body = BatchStatus),
        (status = 404, description = "The publisher has no such batch.", body = wasmgrid_protocol::api::ErrorBody),
    ),
)]
async fn batch_status(
    State(state): State<AppState>,
    PublisherAuth(publisher): PublisherAuth,
    ApiPath(batch_id): ApiPath<i64>,
) -> ApiResult<Json<BatchStatus>> {
    let batch = owned_batch(&state, publisher.id, batch_id).await?;
    let mut connection = state.pool.acquire().await?;
    Ok(Json(batches::status(&mut connection, &batch).await?))
}

/// `?after=NAME&limit=N`.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct ResultsQuery {
    /// The `next_after` of the page before.
    after: Option<String>,
    /// Results on the page: at most 1000, the default (larger asks get 1000, 0 gets 1).
    limit: Option<u64>,
}

/// A page of a batch's finished work units, in name order.
#[utoipa::path(
    get,
    path = "/api/v1/batches/{id}/results",
    tag = "publishing",
    params(("id" = i64, Path, description = "The batch's id."), ResultsQuery),
    security(("publisher_token" = [])),
    responses(
        (status = 200, description = "The page.", body = ResultsPage),
        (status = 404, description = "The publisher has no such batch.", body = wasmgrid_protocol::api::ErrorBody),
    ),
)]
async fn batch_results(
    State(state): State<AppState>,
    PublisherAuth(publisher): PublisherAuth,
    ApiPath(batch_id): ApiPath<i64>,
    ApiQuery(query): ApiQuery<ResultsQuery>,
) -> ApiResult<Json<ResultsPage>> {
    let batch = owned_batch(&state, publisher.id, batch_id).await?;
    let limit = query.limit.map_or(MAX_RESULTS_PAGE, |limit| limit.clamp(1, MAX_RESULTS_PAGE as u64) as usize);
    let mut connection = state.pool.acquire().await?;
    Ok(Json(batches::results(&mut connection, &batch, query.after.as_deref(), limit).await?))
}

/// Cancels the batch if it still runs, and has its inputs and outputs deleted at the next
/// sweep rather than after the project's retention. Deleting twice changes nothing.
#[utoipa::path(
    delete,
    path = "/api/v1/batches/{id}",
    tag = "publishing",
    params(("id" = i64, Path, description = "The batch's id.")),
    security(("publisher_token" = [])),
    responses(
        (status = 200, description = "The batch's status.", body = BatchStatus),
        (status = 404, description = "The publisher has no such batch.", body = wasmgrid_protocol::api::ErrorBody),
    ),
)]
async fn delete_batch(
    State(state): State<AppState>,
    PublisherAuth(publisher): PublisherAuth,
    ApiPath(batch_id): ApiPath<i64>,
) -> ApiResult<Json<BatchStatus>> {
    end_batch(&state, publisher.id, batch_id, true).await
}

/// Cancels a batch: its unfinished work units end.
#[utoipa::path(
    post,
    path = "/api/v1/batches/{id}/cancel",
    tag = "publishing",
    params(("id" = i64, Path, description = "The batch's id.")),
    security(("publisher_token" = [])),
    responses(
        (status = 200, description = "The batch's status.", body = BatchStatus),
        (status = 404, description = "The publisher has no such batch.", body = wasmgrid_protocol::api::ErrorBody),
    ),
)]
async fn cancel_batch(
    State(state): State<AppState>,
    PublisherAuth(publisher): PublisherAuth,
    ApiPath(batch_id): ApiPath<i64>,
) -> ApiResult<Json<BatchStatus>> {
    end_batch(&state, publisher.id, batch_id, false).await
}

/// Cancels the publisher's batch `batch_id` (what still runs ends) and, when `delete`, marks
/// it for retention to delete its files at the next sweep; returns its status.
async fn end_batch(state: &AppState, publisher_id: i64, batch_id: i64, delete: bool) -> ApiResult<Json<BatchStatus>> {
    let batch = owned_batch(state, publisher_id, batch_id).await?;
    let mut connection = state.pool.acquire().await?;
    work_unit::cancel::cancel_batch(&mut connection, batch.id, (&*state.scheduler).into()).await?;
    if delete {
        sqlx::query("update batch set deleted_at = coalesce(deleted_at, now()) where id = $1")
            .bind(batch.id)
            .execute(&mut *connection)
            .await?;
    }
    let batch = batches::find_owned(&mut connection, publisher_id, batch_id).await?;
    Ok(Json(batches::status(&mut connection, &batch).await?))
}
