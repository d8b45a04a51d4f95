//! `PUT /api/v1/replicas/{id}/output/{sha256}`: a host uploads the output of a replica it
//! holds, before reporting it. The size limit comes from the work unit (plus room for the
//! output archive's headers) and the hash is checked on arrival; uploading the same output
//! again is harmless.

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, header};
use wasmgrid_protocol::Sha256Hash;
use wasmgrid_protocol::api::{OUTPUT_ARCHIVE_ALLOWANCE, OutputUploaded};

use crate::http::AppState;
use crate::http::error::{ApiError, ApiResult};
use crate::http::extract::{ApiPath, VolunteerHost};

#[derive(sqlx::FromRow)]
struct UploadTarget {
    host_id: Option<i64>,
    state: String,
    outcome: Option<String>,
    output_sha256: Option<String>,
    output_limit_bytes: i64,
}

pub(super) async fn put_output(
    State(state): State<AppState>,
    VolunteerHost(host): VolunteerHost,
    ApiPath((replica_id, claimed_hash)): ApiPath<(i64, String)>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<OutputUploaded>> {
    let claimed_hash: Sha256Hash = claimed_hash.parse().map_err(|error| ApiError::bad_request(format!("{error}")))?;

    let target: Option<UploadTarget> = sqlx::query_as(
        "select r.host_id, r.state::text as state, r.outcome::text as outcome, r.output_sha256,
                w.output_limit_bytes
         from replica r join work_unit w on w.id = r.work_unit_id
         where r.id = $1",
    )
    .bind(replica_id)
    .fetch_optional(&state.pool)
    .await?;
    let target = target.ok_or_else(|| ApiError::not_found(format!("no replica {replica_id}")))?;
    if target.host_id != Some(host.id) {
        return Err(ApiError::Forbidden(format!("replica {replica_id} is not assigned to this host")));
    }
    accepts_output(&target, &claimed_hash, replica_id)?;

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
    super::put_content(state.blobs.as_ref(), claimed_hash, spooled.content).await?;
    // The blob row and the replica's claim on it in one statement (atomic without a
    // transaction). Only a replica still waiting for its report takes the upload; a report
    // may have landed since the check above.
    sqlx::query(
        "with recorded as (
             insert into blob (sha256, bytes) values ($2, $4) on conflict (sha256) do nothing
         )
         update replica set uploaded_sha256 = $2
         where id = $1 and host_id = $3 and (state = 'in_progress' or outcome = 'no_reply')",
    )
    .bind(replica_id)
    .bind(claimed_hash.to_hex())
    .bind(host.id)
    .bind(bytes as i64)
    .execute(&state.pool)
    .await?;
    Ok(Json(OutputUploaded { sha256: claimed_hash, bytes }))
}

/// A replica takes output while its report is outstanding: in progress, or past its
/// deadline (a late result is still checked). After the report, only a retry of the same
/// output is accepted.
fn accepts_output(target: &UploadTarget, hash: &Sha256Hash, replica_id: i64) -> ApiResult<()> {
    let open = target.state == "in_progress" || target.outcome.as_deref() == Some("no_reply");
    let same_as_reported = target.output_sha256.as_deref() == Some(hash.to_hex().as_str());
    if open || same_as_reported {
        Ok(())
    } else {
        Err(ApiError::Conflict(format!("replica {replica_id} no longer accepts output")))
    }
}
