//! A host's reports of finished replicas, in the caller's transaction: an [`Event`] that
//! records them and moves their work units on.
//!
//! A report is idempotent: reporting a replica that is already over changes nothing and is
//! acknowledged again, so a client that lost the answer can simply retry. A report that can
//! only be a mistake or an attack (an unknown replica, another host's replica, an output
//! that was never uploaded nor carried inline) rejects the whole request and stores nothing.

use std::collections::{BTreeSet, HashMap, HashSet};

use sqlx::PgConnection;
use wasmgrid_protocol::api::{MAX_STDERR_BYTES, ReplicaReport, ReportedOutcome};

use super::states::Outcome;
use super::{AWAITS_REPORT, Advanced, Event, Rules, WorkUnitError, advance};
use crate::accounts::Host;
use crate::trust::HostEffects;

/// How much of an error reason is kept.
const MAX_REASON_BYTES: usize = 1024;

#[derive(sqlx::FromRow)]
struct ReportedReplica {
    id: i64,
    work_unit_id: i64,
    host_id: Option<i64>,
    /// See [`AWAITS_REPORT`].
    awaits_report: bool,
    /// Still running (in progress), not late.
    running: bool,
    uploaded_sha256: Option<String>,
    uploaded_bytes: Option<i64>,
}

impl ReportedReplica {
    fn awaits_report(&self) -> bool {
        self.awaits_report
    }
}

/// What became of a request's reports.
pub struct Reported {
    /// The replicas acknowledged: all of them (a report of a replica that no longer waits
    /// for one is acknowledged and changes nothing).
    pub acknowledged: Vec<i64>,
    /// The replicas whose reports this call recorded while they were still running: not
    /// late ones, whose reports may race the purge of their batch (which locks only the
    /// running replicas), so that the outputs they name are still looked at by a sweep.
    pub recorded_running: HashSet<i64>,
}

/// Records `reports` from `host` and moves their work units on.
pub async fn report(
    connection: &mut PgConnection,
    host: &Host,
    reports: &[ReplicaReport],
    rules: Rules,
) -> Result<Advanced<Reported>, WorkUnitError> {
    let mut by_id: HashMap<i64, &ReplicaReport> = HashMap::new();
    for report in reports {
        if let Some(earlier) = by_id.insert(report.replica_id, report)
            && earlier != report
        {
            return Err(WorkUnitError::ReportedTwice(report.replica_id));
        }
    }
    let mut ids: Vec<i64> = by_id.keys().copied().collect();
    ids.sort_unstable();

    let rows = read_replicas(connection, &ids, false).await?;
    for id in &ids {
        let row = rows.get(id).ok_or(WorkUnitError::UnknownReplica(*id))?;
        if row.host_id != Some(host.id) {
            return Err(WorkUnitError::NotYours(*id));
        }
    }
    let work_unit_ids: BTreeSet<i64> =
        rows.values().filter(|row| row.awaits_report()).map(|row| row.work_unit_id).collect();
    let work_unit_ids: Vec<i64> = work_unit_ids.into_iter().collect();
    let awaiting: Vec<i64> = ids.iter().copied().filter(|id| rows[id].awaits_report()).collect();
    let event = Reports { host_id: host.id, awaiting, reports: by_id, acknowledged: ids };
    advance(connection, &work_unit_ids, event, rules).await
}

/// Reports of one host's replicas, the work units of those still awaiting one locked.
struct Reports<'a> {
    host_id: i64,
    /// The reported replicas that awaited their report when first read.
    awaiting: Vec<i64>,
    reports: HashMap<i64, &'a ReplicaReport>,
    acknowledged: Vec<i64>,
}

