//! `PUT /api/v1/replicas/{id}/output/{sha256}`: a host uploads the output of a replica it
//! holds, before reporting it. The size limit comes from the work unit (plus room for the
//! output archive's headers) and the hash is checked on arrival; uploading the same output
//! again is harmless.
//!
//! A replica takes uploads while it may still report them: while it runs, or after its
//! deadline while its work unit still needs an answer. It holds at most one unreported
//! output: a new upload replaces the one before,
//! which the sweep of [`super::unreported`] then deletes unless another replica holds or
//! reported the same bytes. Every upload is logged for that sweep, which also deletes what
//! was uploaded for a replica that ended without reporting it.

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, header};
use wasmgrid_protocol::Sha256Hash;
use wasmgrid_protocol::api::{OUTPUT_ARCHIVE_ALLOWANCE, OutputUploaded};

use super::{Spooled, unreported};
use crate::http::AppState;
use crate::http::error::{ApiError, ApiResult};
use crate::http::extract::{ApiPath, VolunteerHost};
use crate::work_unit::AWAITS_REPORT;

#[derive(sqlx::FromRow)]
struct UploadTarget {
    host_id: Option<i64>,
    may_still_report: bool,
    output_sha256: Option<String>,
    output_limit_bytes: i64,
}

/// Uploads the output of a replica the host holds, before it reports it.
#[utoipa::path(
    put,
    path = "/api/v1/replicas/{replica_id}/output/{sha256}",
    tag = "volunteers",
    params(
        ("replica_id" = i64, Path, description = "The replica's id."),
        ("sha256" = wasmgrid_protocol::Sha256Hash, Path, description = "The SHA-256 of the body."),
    ),
    request_body(content = crate::openapi::Binary, content_type = "application/octet-stream",
        description = "The output archive, within the work unit's output limit and 64 KiB of headers."),
    security(("host_token" = [])),
    responses(
        (status = 200, description = "The output is stored.", body = OutputUploaded),
        (status = 400, description = "The hash is malformed, or the body does not hash to it.", body = wasmgrid_protocol::api::ErrorBody),
        (status = 403, description = "The replica is not this host's.", body = wasmgrid_protocol::api::ErrorBody),
        (status = 404, description = "There is no such replica.", body = wasmgrid_protocol::api::ErrorBody),
        (status = 409, description = "The replica no longer takes output.", body = wasmgrid_protocol::api::ErrorBody),
        (status = 413, description = "The output is larger than its work unit allows.", body = wasmgrid_protocol::api::ErrorBody),
        (status = 507, description = "The blob store has no room now: retry after `Retry-After`.", body = wasmgrid_protocol::api::ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait."))),
    ),
)]
pub(super) async fn put_output(
    State(state): State<AppState>,
    VolunteerHost(host): VolunteerHost,
    ApiPath((replica_id, claimed_hash)): ApiPath<(i64, String)>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<OutputUploaded>> {
    let claimed_hash: Sha256Hash = claimed_hash.parse().map_err(|error| ApiError::bad_request(format!("{error}")))?;

    let target: Option<UploadTarget> = sqlx::query_as(&format!(
        "select r.host_id, {AWAITS_REPORT} as may_still_report, r.output_sha256,
                (select output_limit_bytes from work_unit where id = r.work_unit_id) as output_limit_bytes
         from replica r
         where r.id = $1"
    ))
    .bind(replica_id)
    .fetch_optional(&state.pool)
    .await?;
    let target = target.ok_or_else(|| ApiError::not_found(format!("no replica {replica_id}")))?;
    if target.host_id != Some(host.id) {
        return Err(ApiError::Forbidden(format!("replica {replica_id} is not assigned to this host")));
    }
    if !target.may_still_report {
        // After the report, only a retry of the output it reported is accepted: that output
        // is stored already.
        if target.output_sha256 != Some(claimed_hash.to_hex()) {
            return Err(no_longer_accepts(replica_id));
        }
        let bytes = uploaded_bytes(&state, claimed_hash).await?;
        return Ok(Json(OutputUploaded { sha256: claimed_hash, bytes }));
    }

    let limit = (target.output_limit_bytes as u64).saturating_add(OUTPUT_ARCHIVE_ALLOWANCE);
    let declared_length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared_length.is_some_and(|length| length > limit) {
        return Err(ApiError::PayloadTooLarge(format!("the output exceeds its work unit's limit of {limit} bytes")));
    }

    let spooled = super::spool(state.blobs.as_ref(), body, limit).await?;
    if spooled.hash != claimed_hash {
        return Err(ApiError::bad_request(format!("the uploaded bytes hash to {}, not {claimed_hash}", spooled.hash)));
    }
    let bytes = spooled.bytes;
    store_output(&state, replica_id, host.id, spooled).await?;
    Ok(Json(OutputUploaded { sha256: claimed_hash, bytes }))
}

fn no_longer_accepts(replica_id: i64) -> ApiError {
    ApiError::Conflict(format!("replica {replica_id} no longer accepts output"))
}

async fn uploaded_bytes(state: &AppState, hash: Sha256Hash) -> ApiResult<u64> {
    let bytes: i64 = sqlx::query_scalar("select bytes from blob where sha256 = $1")
        .bind(hash.to_hex())
        .fetch_one(&state.pool)
        .await?;
    Ok(bytes as u64)
}

/// Makes verified bytes the replica's unreported output, in one transaction: the replica
/// takes it (if it still waits for its report: one may have landed since the check above),
/// the upload is logged, the blob's row is written or share-locked, then the bytes are
/// stored.
/// A failure at any step leaves the replica as it was.
async fn store_output(state: &AppState, replica_id: i64, host_id: i64, spooled: Spooled) -> ApiResult<()> {
    let Spooled { hash, bytes, content } = spooled;
    let hex = hash.to_hex();
    let mut transaction = state.pool.begin().await?;
    let previous: Option<Option<String>> = sqlx::query_scalar(&format!(
        "update replica r set uploaded_sha256 = $2
         from (select id, uploaded_sha256 from replica where id = $1 for no key update) before
         where r.id = before.id and r.host_id = $3 and {AWAITS_REPORT}
         returning before.uploaded_sha256"
    ))
    .bind(replica_id)
    .bind(&hex)
    .bind(host_id)
    .fetch_optional(&mut *transaction)
    .await?;
    let Some(previous) = previous else { return Err(no_longer_accepts(replica_id)) };
    if previous.as_deref() == Some(hex.as_str()) {
        // The same output again (a retry): it is stored and logged already.
        return Ok(());
    }
    unreported::log_upload(&mut transaction, replica_id, hash).await?;
    hold_blob_row(&mut transaction, &hex, bytes).await?;
    // Even under an existing row: the store keeps what it has, and puts back bytes a sweep
    // interrupted between deleting them and deleting their row.
    super::put_content(state.blobs.as_ref(), hash, content).await?;
    if let Some(replaced) = previous {
        unreported::let_go(&mut transaction, replica_id, &replaced).await?;
    }
    transaction.commit().await?;
    Ok(())
}

/// Makes sure the blob row for `hex` exists until the transaction ends, and holds it against
/// the sweep of unreported outputs, which deletes only rows it can lock for update (skipping
/// locked ones).
///
/// An existing row is only share-locked, so uploads of the same bytes (every replica of a
/// quorum that agrees, or the common "nothing found" output of a search) do not queue behind
/// each other's commits.
async fn hold_blob_row(transaction: &mut sqlx::PgConnection, hex: &str, bytes: u64) -> ApiResult<()> {
    // A row can vanish between the two statements (the sweep deleted it) or appear (another
    // upload committed it); each turn of the loop sees one of them settle.
    for _ in 0..3 {
        let existing: Option<bool> =
            sqlx::query_scalar("select deleted_at is not null from blob where sha256 = $1 for key share")
                .bind(hex)
                .fetch_optional(&mut *transaction)
                .await?;
        if existing == Some(true) {
            // Retention deleted these bytes (another batch's output); they are stored again.
            sqlx::query("update blob set deleted_at = null where sha256 = $1")
                .bind(hex)
                .execute(&mut *transaction)
                .await?;
        }
        if existing.is_some() {
            return Ok(());
        }
        let inserted: Option<i32> = sqlx::query_scalar(
            "insert into blob (sha256, bytes, origin) values ($1, $2, 'output')
             on conflict (sha256) do nothing returning 1",
        )
        .bind(hex)
        .bind(bytes as i64)
        .fetch_optional(&mut *transaction)
        .await?;
        if inserted.is_some() {
            return Ok(());
        }
    }
    Err(ApiError::Unavailable)
}
