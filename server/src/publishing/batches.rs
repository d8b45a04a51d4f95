//! Following a batch: counts per state, failures and their reasons, validator failures,
//! the canonical outputs; and cancelling it.

use sqlx::PgConnection;
use wasmgrid_protocol::Sha256Hash;
use wasmgrid_protocol::api::BlobRef;
use wasmgrid_protocol::publish::{
    BatchState, BatchStatus, CheckCounts, MAX_LISTED_FAILURES, ReplicaCounts, ResultsPage, WorkUnitCounts,
    WorkUnitFailure, WorkUnitResult,
};

use crate::http::error::{ApiError, ApiResult};

/// A batch, found through its owner.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct BatchRow {
    pub id: i64,
    pub app_id: i64,
    pub app_name: String,
    pub name: String,
    pub closed_at: Option<chrono::DateTime<chrono::Utc>>,
    pub cancelled_at: Option<chrono::DateTime<chrono::Utc>>,
    /// When retention (or its publisher) had its files deleted.
    pub purged_at: Option<chrono::DateTime<chrono::Utc>>,
    pub created_at: chrono::DateTime<chrono::Utc>,
}

/// The batch `batch_id` if `publisher_id` owns it. Someone else's batch is "not found", as
/// if it did not exist, so ids say nothing about other publishers.
pub async fn find_owned(connection: &mut PgConnection, publisher_id: i64, batch_id: i64) -> ApiResult<BatchRow> {
    sqlx::query_as(
        "select b.id, b.app_id, a.name as app_name, b.name, b.closed_at, b.cancelled_at, b.purged_at, b.created_at
         from batch b join app a on a.id = b.app_id
         where b.id = $1 and a.publisher_id = $2",
    )
    .bind(batch_id)
    .bind(publisher_id)
    .fetch_optional(connection)
    .await?
    .ok_or_else(|| ApiError::not_found(format!("you have no batch {batch_id}")))
}

/// The publisher's newest batches, newest first.
pub async fn list_owned(connection: &mut PgConnection, publisher_id: i64, limit: i64) -> ApiResult<Vec<BatchRow>> {
    Ok(sqlx::query_as(
        "select b.id, b.app_id, a.name as app_name, b.name, b.closed_at, b.cancelled_at, b.purged_at, b.created_at
         from batch b join app a on a.id = b.app_id
         where a.publisher_id = $1
         order by b.id desc
         limit $2",
    )
    .bind(publisher_id)
    .bind(limit)
    .fetch_all(connection)
    .await?)
}

