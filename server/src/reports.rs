//! Reports of finished replicas, and the state-machine step each one triggers, in the
//! caller's transaction.
//!
//! A report is idempotent: reporting a replica that is already over changes nothing and is
//! acknowledged again, so a client that lost the answer can simply retry. A report that can
//! only be a mistake or an attack (an unknown replica, another host's replica, an output
//! that was never uploaded) rejects the whole request and stores nothing.

use std::collections::{BTreeSet, HashMap};

use sqlx::PgConnection;
use wasmgrid_protocol::api::{MAX_STDERR_BYTES, ReplicaReport, ReportedOutcome};

use crate::accounts::Host;
use crate::http::error::{ApiError, ApiResult};
use crate::state_machine;
use crate::trust::HostEffects;

/// How much of an error reason is kept.
const MAX_REASON_BYTES: usize = 1024;

#[derive(sqlx::FromRow)]
struct ReportedReplica {
    id: i64,
    work_unit_id: i64,
    host_id: Option<i64>,
    state: String,
    outcome: Option<String>,
    uploaded_sha256: Option<String>,
    uploaded_bytes: Option<i64>,
}

impl ReportedReplica {
    /// Waiting for this report: running, or past its deadline (a late result still counts).
    fn awaits_report(&self) -> bool {
        self.state == "in_progress" || self.outcome.as_deref() == Some("no_reply")
    }
}

/// Applies `reports` from `host` and returns the ids it acknowledges.
pub async fn apply_reports(
    connection: &mut PgConnection,
    host: &Host,
    reports: &[ReplicaReport],
    effects: &mut HostEffects,
) -> ApiResult<Vec<i64>> {
    if reports.is_empty() {
        return Ok(Vec::new());
    }
    let mut by_id: HashMap<i64, &ReplicaReport> = HashMap::new();
    for report in reports {
        if let Some(earlier) = by_id.insert(report.replica_id, report)
            && earlier != report
        {
            return Err(ApiError::bad_request(format!("replica {} is reported twice, differently", report.replica_id)));
        }
    }
    let ids: Vec<i64> = by_id.keys().copied().collect();

    let rows: Vec<ReportedReplica> = sqlx::query_as(
        "select r.id, r.work_unit_id, r.host_id, r.state::text as state, r.outcome::text as outcome,
                r.uploaded_sha256, b.bytes as uploaded_bytes
         from replica r left join blob b on b.sha256 = r.uploaded_sha256
         where r.id = any($1)",
    )
    .bind(&ids)
    .fetch_all(&mut *connection)
    .await?;
    let rows: HashMap<i64, ReportedReplica> = rows.into_iter().map(|row| (row.id, row)).collect();
    for id in &ids {
        let row = rows.get(id).ok_or_else(|| ApiError::not_found(format!("no replica {id}")))?;
        if row.host_id != Some(host.id) {
            return Err(ApiError::Forbidden(format!("replica {id} is not assigned to this host")));
        }
    }

    // Work units are locked in id order before any replica changes, the same order every
    // other writer uses, so concurrent reports and sweeps cannot deadlock.
    let work_unit_ids: BTreeSet<i64> =
        rows.values().filter(|row| row.awaits_report()).map(|row| row.work_unit_id).collect();
    let work_unit_ids: Vec<i64> = work_unit_ids.into_iter().collect();
    state_machine::lock_work_units(connection, &work_unit_ids).await?;

    let mut touched = BTreeSet::new();
    for id in &ids {
        let report = by_id[id];
        let row = &rows[id];
        if record_report(connection, row, report).await? {
            touched.insert(row.work_unit_id);
            if matches!(report.outcome, ReportedOutcome::Error { .. }) {
                effects.error(host.id);
            }
        }
    }
    for work_unit_id in touched {
        state_machine::transition(connection, work_unit_id, effects).await?;
    }
    let mut acknowledged = ids;
    acknowledged.sort_unstable();
    Ok(acknowledged)
}

/// Stores one report; `false` if it changed nothing (a retry, or a replica that was
/// abandoned).
async fn record_report(
    connection: &mut PgConnection,
    row: &ReportedReplica,
    report: &ReplicaReport,
) -> ApiResult<bool> {
    // The state may have moved since the unlocked read above; the `where` below re-checks
    // it under the row lock.
    if !row.awaits_report() {
        return Ok(false);
    }
    let stderr = truncate_to_boundary(&report.stderr, MAX_STDERR_BYTES);
    let fuel_used = i64::try_from(report.fuel_used).unwrap_or(i64::MAX);
    let run_time_ms = i64::try_from(report.run_time_ms).unwrap_or(i64::MAX);
    let updated = match &report.outcome {
        ReportedOutcome::Success { output_hash, .. } => {
            let uploaded = row.uploaded_sha256.as_deref();
            if uploaded != Some(output_hash.to_hex().as_str()) {
                return Err(ApiError::bad_request(format!(
                    "replica {}: output {output_hash} was not uploaded before the report",
                    row.id
                )));
            }
            sqlx::query(
                "update replica r
                 set state = 'over', outcome = 'success', validate_state = 'pending', received_at = now(),
                     output_sha256 = r.uploaded_sha256, output_bytes = $2,
                     fuel_used = least($3, w.fuel_limit), run_time_ms = $4, exit_status = $5, stderr = $6
                 from work_unit w
                 where r.id = $1 and w.id = r.work_unit_id
                   and (r.state = 'in_progress' or r.outcome = 'no_reply')",
            )
            .bind(row.id)
            .bind(row.uploaded_bytes)
            .bind(fuel_used)
            .bind(run_time_ms)
            .bind(report.exit_status)
            .bind(stderr)
            .execute(&mut *connection)
            .await?
        }
        ReportedOutcome::Error { reason } => {
            sqlx::query(
                "update replica r
                 set state = 'over', outcome = 'client_error', received_at = now(),
                     fuel_used = least($2, w.fuel_limit), run_time_ms = $3, exit_status = $4, stderr = $5,
                     error_reason = $6
                 from work_unit w
                 where r.id = $1 and w.id = r.work_unit_id
                   and (r.state = 'in_progress' or r.outcome = 'no_reply')",
            )
            .bind(row.id)
            .bind(fuel_used)
            .bind(run_time_ms)
            .bind(report.exit_status)
            .bind(stderr)
            .bind(truncate_to_boundary(reason, MAX_REASON_BYTES))
            .execute(&mut *connection)
            .await?
        }
    };
    Ok(updated.rows_affected() == 1)
}

/// The last `max` bytes of `text` (the end of standard error says most), cut on a
/// character boundary; NUL bytes, which PostgreSQL text cannot hold, are dropped.
fn truncate_to_boundary(text: &str, max: usize) -> String {
    let mut start = text.len().saturating_sub(max);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    text[start..].replace('\0', "")
}

#[cfg(test)]
mod tests {
    use super::truncate_to_boundary;

    #[test]
    fn truncation_keeps_the_end_and_respects_characters() {
        assert_eq!(truncate_to_boundary("hello", 10), "hello");
        assert_eq!(truncate_to_boundary("hello", 3), "llo");
        assert_eq!(truncate_to_boundary("aé", 1), "");
        assert_eq!(truncate_to_boundary("a\0b", 10), "ab");
    }
}
