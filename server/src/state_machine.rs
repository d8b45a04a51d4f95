//! The life of a work unit, decided in the same transaction as the event that moves it (a
//! report, or a missed deadline found by the sweep), with the work unit's row locked.
//!
//! - An error or a missed deadline asks for another replica, until `max_error_replicas`
//!   errors make the work unit fail.
//! - Once `min_quorum` successes are in, validation looks for a canonical result. Found: the
//!   agreeing replicas are valid and earn credit, the others are invalid, unsent replicas are
//!   no longer needed. Not found: one more replica.
//! - `max_total_replicas` caps everything: a work unit that needs more fails.
//! - After validation, late results are checked against the canonical one.

use sqlx::PgConnection;
use wasmgrid_protocol::Sha256Hash;

use crate::credit;
use crate::trust::HostEffects;
use crate::validator::{self, Bitwise, Candidate, Validator, Verdict};

/// Retries go ahead of first copies in the queue so that work units finish.
const RETRY_PRIORITY: i32 = 1;

/// Locks work units, always in ascending id order (every writer does), so that concurrent
/// transactions cannot deadlock.
///
/// Every explicit row lock in the server is `for no key update`: no key column ever
/// changes, and the weaker lock does not conflict with the key-share locks that foreign
/// keys take (a new replica locks its work unit, a credit grant its host), which would
/// otherwise create lock cycles outside any order we choose.
pub async fn lock_work_units(connection: &mut PgConnection, ids: &[i64]) -> sqlx::Result<()> {
    if ids.is_empty() {
        return Ok(());
    }
    sqlx::query("select id from work_unit where id = any($1) order by id for no key update")
        .bind(ids)
        .fetch_all(connection)
        .await?;
    Ok(())
}

#[derive(sqlx::FromRow)]
struct WorkUnitRow {
    state: String,
    min_quorum: i32,
    target_replicas: i32,
    max_error_replicas: i32,
    max_total_replicas: i32,
    canonical_replica_id: Option<i64>,
    credit: Option<f64>,
}

#[derive(sqlx::FromRow)]
struct ReplicaRow {
    id: i64,
    state: String,
    outcome: Option<String>,
    validate_state: String,
    host_id: Option<i64>,
    account_id: Option<i64>,
    output_sha256: Option<String>,
    fuel_used: Option<i64>,
    error_reason: Option<String>,
}

impl ReplicaRow {
    fn is_success(&self) -> bool {
        self.outcome.as_deref() == Some("success")
    }

    /// Failed runs count towards `max_error_replicas`; missed deadlines only towards
    /// `max_total_replicas`, as in BOINC (a host that vanished says nothing about the work).
    fn is_error(&self) -> bool {
        matches!(self.outcome.as_deref(), Some("client_error" | "validate_error"))
    }

    fn is_outstanding(&self) -> bool {
        self.state != "over"
    }

    fn candidate(&self) -> anyhow::Result<Candidate> {
        let output: Sha256Hash = self
            .output_sha256
            .as_deref()
            .ok_or_else(|| anyhow::anyhow!("successful replica {} has no output", self.id))?
            .parse()?;
        Ok(Candidate { replica_id: self.id, output })
    }
}

/// Moves the work unit on after an event. The caller holds its lock.
pub async fn transition(
    connection: &mut PgConnection,
    work_unit_id: i64,
    effects: &mut HostEffects,
) -> anyhow::Result<()> {
    let work_unit: WorkUnitRow = sqlx::query_as(
        "select state::text as state, min_quorum, target_replicas, max_error_replicas, max_total_replicas,
                canonical_replica_id, credit
         from work_unit where id = $1",
    )
    .bind(work_unit_id)
    .fetch_one(&mut *connection)
    .await?;
    let replicas: Vec<ReplicaRow> = sqlx::query_as(
        "select id, state::text as state, outcome::text as outcome, validate_state::text as validate_state,
                host_id, account_id, output_sha256, fuel_used, error_reason
         from replica where work_unit_id = $1 order by id",
    )
    .bind(work_unit_id)
    .fetch_all(&mut *connection)
    .await?;
    let validator = Bitwise;

    match work_unit.state.as_str() {
        "validated" => check_late_results(connection, &validator, &work_unit, &replicas, effects).await,
        "failed" => Ok(()),
        _ => advance_active(connection, &validator, work_unit_id, &work_unit, &replicas, effects).await,
    }
}

