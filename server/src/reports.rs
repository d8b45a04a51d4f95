//! Reports of finished replicas, and the state-machine step each one triggers, in the
//! caller's transaction.
//!
//! A report is idempotent: reporting a replica that is already over changes nothing and is
//! acknowledged again, so a client that lost the answer can simply retry. A report that can
//! only be a mistake or an attack (an unknown replica, another host's replica, an output
//! that was never uploaded) rejects the whole request and stores nothing.

use std::collections::{BTreeSet, HashMap, HashSet};

use sqlx::PgConnection;
use wasmgrid_protocol::api::{MAX_STDERR_BYTES, ReplicaReport, ReportedOutcome};

use crate::accounts::Host;
use crate::http::error::{ApiError, ApiResult};
use crate::state_machine::{self, AWAITS_REPORT};
use crate::trust::HostEffects;

/// How much of an error reason is kept.
const MAX_REASON_BYTES: usize = 1024;

#[derive(sqlx::FromRow)]
struct ReportedReplica {
    id: i64,
    work_unit_id: i64,
    host_id: Option<i64>,
    /// See [`state_machine::AWAITS_REPORT`].
    awaits_report: bool,
    uploaded_sha256: Option<String>,
    uploaded_bytes: Option<i64>,
}

impl ReportedReplica {
    fn awaits_report(&self) -> bool {
        self.awaits_report
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

    let rows = read_replicas(connection, &ids, false).await?;
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
    // Read again, locked, now that the work units are: an upload may have replaced the
    // output since, or a retry of this report may have recorded it. The upload takes the
    // replica's lock too, so what is checked below is what is recorded.
    let awaiting_ids: Vec<i64> = ids.iter().copied().filter(|id| rows[id].awaits_report()).collect();
    let locked = read_replicas(connection, &awaiting_ids, true).await?;

    let awaiting: Vec<(&ReportedReplica, &ReplicaReport)> = awaiting_ids
        .iter()
        .filter_map(|id| locked.get(id))
        .filter(|row| row.awaits_report())
        .map(|row| (row, by_id[&row.id]))
        .collect();
    let recorded = record_reports(connection, &awaiting).await?;
    let mut touched = BTreeSet::new();
    for (row, report) in awaiting {
        if recorded.contains(&row.id) {
            touched.insert(row.work_unit_id);
            if matches!(report.outcome, ReportedOutcome::Error { .. }) {
                effects.error(host.id);
            }
        }
    }
    let touched: Vec<i64> = touched.into_iter().collect();
    state_machine::transition_all(connection, &touched, effects).await?;
    let mut acknowledged = ids;
    acknowledged.sort_unstable();
    Ok(acknowledged)
}

/// The replicas `ids`, with the size of their uploaded output; locked for the rest of the
/// transaction when `lock` is set.
async fn read_replicas(
    connection: &mut PgConnection,
    ids: &[i64],
    lock: bool,
) -> sqlx::Result<HashMap<i64, ReportedReplica>> {
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let rows: Vec<ReportedReplica> = sqlx::query_as(&format!(
        "select r.id, r.work_unit_id, r.host_id, {} as awaits_report,
                r.uploaded_sha256, b.bytes as uploaded_bytes
         from replica r left join blob b on b.sha256 = r.uploaded_sha256
         where r.id = any($1) order by r.id{}",
        state_machine::AWAITS_REPORT,
        if lock { " for no key update of r" } else { "" }
    ))
    .bind(ids)
    .fetch_all(connection)
    .await?;
    Ok(rows.into_iter().map(|row| (row.id, row)).collect())
}

/// Stores the reports of replicas that await one, in one statement, and returns the ids it
/// changed; a replica whose state moved since it was read (abandoned, or reported by a
/// concurrent retry) is left alone.
async fn record_reports(
    connection: &mut PgConnection,
    reports: &[(&ReportedReplica, &ReplicaReport)],
) -> ApiResult<HashSet<i64>> {
    let mut columns = ReportColumns::default();
    for (row, report) in reports {
        let (outcome, output_sha256, output_bytes, reason) = match &report.outcome {
            ReportedOutcome::Success { output_hash, .. } => {
                let output_sha256 = output_hash.to_hex();
                if row.uploaded_sha256.as_deref() != Some(output_sha256.as_str()) {
                    return Err(ApiError::bad_request(format!(
                        "replica {}: output {output_hash} was not uploaded before the report",
                        row.id
                    )));
                }
                ("success", Some(output_sha256), row.uploaded_bytes, None)
            }
            ReportedOutcome::Error { reason } => {
                ("client_error", None, None, Some(truncate_to_boundary(reason, MAX_REASON_BYTES)))
            }
            // Like a host that never answered: another replica, and no error counted.
            ReportedOutcome::HostError { reason } => {
                ("no_reply", None, None, Some(truncate_to_boundary(reason, MAX_REASON_BYTES)))
            }
        };
        columns.id.push(row.id);
        columns.outcome.push(outcome);
        columns.output_sha256.push(output_sha256);
        columns.output_bytes.push(output_bytes);
        columns.fuel_used.push(i64::try_from(report.fuel_used).unwrap_or(i64::MAX));
        columns.run_time_ms.push(i64::try_from(report.run_time_ms).unwrap_or(i64::MAX));
        columns.exit_status.push(report.exit_status);
        columns.stderr.push(truncate_to_boundary(&report.stderr, MAX_STDERR_BYTES));
        columns.error_reason.push(reason);
        columns.instrumentation_version.push(i32::try_from(report.instrumentation_version).unwrap_or(i32::MAX));
    }
    if columns.id.is_empty() {
        return Ok(HashSet::new());
    }
    // The state is re-checked here, under the work unit's lock; a success must still match
    // the output that was uploaded for it.
    let recorded: Vec<i64> = sqlx::query_scalar(&format!(
        "update replica r
         set state = 'over', outcome = u.outcome::replica_outcome, received_at = now(),
             validate_state = 'pending', output_sha256 = u.output_sha256, output_bytes = u.output_bytes,
             fuel_used = least(u.fuel_used, w.fuel_limit), run_time_ms = u.run_time_ms,
             exit_status = u.exit_status, stderr = u.stderr, error_reason = u.error_reason,
             instrumentation_version = u.instrumentation_version
         from unnest($1::bigint[], $2::text[], $3::text[], $4::bigint[], $5::bigint[], $6::bigint[],
                     $7::int[], $8::text[], $9::text[], $10::int[])
                  as u(id, outcome, output_sha256, output_bytes, fuel_used, run_time_ms, exit_status, stderr,
                       error_reason, instrumentation_version),
              work_unit w
         where r.id = u.id and w.id = r.work_unit_id
           and {AWAITS_REPORT}
           and (u.output_sha256 is null or r.uploaded_sha256 = u.output_sha256)
         returning r.id"
    ))
    .bind(columns.id)
    .bind(columns.outcome)
    .bind(columns.output_sha256)
    .bind(columns.output_bytes)
    .bind(columns.fuel_used)
    .bind(columns.run_time_ms)
    .bind(columns.exit_status)
    .bind(columns.stderr)
    .bind(columns.error_reason)
    .bind(columns.instrumentation_version)
    .fetch_all(connection)
    .await?;
    Ok(recorded.into_iter().collect())
}

/// Reports as columns, for one `unnest`.
#[derive(Default)]
struct ReportColumns {
    id: Vec<i64>,
    outcome: Vec<&'static str>,
    output_sha256: Vec<Option<String>>,
    output_bytes: Vec<Option<i64>>,
    fuel_used: Vec<i64>,
    run_time_ms: Vec<i64>,
    exit_status: Vec<Option<i32>>,
    stderr: Vec<String>,
    error_reason: Vec<Option<String>>,
    instrumentation_version: Vec<i32>,
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