impl Event for Reports<'_> {
    type Output = Reported;

    async fn record(self, connection: &mut PgConnection, effects: &mut HostEffects) -> Result<Reported, WorkUnitError> {
        // Read again, locked, now that the work units are: an upload may have replaced the
        // output since, or a retry of this report may have recorded it. The upload takes the
        // replica's lock too, so what is checked below is what is recorded.
        let locked = read_replicas(connection, &self.awaiting, true).await?;
        let awaiting: Vec<(&ReportedReplica, &ReplicaReport)> = self
            .awaiting
            .iter()
            .filter_map(|id| locked.get(id))
            .filter(|row| row.awaits_report())
            .map(|row| (row, self.reports[&row.id]))
            .collect();
        let recorded = record_reports(connection, &awaiting).await?;
        let recorded_running = awaiting
            .iter()
            .filter(|(row, _)| row.running && recorded.contains(&row.id))
            .map(|(row, _)| row.id)
            .collect();
        for (row, report) in awaiting {
            if !recorded.contains(&row.id) {
                continue;
            }
            match &report.outcome {
                ReportedOutcome::Error { .. } => effects.error(self.host_id),
                ReportedOutcome::Refused { reason } => {
                    // Loud: either the publisher's key changed, or this server hands out
                    // modules their publisher never signed.
                    tracing::warn!(host.id = self.host_id, replica.id = row.id, reason, "a host refused a module");
                    let reason = truncate_to_boundary(reason, MAX_REASON_BYTES);
                    crate::signing::record_refusal(connection, self.host_id, row.id, &reason).await?;
                }
                _ => {}
            }
        }
        Ok(Reported { acknowledged: self.acknowledged, recorded_running })
    }
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
        "select r.id, r.work_unit_id, r.host_id, {} as awaits_report, r.state = 'in_progress' as running,
                r.uploaded_sha256, b.bytes as uploaded_bytes
         from replica r left join blob b on b.sha256 = r.uploaded_sha256
         where r.id = any($1) order by r.id{}",
        AWAITS_REPORT,
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
) -> Result<HashSet<i64>, WorkUnitError> {
    let mut columns = ReportColumns::default();
    for (row, report) in reports {
        let (outcome, output_sha256, output_bytes, reason) = match &report.outcome {
            ReportedOutcome::Success { output_hash, output_bytes } => {
                let output_sha256 = output_hash.to_hex();
                if report.output.is_some() {
                    // Carried inline: checked against the report and stored already.
                    (Outcome::Success, Some(output_sha256), Some(*output_bytes as i64), None)
                } else if row.uploaded_sha256.as_deref() != Some(output_sha256.as_str()) {
                    return Err(WorkUnitError::NotUploaded { replica_id: row.id, output: *output_hash });
                } else {
                    (Outcome::Success, Some(output_sha256), row.uploaded_bytes, None)
                }
            }
            ReportedOutcome::Error { reason } => {
                (Outcome::ClientError, None, None, Some(truncate_to_boundary(reason, MAX_REASON_BYTES)))
            }
            // Like a host that never answered: another replica, and no error counted.
            ReportedOutcome::HostError { reason } => {
                (Outcome::NoReply, None, None, Some(truncate_to_boundary(reason, MAX_REASON_BYTES)))
            }
            // The same, and the host is sent no more of the app version (see `record`).
            ReportedOutcome::Refused { reason } => {
                let reason = format!("refused by the host: {reason}");
                (Outcome::NoReply, None, None, Some(truncate_to_boundary(&reason, MAX_REASON_BYTES)))
            }
        };
        columns.id.push(row.id);
        columns.outcome.push(outcome.as_str());
        columns.output_sha256.push(output_sha256);
        columns.output_bytes.push(output_bytes);
        columns.inline.push(report.output.is_some());
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
    // the output that was uploaded for it, unless it carried its output inline.
    let recorded: Vec<i64> = sqlx::query_scalar(&format!(
        "update replica r
         set state = 'over', outcome = u.outcome::replica_outcome, received_at = now(),
             validate_state = 'pending', output_sha256 = u.output_sha256, output_bytes = u.output_bytes,
             fuel_used = least(u.fuel_used, w.fuel_limit), run_time_ms = u.run_time_ms,
             exit_status = u.exit_status, stderr = u.stderr, error_reason = u.error_reason,
             instrumentation_version = u.instrumentation_version
         from unnest($1::bigint[], $2::text[], $3::text[], $4::bigint[], $5::bigint[], $6::bigint[],
                     $7::int[], $8::text[], $9::text[], $10::int[], $11::bool[])
                  as u(id, outcome, output_sha256, output_bytes, fuel_used, run_time_ms, exit_status, stderr,
                       error_reason, instrumentation_version, inline),
              work_unit w
         where r.id = u.id and w.id = r.work_unit_id
           and {AWAITS_REPORT}
           and (u.output_sha256 is null or u.inline or r.uploaded_sha256 = u.output_sha256)
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
    .bind(columns.inline)
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
    /// Whether the report carried its output (see [`crate::blobs::inline`]).
    inline: Vec<bool>,
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