async fn advance_active(
    connection: &mut PgConnection,
    validator: &dyn Validator,
    work_unit_id: i64,
    work_unit: &WorkUnitRow,
    replicas: &[ReplicaRow],
    effects: &mut HostEffects,
) -> anyhow::Result<()> {
    let errors: Vec<&ReplicaRow> = replicas.iter().filter(|r| r.is_error()).collect();
    if errors.len() >= work_unit.max_error_replicas as usize {
        let last_reason = errors.iter().rev().find_map(|r| r.error_reason.as_deref()).unwrap_or("no reason given");
        let reason = format!("too many errors ({} replicas failed; last: {last_reason})", errors.len());
        return fail(connection, work_unit_id, &reason).await;
    }

    let successes: Vec<&ReplicaRow> = replicas
        .iter()
        .filter(|r| r.is_success() && matches!(r.validate_state.as_str(), "pending" | "inconclusive"))
        .collect();
    let mut inconclusive = false;
    if successes.len() >= work_unit.min_quorum as usize {
        let candidates = successes.iter().map(|r| r.candidate()).collect::<anyhow::Result<Vec<_>>>()?;
        match validator::find_canonical(validator, &candidates, work_unit.min_quorum as usize)? {
            Verdict::Canonical(agreeing) => {
                return accept(connection, work_unit_id, &successes, &agreeing, effects).await;
            }
            Verdict::NoConsensus => {
                inconclusive = true;
                let ids: Vec<i64> = successes.iter().map(|r| r.id).collect();
                sqlx::query("update replica set validate_state = 'inconclusive' where id = any($1)")
                    .bind(&ids)
                    .execute(&mut *connection)
                    .await?;
            }
        }
    }

    // Keep enough replicas on the way: the target, or one more than the successes when they
    // disagree.
    let outstanding = replicas.iter().filter(|r| r.is_outstanding()).count() as i64;
    let wanted = if inconclusive { successes.len() as i64 + 1 } else { i64::from(work_unit.target_replicas) };
    let missing = wanted - successes.len() as i64 - outstanding;
    let room = i64::from(work_unit.max_total_replicas) - replicas.len() as i64;
    let to_create = missing.min(room).max(0);
    if to_create > 0 {
        let priority = if replicas.is_empty() { 0 } else { RETRY_PRIORITY };
        sqlx::query("insert into replica (work_unit_id, priority) select $1, $2 from generate_series(1, $3)")
            .bind(work_unit_id)
            .bind(priority)
            .bind(to_create)
            .execute(&mut *connection)
            .await?;
    }
    if outstanding + to_create == 0 {
        let reason = if inconclusive {
            format!("no consensus among {} successful replicas", successes.len())
        } else {
            format!("needs more than the maximum of {} replicas", work_unit.max_total_replicas)
        };
        return fail(connection, work_unit_id, &reason).await;
    }
    Ok(())
}

