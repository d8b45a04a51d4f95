//! The project at a glance, for `wasmgrid-server status`: the queue by state, the volunteers
//! active, how fast results are validated, and how long the oldest unsent replica has waited.

use std::fmt;

use serde::Serialize;
use sqlx::PgConnection;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProjectSummary {
    pub work_units: WorkUnitCounts,
    pub replicas: ReplicaCounts,
    /// Hosts that contacted the server in the last hour, and in the last day.
    pub hosts_active_last_hour: i64,
    pub hosts_active_last_day: i64,
    /// Hosts banned, by themselves or through their account.
    pub hosts_banned: i64,
    /// Work units validated in the last hour.
    pub validated_last_hour: i64,
    /// Seconds since the oldest work unit with a replica waiting to be sent was published.
    pub oldest_unsent_seconds: Option<f64>,
    /// Caught hosts whose results on trust are still to be sent out again.
    pub lookbacks_pending: i64,
    /// Credit grants and withdrawals not yet folded into the totals.
    pub credit_unapplied: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, sqlx::FromRow)]
pub struct WorkUnitCounts {
    pub active: i64,
    pub validated: i64,
    pub failed: i64,
    /// Validated ones whose result is being rechecked (see adaptive replication).
    pub rechecking: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, sqlx::FromRow)]
pub struct ReplicaCounts {
    pub unsent: i64,
    pub in_progress: i64,
    /// Reported, and waiting for their work unit's quorum or a validator.
    pub awaiting_validation: i64,
}

/// Reads the summary. Each count is one query over indexed columns or a partial index; the
/// whole takes a consistent snapshot.
pub async fn summary(connection: &mut PgConnection) -> sqlx::Result<ProjectSummary> {
    let mut transaction = sqlx::Connection::begin(&mut *connection).await?;
    sqlx::query("set transaction isolation level repeatable read, read only").execute(&mut *transaction).await?;
    let work_units: WorkUnitCounts = sqlx::query_as(
        "select count(*) filter (where state = 'active') as active,
                count(*) filter (where state = 'validated') as validated,
                count(*) filter (where state = 'failed') as failed,
                count(*) filter (where recheck = 'pending') as rechecking
         from work_unit",
    )
    .fetch_one(&mut *transaction)
    .await?;
    let replicas: ReplicaCounts = sqlx::query_as(
        "select count(*) filter (where state = 'unsent') as unsent,
                count(*) filter (where state = 'in_progress') as in_progress,
                count(*) filter (where state = 'over' and outcome = 'success' and validate_state = 'pending')
                    as awaiting_validation
         from replica where state <> 'over' or validate_state = 'pending'",
    )
    .fetch_one(&mut *transaction)
    .await?;
    let (hosts_active_last_hour, hosts_active_last_day, hosts_banned): (i64, i64, i64) = sqlx::query_as(
        "select count(*) filter (where h.last_contact_at > now() - interval '1 hour'),
                count(*) filter (where h.last_contact_at > now() - interval '1 day'),
                count(*) filter (where h.banned_at is not null or a.banned_at is not null)
         from host h join account a on a.id = h.account_id",
    )
    .fetch_one(&mut *transaction)
    .await?;
    let validated_last_hour: i64 = sqlx::query_scalar(
        "select count(*) from work_unit where state = 'validated' and finished_at > now() - interval '1 hour'",
    )
    .fetch_one(&mut *transaction)
    .await?;
    let oldest_unsent_seconds: Option<f64> = sqlx::query_scalar(
        "select extract(epoch from now() - min(w.created_at))::float8
         from replica r join work_unit w on w.id = r.work_unit_id where r.state = 'unsent'",
    )
    .fetch_one(&mut *transaction)
    .await?;
    let (lookbacks_pending, credit_unapplied): (i64, i64) = sqlx::query_as(
        "select (select count(*) from lookback),
                (select count(*) from credit_grant where not applied)
                  + (select count(*) from credit_withdrawal where not applied)",
    )
    .fetch_one(&mut *transaction)
    .await?;
    transaction.commit().await?;
    Ok(ProjectSummary {
        work_units,
        replicas,
        hosts_active_last_hour,
        hosts_active_last_day,
        hosts_banned,
        validated_last_hour,
        oldest_unsent_seconds,
        lookbacks_pending,
        credit_unapplied,
    })
}

impl fmt::Display for ProjectSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let w = &self.work_units;
        let r = &self.replicas;
        writeln!(f, "work units:  {} active, {} validated, {} failed", w.active, w.validated, w.failed)?;
        if w.rechecking > 0 {
            writeln!(f, "             {} validated ones being rechecked", w.rechecking)?;
        }
        writeln!(
            f,
            "replicas:    {} unsent, {} in progress, {} awaiting validation",
            r.unsent, r.in_progress, r.awaiting_validation
        )?;
        match self.oldest_unsent_seconds {
            Some(seconds) => {
                let waited = crate::web::format::duration(std::time::Duration::from_secs_f64(seconds.max(0.0)));
                writeln!(f, "oldest unsent replica: waiting {waited}")?
            }
            None => writeln!(f, "oldest unsent replica: none waiting")?,
        }
        writeln!(
            f,
            "hosts:       {} active in the last hour, {} in the last day, {} banned",
            self.hosts_active_last_hour, self.hosts_active_last_day, self.hosts_banned
        )?;
        writeln!(f, "validated in the last hour: {}", self.validated_last_hour)?;
        write!(
            f,
            "background:  {} look-backs pending, {} credit entries not yet in the totals",
            self.lookbacks_pending, self.credit_unapplied
        )
    }
}