pub async fn status(connection: &mut PgConnection, batch: &BatchRow) -> ApiResult<BatchStatus> {
    let (active, validated, failed): (i64, i64, i64) = sqlx::query_as(
        "select count(*) filter (where state = 'active'),
                count(*) filter (where state = 'validated'),
                count(*) filter (where state = 'failed')
         from work_unit where batch_id = $1",
    )
    .bind(batch.id)
    .fetch_one(&mut *connection)
    .await?;
    let (unsent, in_progress, over): (i64, i64, i64) = sqlx::query_as(
        "select count(*) filter (where r.state = 'unsent'),
                count(*) filter (where r.state = 'in_progress'),
                count(*) filter (where r.state = 'over')
         from replica r join work_unit w on w.id = r.work_unit_id
         where w.batch_id = $1",
    )
    .bind(batch.id)
    .fetch_one(&mut *connection)
    .await?;
    let checks: (i64, i64, i64, i64, i64) = sqlx::query_as(
        "select count(*) filter (where state = 'validated' and not accepted_on_trust),
                count(*) filter (where accepted_on_trust and recheck is null),
                count(*) filter (where recheck = 'pending'),
                count(*) filter (where recheck = 'confirmed'),
                count(*) filter (where recheck = 'corrected')
         from work_unit where batch_id = $1 and state <> 'active'",
    )
    .bind(batch.id)
    .fetch_one(&mut *connection)
    .await?;
    let failures: Vec<(String, String)> = sqlx::query_as(
        "select name, failure_reason from work_unit
         where batch_id = $1 and state = 'failed'
         order by name limit $2",
    )
    .bind(batch.id)
    .bind(MAX_LISTED_FAILURES as i64)
    .fetch_all(&mut *connection)
    .await?;
    let validator_failures: i64 = sqlx::query_scalar(
        "select count(*) from validator_failure f join work_unit w on w.id = f.work_unit_id where w.batch_id = $1",
    )
    .bind(batch.id)
    .fetch_one(&mut *connection)
    .await?;
    let recent_validator_failures: Vec<(String, String)> = sqlx::query_as(
        "select w.name, f.message from validator_failure f join work_unit w on w.id = f.work_unit_id
         where w.batch_id = $1 order by f.id desc limit 10",
    )
    .bind(batch.id)
    .fetch_all(&mut *connection)
    .await?;

    let work_units = WorkUnitCounts { active: active as u64, validated: validated as u64, failed: failed as u64 };
    let total = work_units.total();
    let state = if batch.cancelled_at.is_some() {
        BatchState::Cancelled
    } else if batch.closed_at.is_none() {
        BatchState::Open
    } else if active == 0 {
        BatchState::Done
    } else {
        BatchState::InProgress
    };
    let failure = |(name, reason): (String, String)| WorkUnitFailure { name, reason };
    Ok(BatchStatus {
        id: batch.id,
        app: batch.app_name.clone(),
        name: batch.name.clone(),
        state,
        work_units,
        replicas: ReplicaCounts { unsent: unsent as u64, in_progress: in_progress as u64, over: over as u64 },
        checks: CheckCounts {
            checked: checks.0 as u64,
            on_trust: checks.1 as u64,
            rechecking: checks.2 as u64,
            confirmed: checks.3 as u64,
            corrected: checks.4 as u64,
        },
        fraction_done: if total == 0 { 0.0 } else { (validated + failed) as f64 / total as f64 },
        failures: failures.into_iter().map(failure).collect(),
        validator_failures: validator_failures as u64,
        recent_validator_failures: recent_validator_failures.into_iter().map(failure).collect(),
        created_at: batch.created_at,
        files_deleted_at: batch.purged_at,
    })
}

/// Finished work units after `after` in name order, with their canonical outputs or
/// failure reasons.
pub async fn results(
    connection: &mut PgConnection,
    batch: &BatchRow,
    after: Option<&str>,
    limit: usize,
) -> ApiResult<ResultsPage> {
    #[derive(sqlx::FromRow)]
    struct Row {
        name: String,
        failure_reason: Option<String>,
        output_sha256: Option<String>,
        output_bytes: Option<i64>,
        on_trust: bool,
        changed_at: Option<chrono::DateTime<chrono::Utc>>,
    }
    let rows: Vec<Row> = sqlx::query_as(
        "select w.name, w.failure_reason, r.output_sha256, r.output_bytes,
                w.accepted_on_trust and w.state = 'validated' and w.recheck is distinct from 'confirmed'
                    and w.recheck is distinct from 'corrected' as on_trust,
                w.result_changed_at as changed_at
         from work_unit w left join replica r on r.id = w.canonical_replica_id
         where w.batch_id = $1 and w.state <> 'active' and ($2::text is null or w.name > $2)
         order by w.name
         limit $3",
    )
    .bind(batch.id)
    .bind(after)
    .bind(limit as i64 + 1)
    .fetch_all(connection)
    .await?;
    let more = rows.len() > limit;
    let mut results = Vec::with_capacity(rows.len().min(limit));
    for row in rows.into_iter().take(limit) {
        let output = match (row.output_sha256, row.output_bytes) {
            (Some(hash), Some(bytes)) => {
                let hash: Sha256Hash = hash
                    .parse()
                    .map_err(|_| ApiError::Internal(anyhow::anyhow!("stored hash {hash:?} is malformed")))?;
                Some(BlobRef::new(hash, bytes as u64))
            }
            _ => None,
        };
        results.push(WorkUnitResult {
            name: row.name,
            output,
            failure_reason: row.failure_reason,
            on_trust: row.on_trust,
            changed_at: row.changed_at,
        });
    }
    let next_after = if more { results.last().map(|r| r.name.clone()) } else { None };
    Ok(ResultsPage { results, next_after })
}