/// A canonical result is found: the work unit is validated, once.
async fn accept(
    connection: &mut PgConnection,
    work_unit_id: i64,
    successes: &[&ReplicaRow],
    agreeing: &[i64],
    effects: &mut HostEffects,
) -> anyhow::Result<()> {
    let agreeing_rows: Vec<&&ReplicaRow> = successes.iter().filter(|r| agreeing.contains(&r.id)).collect();
    let fuels: Vec<i64> = agreeing_rows.iter().map(|r| r.fuel_used.unwrap_or(0)).collect();
    let credit = credit::credit_for_fuel(&fuels);
    let canonical = agreeing[0];
    sqlx::query(
        "update work_unit set state = 'validated', canonical_replica_id = $2, credit = $3, finished_at = now()
         where id = $1 and state = 'active'",
    )
    .bind(work_unit_id)
    .bind(canonical)
    .bind(credit)
    .execute(&mut *connection)
    .await?;

    for replica in successes {
        if agreeing.contains(&replica.id) {
            mark_valid(connection, replica, credit, effects).await?;
        } else {
            mark_invalid(connection, replica, effects).await?;
        }
    }
    sqlx::query(
        "update replica set state = 'over', outcome = 'didnt_need' where work_unit_id = $1 and state = 'unsent'",
    )
    .bind(work_unit_id)
    .execute(&mut *connection)
    .await?;
    tracing::debug!(workunit.id = work_unit_id, replica.id = canonical, credit, "work unit validated");
    Ok(())
}

/// After validation, successes that arrive late are compared with the canonical output.
async fn check_late_results(
    connection: &mut PgConnection,
    validator: &dyn Validator,
    work_unit: &WorkUnitRow,
    replicas: &[ReplicaRow],
    effects: &mut HostEffects,
) -> anyhow::Result<()> {
    let canonical_id = work_unit
        .canonical_replica_id
        .ok_or_else(|| anyhow::anyhow!("validated work unit without a canonical replica"))?;
    let canonical = replicas
        .iter()
        .find(|r| r.id == canonical_id)
        .ok_or_else(|| anyhow::anyhow!("canonical replica {canonical_id} is missing"))?
        .candidate()?;
    let credit = work_unit.credit.unwrap_or(0.0);
    for replica in replicas.iter().filter(|r| r.is_success() && r.validate_state == "pending") {
        if validator.equivalent(&canonical, &replica.candidate()?)? {
            mark_valid(connection, replica, credit, effects).await?;
        } else {
            mark_invalid(connection, replica, effects).await?;
        }
    }
    Ok(())
}

async fn mark_valid(
    connection: &mut PgConnection,
    replica: &ReplicaRow,
    credit: f64,
    effects: &mut HostEffects,
) -> anyhow::Result<()> {
    sqlx::query("update replica set validate_state = 'valid', credit = $2 where id = $1")
        .bind(replica.id)
        .bind(credit)
        .execute(&mut *connection)
        .await?;
    let (Some(host_id), Some(account_id)) = (replica.host_id, replica.account_id) else {
        anyhow::bail!("valid replica {} has no host", replica.id);
    };
    credit::grant(connection, replica.id, host_id, account_id, credit).await?;
    effects.valid(host_id);
    Ok(())
}

async fn mark_invalid(
    connection: &mut PgConnection,
    replica: &ReplicaRow,
    effects: &mut HostEffects,
) -> anyhow::Result<()> {
    sqlx::query("update replica set validate_state = 'invalid', credit = 0 where id = $1")
        .bind(replica.id)
        .execute(&mut *connection)
        .await?;
    if let Some(host_id) = replica.host_id {
        effects.invalid(host_id);
    }
    Ok(())
}

/// The work unit ends without a result, once; unsent replicas are no longer needed.
async fn fail(connection: &mut PgConnection, work_unit_id: i64, reason: &str) -> anyhow::Result<()> {
    sqlx::query(
        "update work_unit set state = 'failed', failure_reason = $2, finished_at = now()
         where id = $1 and state = 'active'",
    )
    .bind(work_unit_id)
    .bind(reason)
    .execute(&mut *connection)
    .await?;
    sqlx::query(
        "update replica set state = 'over', outcome = 'didnt_need' where work_unit_id = $1 and state = 'unsent'",
    )
    .bind(work_unit_id)
    .execute(&mut *connection)
    .await?;
    tracing::info!(workunit.id = work_unit_id, reason, "work unit failed");
    Ok(())
}
